r"""North-west-corner plans for every class pair at once (no loop over pairs).

For a pair of classes A (n samples, weights a) and B (m samples, weights b), the north-west
corner rule walks both in order and moves :math:`f = \min(a_i, b_j)` at each step. Equivalently,
with cumulative weights :math:`0 = c^A_0 < \dots < c^A_n = 1` and likewise :math:`c^B`, the plan
puts mass :math:`|[c^A_i, c^A_{i+1}] \cap [c^B_j, c^B_{j+1}]|` on (i, j): merge the two breakpoint
lists and read each segment off. A plan has at most n + m − 1 non-zeros.

It is the quantile (monotone) coupling, so it is optimal in 1-D for sorted samples (sliced
Wasserstein) and, on the tree with each sample attached under its class, for FastFT.

Layout: pair t owns a block of entries laid end to end, so no host synchronisation is needed.
Uniform weights need no sort (closed form per entry, :func:`nw_plans_uniform`: n + m − 1 entries
per pair); per-sample weights merge the cumulative weights with a stable sort
(:func:`nw_plans_weighted`: n + m + 2 entries per pair, ties and block ends carry mass 0).
Time and memory O(Σ_t (n_t + m_t)).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .groups import ClassGroups


class Segments(NamedTuple):
    """Sparse NW-corner plans: entry s of pair ``pair[s]`` moves ``mass[s]`` from grouped sample
    ``ia[s]`` (rank ia − offset within class ``pair_i``) to grouped sample ``ib[s]``."""

    pair: Tensor
    ia: Tensor
    ib: Tensor
    mass: Tensor


def _take(t: Tensor, idx: Tensor) -> Tensor:
    """``t[idx]`` for 1-D ``idx`` (index_select: several times faster than advanced indexing)."""
    return t.index_select(0, idx)


def _ragged_arange(lengths: Tensor, total: int) -> tuple[Tensor, Tensor]:
    """(owner, index-within-owner) for blocks of the given lengths laid end to end."""
    owner = torch.repeat_interleave(
        torch.arange(lengths.numel(), device=lengths.device), lengths, output_size=total
    )
    starts = torch.cumsum(lengths, 0) - lengths
    return owner, torch.arange(total, device=lengths.device) - starts[owner]


def _pair_totals(groups: ClassGroups) -> tuple[int, int]:
    """Σ over pairs of (n_i + 1) and of (m_j + 1), from the host-side class sizes."""
    k = len(groups.counts_host)
    tot_a = sum((c + 1) * (k - 1 - i) for i, c in enumerate(groups.counts_host))
    tot_b = sum((c + 1) * i for i, c in enumerate(groups.counts_host))
    return tot_a, tot_b


def _segments(vals: Tensor, is_a: Tensor, n: Tensor, m: Tensor, block: Tensor) -> Segments:
    """Read segments off merged, sorted breakpoint blocks (values already normalised to mass);
    ``ia``/``ib`` of the result are ranks within each class."""
    total = vals.numel()
    lengths = n + m + 2
    owner, pos = _ragged_arange(lengths, total)
    cum_a = torch.cumsum(is_a.long(), 0)
    start = block[owner]
    local_a = cum_a - cum_a[start] + is_a[start].long()
    local_b = pos + 1 - local_a
    last = pos == lengths[owner] - 1
    nxt = torch.roll(vals, -1)
    mass = torch.where(last, torch.zeros_like(vals), nxt - vals)
    a = torch.minimum((local_a - 1).clamp_min(0), n[owner] - 1)
    b = torch.minimum((local_b - 1).clamp_min(0), m[owner] - 1)
    return Segments(owner, a, b, mass)


def uniform_entries(groups: ClassGroups, pairs: slice) -> int:
    """Σ (n_i + n_j − 1) over the pairs ``pairs`` (a range of pair indices in triu order): the
    number of entries of their uniform NW plans, from the host-side class sizes (no sync). O(k)."""
    counts = np.asarray(groups.counts_host, dtype=np.int64)
    k = counts.size
    prefix = np.concatenate([[0], np.cumsum(counts)])  # Σ_{c < i} n_c
    rows = np.arange(k)
    row_start = rows * (2 * k - rows - 1) // 2  # first pair of row i (pairs (i, j), j > i)
    row_total = np.concatenate([[0], np.cumsum((k - 1 - rows) * (counts - 1) + prefix[-1] - prefix[1:])])

    def before(t: int) -> int:  # Σ over the first t pairs
        if t <= 0 or k < 2:
            return 0
        i = int(np.searchsorted(row_start[: k - 1], t, side="right")) - 1
        q = t - int(row_start[i])  # pairs (i, i+1) .. (i, i+q)
        return int(row_total[i] + q * (counts[i] - 1) + prefix[i + q + 1] - prefix[i + 1])

    start, stop, _ = pairs.indices(groups.num_pairs)
    return before(stop) - before(start) if stop > start else 0


def pair_chunks(groups: ClassGroups, max_entries: int) -> list[slice]:
    """Consecutive ranges of pairs whose uniform NW plans hold at most ``max_entries`` entries
    (n + m − 1 per pair) each; a single pair above the limit gets a range of its own.

    O(K) host work per row of pairs (the pairs of class i are consecutive), no [pairs] array."""
    counts = np.asarray(groups.counts_host, dtype=np.int64)
    k = counts.size
    after = np.concatenate([np.cumsum(counts[::-1])[::-1][1:], [0]])  # Σ_{j>i} n_j
    chunks, start, used, first = [], 0, 0, 0
    for i in range(k - 1):
        row = int((k - 1 - i) * (counts[i] - 1) + after[i])
        if used + row <= max_entries:
            used += row
        else:
            if first > start:
                chunks.append(slice(start, first))
            start, used = first, 0
            if row <= max_entries:
                used = row
            else:  # split this row between its pairs
                ends = np.cumsum(counts[i] + counts[i + 1 :] - 1)
                lo = 0
                while lo < ends.size:
                    base = ends[lo - 1] if lo else 0
                    hi = max(lo + 1, int(np.searchsorted(ends, base + max_entries, side="right")))
                    chunks.append(slice(first + lo, first + hi))
                    lo = hi
                start = first + ends.size
        first += k - 1 - i
    if first > start:
        chunks.append(slice(start, first))
    return chunks


def nw_plans_uniform(groups: ClassGroups, dtype: torch.dtype = torch.float64,
                     pairs: slice | None = None) -> Segments:
    """NW-corner plans of every pair with uniform weights 1/n and 1/m: closed form, no sort.

    ``pairs``: only this range of pairs (entries keep their absolute pair index).

    Pair (n, m) gets entries r = 1 .. n + m − 1, one per segment of the merged breakpoints
    {p·m} ∪ {q·n} (common denominator n·m, A first on ties): entry r moves rank
    ``a = ⌊r n / (n + m)⌋`` of A (there are a + 1 A-breakpoints among the first r + 1) to rank
    ``b = r − 1 − a`` of B, with mass (min((a+1)m, (b+1)n) − max(a m, b n)) / (n m), 0 on ties.
    """
    pi, pj = groups.pair_i, groups.pair_j
    if pairs is None:
        total = int(sum(groups.counts_host) * (len(groups.counts_host) - 1)) - groups.num_pairs
    else:
        pi, pj = pi[pairs], pj[pairs]
    n, m = _take(groups.counts, pi), _take(groups.counts, pj)
    lengths = n + m - 1
    if pairs is not None:
        total = uniform_entries(groups, pairs)
    pair = torch.repeat_interleave(
        torch.arange(n.numel(), device=n.device), lengths, output_size=total
    )
    start = _take(torch.cumsum(lengths, 0) - lengths, pair)
    n, m = _take(n, pair), _take(m, pair)
    r = torch.arange(1, total + 1, device=n.device) - start
    a = torch.div(r * n, n + m, rounding_mode="floor")
    b = r - 1 - a
    overlap = torch.minimum((a + 1) * m, (b + 1) * n) - torch.maximum(a * m, b * n)
    ia = _take(_take(groups.offsets, pi), pair) + a
    ib = _take(_take(groups.offsets, pj), pair) + b
    if pairs is not None and pairs.start:
        pair = pair + pairs.start
    return Segments(pair, ia, ib, overlap.to(dtype) / (n * m).to(dtype))


def merged_segments(va: Tensor, vb: Tensor, ta: Tensor, tb: Tensor, n: Tensor, m: Tensor,
                    block: Tensor) -> Segments:
    """The north-west-corner segments of every pair from its two lists of cumulative-mass breakpoints
    (``va`` of A, owned by pair ``ta``; ``vb`` of B, by ``tb``): merge each pair's breakpoints
    (stable sorts; A entries come first in the concatenation, so A stays before B on ties) and read
    off the segments. ``ia``/``ib`` of the result are positions inside each class."""
    vals = torch.cat([va, vb])
    is_a = torch.cat([torch.ones_like(ta, dtype=torch.bool), torch.zeros_like(tb, dtype=torch.bool)])
    owner = torch.cat([ta, tb])
    o1 = torch.argsort(vals, stable=True)
    o2 = torch.argsort(owner[o1], stable=True)
    order = o1[o2]
    return _segments(vals[order], is_a[order], n, m, block)


def nw_plans_weighted(groups: ClassGroups, weights: Tensor) -> Segments:
    """NW-corner plans with per-sample weights ([N] grouped order, summing to 1 in each class).

    The breakpoints are cumulative weights; each block is merged by a stable two-key sort
    (value, then block), A before B on ties. O(E log E) for E = Σ_t (n_t + m_t + 2).
    """
    w = weights.detach().to(torch.float64)
    cls = groups.class_index()
    cum = torch.cumsum(w, 0)
    cum = cum - (cum[groups.offsets] - w[groups.offsets])[cls]  # per-class running sums
    last = groups.offsets + groups.counts - 1
    cum[last] = 1.0  # exact end points
    n = groups.counts[groups.pair_i]
    m = groups.counts[groups.pair_j]
    lengths = n + m + 2
    block = torch.cumsum(lengths, 0) - lengths
    tot_a, tot_b = _pair_totals(groups)
    ta, p = _ragged_arange(n + 1, tot_a)
    tb, q = _ragged_arange(m + 1, tot_b)
    zero = torch.zeros((), dtype=torch.float64, device=w.device)
    va = torch.where(p == 0, zero, cum[groups.offsets[groups.pair_i][ta] + p - 1])
    vb = torch.where(q == 0, zero, cum[groups.offsets[groups.pair_j][tb] + q - 1])
    seg = merged_segments(va, vb, ta, tb, n, m, block)
    ia = _take(_take(groups.offsets, groups.pair_i), seg.pair) + seg.ia
    ib = _take(_take(groups.offsets, groups.pair_j), seg.pair) + seg.ib
    return Segments(seg.pair, ia, ib, seg.mass)
