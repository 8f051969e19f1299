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
in batch order, so the value depends on how the samples arrive; its costs are evaluated by quantile
bands (:mod:`.bands`): O(N K d) work, no stored plan. ``order="sorted"`` first sorts both classes of
each pair along the line between their means (:mod:`otcpcc.distances.sorted_plans`): the same walk,
now invariant to any permutation of the batch; still ≥ EMD. Extra cost O(N k d + N k log N).
"""

from __future__ import annotations

from torch import Tensor

from .bands import nw_cost
from .cost import transport_cost
from .groups import ClassGroups
from .sorted_plans import sorted_nw_plans
from .weights import sample_weights

ORDERS = ("batch", "sorted")


def fastft(x: Tensor, groups: ClassGroups, weights: str = "uniform", order: str = "batch") -> Tensor:
    """[N, d] grouped features -> [pairs] FastFT distances: the north-west corner in batch order
    (``order="batch"``) or along each pair's mean line (``order="sorted"``; checked by
    :func:`otcpcc.distances.check_options`)."""
    w = sample_weights(x, groups, weights)
    if order == "sorted":
        seg = sorted_nw_plans(x, groups, w)
        return transport_cost(x, seg.ia, seg.ib, seg.mass, seg.pair, groups.num_pairs)
    return nw_cost(x, groups, w)  # quantile bands: all NW plans' costs without storing plans
