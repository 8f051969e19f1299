r"""Evaluate transport costs :math:`\rho_t = \sum_s P_s \lVert x_{a_s} - x_{b_s} \rVert_2` for many plans at once.

Every OT distance in this package ends here: a solver returns its plans as sparse entries
``(a_s, b_s, P_s, t_s)`` (sample indices into the grouped batch, mass, and the pair the entry
belongs to), and one call evaluates all pairs' costs with autograd. Plans are constants, so the
gradient is the constant-plan (envelope-theorem) formula

.. math:: \partial \rho_t / \partial x_a = \sum_b P_{ab}\,(x_a - x_b) / \lVert x_a - x_b \rVert_2,

taken as 0 where two samples coincide (never NaN).

Two evaluation paths give the same values (switch at ``MATRIX_MAX_N`` samples, per device):

* small N: one [N, N] Gram product gives every distance (O(N²d) in BLAS), entries near zero are
  recomputed directly; backward is one scatter into [N, N] and one product.
* large N: only the needed rows, in chunks, recomputed in backward: memory O(chunk·d) whatever N
  and the number of entries; O(S·d) time.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Largest N for which the [N, N] distance matrix is used (per device type): on a GPU the Gram
# product is far cheaper than gathering O(pairs · n) rows of d features; on a CPU only for small N.
MATRIX_MAX_N = {"cpu": 2048, "cuda": 16384}


def use_matrix(x: Tensor) -> bool:
    """Whether the [N, N] Gram path serves ``x`` [N, d] (see ``MATRIX_MAX_N``)."""
    return x.shape[0] <= MATRIX_MAX_N.get(x.device.type, MATRIX_MAX_N["cpu"])
CHUNK_ELEMENTS = 1 << 22


def safe_sqrt(x: Tensor) -> Tensor:
    """sqrt(x) for x >= 0 with gradient 0 (not inf/NaN) where x == 0; NaN stays NaN."""
    pos = x > 0
    return torch.where(pos, torch.where(pos, x, torch.ones_like(x)).sqrt(), x * 0)


def cost_dtype(x: Tensor) -> torch.dtype:
    """Costs are computed in float64 for float64 input, else float32 (also under autocast)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def feature_scale(x: Tensor) -> Tensor:
    """A detached positive scalar c with max|x/c| = 1, so squares neither overflow nor underflow."""
    c = x.detach().abs().amax()
    return torch.where(torch.isfinite(c) & (c > 0), c, torch.ones_like(c))


def pairwise_distances(x: Tensor) -> Tensor:
    """[N, d] -> [N, N] Euclidean distances via the Gram matrix (scale-normalised, zero diagonal)."""
    c = feature_scale(x)
    xs = x / c
    sq = (xs * xs).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (xs @ xs.T)).clamp_min(0)
    d2.fill_diagonal_(0)
    return safe_sqrt(d2) * c


def _chunks(n: int, d: int):
    step = max(1, CHUNK_ELEMENTS // max(d, 1))
    for s in range(0, n, step):
        yield slice(s, min(n, s + step))


def row_distances(x: Tensor, ia: Tensor, ib: Tensor) -> Tensor:
    """[S] ‖x[ia] − x[ib]‖₂ without autograd, exactly, in chunks of O(CHUNK_ELEMENTS) memory."""
    out = torch.empty(ia.shape[0], dtype=x.dtype, device=x.device)
    c = feature_scale(x)
    for sl in _chunks(ia.shape[0], x.shape[1]):
        diff = (x[ia[sl]] - x[ib[sl]]) / c
        out[sl] = (diff * diff).sum(1).sqrt() * c
    return out


def gather_distances(x: Tensor, ia: Tensor, ib: Tensor) -> Tensor:
    """[S] ‖x[ia] − x[ib]‖₂ without autograd, exact.

    For N <= ``MATRIX_MAX_N`` the values come from one Gram product; entries small enough to
    have lost digits to cancellation (below 1e-3 of the feature scale) are recomputed directly.
    """
    with torch.no_grad():
        if not use_matrix(x):
            return row_distances(x, ia, ib)
        vals = pairwise_distances(x).view(-1).index_select(0, ia * x.shape[0] + ib)
        near = torch.nonzero(vals <= 1e-3 * feature_scale(x)).squeeze(1)
        if near.numel():
            vals[near] = row_distances(x, ia[near], ib[near])
        return vals


class _PlanCost(torch.autograd.Function):
    r"""rho = index_add(pair, mass * ‖x[ia] − x[ib]‖) with the constant-plan gradient.

    Backward uses :math:`C_{ab} = g_{t(s)} P_s / \lVert x_a - x_b \rVert` (0 where the samples
    coincide): for N <= ``MATRIX_MAX_N`` as one dense product,
    :math:`\nabla X = \operatorname{diag}((C + C^\top)\mathbf{1}) X - (C + C^\top) X`;
    otherwise by recomputing differences in chunks (memory O(chunk · d)).
    """

    @staticmethod
    def forward(ctx, x, ia, ib, mass, pair, num_pairs):  # noqa: D102
        norms = gather_distances(x, ia, ib)
        ctx.save_for_backward(x, ia, ib, mass, pair, norms)
        rho = torch.zeros(num_pairs, dtype=x.dtype, device=x.device)
        return rho.index_add_(0, pair, mass * norms)

    @staticmethod
    def backward(ctx, grad_rho):  # noqa: D102
        x, ia, ib, mass, pair, norms = ctx.saved_tensors
        w = grad_rho.index_select(0, pair) * mass
        coef = torch.where(norms > 0, w / torch.where(norms > 0, norms, 1), 0)
        n = x.shape[0]
        if use_matrix(x):
            C = torch.zeros(n * n, dtype=x.dtype, device=x.device)
            C.index_add_(0, ia * n + ib, coef)
            C = C.view(n, n)
            C = C + C.T
            return C.sum(1, keepdim=True) * x - C @ x, None, None, None, None, None
        grad_x = torch.zeros_like(x)
        for sl in _chunks(ia.shape[0], x.shape[1]):
            g = coef[sl, None] * (x[ia[sl]] - x[ib[sl]])
            grad_x.index_add_(0, ia[sl], g)
            grad_x.index_add_(0, ib[sl], -g)
        return grad_x, None, None, None, None, None


def transport_cost(
    x: Tensor,
    ia: Tensor,
    ib: Tensor,
    mass: Tensor,
    pair: Tensor,
    num_pairs: int,
) -> Tensor:
    r"""Costs of many sparse plans: :math:`\rho_t = \sum_{s:\,pair_s = t} P_s \lVert x_{a_s} - x_{b_s}\rVert_2`.

    Args:
        x: [N, d] grouped features (any float dtype; costs are float32, float64 for float64 input).
        ia, ib: [S] long sample indices of each plan entry; mass: [S] entry masses (no grad);
        pair: [S] long pair index of each entry in ``[0, num_pairs)``.

    Returns:
        [num_pairs] costs, differentiable w.r.t. ``x`` with the constant-plan gradient.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.to(cost_dtype(x))
        return _PlanCost.apply(x, ia, ib, mass.to(x.dtype).detach(), pair, num_pairs)
