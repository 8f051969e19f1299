"""What every part of the tree package shares: the error type, the coarse-level record, and name
and weight checks that make one-line error messages."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

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
        x = float(w)
    except (TypeError, ValueError):
        raise TreeError(
            f"weight {w!r} of edge {parent!r} -> {child!r} is not a number; weights must be finite and >= 0"
        ) from None
    if not math.isfinite(x) or x < 0:
        raise TreeError(
            f"weight {x!r} of edge {parent!r} -> {child!r} is negative or not finite; weights must be finite and >= 0"
        )
    return x
