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

All pairs at once, by quantile bands (:mod:`.bands`): O(N K d) work, no stored plan.
"""

from __future__ import annotations

from torch import Tensor

from .bands import nw_cost
from .groups import ClassGroups
from .weights import sample_weights


def fastft(x: Tensor, groups: ClassGroups, weights: str = "uniform") -> Tensor:
    """[N, d] grouped features -> [pairs] FastFT distances (north-west corner in batch order)."""
    w = sample_weights(x, groups, weights)
    return nw_cost(x, groups, w)  # quantile bands: all NW plans' costs without storing plans
