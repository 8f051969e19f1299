"""SIGTERM handled as Ctrl-C is: one place that turns the signals which stop a run into exceptions.

``kill``, ``timeout``, a scheduler's stop and torchrun's agent send SIGTERM; Python's default ends
the process at once, without its ``finally`` blocks (a run's lock, the files of a run that had not
checkpointed yet, half-written temporaries stayed). Inside :func:`sigterm_raises` a SIGTERM raises
:class:`Terminated`, a ``KeyboardInterrupt``, so everything that cleans up after Ctrl-C cleans up
after SIGTERM too; training's own handler (``training.control.StopRequest``) treats both signals
alike (finish the step, save a checkpoint). The exit status is ``128 + signal number``: 130 after
SIGINT, 143 after SIGTERM.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """A SIGTERM, raised where Python raises ``KeyboardInterrupt`` for a SIGINT."""

    signum = signal.SIGTERM


def signal_name(signum: int) -> str:
    """``"SIGTERM"`` for 15 (the name the user's tools print)."""
    return signal.Signals(signum).name


def exit_status(e: BaseException) -> int:
    """The conventional status of a process stopped by the signal behind ``e``: 128 + its number
    (``e.signum``; SIGINT for a plain ``KeyboardInterrupt``)."""
    return 128 + int(getattr(e, "signum", None) or signal.SIGINT)


def sigterm_kills() -> bool:
    """Whether SIGTERM still takes its default action, ending the process where it stands (no
    ``finally`` runs), rather than a Python handler's (ours raise or record) or being ignored."""
    return signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Inside: SIGTERM raises :class:`Terminated` (as SIGINT raises ``KeyboardInterrupt``) where it
    would have ended the process (a handler of the caller's, or an ignored SIGTERM, stays). Main
    thread only (where handlers live); the previous handler is restored on the way out."""
    if threading.current_thread() is not threading.main_thread() or not sigterm_kills():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
