"""Baseline CPCC: the straightforward per-pair loop, as the published OT-CPCC code does it.

This module is the independent oracle and the speed baseline for ``otcpcc``'s batched
distances. It is written to be obviously right, not fast:

* one Python loop over all C(k, 2) present class pairs (``itertools.combinations`` order);
* per pair, the Euclidean cost matrix ``M = torch.cdist(X_A, X_B)`` (with grad);
* per pair, the plan ``P`` solved without grad (on the CPU with POT, or a Python walk);
* ρ(A, B) = Σ_ab P_ab M_ab, so the gradient is the constant-plan (envelope) gradient.

Distances (names and aliases as in ``otcpcc.distances`` and README's Distances table):

``l2``
    ρ = ‖mean_A − mean_B‖₂ via ``F.pdist`` on the class means.
``emd``
    P = ``ot.emd(a, b, M)`` (exact OT, uniform weights a = 1/n, b = 1/m).
``sinkhorn`` / ``sk``
    P = ``ot.sinkhorn(a, b, M, reg)`` on the unnormalised cost, reg = 10 by default.
``swd``
    ρ = ``ot.sliced_wasserstein_distance(X_A, X_B, n_projections=L, p=2, projections=Θ)`` with
    the torch backend (gradients flow through the projected values); Θ is a [d, L] matrix of
    unit columns, shared by all pairs; given explicitly or drawn from ``seed``.
``fastft`` / ``fft``
    P = north-west-corner flow between the uniform weights, walking both classes in batch
    order (exact integer arithmetic: masses counted in units of 1/(n·m)).

Sample weights (``emd`` and ``fastft`` only): ``weights="uniform"`` (default), ``"near"``
(softmax of −‖x − class mean‖₂) or ``"far"`` (softmax of +‖x − class mean‖₂).

CPCC = Pearson correlation between the tree distances t(i, j) of the present class pairs and
ρ(i, j); the loss is 1 − CPCC (1.0 with zero gradient when fewer than two classes are present
or either side has zero variance).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import ot
import torch
import torch.nn.functional as F

__all__ = [
    "DISTANCES",
    "north_west_corner_plan",
    "north_west_corner_plan_weighted",
    "reference_class_distances",
    "reference_cpcc",
    "reference_cpcc_loss",
    "reference_projections",
    "sample_weights",
]

ALIASES = {"l2": "l2", "emd": "emd", "sinkhorn": "sinkhorn", "sk": "sinkhorn", "swd": "swd",
           "fastft": "fastft", "fft": "fastft"}
DISTANCES = ("l2", "emd", "sinkhorn", "swd", "fastft")


def _canonical(distance: str) -> str:
    try:
        return ALIASES[distance.lower()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"unknown distance {distance!r}; use one of {sorted(ALIASES)}"
        ) from None


def reference_projections(
    d: int, n_projections: int = 10, seed: int = 0, *, device=None, dtype=torch.float32
) -> torch.Tensor:
    """Θ [d, L]: L directions drawn N(0, I) from ``torch.Generator().manual_seed(seed)``,
    each column scaled to unit length."""
    g = torch.Generator().manual_seed(int(seed))
    theta = torch.randn(d, n_projections, generator=g, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    return theta.to(device=device, dtype=dtype)


def north_west_corner_plan(n: int, m: int) -> np.ndarray:
    """Greedy north-west-corner plan [n, m] between uniform weights 1/n and 1/m.

    Walk i over the n source samples and j over the m target samples in order; move
    f = min(a_i, b_j), subtract it from both and advance whichever is exhausted. Masses are
    kept as integers in units of 1/(n·m) (a_i = m units, b_j = n units) so the walk is exact.
    """
    if n < 1 or m < 1:
        raise ValueError(f"north_west_corner_plan needs n, m >= 1, got n={n}, m={m}")
    plan = np.zeros((n, m), dtype=np.float64)
    i = j = 0
    left_a, left_b = m, n  # remaining units of source i and target j
    while i < n and j < m:
        f = min(left_a, left_b)
        plan[i, j] += f
        left_a -= f
        left_b -= f
        if left_a == 0:
            i += 1
            left_a = m
        if left_b == 0:
            j += 1
            left_b = n
    return plan / (n * m)


def north_west_corner_plan_weighted(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """North-west-corner plan [n, m] between weight vectors a [n] and b [m] (each summing to 1).

    Same walk as :func:`north_west_corner_plan` in floating point: move the smaller of the two
    remaining masses and advance past the sample it exhausts (both on a tie).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    n, m = len(a), len(b)
    plan = np.zeros((n, m), dtype=np.float64)
    i = j = 0
    left_a, left_b = a[0], b[0]
    while i < n and j < m:
        if left_a <= left_b:
            plan[i, j] += left_a
            left_b -= left_a
            i += 1
            left_a = a[i] if i < n else 0.0
            if left_b <= 0.0 and j + 1 < m:  # tie: b_j is exhausted as well
                j += 1
                left_b = b[j]
        else:
            plan[i, j] += left_b
            left_a -= left_b
            j += 1
            left_b = b[j] if j < m else 0.0
    return plan


WEIGHTINGS = ("uniform", "near", "far")


def sample_weights(x: torch.Tensor, weights: str | None) -> np.ndarray:
    """Weights [n] of one class's samples x [n, d], summing to 1 (computed without grad).

    ``uniform``: 1/n. ``near``: softmax(−‖x_i − mean‖₂) (samples near the mean weigh more).
    ``far``: softmax(+‖x_i − mean‖₂) (outlying samples weigh more).
    """
    if weights is None:
        weights = "uniform"
    if weights not in WEIGHTINGS:
        raise ValueError(
            f"unknown sample weighting {weights!r}; use one of {', '.join(WEIGHTINGS)}"
        )
    n = x.shape[0]
    if weights == "uniform":
        return np.full(n, 1.0 / n)
    xn = x.detach().cpu().double().numpy()
    dist = np.linalg.norm(xn - xn.mean(axis=0), axis=1)
    logits = -dist if weights == "near" else dist
    e = np.exp(logits - logits.max())
    return e / e.sum()


def _pair_distance(
    x: torch.Tensor,
    y: torch.Tensor,
    distance: str,
    reg: float,
    projections: torch.Tensor | None,
    weights: str | None,
) -> torch.Tensor:
    """ρ between two classes x [n, d] and y [m, d] (0-dim tensor with grad)."""
    if distance == "swd":
        return ot.sliced_wasserstein_distance(
            x, y, n_projections=projections.shape[1], p=2, projections=projections
        )
    n, m = x.shape[0], y.shape[0]
    cost = torch.cdist(x, y)  # [n, m] Euclidean, with grad
    uniform = weights in (None, "uniform")
    if distance == "fastft" and uniform:
        plan = north_west_corner_plan(n, m)
    else:
        a = sample_weights(x, weights)
        b = sample_weights(y, weights)
        if distance == "fastft":
            plan = north_west_corner_plan_weighted(a, b)
        elif distance == "emd":
            plan = ot.emd(a, b, cost.detach().cpu().double().numpy())
        else:  # sinkhorn
            plan = ot.sinkhorn(a, b, cost.detach().cpu().double().numpy(), reg)
    plan_t = torch.as_tensor(plan, dtype=cost.dtype, device=cost.device)
    return (plan_t * cost).sum()


def reference_class_distances(
    features: torch.Tensor,
    labels: torch.Tensor,
    distance: str = "l2",
    *,
    reg: float = 10.0,
    n_projections: int = 10,
    projections: torch.Tensor | None = None,
    seed: int = 0,
    weights: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-to-class distances by a Python loop over pairs.

    Args:
        features: [N, d] float tensor (may require grad).
        labels: [N] integer class ids.
        distance: one of ``l2, emd, sinkhorn (sk), swd, fastft (fft)``.
        reg: Sinkhorn entropic regularisation ε on the unnormalised Euclidean cost.
        n_projections: L for ``swd`` when ``projections`` is not given.
        projections: Θ [d, L] with unit columns for ``swd`` (shared by all pairs).
        seed: seed for Θ when ``projections`` is None (see :func:`reference_projections`).
        weights: per-sample weights of ``emd`` and ``fastft``: ``"uniform"`` (default),
            ``"near"`` or ``"far"`` (softmax of ∓ distance to the class mean, no grad).

    Returns:
        classes: sorted present class ids, LongTensor [k].
        rho: [k(k-1)/2] distances in ``itertools.combinations(range(k), 2)`` order.
    """
    distance = _canonical(distance)
    if weights not in (None, "uniform") and distance not in ("emd", "fastft"):
        raise ValueError(
            f"sample weights apply to emd and fastft only, got weights={weights!r} with "
            f"distance={distance!r}; drop weights"
        )
    if weights is not None and weights not in WEIGHTINGS:
        raise ValueError(
            f"unknown sample weighting {weights!r}; use one of {', '.join(WEIGHTINGS)}"
        )
    if features.dim() != 2 or labels.dim() != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"expected features [N, d] and labels [N], got {tuple(features.shape)} and "
            f"{tuple(labels.shape)}"
        )
    labels = labels.to(features.device).long()
    classes = torch.unique(labels)  # sorted
    members = [features[labels == c] for c in classes]  # each in batch order

    if distance == "l2":
        means = torch.stack([x.mean(dim=0) for x in members])
        return classes, F.pdist(means)

    if distance == "swd" and projections is None:
        projections = reference_projections(
            features.shape[1], n_projections, seed, device=features.device, dtype=features.dtype
        )
    if projections is not None:
        projections = projections.to(device=features.device, dtype=features.dtype)

    rho = [
        _pair_distance(members[i], members[j], distance, reg, projections, weights)
        for i, j in itertools.combinations(range(len(members)), 2)
    ]
    if not rho:
        return classes, features.new_zeros(0)
    return classes, torch.stack(rho)


def reference_cpcc(tree_dist: torch.Tensor, rho: torch.Tensor) -> torch.Tensor | None:
    """Pearson correlation of two equal-length vectors (float64); None when undefined."""
    t = tree_dist.double()
    r = rho.double()
    if t.numel() < 2:
        return None
    tc = t - t.mean()
    rc = r - r.mean()
    denominator = torch.sqrt((tc * tc).sum() * (rc * rc).sum())
    if float(denominator.detach()) == 0.0:
        return None
    return (tc * rc).sum() / denominator


def reference_cpcc_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    tree_dist_matrix: torch.Tensor | np.ndarray | Sequence[Sequence[float]],
    distance: str = "l2",
    **options,
) -> torch.Tensor:
    """1 − CPCC for one batch (float64 scalar with grad w.r.t. ``features``).

    ``tree_dist_matrix`` is the [K, K] leaf-to-leaf tree distance; the present classes' pair
    distances are read off in the same combinations order as ρ.
    """
    classes, rho = reference_class_distances(features, labels, distance, **options)
    if isinstance(tree_dist_matrix, torch.Tensor):
        dmat = tree_dist_matrix.detach().cpu().double()
    else:
        dmat = torch.tensor(np.asarray(tree_dist_matrix, dtype=np.float64))
    idx = classes.cpu().tolist()
    t = torch.tensor(
        [float(dmat[i, j]) for i, j in itertools.combinations(idx, 2)], dtype=torch.float64
    )
    corr = reference_cpcc(t, rho.cpu())
    if corr is None:
        return features.sum().double() * 0.0 + 1.0
    return 1.0 - corr.to(features.device)
