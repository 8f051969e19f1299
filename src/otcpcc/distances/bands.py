r"""Costs of all north-west-corner plans at once, by quantile bands (the fast FastFT path).

The NW plan of classes A and B with per-sample weights gives each sample an interval of its
class's quantile axis, :math:`I_a = [c_{a-1}, c_a) \subset [0, 1)` (cumulative weights; uniform:
:math:`[a/n, (a+1)/n)`), and moves mass :math:`|I_a \cap I_b|` from a to b. So, over all pairs,

.. math:: \rho_{ij} = \sum_{a \in i,\ b \in j} |I_a \cap I_b|\, \lVert x_a - x_b \rVert_2
          = \sum_{r=1}^{R} \sum_{a \in i,\ b \in j} |I_a \cap I_b \cap B_r|\, \lVert x_a - x_b \rVert_2

for any split of [0, 1) into bands :math:`B_r = [r/R, (r+1)/R)`. Only samples whose interval
meets :math:`B_r` (its *members*, about N/R + K of them) take part in band r, so each band is one
dense [M, M] problem: a Gram product of its members (BLAS), the clipped overlaps, and a
segment sum into the [K, K] pair costs. With R ≈ N / K the products cost :math:`\approx 4NKd`
multiply-adds in all instead of :math:`N^2 d` for the whole Gram matrix, and no per-entry plan is
ever stored: memory is O(K² + tile) for any N (rows of a band are tiled to the memory budget,
:mod:`.memory`). Backward recomputes each tile and applies the constant-plan gradient
:math:`\nabla x_a = \sum_b g_{ij} |I_a\cap I_b \cap B_r| (x_a - x_b)/\lVert x_a - x_b\rVert` with
one more product per tile.

Values equal :func:`.cost.transport_cost` of :func:`.nwcorner.nw_plans_uniform` /
:func:`.nwcorner.nw_plans_weighted` up to rounding (the same Gram formula; near-zero distances
recomputed from differences).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .cost import cancellation_tolerance, cost_dtype, feature_scale
from .groups import ClassGroups
from .memory import chunk_items

MIN_BAND = 512  # a band holds at least ~this many samples beyond one per class (BLAS efficiency)
BYTES_PER_CELL = 40  # working memory per cell of a [rows, M] tile (a few float + index tensors)
ROW_BLOCK = 256  # rows of one tile at least (BLAS efficiency)


def band_count(n: int, k: int) -> int:
    """R ≈ N / K bands (band cost ∝ R (N/R + K)², smallest there), at least 1."""
    return max(1, n // max(k, MIN_BAND))


class Bands:
    """Quantile intervals of every grouped sample and the members of every band.

    ``weights`` [N] float64 summing to 1 per class (grouped order), or None for uniform.
    Iterating yields, per band: member indices [M] (grouped order, so sorted by class), their
    class positions [M], and the clipped intervals in band units (``lo``, ``hi`` in [0, 1]).
    """

    def __init__(self, groups: ClassGroups, weights: Tensor | None, n_bands: int | None = None):
        dev = groups.counts.device
        n_all = int(sum(groups.counts_host))
        k = groups.num_classes
        self.k = k
        self.R = R = n_bands or band_count(n_all, k)
        cls = groups.class_index()
        if weights is None:
            n = groups.counts.index_select(0, cls)
            a = torch.arange(n_all, device=dev) - groups.offsets.index_select(0, cls)
            lo, hi = a.double() / n, (a + 1).double() / n
            b0 = torch.div(a * R, n, rounding_mode="floor")
            b1 = torch.div((a + 1) * R - 1, n, rounding_mode="floor")
        else:
            w = weights.detach().to(torch.float64)
            hi = torch.cumsum(w, 0)
            hi = hi - (hi - w).index_select(0, groups.offsets).index_select(0, cls)  # per class
            hi[groups.offsets + groups.counts - 1] = 1.0  # exact end points (as nw_plans_weighted)
            lo = torch.cat([hi.new_zeros(1), hi[:-1]])
            lo[groups.offsets] = 0.0
            b0 = torch.floor(lo * R).long().clamp(0, R - 1)
            b1 = torch.maximum(torch.ceil(hi * R).long() - 1, b0).clamp(max=R - 1)
        span = b1 - b0 + 1
        total = int(span.sum())
        sample = torch.repeat_interleave(torch.arange(n_all, device=dev), span, output_size=total)
        band = b0.index_select(0, sample) + (
            torch.arange(total, device=dev) - (torch.cumsum(span, 0) - span).index_select(0, sample))
        order = torch.argsort(band, stable=True)  # per band, members stay in grouped order
        self.member = sample.index_select(0, order)
        self.band_of = band.index_select(0, order)
        self.sizes = torch.bincount(self.band_of, minlength=R).tolist()
        self.cls = cls
        self.lo, self.hi = lo, hi

    def __iter__(self):
        start = 0
        for r, size in enumerate(self.sizes):
            idx = self.member[start:start + size]
            start += size
            q0, q1 = r / self.R, (r + 1) / self.R
            lo = ((self.lo.index_select(0, idx).clamp(min=q0) - q0) * self.R).clamp(0, 1)
            hi = ((self.hi.index_select(0, idx).clamp(max=q1) - q0) * self.R).clamp(0, 1)
            yield idx, self.cls.index_select(0, idx), lo, hi


def _row_blocks(size: int, device: torch.device):
    """Row slices of a band's [M, M] matrix: at least ~8 blocks (so the upper triangle of blocks
    is about half the square), at least ``ROW_BLOCK`` rows (BLAS efficiency), within the memory
    budget."""
    rows = min(chunk_items(BYTES_PER_CELL * max(size, 1), device), max(ROW_BLOCK, -(-size // 8)))
    rows = max(1, rows)
    for s in range(0, size, rows):
        yield slice(s, min(size, s + rows))


def _upper_tile(xb: Tensor, sqb: Tensor, cb: Tensor, lo: Tensor, hi: Tensor, rows: slice,
                tol: float):
    """Rows ``rows`` of a band against the members from ``rows.start`` on (the block upper
    triangle): (distances [T, Mc], overlaps [T, Mc], column slice). The diagonal block's overlaps
    are halved: it holds both (a, b) and (b, a), every other block only one of them, so summing
    a tile's contributions to its rows *and* its columns counts each pair exactly once."""
    cols = slice(rows.start, xb.shape[0])
    xr, xc = xb[rows], xb[cols]
    sq_r, sq_c = sqb[rows], sqb[cols]
    d2 = torch.addmm(sq_c[None, :], xr, xc.T, alpha=-2.0).add_(sq_r[:, None])  # ‖a‖²+‖b‖²−2a·b
    self_d2 = d2.diagonal()  # each row against itself
    self_d2.fill_(torch.inf)
    # one cheap pass decides whether any entry may have lost its digits to cancellation
    suspicious = bool(d2.amin() <= tol * (sq_r.max() + sq_c.max()))
    self_d2.fill_(0)
    dist = d2.clamp_min_(0).sqrt_()
    if suspicious:
        near = torch.nonzero(dist * dist <= tol * (sq_r[:, None] + sq_c[None, :]))
        i, j = near[:, 0], near[:, 1]
        keep = cb[rows].index_select(0, i) != cb[cols].index_select(0, j)  # own class: unused
        i, j = i[keep], j[keep]
        diff = xr.index_select(0, i) - xc.index_select(0, j)
        dist[i, j] = (diff * diff).sum(1).sqrt()
    mass = torch.minimum(hi[rows, None], hi[None, cols])
    mass.sub_(torch.maximum(lo[rows, None], lo[None, cols])).clamp_min_(0)
    mass[:, :rows.stop - rows.start].mul_(0.5)
    return dist, mass, cols


def _row_class_sums(t: Tensor, cls: Tensor) -> tuple[int, Tensor]:
    """[T, Mc] rows labelled by sorted class positions ``cls`` [T] -> (c0, [Mc, c1 − c0]) sums of
    the rows of each class c0 ≤ c < c1, transposed (one small product with a 0/1 matrix)."""
    c0, c1 = int(cls[0]), int(cls[-1]) + 1
    onehot = cls[None, :] == torch.arange(c0, c1, device=cls.device)[:, None]
    return c0, t.T @ onehot.to(t.dtype).T


class _BandCost(torch.autograd.Function):
    """acc[i, j] = Σ_r Σ_{a∈i, b∈j} overlap_r(a, b) ‖x_a − x_b‖; backward: constant plan."""

    @staticmethod
    def forward(ctx, x, bands, pair_i, pair_j):  # noqa: D102
        c = feature_scale(x)
        xs = x / c
        sq = (xs * xs).sum(1)
        k, tol = bands.k, cancellation_tolerance(xs)
        acc = torch.zeros(k, k, dtype=torch.float64, device=x.device)  # [col class, row class]
        for idx, cb, lo, hi in bands:
            xb, sqb = xs.index_select(0, idx), sq.index_select(0, idx)
            lo, hi = lo.to(x.dtype), hi.to(x.dtype)
            part = torch.zeros(idx.numel(), k, dtype=torch.float64, device=x.device)
            for rows in _row_blocks(idx.numel(), x.device):
                dist, mass, cols = _upper_tile(xb, sqb, cb, lo, hi, rows, tol)
                c0, sums = _row_class_sums(mass.mul_(dist), cb[rows])  # rows sorted by class
                part[cols, c0:c0 + sums.shape[1]] += sums
            acc.index_add_(0, cb, part)
        acc = acc + acc.T  # each pair was counted once, in one of the two orders
        ctx.bands = bands
        ctx.save_for_backward(x, pair_i, pair_j)
        return (acc[pair_i, pair_j] * (c.double() / bands.R)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_rho):  # noqa: D102
        x, pair_i, pair_j = ctx.saved_tensors
        bands = ctx.bands
        k = bands.k
        c = feature_scale(x)
        xs = x / c
        sq = (xs * xs).sum(1)
        tol = cancellation_tolerance(xs)
        g = torch.zeros(k, k, dtype=x.dtype, device=x.device)
        g[pair_i, pair_j] = grad_rho.to(x.dtype) / bands.R
        g = g + g.T
        grad = torch.zeros_like(x)
        for idx, cb, lo, hi in bands:
            xb, sqb = xs.index_select(0, idx), sq.index_select(0, idx)
            lo, hi = lo.to(x.dtype), hi.to(x.dtype)
            out = torch.zeros_like(xb)
            for rows in _row_blocks(idx.numel(), x.device):
                dist, coef, cols = _upper_tile(xb, sqb, cb, lo, hi, rows, tol)
                coef.mul_(g.index_select(0, cb[rows]).index_select(1, cb[cols]))
                coef.div_(dist.masked_fill_(dist <= 0, torch.inf))  # 0 where samples coincide
                # ∂/∂x_a of Σ coef_ab ‖x_a − x_b‖ for the rows a, then for the columns b
                out[rows] += coef.sum(1, keepdim=True) * xb[rows] - coef @ xb[cols]
                out[cols] += coef.sum(0)[:, None] * xb[cols] - coef.T @ xb[rows]
            grad.index_add_(0, idx, out)
        return grad, None, None, None


def nw_cost(x: Tensor, groups: ClassGroups, weights: Tensor | None = None,
            n_bands: int | None = None) -> Tensor:
    """[N, d] grouped features -> [pairs] costs of the NW plans of every class pair.

    ``weights``: [N] float64 per-class weights (grouped order) or None for uniform.
    Differentiable w.r.t. ``x`` with the constant-plan gradient; float32 (float64 for float64
    input). Time O(R M² d) for R bands of M ≈ N/R + K members; memory O(K² + tile).
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.to(cost_dtype(x))
        bands = Bands(groups, weights, n_bands)
        return _BandCost.apply(x, bands, groups.pair_i, groups.pair_j)
