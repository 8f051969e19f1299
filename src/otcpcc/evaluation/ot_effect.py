r"""Does optimal transport matter on these features? Measured directly, class pair by class pair.

On one seeded subsample of at most ``max_per_class`` samples per class, the class distances
(:func:`otcpcc.class_distances`, pairs in ``itertools.combinations`` order of the present classes)

- ``l2``: ‖mean_A − mean_B‖₂ (what ℓ2-CPCC sees), and
- ``emd``: the exact optimal-transport cost between the two empirical class distributions (what
  OT-CPCC approximates; FastFT is an upper bound of it),

then

- ``rank_agreement_l2_emd``: Spearman's ρ between the two condensed vectors (Pearson correlation
  of their average ranks): 1 = OT orders the class pairs exactly as the means do;
- ``cpcc_l2``, ``cpcc_emd``: Pearson correlation of each with the tree distance of the pairs
  (= :func:`otcpcc.cpcc` on the same subsample); ``None`` where undefined (flat tree);
- ``disagreements``: the pairs whose rank (as a fraction of the pairs) differs most (at most
  ``top``; none of the same rank under both).

The rule (:func:`recommend`): ``"ot"`` when the class distributions carry hierarchy that the class
means do not, i.e. ``cpcc_emd − cpcc_l2 ≥ GAIN_THRESHOLD`` (0.10) **and** ``cpcc_emd ≥
MIN_CPCC_OT`` (0.30); otherwise ``"l2"`` (as good, and cheaper). The multi-modality count is
reported as the likely *why*, never as the decision: several modes that do not follow the tree
change nothing CPCC can use.

Cost: K(K−1)/2 exact transport problems of at most ``max_per_class`` points each (network
simplex, CPU threads): ~1 s for 20 classes at 100 samples, ~30 s for 100 classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

GAIN_THRESHOLD = 0.10  # cpcc_emd - cpcc_l2 at least this much: the distributions add hierarchy
MIN_CPCC_OT = 0.30  # and cpcc_emd at least this: the hierarchy they carry is real
EMD_PER_CLASS = 100  # default subsample per class for the exact transport problems


def rank_agreement(a: Any, b: Any) -> float:
    """Spearman's rank correlation of two equally long vectors: the Pearson correlation of their
    ranks (ties get the average rank), as ``scipy.stats.spearmanr``; NaN when a vector is
    constant or shorter than 2."""
    from scipy.stats import rankdata

    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"rank_agreement needs vectors of one length, got {a.size} and {b.size}")
    return _pearson(rankdata(a), rankdata(b))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2:
        return float("nan")
    ac, bc = a - a.mean(), b - b.mean()
    den = float(np.sqrt((ac * ac).sum() * (bc * bc).sum()))
    return float((ac * bc).sum() / den) if den > 0 else float("nan")


def _finite_or_none(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def ot_effect(features: Any, labels: Any, tree: Any, *, names: Sequence[str] | None = None,
              max_per_class: int = EMD_PER_CLASS, seed: int = 0, top: int = 5) -> dict[str, Any]:
    """Class distances under ``l2`` and ``emd`` on one subsample, their agreement and their CPCC.

    Args:
        features: [N, d] floats; labels: [N] leaf ids of ``tree`` (a LabelTree).
        names: class names (default ``tree.leaves``).
        max_per_class: samples per class kept (a ``seed``-ed draw) for both distances.
        top: how many most-disagreeing pairs to list.

    Returns:
        ``{"rank_agreement_l2_emd", "cpcc_l2", "cpcc_emd", "cpcc_gain" (emd − l2),
        "recommend" ("ot" | "l2"), "rule", "n_classes", "n_pairs", "max_per_class", "seed",
        "disagreements": [{"a", "b", "tree", "l2", "emd", "rank_l2", "rank_emd"}],
        "pairs": {"l2": [...], "emd": [...], "tree": [...]}}`` (ranks are fractions in (0, 1]).
    """
    from scipy.stats import rankdata

    from ..distances import class_distances
    from .inference import subsample_per_class

    x = torch.as_tensor(np.asarray(features, dtype=np.float64))
    y_np = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or y_np.shape != (x.shape[0],):
        raise ValueError(f"features must be [N, d] and labels [N]; got {tuple(x.shape)} and "
                         f"{y_np.shape}")
    names = list(tree.leaves if names is None else names)
    keep = torch.from_numpy(subsample_per_class(y_np, max_per_class, seed))
    x, y = x[keep], torch.from_numpy(y_np)[keep]
    classes, l2 = class_distances(x, y, "l2")
    _, emd = class_distances(x, y, "emd")
    cls = classes.numpy()
    if cls.size < 2:
        raise ValueError(f"only {cls.size} class present; the OT effect needs at least two")
    iu, ju = np.triu_indices(cls.size, k=1)
    tree_d = np.asarray(tree.distance_matrix(), dtype=np.float64)[cls[iu], cls[ju]]
    l2_np, emd_np = l2.numpy(), emd.numpy()
    agree = rank_agreement(l2_np, emd_np)
    cpcc_l2, cpcc_emd = _pearson(tree_d, l2_np), _pearson(tree_d, emd_np)
    rank_l2 = rankdata(l2_np) / l2_np.size
    rank_emd = rankdata(emd_np) / emd_np.size
    gap = np.abs(rank_l2 - rank_emd)
    worst = [p for p in np.argsort(-gap, kind="stable")[:top] if gap[p] > 0]  # pairs in the same place: no disagreement
    disagreements = [
        {"a": names[cls[iu[p]]], "b": names[cls[ju[p]]], "tree": float(tree_d[p]),
         "l2": float(l2_np[p]), "emd": float(emd_np[p]),
         "rank_l2": float(rank_l2[p]), "rank_emd": float(rank_emd[p])} for p in worst]
    decision, rule = recommend(cpcc_l2, cpcc_emd)
    return {
        "rank_agreement_l2_emd": _finite_or_none(agree),
        "cpcc_l2": _finite_or_none(cpcc_l2), "cpcc_emd": _finite_or_none(cpcc_emd),
        "cpcc_gain": _finite_or_none(cpcc_emd - cpcc_l2),
        "recommend": decision, "rule": rule,
        "n_classes": int(cls.size), "n_pairs": int(l2_np.size),
        "max_per_class": int(max_per_class), "seed": int(seed),
        "disagreements": disagreements,
        "pairs": {"l2": l2_np.tolist(), "emd": emd_np.tolist(), "tree": tree_d.tolist()},
    }


def recommend(cpcc_l2: float | None, cpcc_emd: float | None) -> tuple[str, str]:
    """``("ot", why)`` when ``cpcc_emd − cpcc_l2 ≥ GAIN_THRESHOLD`` and ``cpcc_emd ≥
    MIN_CPCC_OT``, else ``("l2", why)``; ``why`` is one sentence with the numbers."""
    def ok(v: float | None) -> bool:
        return v is not None and bool(np.isfinite(v))

    if not (ok(cpcc_l2) and ok(cpcc_emd)):
        return "l2", ("CPCC is undefined here (a flat tree or constant distances), so nothing "
                      "shows that OT would help: l2 (pass the label tree with --tree)")
    gain = round(float(cpcc_emd) - float(cpcc_l2), 12)  # type: ignore[arg-type]
    if gain >= GAIN_THRESHOLD and float(cpcc_emd) >= MIN_CPCC_OT:  # type: ignore[arg-type]
        return "ot", (f"the class distributions carry hierarchy the means miss: CPCC emd "
                      f"{cpcc_emd:.2f} vs l2 {cpcc_l2:.2f} (gain {gain:+.2f} >= "
                      f"{GAIN_THRESHOLD:.2f}, emd >= {MIN_CPCC_OT:.2f}): ot")
    if gain >= GAIN_THRESHOLD:
        return "l2", (f"EMD follows the tree better than the means (gain {gain:+.2f}) but weakly "
                      f"(CPCC emd {cpcc_emd:.2f} < {MIN_CPCC_OT:.2f}): l2")
    if max(float(cpcc_l2), float(cpcc_emd)) < MIN_CPCC_OT:  # type: ignore[arg-type]
        return "l2", (f"neither the means nor the distributions follow the tree here (CPCC l2 "
                      f"{cpcc_l2:.2f}, emd {cpcc_emd:.2f}, both < {MIN_CPCC_OT:.2f}), so OT "
                      f"shows no gain: l2, the cheaper")
    return "l2", (f"the means carry as much hierarchy as the distributions: CPCC l2 "
                  f"{cpcc_l2:.2f} vs emd {cpcc_emd:.2f} (gain {gain:+.2f} < "
                  f"{GAIN_THRESHOLD:.2f}): l2, as good and cheaper")
