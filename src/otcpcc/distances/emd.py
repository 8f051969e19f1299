r"""Exact optimal transport (``emd``): the earth mover's distance with Euclidean ground cost.

.. math:: \rho(A, B) = \min_{P \ge 0,\ P\mathbf{1} = a,\ P^\top \mathbf{1} = b}
          \sum_{ij} P_{ij} \lVert x_i - y_j \rVert_2

Same value as POT ``ot.emd2(a, b, M)``. Each pair is a small LP; they are solved without
autograd and returned as sparse plans (at most n + m − 1 non-zeros), then all costs are
evaluated in one gather. Three cases need no LP:

* a class with one sample: the only coupling is :math:`P = a b^\top`;
* uniform weights and n = m ≤ 4: an optimal plan is a permutation matrix / n (Birkhoff), found
  by comparing all n! permutations for all such pairs at once;
* a class with two samples: a fractional knapsack (greedy by the difference of the two samples'
  distances), for all such pairs at once.

The rest go to POT's network simplex (C++), pair by pair. All plans are found on the host from
one copy of the features (on a GPU: one transfer, instead of a device read per class); only the
final evaluation of their costs, with autograd, runs on the features' device.
Reference: Bonneel et al., "Displacement interpolation using Lagrangian mass transport" (2011).
"""

from __future__ import annotations

import functools
import itertools
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import numpy as np
import torch
from torch import Tensor

from .cost import cost_dtype, feature_scale, gather_distances, overflow_error, transport_cost
from .groups import ClassGroups
from .memory import chunk_items
from .weights import sample_weights

BRUTE_FORCE_MAX = 4
LP_PARALLEL_MIN_CELLS = 200_000  # below this, thread start-up costs more than it saves


@functools.cache
def _network_simplex():
    """POT's C++ network simplex, imported on first use (POT takes ~1 s to import). Its bare
    entry point skips ``ot.emd``'s per-call backend dispatch (~10x less overhead per small LP)."""
    try:
        from ot.lp.emd_wrap import emd_c

        return lambda a, b, M: emd_c(a, b, M, 100000, 1)[0]
    except ImportError:  # other POT layouts: the public API
        import ot

        return ot.emd


def _outer_plans(sel: np.ndarray, n, m, ea, eb, w: np.ndarray, parts: list) -> None:
    """Pairs where one class has a single sample: P = a b^T (the only coupling), all at once."""
    if sel.size == 0:
        return
    size = n[sel] * m[sel]
    t = np.repeat(sel, size)
    e = np.arange(size.sum()) - np.repeat(np.cumsum(size) - size, size)
    ia = ea[t] + e // m[t]
    ib = eb[t] + e % m[t]
    parts.append((t, ia, ib, w[ia] * w[ib]))


def _permutation_plans(sel: np.ndarray, size: int, ea, eb, x: Tensor, parts: list) -> None:
    """Uniform n = m = size: best of all permutations, for all selected pairs at once."""
    dev = x.device
    perms = torch.tensor(list(itertools.permutations(range(size))), device=dev)
    ar = torch.arange(size, device=dev)
    a_idx = torch.as_tensor(ea[sel], device=dev)[:, None] + ar
    b_idx = torch.as_tensor(eb[sel], device=dev)[:, None] + ar
    ia = a_idx[:, :, None].expand(-1, -1, size).reshape(-1)
    ib = b_idx[:, None, :].expand(-1, size, -1).reshape(-1)
    cost = gather_distances(x, ia, ib).view(len(sel), size, size)  # [P, n, n]
    total = cost[:, ar[None, :], perms].sum(-1)  # [P, n!]
    best = perms[total.argmin(1)].cpu().numpy()  # [P, n]
    b_np = np.take_along_axis(b_idx.cpu().numpy(), best, axis=1)
    t = np.repeat(sel, size)
    parts.append((t, a_idx.cpu().numpy().reshape(-1), b_np.reshape(-1), np.full(t.size, 1.0 / size)))


def _two_source_plans(sel: np.ndarray, n, m, ea, eb, w: np.ndarray, x: Tensor, parts: list) -> None:
    """Pairs where one class has exactly two samples s0, s1: a fractional knapsack, all at once.

    With flows f_j from s0 and β_j − f_j from s1 to each sample t_j of the other class, the cost is
    Σ_j β_j D(s1, t_j) + Σ_j f_j (D(s0, t_j) − D(s1, t_j)) under 0 ≤ f_j ≤ β_j, Σ_j f_j = α0:
    filling the t_j in increasing order of D(s0, t_j) − D(s1, t_j) is optimal.
    """
    if sel.size == 0:
        return
    swap = n[sel] != 2  # then the other class (B) is the two-sample one
    src = np.where(swap, eb[sel], ea[sel])
    dst = np.where(swap, ea[sel], eb[sel])
    cnt = np.where(swap, n[sel], m[sel])
    j = np.arange(cnt.max())
    valid = j[None, :] < cnt[:, None]
    tgt = dst[:, None] + np.where(valid, j, 0)  # [P, width]
    dev = x.device
    t_flat = torch.as_tensor(tgt.reshape(-1), device=dev)
    width = tgt.shape[1]
    d = [gather_distances(x, torch.as_tensor(np.repeat(src + k, width), device=dev), t_flat)
         .view(len(sel), width).cpu().double().numpy() for k in (0, 1)]
    delta = np.where(valid, d[0] - d[1], np.inf)
    order = np.argsort(delta, axis=1, kind="stable")
    beta = np.where(valid, w[tgt], 0.0)
    beta_sorted = np.take_along_axis(beta, order, axis=1)
    before = np.cumsum(beta_sorted, axis=1) - beta_sorted
    f_sorted = np.clip(w[src][:, None] - before, 0.0, beta_sorted)
    f = np.empty_like(f_sorted)
    np.put_along_axis(f, order, f_sorted, axis=1)
    for k, flow in ((0, f), (1, beta - f)):
        keep = valid & (flow > 0)
        rows, cols = np.nonzero(keep)
        parts.append((sel[rows], src[rows] + k, tgt[rows, cols], flow[rows, cols]))


def _class_row_distances(xs: Tensor, sq: Tensor, c: float, rows: slice, cols: slice) -> np.ndarray:
    """float64 [rows, cols] distances between grouped samples (one product, scale-normalised)."""
    g = torch.addmm(sq[None, cols], xs[rows], xs[cols].T, alpha=-2.0)
    return g.add_(sq[rows, None]).clamp_min_(0).sqrt_().mul_(c).cpu().numpy()


def _lp_plans(sel: np.ndarray, n, m, ea, eb, w: np.ndarray, uniform: bool, x: Tensor,
              parts: list) -> None:
    """The remaining pairs: one optimal plan each on the CPU (sparse plans and their distances).

    Work comes in units: one class A against a chunk of later samples, holding whole pairs (A, B)
    side by side. Each unit's cost matrix is one float64 product (never an [N, N] matrix, chunks
    sized to the memory budget); its pairs' plans are written into one dense array of the same
    shape and read back with one ``nonzero``. With uniform weights and n = m an optimal plan is a
    permutation / n (Birkhoff), found by the assignment solver
    (``scipy.optimize.linear_sum_assignment``); otherwise POT's network simplex. The solvers
    release the GIL, so with enough work (``LP_PARALLEL_MIN_CELLS`` cost entries in all) the
    units are split into one share per thread (``torch.get_num_threads()``).
    """
    if sel.size == 0:
        return
    from scipy.optimize import linear_sum_assignment

    xd = x.detach().to(torch.float64)
    c = feature_scale(xd)
    xs = xd / c
    sq = (xs * xs).sum(1)
    c = float(c)
    rows_of = np.split(sel, np.flatnonzero(np.diff(ea[sel])) + 1)  # pairs grouped by class A
    budget = chunk_items(16, x.device)  # float64 cost and plan entries held at once

    def units(pairs: np.ndarray):
        """(pairs, first column, cost block) of this row class, from torch products on the
        calling (main) thread; pairs in a unit are side by side in its columns."""
        a0, na = int(ea[pairs[0]]), int(n[pairs[0]])
        width = max(1, budget // na)  # columns per chunk of the row's distances
        cut = [0]
        for k in range(1, len(pairs)):  # start a new chunk where this pair would not fit
            if eb[pairs[k]] + m[pairs[k]] > eb[pairs[cut[-1]]] + max(width, m[pairs[cut[-1]]]):
                cut.append(k)
        for lo, hi in zip(cut, cut[1:] + [len(pairs)], strict=True):
            d0, d1 = int(eb[pairs[lo]]), int(eb[pairs[hi - 1]] + m[pairs[hi - 1]])
            yield pairs[lo:hi], d0, _class_row_distances(xs, sq, c, slice(a0, a0 + na), slice(d0, d1))

    def solve(unit: tuple[np.ndarray, int, np.ndarray]) -> tuple[np.ndarray, ...]:
        """One unit's plans (numpy/scipy/POT only: safe in a worker thread)."""
        pairs, d0, D = unit
        if not np.isfinite(D).all():  # the solvers' own errors would not say why (O(cells), host)
            raise overflow_error("emd")  # (the features are finite: grouped_distances checked)
        a0, na = int(ea[pairs[0]]), int(n[pairs[0]])
        wa = w[a0 : a0 + na]
        G = np.zeros_like(D)
        starts = eb[pairs] - d0
        # each pair's largest cost, all at once: the LP gets its block scaled to max 1 (the plan is
        # scale-free, the solver's tolerances are absolute)
        bounds = np.stack([starts, starts + m[pairs]], 1).ravel()
        tops = np.maximum.reduceat(np.append(D.max(0), 0.0), bounds)[::2]
        tops[tops <= 0] = 1.0
        for o, nb, top in zip(starts.tolist(), m[pairs].tolist(), tops.tolist(), strict=True):
            if uniform and na == nb:
                r, col = linear_sum_assignment(D[:, o : o + nb])
                G[r, o + col] = 1.0 / na
            else:  # the division makes the contiguous copy the solver needs
                G[:, o : o + nb] = _network_simplex()(wa, w[d0 + o : d0 + o + nb], D[:, o : o + nb] / top)
        r, col = np.nonzero(G)
        t = pairs[np.searchsorted(starts, col, side="right") - 1]
        return t, a0 + r, d0 + col, G[r, col], D[r, col]

    # Products on this thread (torch uses its own threads), solvers in a pool: the two never
    # compete for the cores. Units are made and solved in batches bounded by the memory budget.
    workers = max(1, min(torch.get_num_threads(), len(sel)))
    parallel = workers > 1 and int((n[sel] * m[sel]).sum()) >= LP_PARALLEL_MIN_CELLS
    results: list[tuple[np.ndarray, ...]] = []
    with ThreadPoolExecutor(workers) if parallel else nullcontext() as pool:
        batch, cells = [], 0
        for pairs in rows_of:
            for unit in units(pairs):
                batch.append(unit)
                cells += unit[2].size
            if cells >= budget or pairs is rows_of[-1]:
                if parallel:  # one share per thread, largest units first, dealt round-robin
                    batch.sort(key=lambda u: -u[2].size)
                    shares = [batch[i::workers] for i in range(workers)]
                    results += [r for share in pool.map(lambda sh: [solve(u) for u in sh], shares)
                                for r in share]
                else:
                    results += [solve(u) for u in batch]
                batch, cells = [], 0
    parts.append(tuple(np.concatenate(z) for z in zip(*results, strict=True)))


def emd(x: Tensor, groups: ClassGroups, weights: str = "uniform") -> Tensor:
    """[N, d] grouped features -> [pairs] exact OT costs (sparse plans, one gather)."""
    w = sample_weights(x, groups, weights)
    counts = np.asarray(groups.counts_host)
    offs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    pi, pj = groups.pair_i.cpu().numpy(), groups.pair_j.cpu().numpy()
    n, m, ea, eb = counts[pi], counts[pj], offs[pi], offs[pj]
    wn = np.repeat(1.0 / counts, counts) if w is None else w.cpu().numpy()
    xh = x.detach().cpu()  # the plans are found on the host: one copy, not one read per unit
    parts: list[tuple[np.ndarray, ...]] = []
    single = (n == 1) | (m == 1)
    _outer_plans(np.flatnonzero(single), n, m, ea, eb, wn, parts)
    rest = ~single
    if w is None:
        for size in range(2, BRUTE_FORCE_MAX + 1):
            sel = np.flatnonzero(rest & (n == size) & (m == size))
            if sel.size:
                _permutation_plans(sel, size, ea, eb, xh, parts)
                rest[sel] = False
    two = rest & ((n == 2) | (m == 2))
    _two_source_plans(np.flatnonzero(two), n, m, ea, eb, wn, xh, parts)
    lp: list[tuple[np.ndarray, ...]] = []  # (t, ia, ib, mass, distance)
    _lp_plans(np.flatnonzero(rest & ~two), n, m, ea, eb, wn, w is None, xh, lp)

    def as_tensor(a, dtype=torch.long):
        return torch.as_tensor(a, dtype=dtype, device=x.device)

    t, ia, ib, mass = (np.concatenate(z) for z in zip(*parts, *(p[:4] for p in lp), strict=True))
    t, ia, ib, mass = as_tensor(t), as_tensor(ia), as_tensor(ib), as_tensor(mass, torch.float64)
    norms = None
    if lp:  # the LP's cost matrices already hold these distances (float64)
        k = ia.shape[0] - lp[0][0].size
        xc = x.detach().to(cost_dtype(x))
        norms = torch.cat([gather_distances(xc, ia[:k], ib[:k]).double(), as_tensor(lp[0][4], torch.float64)])
    return transport_cost(x, ia, ib, mass, t, groups.num_pairs, norms=norms)
