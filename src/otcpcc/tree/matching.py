"""Matching a dataset's classes to the leaves of a user's tree: the one message for a mismatch.

:func:`unmatched_classes` names the classes that are not leaves, the leaves that match no class
(where a misspelt leaf shows up), and a "did you mean" from :mod:`difflib` when a leaf is close
to a missing class, all on one line with long lists cut to a count.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

__all__ = ["did_you_mean", "listed", "unmatched_classes"]

_SHOWN = 5  # names listed per list before "... (+N more)"
_CLOSE = 0.7  # difflib ratio for a "did you mean" (owl / owll: 0.86; cat / dog: 0)


def listed(names: Sequence[str]) -> str:
    """The first 5 of ``names`` quoted and comma-separated, then ``... (+N more)``."""
    more = f" ... (+{len(names) - _SHOWN} more)" if len(names) > _SHOWN else ""
    return ", ".join(repr(n) for n in names[:_SHOWN]) + more


def did_you_mean(unknown: Sequence[str], known: Sequence[str]) -> str:
    """``"; did you mean 'owl' for 'owll'?"``: the closest of ``known`` (difflib ratio >= 0.7) for
    each of the first 5 ``unknown`` names that has one; ``""`` when none has. O(5 * len(known))
    difflib comparisons."""
    guesses = [f"{close[0]!r} for {u!r}" for u in unknown[:_SHOWN]
               if (close := difflib.get_close_matches(u, known, n=1, cutoff=_CLOSE))]
    return f"; did you mean {', '.join(guesses)}?" if guesses else ""


def unmatched_classes(classes: Sequence[str], leaves: Sequence[str], where: str, source: str,
                      fix: str = "add them to the tree file") -> str | None:
    """``None`` when every class is a leaf, else one line: the classes of ``where`` that are
    not leaves of the tree (from ``source``), the tree's leaves that are no class, "did you
    mean" for each listed class with a close leaf, then "fix the spelling or <fix>".

    Leaves without a class are allowed (the tree is restricted to the classes); they are named
    only to show a misspelling. O(K + L) set work, plus difflib against the unmatched leaves
    for the (at most 5) listed classes.
    """
    leaf_set, class_set = set(leaves), set(classes)
    missing = [c for c in classes if c not in leaf_set]
    if not missing:
        return None
    spare = [leaf for leaf in leaves if leaf not in class_set]
    text = (f"{len(missing)} class(es) of {where} are not leaves of the tree ({source}): "
            f"{listed(missing)}")
    if spare:
        text += f"; the tree's leaves without a class: {listed(spare)}{did_you_mean(missing, spare)}"
    return f"{text}; fix the spelling or {fix}"
