r"""Class distances with fixed shapes and no host sync: every pair of all K label ids at once.

The distances of :mod:`otcpcc.distances` size their tensors from the classes present in a batch,
so they read the class sizes on the host (one sync) and change shape from batch to batch. Here
every shape depends only on (N, d, K): the result covers all :math:`K(K-1)/2` label pairs, with a
mask of the pairs whose classes are both present. That is what a CUDA graph needs (one capture,
replayed every step, see :mod:`otcpcc.objectives.graphed`), and it never waits for the GPU.

``l2``. Class sums by one ``index_add`` into [K, d]; means of absent classes are 0 and their pairs
masked. :math:`\rho_{ij} = \lVert \bar x_i - \bar x_j \rVert_2` from the differences (exact, no
Gram cancellation). O(N d + K² d) time, O(K² + chunk · d) memory.

``fastft`` (uniform weights, batch order). The north-west-corner plan of a pair (A, B), |A| = n,
|B| = m, merges the breakpoints :math:`\{a/n\}_{a=1}^{n} \cup \{b/m\}_{b=1}^{m}`; each merged
breakpoint owns the segment that ends at it (on a tie, A's breakpoint comes first and B's owns an
empty segment). So every sample s of class c owns exactly one segment in its pair with every other
class o: the plan of all pairs is one [N, K] grid, in closed form. With r the 1-based rank of s
in c (batch order), :math:`n = |c|`, :math:`m = |o|` and :math:`q = r m`:

.. math:: \text{partner} = \lceil q / n \rceil - 1, \qquad
          \text{mass} = \frac{q - \max\big(q - m,\ n\,P\big)}{n m}, \qquad
          P = \begin{cases} \lceil q/n \rceil - 1 & c < o \ (\#\{b: b/m < r/n\}) \\
                            \lfloor q/n \rfloor & c > o \ (\#\{a: a/n \le r/m\}) \end{cases}

(the segment runs from the larger of the two previous breakpoints to r/n). Then
:math:`\rho_{co} = R_{co} + R_{oc}` with :math:`R_{co} = \sum_{s \in c} \text{mass}_{so}
\lVert x_s - x_{\text{partner}(s, o)} \rVert_2`. The same plans and values as
:func:`otcpcc.distances.nwcorner.nw_plans_uniform` (segments of zero mass aside). O(N K d) time;
memory O(N K + chunk · d): the [N, K] grid is evaluated in chunks fixed once per shape.

Both return the distances in :func:`torch.triu_indices` order of (i, j), i < j, over label ids
0..K−1 (for the present classes, the order of :func:`otcpcc.distances.class_distances`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .cost import dense_pair_gradient, feature_scale, norm_coefficients, row_distances, rows_pair_gradient
from .memory import chunk_items
from .swd import add_gap_gradient, power_gaps, sliced_root

FIXED_DISTANCES = ("l2", "fastft", "swd")
BYTES_PER_ENTRY_DIM = 16  # a chunk's two gathered rows and their difference (float32 or 64)


def pair_index(k: int, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """(i, j) of every label pair i < j: two [K(K−1)/2] long tensors (``torch.triu_indices``)."""
    pi, pj = torch.triu_indices(k, k, offset=1, device=device)
    return pi, pj


def class_counts(labels: Tensor, k: int) -> Tensor:
    """[K] long samples per label id, for ids in [0, K) (``index_add``: ``torch.bincount`` reads the
    largest label on the host)."""
    return torch.zeros(k, dtype=torch.int64, device=labels.device).index_add_(
        0, labels, torch.ones_like(labels))


def chunk_entries(d: int, device: torch.device | str) -> int:
    """Entries per chunk of :func:`pair_norms` for d-dimensional rows, from the memory budget
    (read once per input shape by the caller: a captured graph's chunks are fixed)."""
    return chunk_items(BYTES_PER_ENTRY_DIM * d, device)


class _PairNorms(torch.autograd.Function):
    r"""[E] :math:`\lVert x_{a_e} - x_{b_e} \rVert_2` with the gradient of a sum of weighted
    norms, in fixed shapes: forward :func:`.cost.row_distances` (exact, from the differences),
    ``chunk`` entries at a time; backward :func:`.cost.dense_pair_gradient` where the [n, n]
    matrix fits the chunk's bytes, else :func:`.cost.rows_pair_gradient` (both as
    :class:`otcpcc.distances.cost._PlanCost`, in units of the feature scale)."""

    @staticmethod
    def forward(ctx, x, ia, ib, chunk):  # noqa: D102
        with torch.no_grad():
            c = feature_scale(x)
            norms = row_distances(x, ia, ib, c, step=chunk)
        ctx.chunk = chunk
        ctx.save_for_backward(x, ia, ib, norms, c)
        return norms

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        x, ia, ib, norms, c = ctx.saved_tensors
        x, coef = norm_coefficients(x, norms, grad, c)
        n = x.shape[0]
        if n * n * x.element_size() <= ctx.chunk * x.shape[1] * BYTES_PER_ENTRY_DIM:
            return dense_pair_gradient(x, ia, ib, coef), None, None, None
        return rows_pair_gradient(x, ia, ib, coef, ctx.chunk), None, None, None


def pair_norms(x: Tensor, ia: Tensor, ib: Tensor, chunk: int) -> Tensor:
    """[E] exact ‖x[ia] − x[ib]‖₂ for [n, d] rows and [E] indices, differentiable (0 gradient
    where two rows coincide); no host sync; ``chunk``: entries per chunk (:func:`chunk_entries`).
    O(E d) time, O(chunk · d) memory (+ O(n²) in backward where it fits the chunk)."""
    return _PairNorms.apply(x, ia, ib, chunk)


def fixed_l2(x: Tensor, labels: Tensor, counts: Tensor, pairs: tuple[Tensor, Tensor],
             chunk: int) -> Tensor:
    """[N, d] features, [N] label ids, [K] counts -> [K(K−1)/2] distances between class means
    (an absent class has mean 0 here: mask its pairs); ``chunk``: :func:`pair_norms`."""
    k = counts.shape[0]
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add(0, labels, x)
    means = sums / counts.clamp_min(1)[:, None].to(x.dtype)
    return pair_norms(means, *pairs, chunk)


def nw_grid(labels: Tensor, counts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The uniform north-west-corner plans of all label pairs as an [N, K] grid (module docstring).

    Returns ``(order, cls, partner, mass)``: ``order`` [N] the stable sort of the labels (grouped
    position p holds sample ``order[p]``, of label ``cls[p]``); ``partner`` [N, K] the grouped
    position that grouped sample p is coupled to in class o (a valid index also where the mass is
    0); ``mass`` [N, K] float64, 0 in a sample's own column and for absent classes. Integer
    arithmetic: exact."""
    k = counts.shape[0]
    order = torch.argsort(labels, stable=True)
    cls = labels.index_select(0, order)
    offsets = torch.cumsum(counts, 0) - counts
    n = counts.index_select(0, cls)[:, None]  # own class size (>= 1)
    r = (torch.arange(cls.shape[0], device=cls.device) - offsets.index_select(0, cls) + 1)[:, None]
    m = counts[None, :]
    q = r * m
    ceil = torch.div(q - 1, n, rounding_mode="floor")  # ⌈q/n⌉ − 1 (q ≥ 1; −1 where m = 0)
    other = torch.arange(k, device=cls.device)[None, :]
    prev = torch.where(cls[:, None] < other, ceil, torch.div(q, n, rounding_mode="floor"))
    num = q - torch.maximum(q - m, n * prev)
    mass = torch.where((m > 0) & (other != cls[:, None]), num.double() / (n * m).clamp_min(1), 0.0)
    top = cls.shape[0] - 1
    partner = (offsets[None, :] + ceil.clamp_min(0)).clamp_max(top)
    return order, cls, partner, mass


def _grid_entries(cls: Tensor, k: int) -> Tensor:
    """[N K] the grouped row of every [N, K] grid entry (its first index)."""
    n = cls.shape[0]
    return torch.arange(n, device=cls.device)[:, None].expand(n, k).reshape(-1)


def _pair_sums(entry_cost: Tensor, mass: Tensor, cls: Tensor, pairs: tuple[Tensor, Tensor]) -> Tensor:
    """[K(K−1)/2] :math:`R_{ij} + R_{ji}` over the label pairs, :math:`R_{co}` the sum of
    ``entry_cost`` · ``mass`` over the [N, K] grid entries (s, o) of class c's samples: the
    segments each class owns in each pair (module docstring)."""
    k = mass.shape[1]
    cost = (entry_cost * mass.reshape(-1).to(entry_cost.dtype)).view(-1, k)
    r = torch.zeros(k, k, dtype=cost.dtype, device=cost.device).index_add(0, cls, cost).view(-1)
    pi, pj = pairs
    return r.index_select(0, pi * k + pj) + r.index_select(0, pj * k + pi)


def fixed_fastft(x: Tensor, labels: Tensor, counts: Tensor, pairs: tuple[Tensor, Tensor],
                 chunk: int) -> Tensor:
    """[N, d] features, [N] label ids, [K] counts -> [K(K−1)/2] FastFT distances (uniform
    weights, batch order; 0 where a class is absent); ``chunk``: :func:`pair_norms`.
    Differentiable with the constant-plan gradient. O(N K d) time (+ O(N² d) for the backward's
    product where it fits), O(N K + chunk · d) memory."""
    order, cls, partner, mass = nw_grid(labels, counts)
    norms = pair_norms(x.index_select(0, order), _grid_entries(cls, counts.shape[0]), partner.reshape(-1), chunk)
    return _pair_sums(norms, mass, cls, pairs)


class _PairGaps(torch.autograd.Function):
    """[E] :func:`.swd.power_gaps` of fixed entries, ``chunk`` at a time in forward and backward
    (memory O(chunk · L)); backward :func:`.swd.add_gap_gradient`, as
    :class:`otcpcc.distances.swd._SlicedCost`."""

    @staticmethod
    def forward(ctx, r, ia, ib, p, chunk):  # noqa: D102
        with torch.no_grad():
            parts = [power_gaps(r, ia[e:e + chunk], ib[e:e + chunk], p) for e in range(0, ia.shape[0], chunk)]
        ctx.p, ctx.chunk = p, chunk
        ctx.save_for_backward(r, ia, ib)
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        r, ia, ib = ctx.saved_tensors
        out = torch.zeros_like(r)
        for e in range(0, ia.shape[0], ctx.chunk):
            add_gap_gradient(out, r, ia[e:e + ctx.chunk], ib[e:e + ctx.chunk], ctx.p, grad[e:e + ctx.chunk])
        return out, None, None, None, None


def fixed_swd(x: Tensor, labels: Tensor, counts: Tensor, pairs: tuple[Tensor, Tensor],
              theta: Tensor, p: float, chunk: int) -> Tensor:
    r"""[N, d] features, [N] label ids, [K] counts, [d, L] unit directions -> [K(K−1)/2] sliced
    Wasserstein distances (0 where a class is absent), as :func:`otcpcc.distances.swd.swd`.

    Every column of the projections is sorted within each class (by value, then stably by label),
    so grouped position s holds the sample of rank r along each direction; the 1-D optimal plans
    of all pairs are then the NW grid of :func:`nw_grid` (the same for every direction, as the
    class sizes are), and :math:`W_p^p(c, o) = R_{co} + R_{oc}` with :math:`R_{co} = \sum_{s \in c}
    \text{mass}_{so} \frac1L \sum_l |r_{sl} - r_{\text{partner}(s,o)\,l}|^p`. O(N d L + N L log N +
    N K L) time, O(N K + chunk · L) memory; ``chunk``: entries per chunk."""
    c = feature_scale(x)  # |gap|^p on x / c: neither overflow nor underflow
    proj = (x / c) @ theta.to(x.dtype)  # [N, L]
    by_val = torch.argsort(proj.detach(), dim=0, stable=True)
    by_cls = torch.argsort(labels.index_select(0, by_val.reshape(-1)).view_as(by_val), dim=0, stable=True)
    ranked = proj.gather(0, by_val.gather(0, by_cls))  # [N, L]: per column, sorted within class
    _, cls, partner, mass = nw_grid(labels, counts)
    gaps = _PairGaps.apply(ranked, _grid_entries(cls, counts.shape[0]), partner.reshape(-1), p, chunk)
    return sliced_root(_pair_sums(gaps, mass, cls, pairs), p) * c
