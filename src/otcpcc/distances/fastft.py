r"""Fast FlowTree (``fastft``, alias ``fft``).

Attach every sample as a leaf under its class in the label tree. Under that tree metric all
samples of A are equally far from all samples of B, so every coupling is optimal; the greedy
north-west-corner walk over both classes in batch order (the FastFT algorithm) picks one in
O(n + m). Its cost under the real Euclidean ground metric is the distance:

.. math:: \rho_{\mathrm{FT}}(A, B) = \sum_{ij} P^{\mathrm{NW}}_{ij}\, \lVert x_i - y_j \rVert_2
          \;\ge\; \mathrm{EMD}(A, B).

With uniform weights :math:`P_{ij} = |[i/n, (i+1)/n] \cap [j/m, (j+1)/m]|`. Reference: Zeng et
al., "Learning structured representations by embedding class hierarchy with fast optimal
transport" (2024); FlowTree: Backurs et al. (ICML 2020).

All pairs at once. ``order="batch"`` (default) is the published algorithm: each class is walked
in batch order, so the value depends on how the samples arrive. Its costs are evaluated by one of
two paths with the same values (to rounding) and the same constant-plan gradient, chosen by
:func:`use_stored_plans` from a work and memory model:

* stored plans (:func:`.nwcorner.nw_plans_uniform`, S = Σ_pairs (n + m − 1) = N(K − 1) − K(K − 1)/2
  entries) evaluated by :func:`.cost.transport_cost`: one Gram product of the whole [N, N] square;
* quantile bands (:mod:`.bands`): R = N // max(K, 512) dense problems of M ≈ N/R + K members,
  O(N K d) work, no stored plan (built for 16k-sample batches over 1000 classes).

The rule: stored plans iff (1) uniform weights, (2) N ≤ ``cost.GRAM_ALWAYS_N`` (one Gram square;
above it the plan path gathers or sorts millions of entries), (3) the square is not larger than
the bands' work, :math:`N^2 \le` ``BAND_CELL_COST`` :math:`\cdot R M^2`, and (4) the stored
entries fit the chunk memory budget (S · ``PLAN_BYTES_PER_ENTRY`` ≤ :func:`.memory.chunk_budget`).
``BAND_CELL_COST = 2``: a band cell goes through ~14 elementwise passes and 2 products (forward and
backward, on half the square), a Gram-path cell through ~2 passes and 2 products; the measured
per-cell ratio at N = 1024 was 1.6–2.7. In effect: plans below 1536 samples, plans up to 2048
samples when K is large (e.g. K ≥ 300), bands otherwise. Per-sample weights always take the
bands: their plans need an O(E log E) merge sort (measured 1.4–2.5× the bands' time at K = 100,
2–8× for TestCPCC). Measured (2-core CPU, 2 threads, ratio stored/bands, fwd+bwd of CPCCLoss):
B = 256–1024, K = 10–100, uniform: 0.23–0.98 (d = 64), 0.61–0.86 (d = 512), and the stored path
runs 193 operators and 2 host syncs per step against the bands' 236–299 and 6; B = 4096:
bands 1.8–3.2× faster except K = 10 at d = 64; B = 16384, K = 1000: bands only (16M entries).
``order="sorted"`` first sorts both classes of each pair along the line between their means
(:mod:`otcpcc.distances.sorted_plans`): the same walk, now invariant to any permutation of the batch;
still ≥ EMD. Extra cost O(N k d + N k log N).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import cost
from .bands import band_count, nw_cost
from .cost import transport_cost
from .groups import ClassGroups
from .memory import chunk_budget
from .nwcorner import nw_plans_uniform, nw_plans_weighted
from .sorted_plans import sorted_nw_plans
from .weights import sample_weights

ORDERS = ("batch", "sorted")
PATH: str | None = None  # None: use_stored_plans decides; "plans" / "bands" force one (tests, benchmarks)
BAND_CELL_COST = 2  # time of one cell of a band's square / one cell of the plans' Gram square
PLAN_BYTES_PER_ENTRY = 128  # peak bytes per stored plan entry (indices, masses, gathers, backward)


def use_stored_plans(groups: ClassGroups, weighted: bool, device: torch.device | str) -> bool:
    """Whether ``order="batch"`` evaluates stored NW plans (True) or quantile bands (False); the
    rule and its measurements are in the module docstring. From host-side sizes only (no sync)."""
    if PATH is not None:
        return PATH == "plans"
    n, k = int(sum(groups.counts_host)), groups.num_classes
    if weighted or n > cost.GRAM_ALWAYS_N:
        return False
    entries = n * (k - 1) - groups.num_pairs
    if entries * PLAN_BYTES_PER_ENTRY > chunk_budget(device):
        return False
    r = band_count(n, k)
    return n * n <= BAND_CELL_COST * r * (n / r + k) ** 2


def fastft(x: Tensor, groups: ClassGroups, weights: str = "uniform", order: str = "batch") -> Tensor:
    """[N, d] grouped features -> [pairs] FastFT distances: the north-west corner in batch order
    (``order="batch"``) or along each pair's mean line (``order="sorted"``; checked by
    :func:`otcpcc.distances.check_options`)."""
    w = sample_weights(x, groups, weights)
    if order == "sorted":
        seg = sorted_nw_plans(x, groups, w)
        return transport_cost(x, seg.ia, seg.ib, seg.mass, seg.pair, groups.num_pairs)
    if use_stored_plans(groups, w is not None, x.device):
        seg = nw_plans_uniform(groups) if w is None else nw_plans_weighted(groups, w)  # forced weighted
        return transport_cost(x, seg.ia, seg.ib, seg.mass, seg.pair, groups.num_pairs)
    return nw_cost(x, groups, w)  # quantile bands: all NW plans' costs without storing plans
