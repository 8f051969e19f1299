"""Exact resume and Ctrl-C: a sampler that skips what a mid-epoch checkpoint already saw, and a
SIGINT handler that turns the first Ctrl-C into a flag checked between steps."""

from __future__ import annotations

import itertools
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch.utils.data import DistributedSampler, Sampler


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; ``run_dir/last.pt`` holds the state to ``--resume`` from."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(str(run_dir))
        self.run_dir = Path(run_dir)


class ResumableSampler(Sampler[int]):
    """A :class:`DistributedSampler`'s order for one epoch, minus its first ``skip_samples``.

    The order of epoch ``e`` is a fixed function of ``(seed, e, rank, world size)``; skipping
    the samples already seen lets a mid-epoch checkpoint resume at the exact next batch.
    """

    def __init__(self, base: DistributedSampler) -> None:
        self.base = base
        self.skip = 0

    def set_epoch(self, epoch: int, skip_samples: int = 0) -> None:
        self.base.set_epoch(epoch)
        self.skip = skip_samples

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.base), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.base) - self.skip, 0)


class StopRequest:
    """Turn the first Ctrl-C into a flag checked between steps; a second one aborts at once."""

    # torchrun's agent relays the terminal's SIGINT to its workers, which already got it from
    # the terminal: a second signal this soon after the first is the same Ctrl-C
    RELAY_WINDOW_S = 2.0

    def __init__(self) -> None:
        self.requested = False
        self._at = 0.0
        self._old: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            if time.monotonic() - self._at < self.RELAY_WINDOW_S:
                return
            raise KeyboardInterrupt
        self.requested = True
        self._at = time.monotonic()
        print("\notcpcc: interrupted: finishing this step and saving a checkpoint "
              "(Ctrl-C again to abort)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


