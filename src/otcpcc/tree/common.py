"""What every part of the tree package shares: the error type, the coarse-level record, and name
and weight checks that make one-line error messages."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

from ..textfile import parse_number

_MAX_LISTED = 5  # how many names an error message lists before "..."


class TreeError(ValueError):
    """An invalid label tree or tree file (the message names the nodes and the fix)."""


class Level(NamedTuple):
    """One coarse level of a tree.

    ``ids[i]`` is the id (in ``0..len(names)-1``) of leaf i's ancestor at this level, and
    ``names[ids[i]]`` that ancestor's node name.
    """

    name: str
    ids: np.ndarray  # int64 [K]
    names: list[str]


def _listed(names: Iterable[Any]) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:_MAX_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _MAX_LISTED else "")


def _check_name(name: Any, what: str = "node name") -> str:
    if not isinstance(name, str):
        raise TreeError(f"{what} {name!r} is a {type(name).__name__}; node names must be strings")
    if not name:
        raise TreeError(f"empty {what}; every node needs a non-empty name")
    return str(name)


def _check_weight(w: Any, child: str, parent: str | None) -> float:
    try:
        if isinstance(w, bool):  # True is an int to Python, not a weight
            raise TypeError
        x = parse_number(w) if isinstance(w, str) else float(w)  # e.g. "1_000" in a JSON file
    except (TypeError, ValueError):
        raise TreeError(
            f"weight {w!r} of edge {parent!r} -> {child!r} is not a number; weights must be finite and >= 0"
        ) from None
    if not math.isfinite(x) or x < 0:
        raise TreeError(
            f"weight {x!r} of edge {parent!r} -> {child!r} is negative or not finite; weights must be finite and >= 0"
        )
    return x


def _second_parent(child: str, first: str, first_at: str, second: str, second_at: str,
                   parent: dict[str, str]) -> str:
    """The message for an edge ``second -> child`` when ``child`` already hangs under ``first``:
    names both edges (and where they are) and the cycle the second one would close, if any; the
    fix suits a tree file's reader (delete an edge) and a caller of the API alike."""
    chain, n = [second], second
    while n in parent and n != child and len(chain) <= len(parent):
        n = parent[n]
        chain.append(n)
    cycle = (f"; it also closes a cycle ({' -> '.join(repr(x) for x in [child, *chain])}, child -> parent)"
             if n == child else "")
    return (f"node {child!r} has two parents, {first!r}{first_at} and {second!r}{second_at}{cycle}; a label "
            "tree needs one parent per node: delete one of these edges (from Python, "
            "on_multiple_parents='first' keeps the first)")
