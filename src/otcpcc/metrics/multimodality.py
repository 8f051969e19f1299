r"""Multi-modality diagnostic: how many well-separated modes each class has (a calibrated split test).

Per class (at most ``max_per_class`` samples, a seeded draw), recursively, in the manner of G-means
(Hamerly & Elkan, 2003) but with a test of *bimodality* instead of normality:

1. centre the group's samples and project them on their top ``p = min(20, n // 10, d, n − 1)``
   principal directions (a dimension the sample size supports: at most one per ten samples);
2. split them in two with 2-means (Lloyd iterations started from the sign of the first principal
   score), and project them on the line through the two centres;
3. on that 1-D projection, take the best two-group split with at least ``max(5, ⌈0.05 n⌉)``
   samples per side (an exact scan over the sorted values) and its ratio

   .. math:: R = \frac{W_2}{W_1} = \frac{\text{within-group sum of squares}}
                                        {\text{total sum of squares}} \in [0, 1];

4. accept the split when ``R < τ(n)``, then test each side the same way, until no group splits or
   ``max_components`` groups are reached. The count is the number of groups.

Why this statistic, and not AIC / BIC of Gaussian mixtures: a likelihood criterion compares
*density models*, so any unimodal class that is not exactly Gaussian (skewed, heavy-tailed,
pixels, ReLU features) earns extra components as n grows; AIC on real data returns the cap. ``R``
measures separation along one direction: one Gaussian gives ``1 − 2/π ≈ 0.363``; heavy tails give
more (Laplace 0.5), so they never count as modes; two unit-variance Gaussians ``Δ`` apart give
0.25 at ``Δ ≈ 3σ``, 0.19 at ``Δ = 4σ``, 0.14 at ``Δ = 5σ``; a uniform (flat, unimodal) 0.25.

The threshold ``τ(n) = min(0.2, q₀.₀₁(n))``: 0.2 is the effect size (two modes at least ~3.8σ
apart; a flat unimodal class is not flagged), and ``q₀.₀₁(n)`` is the 1% quantile of ``R`` on
isotropic Gaussian classes of n samples in d = 2048 ≫ n dimensions (600 draws per n; the worst
case: choosing the split direction among more dimensions lowers R on pure noise), tabulated in
``_NULL_Q01`` and interpolated in log n. So on Gaussian classes of any dimension the test says 1
in at least ~99% of classes. Groups with fewer than ``MIN_TEST_SAMPLES`` samples are not tested.

Cost per class: one eigen-decomposition of the smaller of the [n, n] Gram or [d, d] covariance
matrix plus a few 2-means iterations on [n, p]: O(n·d·min(n, d)).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._arrays import _as_features, _as_labels, _to_numpy

EFFECT_THRESHOLD = 0.2  # R below this = two modes at least ~3.8 sigma apart
MIN_TEST_SAMPLES = 20  # a group smaller than this is not split
MAX_DIMS = 20  # at most this many principal directions per group
# (n, 1% quantile of R on isotropic Gaussian groups of n samples in d = 2048 dimensions)
# (benchmarks/multimodality_null.py regenerates it; non-decreasing envelope of the estimates)
_NULL_Q01 = ((20, 0.139), (25, 0.150), (30, 0.157), (40, 0.180), (50, 0.186), (70, 0.197),
             (100, 0.205))


def split_threshold(n: int) -> float:
    """``τ(n) = min(EFFECT_THRESHOLD, q₀.₀₁(n))``, the null quantile interpolated in log n."""
    ns = np.log([m for m, _ in _NULL_Q01])
    qs = np.array([q for _, q in _NULL_Q01])
    return float(min(EFFECT_THRESHOLD, np.interp(math.log(max(n, 1)), ns, qs)))


def principal_scores(x: np.ndarray, dims: int) -> np.ndarray:
    """Scores [n, dims] of the centred rows of ``x`` [n, d] on their top ``dims`` principal
    directions (eigen-decomposition of the smaller of X Xᵀ and XᵀX)."""
    from scipy.linalg import eigh

    x = x - x.mean(axis=0)
    n, d = x.shape
    gram = d > n
    m = n if gram else d
    w, v = eigh(x @ x.T if gram else x.T @ x, subset_by_index=[m - dims, m - 1])
    w, v = w[::-1], v[:, ::-1]
    return v * np.sqrt(np.maximum(w, 0.0)) if gram else x @ v


def split_statistic(z: np.ndarray, min_size: int) -> tuple[float, np.ndarray]:
    """The split ratio ``R`` of the rows of ``z`` [n, p] (module docstring, steps 2–3) and the
    boolean side [n] of each row in the best split; ``R = 1`` when ``z`` has no spread."""
    n = z.shape[0]
    side = z[:, 0] > np.median(z[:, 0])
    for _ in range(100):  # 2-means (Lloyd), started from the first principal score
        if side.all() or not side.any():
            break
        c1, c0 = z[side].mean(axis=0), z[~side].mean(axis=0)
        new = ((z - c1) ** 2).sum(axis=1) < ((z - c0) ** 2).sum(axis=1)
        if (new == side).all():
            break
        side = new
    v = z[side].mean(axis=0) - z[~side].mean(axis=0) if 0 < side.sum() < n else np.zeros(0)
    norm = float(np.linalg.norm(v)) if v.size else 0.0
    proj = z @ (v / norm) if norm > 0 else z[:, 0]
    order = np.argsort(proj, kind="stable")
    s = proj[order] - proj.mean()
    cs, cs2 = np.cumsum(s), np.cumsum(s * s)
    total = float(cs2[-1])
    if not total > 0.0 or n < 2 * min_size:
        return 1.0, np.zeros(n, dtype=bool)
    k = np.arange(min_size, n - min_size + 1)
    left = cs2[k - 1] - cs[k - 1] ** 2 / k
    right = (cs2[-1] - cs2[k - 1]) - (cs[-1] - cs[k - 1]) ** 2 / (n - k)
    best = int(np.argmin(left + right))
    out = np.zeros(n, dtype=bool)
    out[order[k[best]:]] = True
    return float(max((left + right)[best], 0.0) / total), out


def count_modes(x: np.ndarray, max_components: int = 5) -> tuple[int, dict[str, Any]]:
    """Number of well-separated modes of one class ``x`` [n, d] (module docstring) and the
    evidence: ``{"n", "dims", "split_ratio" (R of the first split, None if untested),
    "threshold" (τ(n)), "sizes" (samples per mode)}``."""
    n, d = x.shape
    dims = max(1, min(MAX_DIMS, n // 10, d, n - 1))
    evidence: dict[str, Any] = {"n": int(n), "dims": int(dims), "split_ratio": None,
                                "threshold": split_threshold(n), "sizes": [int(n)]}
    pending, final = [np.arange(n)], []
    while pending:
        idx = pending.pop(0)
        m = idx.size
        if m < MIN_TEST_SAMPLES or len(final) + len(pending) + 1 >= max_components:
            final.append(idx)
            continue
        z = principal_scores(x[idx], max(1, min(MAX_DIMS, m // 10, d, m - 1)))
        ratio, side = split_statistic(z, max(5, math.ceil(0.05 * m)))
        if idx.size == n:
            evidence["split_ratio"] = ratio
        if ratio < split_threshold(m):
            pending += [idx[~side], idx[side]]
        else:
            final.append(idx)
    evidence["sizes"] = sorted((int(i.size) for i in final), reverse=True)
    return len(final), evidence


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def multimodality(
    features: Any,
    labels: Any,
    max_components: int = 5,
    seed: int = 0,
    max_per_class: int = 500,
) -> dict[str, Any]:
    """Count the well-separated modes of each class with the calibrated split test (module doc).

    Args:
        features: [N, d] array or tensor; labels: [N] integer class ids.
        max_components: the largest count reported per class.
        seed: seed of the per-class subsample (classes larger than ``max_per_class``).

    Returns:
        ``{"per_class": {class_id: count}, "evidence": {class_id: count_modes evidence},
        "mean_components": float, "frac_multimodal": float (fraction of classes counted > 1),
        "recommendation": str}``. The sentence only reports the counts: whether optimal transport
        changes the class geometry is measured directly by
        :func:`otcpcc.evaluation.ot_effect.ot_effect`.
    """
    x = _as_features(features, "features")
    a = _to_numpy(labels)
    if a.ndim != 1 or a.shape[0] != x.shape[0]:
        raise ValueError(f"labels must be 1-D with {x.shape[0]} entries, got shape {a.shape}")
    if x.shape[0] == 0:
        raise ValueError("features is empty; pass at least one sample")
    y = _as_labels(a, x.shape[0], int(np.max(a)) + 1 if a.size else 1)
    max_components = _positive_int("max_components", max_components)
    max_per_class = _positive_int("max_per_class", max_per_class)
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(seed)
    per_class: dict[int, int] = {}
    evidence: dict[int, dict[str, Any]] = {}
    with threadpool_limits(1):  # small matrices: BLAS threads only spin, worst on a busy CPU
        for c in np.unique(y):
            xc = np.asarray(x[y == c], dtype=np.float64)
            if xc.shape[0] > max_per_class:
                xc = xc[np.sort(rng.choice(xc.shape[0], max_per_class, replace=False))]
            per_class[int(c)], evidence[int(c)] = count_modes(xc, max_components)
    counts = np.array(list(per_class.values()), dtype=np.float64)
    mean_c, frac = float(counts.mean()), float(np.mean(counts > 1))
    rec = (f"{frac:.0%} of classes have more than one well-separated mode (mean "
           f"{mean_c:.2f} per class, split test); whether OT distances change the class geometry "
           "is measured directly by otcpcc diagnose (rank agreement and CPCC of l2 vs emd)")
    return {"per_class": per_class, "evidence": evidence, "mean_components": mean_c,
            "frac_multimodal": frac, "recommendation": rec}
