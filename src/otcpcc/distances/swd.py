r"""Sliced Wasserstein distance (``swd``).

.. math:: \rho(A, B) = \Big(\frac{1}{L} \sum_{l=1}^{L} W_p^p(\theta_l^\top A, \theta_l^\top B)\Big)^{1/p}

over L unit directions :math:`\theta_l` (columns of ``projections`` [d, L]). In 1-D the optimal
plan is the quantile coupling: the north-west-corner plan of the samples sorted along
:math:`\theta_l`. All classes are projected with one product and sorted per column, and the same
closed-form NW segments serve every direction. Same value as POT
``ot.sliced_wasserstein_distance(A, B, n_projections=L, p=p, projections=Θ)``.
Reference: Bonneel et al., "Sliced and Radon Wasserstein barycenters of measures" (2015).

Cost O(N d L + N L log N + E L) for E = Σ_pairs (n + m) plan entries; memory O(N L + K² +
chunk) (the segments are made and used in chunks of pairs sized to the memory budget).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .cost import cost_dtype, feature_scale, safe_sqrt
from .groups import ClassGroups
from .memory import chunk_items
from .nwcorner import nw_plans_uniform, pair_chunks


def random_projections(
    d: int, n_projections: int, seed: int | None = None, device=None, dtype=torch.float32
) -> Tensor:
    """[d, L] directions drawn uniformly on the unit sphere (Gaussian, normalised columns)."""
    gen = None
    if seed is not None:
        gen = torch.Generator().manual_seed(int(seed))
    theta = torch.randn(d, n_projections, generator=gen, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    return theta.to(device=device, dtype=dtype)


def zero_directions(projections: Tensor, dtype: torch.dtype | None = None) -> ValueError | None:
    """The one-line error for ``projections`` [d, L] with a column that is all zero (in ``dtype``,
    default its own), else None. A zero direction projects every sample to 0: its W_p is 0 for
    every pair, which only shrinks all distances (all of them zero: CPCC silently undefined).
    Reads the columns on the host (call it where a sync is due)."""
    dead = (projections.detach().to(dtype or projections.dtype) == 0).all(0)
    z = int(dead.sum())
    if not z:
        return None
    return ValueError(f"swd option projections has {z} zero column(s) of {dead.numel()} (e.g. column "
                      f"{int(dead.nonzero()[0])}); every direction needs a non-zero norm: give "
                      "unit columns, or leave projections out for n_projections random ones")


def _chunks(ranked: Tensor, groups: ClassGroups):
    """NW segments of every pair, in chunks of pairs sized to the memory budget."""
    per_entry = 48 + 3 * ranked.element_size() * ranked.shape[1]  # indices, mass, [E, L] gaps
    for pairs in pair_chunks(groups, chunk_items(per_entry, ranked.device)):
        yield nw_plans_uniform(groups, dtype=ranked.dtype, pairs=pairs)


def power_gaps(ranked: Tensor, ia: Tensor, ib: Tensor, p: float) -> Tensor:
    """[E] mean over the L directions of |r[a] − r[b]|^p for [n, L] ranked projections."""
    return (ranked.index_select(0, ia) - ranked.index_select(0, ib)).abs_().pow_(p).mean(1)


def add_gap_gradient(out: Tensor, ranked: Tensor, ia: Tensor, ib: Tensor, p: float, w: Tensor) -> None:
    r"""``out`` [n, L] += the gradient of :math:`\sum_e w_e \frac1L \sum_l |r_{a_e l} - r_{b_e l}|^p`
    (:func:`power_gaps` weighted by ``w`` [E]): :math:`\frac pL w_e |\delta|^{p-1}
    \operatorname{sign}\delta` at row a, minus it at row b."""
    delta = ranked.index_select(0, ia) - ranked.index_select(0, ib)  # [E, L]
    slope = delta.sign() if p == 1 else delta.abs().pow_(p - 1).mul_(delta.sign())
    g = slope.mul_((w * (p / ranked.shape[1]))[:, None])
    out.index_add_(0, ia, g).index_add_(0, ib, -g)


def check_projection_shape(projections: Tensor, d: int) -> None:
    """One-line ValueError unless ``projections`` is [d, L]."""
    if projections.ndim != 2 or projections.shape[0] != d:
        raise ValueError(f"projections must be [d, L] with d = {d}, got {tuple(projections.shape)}")


def sliced_root(wp: Tensor, p: float) -> Tensor:
    """:math:`(W_p^p)^{1/p}` of the averaged powers, with gradient 0 (not inf/NaN) where 0."""
    return safe_sqrt(wp) if p == 2 else torch.where(wp > 0, wp, 1).pow(1.0 / p) * (wp > 0)


class _SlicedCost(torch.autograd.Function):
    r"""wp[t] = Σ_s mass_s · mean_l |r[a_s, l] − r[b_s, l]|^p over the NW segments of pair t.

    Forward and backward walk the segments in chunks of pairs, so memory is O(chunk · L) for any
    number of classes, never O(Σ_pairs (n + m) · L). When one chunk holds them all (it fits the
    memory budget), backward reuses forward's segments; otherwise it makes them again."""

    @staticmethod
    def forward(ctx, ranked, groups, p):  # noqa: D102
        wp = torch.zeros(groups.num_pairs, dtype=ranked.dtype, device=ranked.device)
        kept = None  # the segments while they are the only chunk (never more than one held)
        for k, seg in enumerate(_chunks(ranked, groups)):
            wp.index_add_(0, seg.pair, seg.mass * power_gaps(ranked, seg.ia, seg.ib, p))
            kept = [seg] if k == 0 else None
        ctx.groups, ctx.p, ctx.segments = groups, p, kept
        ctx.save_for_backward(ranked)
        return wp

    @staticmethod
    def backward(ctx, grad_wp):  # noqa: D102
        (ranked,) = ctx.saved_tensors
        grad = torch.zeros_like(ranked)
        for seg in ctx.segments or _chunks(ranked, ctx.groups):
            add_gap_gradient(grad, ranked, seg.ia, seg.ib, ctx.p, grad_wp.index_select(0, seg.pair) * seg.mass)
        return grad, None, None


def swd(
    x: Tensor,
    groups: ClassGroups,
    n_projections: int = 10,
    p: int = 2,
    projections: Tensor | None = None,
    seed: int | None = None,
) -> Tensor:
    """[N, d] grouped features -> [pairs] sliced Wasserstein distances (option values checked by
    :func:`otcpcc.distances.check_options`)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.to(cost_dtype(x))
        given = projections is not None
        if projections is None:
            projections = random_projections(x.shape[1], n_projections, seed, x.device, x.dtype)
        check_projection_shape(projections, x.shape[1])
        c = feature_scale(x)  # work on x / c so that |gap|^p neither overflows nor underflows
        theta = projections.to(device=x.device, dtype=x.dtype)
        if given:  # a zero column (refused on the host for CPU input by check_options) makes
            # every distance NaN here, without a sync: the caller's finiteness read then names it
            c = torch.where((theta == 0).all(0).any(), torch.nan, c)
        proj = (x / c) @ theta  # [N, L]
        # Sort every column within each class: by value, then (stably) by class.
        cls = groups.class_index()
        by_val = torch.argsort(proj.detach(), dim=0, stable=True)
        by_cls = torch.argsort(cls[by_val], dim=0, stable=True)
        ranked = proj.gather(0, by_val.gather(0, by_cls))  # [N, L], sorted within class
        wp = _SlicedCost.apply(ranked, groups, p)
        return sliced_root(wp, p) * c
