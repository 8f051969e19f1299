r"""Order-invariant north-west-corner plans: both classes sorted along one direction per pair.

The published FastFT walks each class in batch order, so its plan, value and gradient depend on
how the loader happened to order the samples. Here every pair (A, B) first sorts both classes
along a direction :math:`\theta_{AB}` and then runs the same north-west-corner walk (the quantile,
i.e. monotone, coupling of the two projections):

.. math:: P^{\mathrm{sorted}} = \mathrm{NW}\big(\operatorname{sort}_{\theta}(A),
          \operatorname{sort}_{\theta}(B)\big), \qquad
          \rho(A, B) = \sum_{ij} P_{ij} \lVert x_i - y_j \rVert_2 \;\ge\; \mathrm{EMD}(A, B)

(a coupling with the right marginals, so never below the optimum).

Direction. :math:`\theta_{AB} = \mu_B - \mu_A`, the line between the class means. Reasons:
(1) it is where the two classes differ most on average (the projected means are
:math:`\lVert\mu_B - \mu_A\rVert` apart, the whole of the ℓ2 distance), so the coupling matches
the near end of A to the near end of B instead of pairing arbitrary samples; (2) a translate
B = A + δ is sorted identically on both sides along any direction, so the plan is then the
exact EMD plan (cost ‖δ‖); (3) it is cheap and exact: all projections of all samples on all
mean lines come from one product :math:`X M^\top` (M = [k, d] class means) as
:math:`x \cdot (\mu_B - \mu_A) = (XM^\top)_{x,B} - (XM^\top)_{x,A}`, O(N k d), no eigen-solver,
no iteration, nothing that depends on the order of the samples. Where the means coincide
(:math:`\lVert \mu_B - \mu_A \rVert \le` ``COINCIDE_RTOL`` × feature scale) the line is undefined;
those (rare) pairs use the first principal direction of the pooled centred samples of A ∪ B
(an SVD per such pair), the direction along which the two classes spread most. The sign of a
direction does not matter: reversing both orders gives the same monotone coupling.

Permutation invariance. Projections are computed in float64 and rounded to ``KEY_QUANTUM`` of
their largest magnitude, so that rounding noise of the product (which may depend on a row's
position) cannot reorder samples; ties (e.g. duplicated or lattice-valued samples) are broken by
the projection on a fixed pseudo-random direction (seed ``TIE_SEED``), and samples that tie on
both are in practice identical, so their order does not change the plan's cost.

Cost O(N k d) for the projections, O(N k log N) for the sorts and O(Σ_pairs (n + m)) plan
entries, as :mod:`otcpcc.distances.nwcorner` (whose closed-form walk is reused: only the samples
behind each rank change).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .cost import feature_scale
from .groups import ClassGroups
from .l2 import class_means
from .nwcorner import Segments, _pair_totals, _ragged_arange, merged_segments, nw_plans_uniform

COINCIDE_RTOL = 1e-9  # ‖μ_A − μ_B‖ below this × max|x|: means coincide, use the principal direction
KEY_QUANTUM = 2.0 ** -36  # projections are rounded to this fraction of their largest magnitude
TIE_SEED = 20261130  # seed of the fixed tie-breaking direction


def _quantise(v: Tensor) -> Tensor:
    q = v.abs().max().clamp_min(1e-300) * KEY_QUANTUM
    return torch.round(v / q)


def _tie_direction(d: int, device) -> Tensor:
    gen = torch.Generator().manual_seed(TIE_SEED)
    u = torch.randn(d, generator=gen, dtype=torch.float64)
    return (u / u.norm()).to(device)


def _rank_orders(xs: Tensor, groups: ClassGroups) -> tuple[Tensor, Tensor, Tensor]:
    """(perm [N, k], perm_desc [N, k], means [k, d]): ``perm[offset_c + r, j]`` is the grouped
    index of the r-th sample of class c sorted ascending along μ_j − μ_c (column c itself is
    unused); ``perm_desc`` the same, descending.

    One sort per column: the key is the integer ``class · 2^38 + quantised projection`` (the
    quantised values lie in [−2^36, 2^36]), sorted stably after ordering the rows by the
    tie-breaking projection."""
    cls = groups.class_index()
    means = class_means(xs, groups)
    proj = xs @ means.T  # [N, k]
    key = _quantise(proj - proj.gather(1, cls[:, None])).long() + (1 << 36)
    key += cls[:, None] << 38
    tie = _quantise(xs @ _tie_direction(xs.shape[1], xs.device))
    o1 = torch.argsort(tie, stable=True)  # least significant key first, then a stable sort
    o2 = torch.argsort(key.index_select(0, o1), dim=0, stable=True)  # [N, k]
    perm = o1[o2]
    ends = groups.offsets.index_select(0, cls) * 2 + groups.counts.index_select(0, cls) - 1
    desc = ends - torch.arange(cls.numel(), device=cls.device)  # row off + n − 1 − r of a class
    return perm, perm.index_select(0, desc), means


def _principal_order(xs: Tensor, rows: Tensor) -> Tensor:
    """``rows`` sorted along the first principal direction of the centred ``xs[rows]``."""
    pts = xs.index_select(0, rows)
    v = torch.linalg.svd(pts - pts.mean(0), full_matrices=False).Vh[0]
    key = _quantise(pts @ v)
    tie = _quantise(pts @ _tie_direction(xs.shape[1], xs.device))
    o1 = torch.argsort(tie, stable=True)
    return rows[o1[torch.argsort(key[o1], stable=True)]]


def _coinciding_pairs(means: Tensor, groups: ClassGroups) -> list[int]:
    """Pairs with ‖μ_i − μ_j‖ <= COINCIDE_RTOL: screened on the [k, k] Gram matrix (O(k² d), not
    O(pairs · d)) with a margin for its cancellation, then confirmed from the differences."""
    sq = (means * means).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2 * (means @ means.T)
    d2 = d2[groups.pair_i, groups.pair_j]
    margin = 1e-12 * (1 + sq[groups.pair_i] + sq[groups.pair_j])
    cand = torch.nonzero(d2 <= COINCIDE_RTOL**2 + margin).flatten()
    if cand.numel() == 0:
        return []
    gap = (means[groups.pair_i[cand]] - means[groups.pair_j[cand]]).norm(dim=1)
    return cand[gap <= COINCIDE_RTOL].tolist()


def _map_positions(groups: ClassGroups, orders: tuple[Tensor, Tensor, Tensor], xs: Tensor,
                   pair: Tensor, ga: Tensor, gb: Tensor) -> tuple[Tensor, Tensor]:
    """Plan entries given by rank positions (``ga`` = offset of class pair_i + rank a, ``gb``
    likewise in pair_j; ranks ascending along the pair's direction θ) -> grouped sample
    indices. A ascending along θ = μ_j − μ_i is column j of ``perm``; B ascending along θ is B
    descending along μ_i − μ_j, column i of ``perm_desc``."""
    perm, perm_desc, means = orders
    k = groups.num_classes
    ia = perm.view(-1).index_select(0, ga * k + groups.pair_j.index_select(0, pair))
    ib = perm_desc.view(-1).index_select(0, gb * k + groups.pair_i.index_select(0, pair))
    for t in _coinciding_pairs(means, groups):  # rare: the mean line is undefined
        i, j = int(groups.pair_i[t]), int(groups.pair_j[t])
        oi, ni = int(groups.offsets[i]), int(groups.counts[i])
        oj, nj = int(groups.offsets[j]), int(groups.counts[j])
        rows = torch.cat([torch.arange(oi, oi + ni), torch.arange(oj, oj + nj)]).to(xs.device)
        order = _principal_order(xs, rows)
        sorted_a, sorted_b = order[order < oj], order[order >= oj]  # class i precedes class j
        sel = torch.nonzero(pair == t).flatten()
        ia[sel] = sorted_a.index_select(0, ga.index_select(0, sel) - oi)
        ib[sel] = sorted_b.index_select(0, gb.index_select(0, sel) - oj)
    return ia, ib


def sorted_nw_plans(x: Tensor, groups: ClassGroups, weights: Tensor | None = None) -> Segments:
    """NW-corner plans of every pair after sorting both classes along the pair's mean line.

    Args:
        x: [N, d] grouped features (read without gradient).
        groups: the batch's :class:`ClassGroups`.
        weights: None (uniform 1/n) or [N] per-sample weights in grouped order, summing to 1 per
            class (as from :func:`otcpcc.distances.weights.sample_weights`).

    Returns:
        :class:`Segments` over grouped sample indices, as :func:`nw_plans_uniform`.
    """
    with torch.no_grad():
        xd = x.detach().to(torch.float64)
        xs = xd / feature_scale(xd)
        orders = _rank_orders(xs, groups)
        if weights is None:  # the batch-order walk's entries, with the samples behind the ranks
            seg = nw_plans_uniform(groups)
            ia, ib = _map_positions(groups, orders, xs, seg.pair, seg.ia, seg.ib)
            return Segments(seg.pair, ia, ib, seg.mass)
        return _sorted_weighted(groups, weights, orders, xs)


def _sorted_weighted(groups: ClassGroups, weights: Tensor, orders: tuple[Tensor, Tensor, Tensor],
                     xs: Tensor) -> Segments:
    """Per-sample weights: cumulative weights along each pair's sorted order, merged as in
    :func:`otcpcc.distances.nwcorner.nw_plans_weighted`."""
    w = weights.detach().to(torch.float64)
    n = groups.counts.index_select(0, groups.pair_i)
    m = groups.counts.index_select(0, groups.pair_j)
    lengths = n + m + 2
    block = torch.cumsum(lengths, 0) - lengths
    tot_a, tot_b = _pair_totals(groups)
    ta, p = _ragged_arange(n + 1, tot_a)  # breakpoint p of A in pair ta (0 = start)
    tb, q = _ragged_arange(m + 1, tot_b)
    # the samples at ranks p − 1 of A and q − 1 of B, each ascending along the pair's direction
    off_i = groups.offsets.index_select(0, groups.pair_i)
    off_j = groups.offsets.index_select(0, groups.pair_j)
    ia, ib = _map_positions(
        groups, orders, xs, torch.cat([ta, tb]),
        torch.cat([off_i[ta] + (p - 1).clamp_min(0), off_i[tb]]),
        torch.cat([off_j[ta], off_j[tb] + (q - 1).clamp_min(0)]))
    wa = torch.where(p == 0, 0.0, w.index_select(0, ia[: ta.numel()]))
    wb = torch.where(q == 0, 0.0, w.index_select(0, ib[ta.numel():]))

    def block_cumsum(v: Tensor, owner: Tensor, count: Tensor) -> Tensor:
        c = torch.cumsum(v, 0)
        starts = torch.cumsum(count + 1, 0) - (count + 1)
        c = c - (c.index_select(0, starts) - v.index_select(0, starts)).index_select(0, owner)
        ends = starts + count
        c[ends] = 1.0  # exact end points
        return c

    seg = merged_segments(block_cumsum(wa, ta, n), block_cumsum(wb, tb, m), ta, tb, n, m, block)
    ia, ib = _map_positions(groups, orders, xs, seg.pair, off_i[seg.pair] + seg.ia,
                            off_j[seg.pair] + seg.ib)
    return Segments(seg.pair, ia, ib, seg.mass)
