"""Command-line pieces shared by ``otcpcc`` (:mod:`otcpcc.cli`) and ``otcpcc bench``
(:mod:`otcpcc.bench`, which cannot import the cli: the cli imports it).

* :class:`OneLineParser`: argparse whose usage errors are one line (``otcpcc bench: error: ...``), exit 2.
* :func:`int_at_least`: an integer flag type with a lower bound, e.g. ``--repeats`` >= 1;
  :func:`positive_float`: a float flag type > 0, e.g. ``--reference-budget``.
* :func:`unwritable`: why an output file (``--json PATH``) cannot be written, checked before a
  long run rather than after it.
* :func:`refuse_unused`: a table ``{dest: what to do instead}`` of flags that a command (or a mode
  such as ``bench --scale``) does not use; giving one is refused with one line naming the flags,
  instead of being silently ignored. :func:`given_flags` says which flags a command line gave
  when the parser's defaults are not None.

Imports nothing from the package (and not torch): any module may use it.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["OneLineParser", "given_flags", "int_at_least", "positive_float", "refuse_unused",
           "suggest_flags", "unwritable"]


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line errors (``<prog>: error: ...; see <prog> --help``) and exit status 2;
    an unrecognized flag gets "did you mean --x?" (:func:`suggest_flags`)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        """``argparse.ArgumentParser.parse_args``, with a suggestion for each mistyped flag and
        the help of the subcommand they were given to (``; see otcpcc train --help``)."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.exit(2, f"{self.prog}: error: unrecognized arguments: {' '.join(extras)}"
                         f"{suggest_flags(self, parsed, extras)}; see {chosen_parser(self, parsed).prog} --help\n")
        return parsed

    def _get_option_tuples(self, option_string: str) -> list:
        # "--=x" / "-=x" name no flag: argparse matched the empty name as a prefix of every long
        # flag ("ambiguous option: --=x could match --help, --version"); it is unrecognized
        if option_string.split("=", 1)[0] in ("-", "--"):
            return []
        return super()._get_option_tuples(option_string)


def chosen_parser(parser: argparse.ArgumentParser, parsed: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub)command that ``parsed`` chose (``train``'s, not the top level's)."""
    while True:  # descend into the chosen subcommand
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        chosen = getattr(parsed, sub.dest, None) if sub is not None and sub.dest else None
        if chosen not in getattr(sub, "choices", {}):
            return parser
        parser = sub.choices[chosen]  # type: ignore[union-attr]


def suggest_flags(parser: argparse.ArgumentParser, parsed: argparse.Namespace,
                  extras: Sequence[str]) -> str:
    """``"; did you mean --distance?"`` for the unrecognized ``extras`` that look like flags and
    are close (:mod:`difflib`) to a flag of the (sub)command that was run; ``""`` when none is.
    The subcommand is followed through ``parsed`` (:func:`chosen_parser`: e.g. ``train``'s
    flags, not the top level's); flags hidden from --help are not suggested. Python 3.11's
    argparse has no ``suggest_on_error``."""
    parser = chosen_parser(parser, parsed)
    flags = [f for a in parser._actions if a.help != argparse.SUPPRESS for f in a.option_strings]
    guesses = []
    for word in extras:
        if word.startswith("-") and len(word) > 2:
            close = difflib.get_close_matches(word.split("=", 1)[0], flags, n=1, cutoff=0.7)
            if close and close[0] not in guesses:
                guesses.append(close[0])
    return f"; did you mean {' or '.join(guesses)}?" if guesses else ""


MAX_COUNT = 2**31 - 1  # the largest size or count a flag takes (torch's sizes and Python's islice)


def int_at_least(low: int) -> Callable[[str], int]:
    """argparse type: an integer in [``low``, ``MAX_COUNT``] (anything else: "expected an integer
    >= low, got '0'", or "... at most 2147483647, got ...")."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        if value > MAX_COUNT:
            raise argparse.ArgumentTypeError(f"expected an integer of at most {MAX_COUNT}, got {text!r}")
        return value

    return parse


def count_list(text: str) -> list[int]:
    """argparse type: comma-separated integers from 1 to ``MAX_COUNT`` (empty items skipped), e.g.
    batch sizes or dimensions; anything else: "expected comma-separated integers from 1 to ..."."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1 or max(values) > MAX_COUNT:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers from 1 to {MAX_COUNT}, got {text!r}")
    return values


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (anything else: "expected a number > 0, got '-5'")."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def unwritable(path: str, flag: str = "--json") -> str | None:
    """``None`` when a file can be written at ``path``, else the one-line reason (naming ``flag``
    and the fix). Tried, not guessed: a temporary file is created in ``path``'s folder and removed
    (O(1) files), so a read-only or foreign folder is found before a long run, not after it."""
    p = Path(path)
    fix = "pass a file in a folder you can write to"
    if not path.strip():  # e.g. --json "$UNSET_VARIABLE"; Path("") is the current folder
        return f"{flag} was given an empty path; {fix}"
    if p.is_dir():
        return f"{flag} {path}: is a directory; {fix}"
    folder = p.resolve().parent
    if not folder.is_dir():
        return f"{flag} {path}: its folder {folder} does not exist; {fix}"
    if p.exists() and not os.access(p, os.W_OK):
        return f"{flag} {path}: the file exists and is read-only; {fix}"
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".otcpcc-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"{flag} {path}: cannot write in {folder} ({e.strerror or e}); {fix}"
    return None


def make_dir(path: str | os.PathLike, flag: str = "--out") -> bool:
    """Create the folder ``path`` given with ``flag`` (and its parents); return whether it was
    created. A path under a file, or one the system refuses (``/proc/x``, a read-only disk, no
    permission), is a one-line ``OSError`` naming ``flag``, the path, why and the fix; nothing is
    created then (the file in the way is found before any ``mkdir``)."""
    p = Path(path)
    above = p
    while not above.exists() and above != above.parent:  # the nearest part that exists
        above = above.parent
    if above.exists() and not above.is_dir():
        where = "is a file" if above == p else f"is inside {above}, which is a file"
        raise NotADirectoryError(f"{flag} {path} {where}, not a folder; pass {flag} a folder "
                                 "path (an existing folder or a new one)")
    made = not p.exists()
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"{flag} {path}: cannot create this folder ({e.strerror or e}); pass "
                      f"{flag} a folder you can write to") from None
    return made


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
