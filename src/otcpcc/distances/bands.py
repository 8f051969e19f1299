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

from .cost import cancellation_tolerance, cost_dtype, feature_scale, row_distances
from .groups import ClassGroups
from .memory import chunk_items

MIN_BAND = 512  # a band holds at least ~this many samples beyond one per class (BLAS efficiency)
BYTES_PER_CELL = 40  # working memory per cell of a [rows, M] tile (a few float + index tensors)
ROW_BLOCK = 256  # rows of one tile at least (BLAS efficiency)
GPU_LAYOUT: bool | None = None  # None: a GPU gets the GPU layout; tests set True to run it on the CPU


def _gpu_layout(device: torch.device) -> bool:
    return device.type != "cpu" if GPU_LAYOUT is None else GPU_LAYOUT


def band_count(n: int, k: int) -> int:
    """R ≈ N / K bands (band cost ∝ R (N/R + K)², smallest there), at least 1."""
    return max(1, n // max(k, MIN_BAND))


class Bands:
    """Quantile intervals of every grouped sample and the members of every band.

    ``weights`` [N] float64 summing to 1 per class (grouped order), or None for uniform.
    :meth:`iterate` yields, per band: member indices [M] (grouped order, so sorted by class),
    their class positions [M], and the clipped intervals in band units (``lo``, ``hi`` in [0, 1]).
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
        band_of = band.index_select(0, order)
        self.sizes = torch.bincount(band_of, minlength=R).tolist()
        # every member's interval clipped to its band, in band units, and its class: computed
        # once for all bands (forward and backward then only slice them)
        q0 = band_of.double() / R
        self.lo = ((lo.index_select(0, self.member) - q0) * R).clamp_(0, 1)
        self.hi = ((hi.index_select(0, self.member) - q0) * R).clamp_(0, 1)
        self.cls = cls.index_select(0, self.member)
        # class ranges of the CPU layout's row blocks without a sync each (the GPU layout adds
        # atomically and needs none)
        self.cls_host = None if _gpu_layout(dev) else self.cls.cpu().numpy()

    def iterate(self, dtype: torch.dtype):
        """Per band: (members [M], classes [M], classes on the host, lo [M], hi [M] in ``dtype``)."""
        lo, hi = self.lo.to(dtype), self.hi.to(dtype)
        start = 0
        for size in self.sizes:
            sl = slice(start, start + size)
            start += size
            host = None if self.cls_host is None else self.cls_host[sl]
            yield self.member[sl], self.cls[sl], host, lo[sl], hi[sl]


def _row_blocks(size: int, device: torch.device):
    """Row slices of a band's [M, M] matrix, within the memory budget. On the CPU at least ~8
    blocks (the upper triangle of blocks is then about half the square, and tiles stay in cache)
    of at least ``ROW_BLOCK`` rows (BLAS efficiency); on a GPU as few as fit (each tile is some
    twenty kernel launches, which cost more there than the halved work saves)."""
    rows = chunk_items(BYTES_PER_CELL * max(size, 1), device)
    if not _gpu_layout(device):
        rows = min(rows, max(ROW_BLOCK, -(-size // 8)))
    rows = max(1, min(rows, size))
    for s in range(0, size, rows):
        yield slice(s, min(size, s + rows))


class _Tiles:
    """The upper-triangle tiles of every band, for forward and backward alike.

    Each tile is rows ``rows`` of a band against its members from ``rows.start`` on: (distances
    [T, Mc], overlaps [T, Mc], column slice). The diagonal block's overlaps are halved: it holds
    both (a, b) and (b, a), every other block only one of them, so summing a tile's contributions
    to its rows *and* its columns counts each pair exactly once.

    Gram entries that may have lost their digits to cancellation (``d² ≤ tol (‖a‖² + ‖b‖²)``) are
    recomputed from differences. One min over the tile decides whether any entry may be such; on
    the CPU at once, on a GPU the flags are kept on the device and read once at the end
    (:meth:`needs_exact`), so that no tile waits for the device: the caller then runs again
    with ``exact=True``, where every tile is checked entry by entry.
    """

    def __init__(self, xs: Tensor, exact: bool):
        self.tol = cancellation_tolerance(xs)
        self.exact = exact
        self.check_now = exact or not _gpu_layout(xs.device)
        self.flags: list[Tensor] = []

    def __call__(self, xb: Tensor, sqb: Tensor, cb: Tensor, lo: Tensor, hi: Tensor, rows: slice):
        cols = slice(rows.start, xb.shape[0])
        xr, xc = xb[rows], xb[cols]
        sq_r, sq_c = sqb[rows], sqb[cols]
        d2 = torch.addmm(sq_c[None, :], xr, xc.T, alpha=-2.0).add_(sq_r[:, None])  # ‖a‖²+‖b‖²−2a·b
        self_d2 = d2.diagonal()  # each row against itself
        self_d2.fill_(torch.inf)
        flag = d2.amin() <= self.tol * (sq_r.max() + sq_c.max())
        self_d2.fill_(0)
        dist = d2.clamp_min_(0).sqrt_()
        if not self.check_now:
            self.flags.append(flag)
        elif self.exact or bool(flag):
            near = torch.nonzero(dist * dist <= self.tol * (sq_r[:, None] + sq_c[None, :]))
            i, j = near[:, 0], near[:, 1]
            keep = cb[rows].index_select(0, i) != cb[cols].index_select(0, j)  # own class: unused
            i, j = i[keep], j[keep]  # rows and columns both start at rows.start of the band
            dist[i, j] = row_distances(xb, i + rows.start, j + rows.start, c=xb.new_ones(()))
        mass = torch.minimum(hi[rows, None], hi[None, cols])
        mass.sub_(torch.maximum(lo[rows, None], lo[None, cols])).clamp_min_(0)
        mass[:, :rows.stop - rows.start].mul_(0.5)
        return dist, mass, cols

    def needs_exact(self) -> bool:
        """Whether a deferred check found a tile that needs the entry-by-entry pass (one sync)."""
        return bool(self.flags) and bool(torch.stack(self.flags).any())


def _add_row_class_sums(part: Tensor, t: Tensor, cls: Tensor, cls_host, cols: slice) -> None:
    """part[cols, c] += Σ_{rows of class c} t[row, :] for a [T, Mc] tile whose rows have the
    sorted class positions ``cls`` [T] (``cls_host`` the same on the host). CPU: one small
    product with a 0/1 matrix over the tile's classes; GPU: an atomic index_add."""
    if _gpu_layout(t.device):
        part[cols].index_add_(1, cls, t.T.to(part.dtype))
        return
    c0, c1 = int(cls_host[0]), int(cls_host[-1]) + 1
    onehot = cls[None, :] == torch.arange(c0, c1, device=cls.device)[:, None]
    part[cols, c0:c1] += t.T @ onehot.to(t.dtype).T


def _scaled(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    c = feature_scale(x)
    xs = x / c
    return c, xs, (xs * xs).sum(1)


def _forward_sums(xs: Tensor, sq: Tensor, bands: Bands, exact: bool) -> tuple[Tensor, _Tiles]:
    """acc[j, i] = Σ_r Σ_{a∈i, b∈j} overlap_r(a, b) ‖x_a − x_b‖ over the upper tiles
    (each unordered pair once, in one of its two orders)."""
    k = bands.k
    tiles = _Tiles(xs, exact)
    acc = torch.zeros(k, k, dtype=torch.float64, device=xs.device)  # [col class, row class]
    for idx, cb, cb_host, lo, hi in bands.iterate(xs.dtype):
        xb, sqb = xs.index_select(0, idx), sq.index_select(0, idx)
        part = torch.zeros(idx.numel(), k, dtype=torch.float64, device=xs.device)
        for rows in _row_blocks(idx.numel(), xs.device):
            dist, mass, cols = tiles(xb, sqb, cb, lo, hi, rows)
            host = None if cb_host is None else cb_host[rows]
            _add_row_class_sums(part, mass.mul_(dist), cb[rows], host, cols)
        acc.index_add_(0, cb, part)
    return acc, tiles


def _backward_grad(xs: Tensor, sq: Tensor, bands: Bands, g: Tensor, exact: bool):
    """∂/∂x_a of Σ_{tiles} g[class a, class b] overlap(a, b) ‖x_a − x_b‖ (constant plan)."""
    tiles = _Tiles(xs, exact)
    grad = torch.zeros_like(xs)
    for idx, cb, _, lo, hi in bands.iterate(xs.dtype):
        xb, sqb = xs.index_select(0, idx), sq.index_select(0, idx)
        out = torch.zeros_like(xb)
        for rows in _row_blocks(idx.numel(), xs.device):
            dist, coef, cols = tiles(xb, sqb, cb, lo, hi, rows)
            coef.mul_(g.index_select(0, cb[rows]).index_select(1, cb[cols]))
            coef.div_(dist.masked_fill_(dist <= 0, torch.inf))  # 0 where samples coincide
            # the tile's rows a, then its columns b
            out[rows] += coef.sum(1, keepdim=True) * xb[rows] - coef @ xb[cols]
            out[cols] += coef.sum(0)[:, None] * xb[cols] - coef.T @ xb[rows]
        grad.index_add_(0, idx, out)
    return grad, tiles


class _BandCost(torch.autograd.Function):
    """acc[i, j] = Σ_r Σ_{a∈i, b∈j} overlap_r(a, b) ‖x_a − x_b‖; backward: constant plan."""

    @staticmethod
    def forward(ctx, x, bands, pair_i, pair_j):  # noqa: D102
        c, xs, sq = _scaled(x)
        acc, tiles = _forward_sums(xs, sq, bands, exact=False)
        if tiles.needs_exact():
            acc, _ = _forward_sums(xs, sq, bands, exact=True)
        acc = acc + acc.T  # each pair was counted once, in one of the two orders
        ctx.bands = bands
        ctx.save_for_backward(x, pair_i, pair_j)
        return (acc[pair_i, pair_j] * (c.double() / bands.R)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_rho):  # noqa: D102
        x, pair_i, pair_j = ctx.saved_tensors
        bands = ctx.bands
        _, xs, sq = _scaled(x)
        g = torch.zeros(bands.k, bands.k, dtype=x.dtype, device=x.device)
        g[pair_i, pair_j] = grad_rho.to(x.dtype) / bands.R
        g = g + g.T
        grad, tiles = _backward_grad(xs, sq, bands, g, exact=False)
        if tiles.needs_exact():
            grad, _ = _backward_grad(xs, sq, bands, g, exact=True)
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
