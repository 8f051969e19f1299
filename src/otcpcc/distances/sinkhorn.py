r"""Entropic OT (``sinkhorn``, alias ``sk``): the transport cost of the Sinkhorn plan.

.. math:: P^\varepsilon = \arg\min_{P \in U(a, b)} \langle P, M\rangle - \varepsilon H(P),\qquad
          \rho(A, B) = \langle M, P^\varepsilon \rangle,

with :math:`M_{ij} = \lVert x_i - y_j \rVert_2` (not normalised), uniform a, b and
:math:`\varepsilon` = ``reg`` (default 10). The plan is the one POT's ``ot.sinkhorn(a, b, M, reg)``
returns. All pairs are solved together on a padded [pairs, n_max, m_max] batch in the log
domain (stable for any cost scale), masking padded rows and columns with −inf potentials:

.. math:: f_i \leftarrow \varepsilon \log a_i - \varepsilon \operatorname{LSE}_j \frac{g_j - M_{ij}}{\varepsilon},\quad
          g_j \leftarrow \varepsilon \log b_j - \varepsilon \operatorname{LSE}_i \frac{f_i - M_{ij}}{\varepsilon}.

Iterates until the row-marginal error (ℓ2, checked every 10 iterations, max over pairs) is below
``tol`` (default 1e-9 in float64, 1e-6 in float32) or ``max_iter`` (1000) iterations, as POT.
Reference: Cuturi, "Sinkhorn distances" (NeurIPS 2013).
Memory O(pairs · n_max · m_max).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .cost import cost_dtype, gather_distances, overflow_error, transport_cost
from .groups import ClassGroups

SCALING_MAX_RANGE = (30.0, 300.0)  # float32, float64: exp(-range) stays far from underflow
# Largest eps · max(M / reg): the potentials are of size max(M)/reg and carry an absolute rounding
# error of eps times that, which enters the plan through exp(). At 0.1 the costs are off by ~1%
# (measured against float64), beyond it the plan degrades to garbage and then NaN (M / reg = inf).
MAX_ROUNDING_IN_EXP = 0.1


def _padded_index(groups: ClassGroups, which: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """[pairs, width] sample indices of each pair's class (``which``) and their validity mask."""
    cnt = groups.counts[which]
    ar = torch.arange(width, device=cnt.device)
    valid = ar[None, :] < cnt[:, None]
    idx = groups.offsets[which][:, None] + torch.where(valid, ar[None, :], 0)
    return idx, valid


def _log_domain(Mr: Tensor, va: Tensor, vb: Tensor, max_iter: int, tol: float) -> Tensor:
    """Log-domain iterations on potentials f, g (divided by reg): stable for any cost range."""
    neg_inf = torch.tensor(-torch.inf, dtype=Mr.dtype, device=Mr.device)
    log_a = torch.where(va, -torch.log(va.sum(1, keepdim=True).to(Mr.dtype)), neg_inf)
    log_b = torch.where(vb, -torch.log(vb.sum(1, keepdim=True).to(Mr.dtype)), neg_inf)
    f = torch.zeros_like(log_a).masked_fill(~va, -torch.inf)
    g = torch.zeros_like(log_b).masked_fill(~vb, -torch.inf)
    for it in range(max_iter):
        g = (log_b - torch.logsumexp(f[:, :, None] - Mr, dim=1)).masked_fill(~vb, -torch.inf)
        f = (log_a - torch.logsumexp(g[:, None, :] - Mr, dim=2)).masked_fill(~va, -torch.inf)
        if it % 10 == 0:  # rows are exact after the f update; measure the columns, as POT does
            col = torch.exp(f[:, :, None] + g[:, None, :] - Mr).sum(1)
            if (col - log_b.exp()).norm(dim=1).max() < tol:
                break
    return torch.exp(f[:, :, None] + g[:, None, :] - Mr)


def _scaling(Mr: Tensor, va: Tensor, vb: Tensor, max_iter: int, tol: float) -> Tensor:
    """Matrix-scaling iterations u, v on K = exp(−(M − min M)/reg) (POT's update order)."""
    valid = va[:, :, None] & vb[:, None, :]
    low = torch.where(valid, Mr, torch.inf).amin((1, 2), keepdim=True)
    K = torch.where(valid, torch.exp(low - Mr), 0)
    a = va / va.sum(1, keepdim=True).to(Mr.dtype)
    b = vb / vb.sum(1, keepdim=True).to(Mr.dtype)
    u = a.clone()
    for it in range(max_iter):
        v = torch.where(vb, b / (K * u[:, :, None]).sum(1), 0)
        u = torch.where(va, a / (K * v[:, None, :]).sum(2), 0)
        if it % 10 == 0:
            col = v * (K * u[:, :, None]).sum(1)
            if (col - b).norm(dim=1).max() < tol:
                break
    return u[:, :, None] * K * v[:, None, :]


def sinkhorn_plans(
    M: Tensor, va: Tensor, vb: Tensor, reg: float, max_iter: int, tol: float
) -> Tensor:
    """[P, n, m] Sinkhorn plans with uniform marginals on the valid rows/columns of each pair.

    Raises ValueError when reg is below the precision of ``M / reg``
    (``MAX_ROUNDING_IN_EXP``). Uses matrix scaling when every pair's cost range is under ``SCALING_MAX_RANGE``·reg
    (no underflow of exp), the log domain otherwise; both converge to the same plan.
    """
    valid = va[:, :, None] & vb[:, None, :]
    Mr = torch.where(valid, M / reg, 0)
    eps = torch.finfo(Mr.dtype).eps
    spread = (Mr.amax((1, 2)) - torch.where(valid, Mr, torch.inf).amin((1, 2))).max()
    top, spread, largest = torch.stack([Mr.amax(), spread, M.amax()]).tolist()  # one sync for all
    if not math.isfinite(largest):  # the distances overflowed (finite features were checked)
        raise overflow_error("sinkhorn")
    if not top * eps <= MAX_ROUNDING_IN_EXP:
        least = largest * eps / MAX_ROUNDING_IN_EXP
        wider = "use float64 features, " if Mr.dtype != torch.float64 else ""
        raise ValueError(
            f"sinkhorn reg={reg:g} is too small for these {str(Mr.dtype)[6:]} costs (largest "
            f"{largest:.3g}): cost/reg loses its precision below reg={least:.2g} and the "
            f"plan would be wrong or NaN; raise reg, {wider}or use 'emd' "
            "(the exact reg -> 0 limit)")
    limit = SCALING_MAX_RANGE[Mr.dtype == torch.float64]
    solve = _scaling if spread < limit else _log_domain
    return solve(Mr, va, vb, max_iter, tol)


def sinkhorn(
    x: Tensor,
    groups: ClassGroups,
    reg: float = 10.0,
    max_iter: int = 1000,
    tol: float | None = None,
) -> Tensor:
    """[N, d] grouped features -> [pairs] Sinkhorn transport costs ⟨M, P^ε⟩ (options checked by
    :func:`otcpcc.distances.check_options`)."""
    dtype = cost_dtype(x)
    if tol is None:
        tol = 1e-9 if dtype == torch.float64 else 1e-6
    n_max = max(groups.counts_host)
    ia, va = _padded_index(groups, groups.pair_i, n_max)
    ib, vb = _padded_index(groups, groups.pair_j, n_max)
    P = groups.num_pairs
    ia_full = ia[:, :, None].expand(P, n_max, n_max).reshape(-1)
    ib_full = ib[:, None, :].expand(P, n_max, n_max).reshape(-1)
    with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        xd = x.detach().to(dtype)
        M = gather_distances(xd, ia_full, ib_full)
        plan = sinkhorn_plans(M.view(P, n_max, n_max), va, vb, float(reg), int(max_iter), float(tol))
    # padded entries (beyond a class's samples) carry mass exactly 0: they add nothing to the
    # costs or the gradient, and keeping them saves selecting the valid ones (a host sync); M
    # holds exactly the distances transport_cost would compute for these entries
    pair = torch.arange(P, device=x.device)[:, None].expand(P, n_max * n_max).reshape(-1)
    return transport_cost(x, ia_full, ib_full, plan.view(-1), pair, P, norms=M, exact_norms=True)
