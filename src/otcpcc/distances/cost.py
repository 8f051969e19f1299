r"""Evaluate transport costs :math:`\rho_t = \sum_s P_s \lVert x_{a_s} - x_{b_s} \rVert_2` for many plans at once.

Every distance in this package ends here: a solver returns its plans as sparse entries
``(a_s, b_s, P_s, t_s)`` (sample indices into the grouped batch, mass, and the pair the entry
belongs to), and one call evaluates all pairs' costs with autograd. Plans are constants, so the
gradient is the constant-plan (envelope-theorem) formula

.. math:: \partial \rho_t / \partial x_a = \sum_b P_{ab}\,(x_a - x_b) / \lVert x_a - x_b \rVert_2,

taken as 0 where two samples coincide (never NaN).

Two evaluation paths give the same values; :func:`use_gram` picks one from N and the number of
entries S:

* Gram tiles (N small, or N² within ``GRAM_RATIO``·S): distances of a tile of T rows against all
  N samples come from one product (BLAS, O(T N d)); the needed entries are gathered from it.
  Backward scatters the coefficients into the same tiles and needs two products per tile. Memory
  O(T N), T·N sized to the memory budget (:mod:`.memory`), so never an unbounded [N, N] matrix.
* Rows (N large and entries sparse, e.g. 50,000 samples in 100 classes): only the needed
  differences, in chunks, recomputed in backward; O(S d) time, O(chunk · d) memory.

Gram entries where cancellation may have eaten the digits (``d² ≤ tol · (‖a‖² + ‖b‖²)``, see
:func:`cancellation_tolerance`) are recomputed from their differences, so values are exact on both
paths, also for features with a large common offset. Finding them needs their number on the host (a
sync); inside :func:`deferred_recompute` (as :func:`otcpcc.distances.grouped_distances` runs every
distance) up to ``RECOMPUTE_CAP`` of them are recomputed without a sync and whether there were
more is left as a device flag, for the caller to read with its own sync (and then run again exactly).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

from .memory import chunk_items

GRAM_ALWAYS_N = 2048  # up to this many samples the Gram path is always cheaper
GRAM_RATIO = 128  # above it: Gram while N² <= GRAM_RATIO · S (a product beats a gather ~this much)
TILE_ELEMENTS: int | None = None  # floats in one [T, N] tile; None: from the memory budget
CHUNK_ELEMENTS: int | None = None  # floats in one [rows, d] chunk; None: from the memory budget
TILE_BYTES_PER_ELEMENT = 24  # Gram tile, gathered values, backward's coefficient tile
CHUNK_BYTES_PER_ELEMENT = 16  # two gathered rows and their difference
RECOMPUTE_CAP = 32  # near-zero entries recomputed without a host sync (inside deferred_recompute)
_OVERFLOWS: ContextVar[list[Tensor] | None] = ContextVar("near_overflows", default=None)


@contextmanager
def deferred_recompute() -> Iterator[list[Tensor]]:
    """Within: near-zero Gram entries are recomputed without a host sync, at most
    ``RECOMPUTE_CAP`` per evaluation; the yielded list collects one device bool per evaluation,
    true where there were more (the values are then inexact: evaluate again outside)."""
    flags: list[Tensor] = []
    token = _OVERFLOWS.set(flags)
    try:
        yield flags
    finally:
        _OVERFLOWS.reset(token)


def _elements(fixed: int | None, bytes_per_element: int, device) -> int:
    return fixed if fixed is not None else chunk_items(bytes_per_element, device)


def use_gram(n: int, entries: int) -> bool:
    """Whether the Gram-tile path serves N samples and ``entries`` plan entries."""
    return n <= GRAM_ALWAYS_N or n * n <= GRAM_RATIO * entries


def safe_sqrt(x: Tensor) -> Tensor:
    """sqrt(x) for x >= 0 with gradient 0 (not inf/NaN) where x == 0; NaN stays NaN."""
    pos = x > 0
    return torch.where(pos, torch.where(pos, x, torch.ones_like(x)).sqrt(), x * 0)


def saturate(g: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``g`` (in place) with entries beyond ``dtype``'s range (default: g's) clamped to ±its
    largest finite number; NaN stays NaN.

    For gradients whose true value lies beyond the float range (float32 features of order 1e-40
    have CPCC gradients of order 1e40): such entries keep their sign and stay finite, so an
    optimiser step or a gradient-norm clip sees a number, not inf (nor a later inf − inf = NaN);
    every entry within range is unchanged. O(numel), no host sync."""
    big = torch.finfo(dtype or g.dtype).max
    return g.clamp_(-big, big)


def overflow_error(name: str) -> ValueError:
    """The one-line error for distances that overflow although the features are finite."""
    return ValueError(f"{name} distances are not finite although the features are; the feature "
                      "scale may overflow float32: normalise the features")


def cost_dtype(x: Tensor) -> torch.dtype:
    """Costs are computed in float64 for float64 input, else float32 (also under autocast)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def max_abs(x: Tensor) -> Tensor:
    """max|x| of a non-empty tensor as a 0-d tensor (NaN where x holds NaN), without a |x| copy.

    One reduction on a GPU (the infinity norm); on CPU ``aminmax`` (torch's CPU infinity norm
    takes ~10x as long: 1.9 ms against 0.16 ms for [1024, 512] float32 on one core)."""
    if x.device.type == "cpu":
        lo, hi = x.aminmax()
        return torch.maximum(hi, -lo)
    return torch.linalg.vector_norm(x, ord=math.inf)


def centred(features: Tensor) -> tuple[Tensor, Tensor]:
    """``features`` [N, d] in the cost dtype (:func:`cost_dtype`) minus their (detached) mean, and
    the detached float64 [2] magnitude (max|x|, max|x − x̄|) their rounding scales with.

    Every distance here is translation invariant, so the batch mean goes first (the gradient is
    unchanged): a large common offset would otherwise cost float32 its digits in the differences
    and projections (e.g. features 1e5 + noise). No host sync."""
    x = features.to(cost_dtype(features))  # float32 for half/bf16 input (float64 stays float64)
    raw = max_abs(x.detach())
    x = x - x.detach().mean(0)
    return x, torch.stack((raw, max_abs(x.detach()))).double()


def feature_scale(x: Tensor) -> Tensor:
    """A detached positive scalar c with max|x/c| = 1, so squares neither overflow nor underflow."""
    c = max_abs(x.detach())
    return torch.where(c > 0, c, 1.0).nan_to_num_(nan=1.0, posinf=1.0)  # 1 where 0, inf or NaN


def _chunks(n: int, per_item: int, budget: int):
    step = max(1, budget // max(per_item, 1))
    for s in range(0, n, step):
        yield slice(s, min(n, s + step))


def row_distances(x: Tensor, ia: Tensor, ib: Tensor, c: Tensor | None = None,
                  step: int | None = None) -> Tensor:
    """[S] ‖x[ia] − x[ib]‖₂ without autograd, from the differences, in bounded chunks
    (``c``: :func:`feature_scale` of ``x`` when already known; ``step``: entries per chunk, else
    from the memory budget)."""
    c = feature_scale(x) if c is None else c
    if step is None:
        chunks = list(_chunks(ia.shape[0], x.shape[1], _elements(CHUNK_ELEMENTS, CHUNK_BYTES_PER_ELEMENT,
                                                                  x.device)))
    else:
        chunks = [slice(e, min(ia.shape[0], e + step)) for e in range(0, ia.shape[0], step)]
    out = None if len(chunks) == 1 else torch.empty(ia.shape[0], dtype=x.dtype, device=x.device)
    for sl in chunks:
        diff = (x.index_select(0, ia[sl]) - x.index_select(0, ib[sl])).div_(c)
        dist = torch.linalg.vector_norm(diff, dim=1).mul_(c)
        if out is None:
            return dist
        out[sl] = dist
    return out if out is not None else x.new_zeros(0)


class _Tiles:
    """Plan entries split into row tiles of the [N, N] matrix (sorted by first sample when there
    is more than one tile; a single tile keeps the entries' order)."""

    def __init__(self, n: int, ia: Tensor, ib: Tensor):
        self.n = n
        tile = _elements(TILE_ELEMENTS, TILE_BYTES_PER_ELEMENT, ia.device)
        rows = max(1, min(n, tile // max(n, 1)))
        self.single = rows >= n
        self.flat: Tensor | None = None  # single tile: ia * n + ib, kept for backward
        if self.single:
            self.order, self.ia, self.ib = None, ia, ib
            self.starts, self.cuts = [0, n], [0, ia.shape[0]]
            return
        self.order = torch.argsort(ia)
        self.ia = ia.index_select(0, self.order)
        self.ib = ib.index_select(0, self.order)
        self.starts = list(range(0, n, rows)) + [n]
        bounds = torch.tensor(self.starts, device=ia.device)
        self.cuts = torch.searchsorted(self.ia, bounds).tolist()

    def __iter__(self):
        """(row slice, entry slice, flat index into the [rows, N] tile) for every tile."""
        for k in range(len(self.starts) - 1):
            r0, r1 = self.starts[k], self.starts[k + 1]
            e = slice(self.cuts[k], self.cuts[k + 1])
            if self.single:
                if self.flat is None:
                    self.flat = self.ia * self.n + self.ib
                yield slice(r0, r1), e, self.flat
            else:
                yield slice(r0, r1), e, (self.ia[e] - r0) * self.n + self.ib[e]

    def unsort(self, sorted_vals: Tensor) -> Tensor:
        """Values in tile order -> values in the entries' order."""
        if self.order is None:
            return sorted_vals
        return torch.empty_like(sorted_vals).index_copy_(0, self.order, sorted_vals)

    def sort(self, vals: Tensor) -> Tensor:
        """Values in the entries' order -> tile order."""
        return vals if self.order is None else vals.index_select(0, self.order)


def cancellation_tolerance(x: Tensor) -> float:
    """Below ``tol * (‖a‖² + ‖b‖²)`` the Gram identity ``‖a‖² + ‖b‖² − 2⟨a, b⟩`` has lost most of
    its digits to cancellation (its rounding error is about ``eps · √d · (‖a‖² + ‖b‖²)``): such
    entries are recomputed from the differences. ``tol = 1000 · eps · √d`` keeps every Gram-path
    distance within ~1e-3 relative of the exact one (float32 features ``1000 + 0.01·noise``: all
    recomputed; centred features: almost none)."""
    return 1e3 * torch.finfo(x.dtype).eps * math.sqrt(max(x.shape[1], 1))


def gram_distances(x: Tensor, ia: Tensor, ib: Tensor, tiles: _Tiles | None = None,
                   c: Tensor | None = None) -> Tensor:
    """[S] ‖x[ia] − x[ib]‖₂ without autograd, from Gram tiles; near-zero entries recomputed
    (``c``: :func:`feature_scale` of ``x`` when already known)."""
    tiles = tiles or _Tiles(x.shape[0], ia, ib)
    c = feature_scale(x) if c is None else c
    xs = x / c
    sq = (xs * xs).sum(1)
    tol = cancellation_tolerance(x)
    s = ia.shape[0]
    # values in tile order (a single tile: the entries' order, with the spare slot of _recompute)
    sorted_vals = torch.empty(s + tiles.single, dtype=x.dtype, device=x.device)
    sorted_near = torch.empty(s, dtype=torch.bool, device=x.device)
    for rows, e, flat in tiles:  # gather from the Gram tile, then finish only the needed entries
        g = (xs[rows] @ xs.T).view(-1).index_select(0, flat)
        s_ab = sq.index_select(0, tiles.ia[e]) + sq.index_select(0, tiles.ib[e])
        d2 = torch.sub(s_ab, g, alpha=2.0)  # ‖a‖² + ‖b‖² − 2⟨a, b⟩
        torch.le(d2, s_ab.mul_(tol), out=sorted_near[e])
        torch.sqrt(d2.clamp_min_(0), out=sorted_vals[e])
    if tiles.single:
        vals = sorted_vals
    else:
        vals = torch.empty(s + 1, dtype=x.dtype, device=x.device)
        vals[:s] = tiles.unsort(sorted_vals)
    vals[:s].mul_(c)
    return _recompute(x, ia, ib, vals, tiles.unsort(sorted_near), c)


def fix_near(x: Tensor, ia: Tensor, ib: Tensor, vals: Tensor, c: Tensor | None = None) -> Tensor:
    """``vals`` [S] (Gram-formula distances) with the entries where cancellation may have eaten their
    digits (:func:`cancellation_tolerance`) recomputed from the differences (a new tensor)."""
    c = feature_scale(x) if c is None else c
    xs = x / c
    sq = (xs * xs).sum(1)
    vs = vals / c
    near = vs * vs <= cancellation_tolerance(x) * (sq.index_select(0, ia) + sq.index_select(0, ib))
    spare = torch.empty(vals.shape[0] + 1, dtype=vals.dtype, device=vals.device)
    spare[:-1] = vals
    return _recompute(x, ia, ib, spare, near, c)


def _recompute(x: Tensor, ia: Tensor, ib: Tensor, vals: Tensor, near_mask: Tensor,
               c: Tensor) -> Tensor:
    """[S] ``vals`` with the entries of ``near_mask`` [S] recomputed from the differences.

    ``vals`` has S + 1 entries (written in place; the last one is a spare slot, garbage after)."""
    s = near_mask.shape[0]
    overflows = _OVERFLOWS.get()
    if overflows is None or s == 0:  # exact: the number of entries is read on the host
        near = torch.nonzero(near_mask).squeeze(1)
        if near.numel():
            vals[near] = row_distances(x, ia.index_select(0, near), ib.index_select(0, near), c)
        return vals[:s]
    # no sync: the first cap near entries, their slots padded with the spare slot s; slot cap is
    # occupied exactly when there are more than cap of them (then the caller evaluates again)
    cap = min(RECOMPUTE_CAP, s)
    near = torch.nonzero_static(near_mask, size=cap + 1, fill_value=s).squeeze(1)
    overflows.append(near[cap] != s)
    near = near[:cap]
    safe = near.clamp(max=s - 1)
    vals.index_copy_(0, near, row_distances(x, ia.index_select(0, safe), ib.index_select(0, safe), c))
    return vals[:s]


def gather_distances(x: Tensor, ia: Tensor, ib: Tensor) -> Tensor:
    """[S] exact ‖x[ia] − x[ib]‖₂ without autograd, by the cheaper path (:func:`use_gram`)."""
    with torch.no_grad():
        if use_gram(x.shape[0], ia.shape[0]):
            return gram_distances(x, ia, ib)
        return row_distances(x, ia, ib)


class _PlanCost(torch.autograd.Function):
    r"""rho = index_add(pair, mass * ‖x[ia] − x[ib]‖) with the constant-plan gradient.

    Backward uses :math:`C_{ab} = g_{t(s)} P_s / \lVert x_a - x_b \rVert` (0 where the samples
    coincide). Per Gram tile R of rows: :math:`\nabla X_R \mathrel{+}= \operatorname{diag}(C_R
    \mathbf{1}) X_R - C_R X` and :math:`\nabla X \mathrel{+}= \operatorname{diag}(C_R^\top
    \mathbf{1}) X - C_R^\top X_R`; on the rows path by recomputed differences.
    """

    @staticmethod
    def forward(ctx, x, ia, ib, mass, pair, num_pairs, norms=None, exact_norms=False):  # noqa: D102
        gram = use_gram(x.shape[0], ia.shape[0])
        tiles = _Tiles(x.shape[0], ia, ib) if gram and ctx.needs_input_grad[0] else None
        with torch.no_grad():
            c = feature_scale(x)
            if norms is not None:
                norms = norms.to(x.dtype)
                if not exact_norms:
                    norms = fix_near(x, ia, ib, norms, c)
            elif gram:
                norms = gram_distances(x, ia, ib, tiles, c)
            else:
                norms = row_distances(x, ia, ib, c)
        ctx.tiles = tiles
        ctx.save_for_backward(x, ia, ib, mass, pair, norms, c)
        if pair is None:  # entry s is pair s, mass 1
            return norms.clone()
        rho = torch.zeros(num_pairs, dtype=x.dtype, device=x.device)
        return rho.index_add_(0, pair, mass * norms)

    @staticmethod
    def backward(ctx, grad_rho):  # noqa: D102
        x, ia, ib, mass, pair, norms, c = ctx.saved_tensors
        w = grad_rho if pair is None else grad_rho.index_select(0, pair) * mass
        x, coef = norm_coefficients(x, norms, w, c)
        n = x.shape[0]
        tiles = ctx.tiles
        if tiles is not None:
            coef = tiles.sort(coef)
            if tiles.single:  # one [N, N] tile, filled symmetrically: both sides in one product
                return dense_pair_gradient(x, ia, ib, coef, tiles.flat), *[None] * 7
            grad_x = torch.zeros_like(x)
            for rows, e, flat in tiles:
                C = torch.zeros((rows.stop - rows.start) * n, dtype=x.dtype, device=x.device)
                C = C.index_add_(0, flat, coef[e]).view(-1, n)
                xr = x[rows]
                grad_x[rows] += C.sum(1, keepdim=True) * xr - C @ x
                grad_x += C.sum(0)[:, None] * x - C.T @ xr
            return grad_x, *[None] * 7
        budget = _elements(CHUNK_ELEMENTS, CHUNK_BYTES_PER_ELEMENT, x.device)
        return rows_pair_gradient(x, ia, ib, coef, max(1, budget // max(x.shape[1], 1))), *[None] * 7


def norm_coefficients(x: Tensor, norms: Tensor, w: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    r"""``(x / c, w / (norms / c))``, the coefficient 0 where a norm is 0: the backward of
    :math:`\sum_e w_e \lVert x_{a_e} - x_{b_e} \rVert` in units of the feature scale c (tiny
    features, 1e-20, have huge gradients w, and w / ‖x_a − x_b‖ would overflow float32 where
    w / (‖x_a − x_b‖ / c) does not)."""
    norms = norms / c
    pos = norms > 0
    return x / c, torch.where(pos, w / torch.where(pos, norms, 1), 0)


def dense_pair_gradient(x: Tensor, ia: Tensor, ib: Tensor, coef: Tensor, flat: Tensor | None = None) -> Tensor:
    r""":math:`\nabla X = \operatorname{diag}(C\mathbf 1) X - C X` for the symmetric [n, n] matrix
    C holding ``coef`` [E] at (a, b) and (b, a): the gradient of :math:`\sum_e w_e \lVert x_a -
    x_b \rVert` (``coef`` from :func:`norm_coefficients`) in one product. ``flat``: ``ia * n + ib``
    when already built. O(n² + E + n² d); no host sync."""
    n = x.shape[0]
    C = torch.zeros(n * n, dtype=x.dtype, device=x.device)
    C.index_add_(0, flat if flat is not None else ia * n + ib, coef).index_add_(0, ib * n + ia, coef)
    C = C.view(n, n)
    return C.sum(1, keepdim=True) * x - C @ x


def rows_pair_gradient(x: Tensor, ia: Tensor, ib: Tensor, coef: Tensor, step: int) -> Tensor:
    """The gradient of :func:`dense_pair_gradient` without the [n, n] matrix: ``coef_e (x_a − x_b)``
    added to row a and subtracted from row b, ``step`` entries at a time (O(step · d) memory)."""
    grad_x = torch.zeros_like(x)
    for e in range(0, ia.shape[0], step):
        a, b = ia[e:e + step], ib[e:e + step]
        g = coef[e:e + step, None] * (x.index_select(0, a) - x.index_select(0, b))
        grad_x.index_add_(0, a, g).index_add_(0, b, -g)
    return grad_x


def transport_cost(
    x: Tensor,
    ia: Tensor,
    ib: Tensor,
    mass: Tensor | None,
    pair: Tensor | None,
    num_pairs: int,
    norms: Tensor | None = None,
    exact_norms: bool = False,
) -> Tensor:
    r"""Costs of many sparse plans: :math:`\rho_t = \sum_{s:\,pair_s = t} P_s \lVert x_{a_s} - x_{b_s}\rVert_2`.

    Args:
        x: [N, d] grouped features (any float dtype; costs are float32, float64 for float64 input).
        ia, ib: [S] long sample indices of each plan entry; mass: [S] entry masses (no grad);
        pair: [S] long pair index of each entry in ``[0, num_pairs)``. ``pair`` and ``mass`` None:
            entry s is pair s with mass 1 (S = num_pairs, e.g. the class means of ``l2``).
        norms: [S] the distances ‖x[ia] − x[ib]‖ when already known (e.g. from an LP's cost
            matrix), so they are not computed again; entries near 0 are still recomputed exactly,
            unless ``exact_norms`` (they come from :func:`gather_distances` of the same x, ia, ib).

    Returns:
        [num_pairs] costs, differentiable w.r.t. ``x`` with the constant-plan gradient.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.to(cost_dtype(x))
        if pair is not None:
            mass = mass.to(x.dtype).detach()
        return _PlanCost.apply(x, ia, ib, mass, pair, num_pairs, norms, exact_norms)
