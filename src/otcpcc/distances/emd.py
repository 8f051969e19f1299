r"""Exact optimal transport (``emd``): the earth mover's distance with Euclidean ground cost.

.. math:: \rho(A, B) = \min_{P \ge 0,\ P\mathbf{1} = a,\ P^\top \mathbf{1} = b}
          \sum_{ij} P_{ij} \lVert x_i - y_j \rVert_2

Same value as POT ``ot.emd2(a, b, M)``. Each pair is a small LP; they are solved without
autograd and returned as sparse plans (at most n + m − 1 non-zeros), then all costs are
evaluated in one gather. Two cases need no LP:

* a class with one sample: the only coupling is :math:`P = a b^\top`;
* uniform weights and n = m ≤ 4: an optimal plan is a permutation matrix / n (Birkhoff), found
  by comparing all n! permutations for all such pairs at once.

The rest go to POT's network simplex (C++), pair by pair.
Reference: Bonneel et al., "Displacement interpolation using Lagrangian mass transport" (2011).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import Tensor

from .cost import gather_distances, transport_cost
from .groups import ClassGroups
from .weights import sample_weights

try:  # the network simplex itself, without POT's per-call backend dispatch (~10x less overhead)
    from ot.lp.emd_wrap import emd_c as _emd_c
except ImportError:  # pragma: no cover - older/newer POT layouts
    _emd_c = None

BRUTE_FORCE_MAX = 4


def _solve_lp(a: np.ndarray, b: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Optimal plan of one pair; M is rescaled to max 1 (the plan is scale-free, the solver's
    tolerances are absolute)."""
    top = M.max()
    if top > 0:
        M = M / top
    if _emd_c is not None:
        return _emd_c(a, b, np.ascontiguousarray(M), 100000, 1)[0]
    import ot

    return ot.emd(a, b, M)


def _outer_plans(sel, n, m, ea, eb, wa, wb, parts):
    """Pairs where one class has a single sample: P = a b^T, entries (i, j) for all i, j."""
    for t in sel:
        ia = np.repeat(np.arange(ea[t], ea[t] + n[t]), m[t])
        ib = np.tile(np.arange(eb[t], eb[t] + m[t]), n[t])
        parts.append((np.full(ia.size, t), ia, ib, wa[ia] * wb[ib]))


def _permutation_plans(sel, size, ea, eb, x, parts):
    """Uniform n = m = size: best of all permutations, for all selected pairs at once."""
    perms = torch.tensor(list(itertools.permutations(range(size))), device=x.device)
    a_idx = torch.as_tensor(ea[sel], device=x.device)[:, None] + torch.arange(size, device=x.device)
    b_idx = torch.as_tensor(eb[sel], device=x.device)[:, None] + torch.arange(size, device=x.device)
    ia = a_idx[:, :, None].expand(-1, -1, size).reshape(-1)
    ib = b_idx[:, None, :].expand(-1, size, -1).reshape(-1)
    cost = gather_distances(x, ia, ib).view(len(sel), size, size)  # [P, n, n]
    rows = torch.arange(size, device=x.device)
    total = cost[:, rows[None, :], perms].sum(-1)  # [P, n!]
    best = perms[total.argmin(1)].cpu().numpy()  # [P, n]
    a_np = a_idx.cpu().numpy()
    b_np = np.take_along_axis(b_idx.cpu().numpy(), best, axis=1)
    t = np.repeat(np.asarray(sel), size)
    parts.append((t, a_np.reshape(-1), b_np.reshape(-1), np.full(t.size, 1.0 / size)))


def emd(x: Tensor, groups: ClassGroups, weights: str = "uniform") -> Tensor:
    """[N, d] grouped features -> [pairs] exact OT costs (sparse plans, one gather)."""
    w = sample_weights(x, groups, weights)
    counts = np.asarray(groups.counts_host)
    offs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    pi, pj = groups.pair_i.cpu().numpy(), groups.pair_j.cpu().numpy()
    n, m, ea, eb = counts[pi], counts[pj], offs[pi], offs[pj]
    if w is None:
        wn = np.repeat(1.0 / counts, counts)
    else:
        wn = w.cpu().numpy()
    parts: list[tuple[np.ndarray, ...]] = []
    single = (n == 1) | (m == 1)
    _outer_plans(np.flatnonzero(single), n, m, ea, eb, wn, wn, parts)
    rest = ~single
    if w is None:
        for size in range(2, BRUTE_FORCE_MAX + 1):
            sel = np.flatnonzero(rest & (n == size) & (m == size))
            if sel.size:
                _permutation_plans(sel, size, ea, eb, x.detach(), parts)
                rest[sel] = False
    lp = np.flatnonzero(rest)
    if lp.size:
        xd = x.detach().to(torch.float64).cpu()
        for t in lp:
            A = xd[ea[t] : ea[t] + n[t]]
            B = xd[eb[t] : eb[t] + m[t]]
            M = torch.cdist(A, B).numpy()
            plan = _solve_lp(wn[ea[t] : ea[t] + n[t]], wn[eb[t] : eb[t] + m[t]], M)
            r, c = np.nonzero(plan)
            parts.append((np.full(r.size, t), ea[t] + r, eb[t] + c, plan[r, c]))
    t, ia, ib, mass = (np.concatenate(z) for z in zip(*parts, strict=True))
    dev = x.device

    def as_long(a):
        return torch.as_tensor(a, dtype=torch.long, device=dev)

    return transport_cost(
        x, as_long(ia), as_long(ib), torch.as_tensor(mass, device=dev), as_long(t),
        groups.num_pairs,
    )
