"""Is a run still learning? Pure checks for a collapsed run (numbers in, a reason out).

With ``K`` classes and ``c = 1/K`` (the accuracy of always answering one of K balanced classes),
a train accuracy is *at chance* when it is at most ``c + min(0.05 (1 − c), c / 2)`` (K = 12:
≤ 0.125; K = 2: ≤ 0.525; K = 1000: ≤ 0.0015). A run has *collapsed* at an epoch when

- its train accuracy is at chance after an earlier epoch reached ``c + 0.25 (1 − c)`` (it had
  learned and fell back), or after an epoch whose mean cross-entropy exceeded ``10 · ln K`` or
  was not finite (it diverged); or
- the features of the evaluation split are degenerate: a non-finite value, or (nearly) the same
  vector for every sample, ``sqrt(Σ_j Var_j) ≤ 1e-4 · sqrt(mean_i ‖x_i‖²)`` (all-zero features
  count as identical); or
- the model answers one class for every sample of a split holding several classes while its train
  accuracy is at chance.

A slow start (train accuracy near chance, loss near ``ln K``) is none of these. Every check is
O(N·d) at most and touches no model. ``otcpcc.training.loop`` calls :func:`collapse_reason` once
per epoch and records the first reason in ``metrics.json`` as ``collapsed: {epoch, reason}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["at_chance", "chance_accuracy", "collapse_reason", "feature_degeneracy",
           "train_accuracy_collapse"]

# "at chance": at most this fraction of (1 - chance), and at most half of chance, above chance
AT_CHANCE = 0.05
# a run "had learned" once its train accuracy was this fraction of (1 - chance) above chance
LEARNED = 0.25
# a run "diverged" at an epoch whose mean cross-entropy exceeds this multiple of ln K
DIVERGED_CE = 10.0
# relative spread (total std / rms norm) at or below which features are "identical"
IDENTICAL_REL = 1e-4


def chance_accuracy(num_classes: int) -> float:
    """``1 / K``: the accuracy of a constant answer on ``K`` balanced classes."""
    return 1.0 / max(int(num_classes), 1)


def at_chance(acc: float, num_classes: int) -> bool:
    """Whether accuracy ``acc`` is at chance for ``K`` classes (see the module docstring)."""
    c = chance_accuracy(num_classes)
    return acc <= c + min(AT_CHANCE * (1.0 - c), 0.5 * c)


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def train_accuracy_collapse(history: Sequence[Mapping[str, Any]], num_classes: int) -> str | None:
    """Reason if the last epoch's train accuracy is at chance after the run had learned or
    diverged (see the module docstring), else None.

    ``history``: one row per epoch so far (this epoch last) with ``train_acc`` and ``ce`` (the
    epoch's mean cross-entropy); rows without a finite ``train_acc`` are ignored. Needs K ≥ 2.
    """
    rows = [r for r in history if math.isfinite(_num(r.get("train_acc")))]
    if num_classes < 2 or not rows or not at_chance(_num(rows[-1]["train_acc"]), num_classes):
        return None
    last = _num(rows[-1]["train_acc"])
    c = chance_accuracy(num_classes)
    earlier = [_num(r["train_acc"]) for r in rows[:-1]]
    if earlier and max(earlier) >= c + LEARNED * (1.0 - c):
        return (f"train accuracy fell to chance, {last:.3f} after {max(earlier):.3f} "
                f"(chance {c:.3f})")
    ce = [_num(r["ce"]) for r in rows if r.get("ce") is not None]
    if not ce:
        return None
    worst = next((v for v in ce if not math.isfinite(v)), max(ce))
    limit = DIVERGED_CE * math.log(num_classes)
    if not math.isfinite(worst) or worst > limit:
        return (f"the loss diverged (cross-entropy {worst:.3g} > {limit:.3g}) and train accuracy "
                f"is at chance ({last:.3f}, chance {c:.3f})")
    return None


def feature_degeneracy(features: np.ndarray) -> str | None:
    """Why the rows of ``features`` [N, d] cannot be told apart, or None when they can.

    "non-finite": any NaN/inf; "identical": relative spread ``sqrt(Σ_j Var_j) / sqrt(mean_i
    ‖x_i‖²) ≤ 1e-4`` (0/0, i.e. all-zero features, counts as identical). Fewer than 2 rows:
    None (nothing to compare). O(N·d).
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.size == 0:
        return None
    x = x.reshape(len(x), -1)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        return f"non-finite features ({bad} of {len(x)} rows)"
    if len(x) < 2:
        return None
    spread = math.sqrt(float(x.var(axis=0).sum()))
    scale = math.sqrt(float((x * x).sum(axis=1).mean()))
    if spread <= IDENTICAL_REL * scale or scale == 0.0:
        return f"features of all {len(x)} samples are (nearly) identical"
    return None


def collapse_reason(history: Sequence[Mapping[str, Any]], num_classes: int,
                    split: Mapping[str, Any] | None = None, split_name: str = "test") -> str | None:
    """The first collapse reason that applies at this epoch (see the module docstring), or None.

    ``history``: the log rows so far (``train_acc``, ``ce``; this epoch last). ``split``: when the
    evaluation split was run this epoch, its ``features`` [N, d], ``logits`` [N, K] and
    ``labels`` [N] (numpy arrays or tensors).
    """
    if split is not None:
        why = feature_degeneracy(np.asarray(split["features"]))
        if why is not None:
            return f"{why} on the {split_name} split"
        logits, labels = np.asarray(split["logits"]), np.asarray(split["labels"])
        last = _num(history[-1].get("train_acc")) if history else float("nan")
        if (num_classes >= 2 and logits.ndim == 2 and len(np.unique(labels)) > 1
                and math.isfinite(last) and at_chance(last, num_classes)
                and len(np.unique(logits.argmax(axis=1))) == 1):
            return (f"one class answered for the whole {split_name} split, train accuracy "
                    f"{last:.3f} at chance")
    return train_accuracy_collapse(history, num_classes)
