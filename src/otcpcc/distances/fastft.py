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

The rule, from host-side sizes only (no sync): stored plans iff (1) uniform weights, (2) the
plans take the Gram path of :func:`.cost.use_gram` (one product of the [N, N] square; the
alternative there, gathering d-vectors per entry, was 3.2× slower than the bands at d = 512),
(3) the stored entries fit the chunk memory budget (S · ``PLAN_BYTES_PER_ENTRY`` ≤
:func:`.memory.chunk_budget`; the bands' memory is O(K² + tile) for any N), and (4) the work model

.. math:: N^2 + c_E\, S \;\le\; c_B\, R\, M^2, \qquad M = N/R + K,

in units of one Gram-square cell (a d-long product plus ~3 elementwise passes, forward and
backward). ``BAND_CELL_COST`` :math:`c_B = 2.5`: a band cell goes through ~14 elementwise passes
and 1.5 products (half the square, forward and backward) against the Gram cell's ~3 passes and 2
products (ratio 1.7–2.4); the measured per-cell ratio at N = 1024 was 1.6–2.7.
``ENTRY_COST`` :math:`c_E = 12`: an entry is built (~12 int64 passes), gathered, weighted and
scattered twice, all random access; measured at B = 2048, K = 1000 (S = 1.5M, the first size where
the entries dominate) the stored path took 2.4–3.4× the bands, which needs :math:`c_E \ge 11`.
In effect: stored plans for B ≤ 512 (one band: the bands save nothing), for B = 1024 up to
K ≈ 40 and B ≈ 1400 at K ≤ 10; bands otherwise. Per-sample weights always take the bands: their
plans need an O(E log E) merge sort (mostly 1.2–2.6× the bands' time at K = 100; TestCPCC 2.4–8×).

Measured (docs/approx.md; 2-core CPU, 1 and 2 threads, stored / bands, CPCCLoss forward +
backward): B = 256–1024, K = 10, uniform: 0.23–0.79, with 193 operators and 2 host syncs per step
against the bands' 236–299 and 6 (bands in their GPU layout); B ≥ 4096: the bands 1.2–4.4× faster
except K = 10 at d = 64 (stored 0.4–0.6×, not taken: the model has no d term); B = 16384,
K = 1000: bands only (16M entries). ``PATH`` forces a path (tests, benchmarks).

On a GPU the work model is replaced by N ≤ ``GPU_PLANS_MAX_N`` (conditions 1–3 still apply): at
these sizes a CUDA call is bound by kernel launches and host syncs, not by arithmetic (the last
profile on an H200: 1.4 ms of kernels in a 9 ms bands call at B = 1024, K = 100), and the stored
path makes 163 operators and 2 syncs per step there against the bands' ~260 and 6–7 (counted on
CPU with ``benchmarks/gpu_profile.py --device cpu``). Not yet timed on a GPU: the profile times
both paths (``fastft (plans)`` / ``fastft (bands)``) for the next session that has one.

``order="sorted"`` first sorts both classes of each pair along the line between their means
(:mod:`otcpcc.distances.sorted_plans`): the same walk, now invariant to any permutation of the batch;
still ≥ EMD. Extra cost O(N k d + N k log N).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .bands import band_count, nw_cost
from .cost import transport_cost, use_gram
from .groups import ClassGroups
from .memory import chunk_budget
from .nwcorner import nw_plans_uniform, nw_plans_weighted
from .sorted_plans import sorted_nw_plans
from .weights import sample_weights

ORDERS = ("batch", "sorted")
PATH: str | None = None  # None: use_stored_plans decides; "plans" / "bands" force one (tests, benchmarks)
BAND_CELL_COST = 2.5  # time of one cell of a band's square / one cell of the plans' Gram square
ENTRY_COST = 12.0  # time of one stored plan entry / one cell of the Gram square
GPU_PLANS_MAX_N = 4096  # on a GPU: stored plans up to this batch size (see the module docstring)
PLAN_BYTES_PER_ENTRY = 128  # peak bytes per stored entry, fwd + bwd (measured 61 at S = 1.5M; 2x margin)


def use_stored_plans(groups: ClassGroups, weighted: bool, device: torch.device | str) -> bool:
    """Whether ``order="batch"`` evaluates stored NW plans (True) or quantile bands (False): the
    work and memory model of the module docstring, from host-side sizes only (no sync)."""
    if PATH is not None:
        return PATH == "plans"
    n, k = int(sum(groups.counts_host)), groups.num_classes
    entries = n * (k - 1) - groups.num_pairs  # Σ_pairs (n_i + n_j − 1)
    if weighted or not use_gram(n, entries):
        return False
    if entries * PLAN_BYTES_PER_ENTRY > chunk_budget(device):
        return False
    if torch.device(device).type != "cpu":  # launch-bound sizes: the path with fewer launches
        return n <= GPU_PLANS_MAX_N
    r = band_count(n, k)
    return n * n + ENTRY_COST * entries <= BAND_CELL_COST * r * (n / r + k) ** 2


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
