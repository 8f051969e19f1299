"""Command-line pieces shared by ``otcpcc`` (:mod:`otcpcc.cli`) and ``otcpcc bench``
(:mod:`otcpcc.bench`, which cannot import the cli: the cli imports it).

* :class:`OneLineParser`: argparse whose usage errors are one line (``otcpcc bench: error: ...``), exit 2.
* :func:`int_at_least`: an integer flag type with a lower bound, e.g. ``--repeats`` >= 1.
* :func:`refuse_unused`: a table ``{dest: what to do instead}`` of flags that a command (or a mode
  such as ``bench --scale``) does not use; giving one is refused with one line naming the flags,
  instead of being silently ignored. :func:`given_flags` says which flags a command line gave
  when the parser's defaults are not None.

Imports nothing from the package (and not torch): any module may use it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence

__all__ = ["OneLineParser", "given_flags", "int_at_least", "refuse_unused"]


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line errors (``<prog>: error: ...; see <prog> --help``) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def int_at_least(low: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``low`` (anything else: "expected an integer >= low, got '0'")."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    return parse


def flag_of(dest: str) -> str:
    """The flag of an argparse ``dest`` (``batch_size`` -> ``--batch-size``)."""
    return "--" + dest.replace("_", "-")


def refuse_unused(args: argparse.Namespace, command: str, not_used: Mapping[str, str]) -> None:
    """ValueError (one line) naming every flag of ``not_used`` that ``args`` gives (not None),
    then what to do instead: ``"<command> does not use --a, --b; <instead>"``."""
    given = [dest for dest in not_used if getattr(args, dest, None) is not None]
    if given:
        instead = "; ".join(dict.fromkeys(not_used[d] for d in given))  # each advice once
        raise ValueError(f"{command} does not use {', '.join(flag_of(d) for d in given)}; {instead}")


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """The flags that ``argv`` gives, and only those (absent ones read as None): ``argv`` parsed
    again with every default suppressed. ``argv`` must already parse (errors exit as usual)."""
    saved = [(a, a.default) for a in parser._actions]
    try:
        for a, _ in saved:
            a.default = argparse.SUPPRESS
        return parser.parse_args(list(argv))
    finally:
        for a, default in saved:
            a.default = default
