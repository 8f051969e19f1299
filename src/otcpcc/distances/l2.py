r"""Distance between class means (``l2``): :math:`\rho(A, B) = \lVert \bar x_A - \bar x_B \rVert_2`.

The ℓ2-CPCC baseline. O(N d + k² d): the [k, k] mean-distance matrix comes from one Gram product.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .cost import transport_cost
from .groups import ClassGroups


def class_means(x: Tensor, groups: ClassGroups) -> Tensor:
    """[N, d] grouped features -> [k, d] mean feature of each present class."""
    cls = groups.class_index()
    sums = torch.zeros(groups.num_classes, x.shape[1], dtype=x.dtype, device=x.device)
    return sums.index_add(0, cls, x) / groups.counts[:, None].to(x.dtype)


def l2(x: Tensor, groups: ClassGroups) -> Tensor:
    """[N, d] grouped features -> [pairs] distances between class means.

    The means are k "samples" and each pair a one-entry plan of mass 1, so the distances and their
    gradient come from the same exact evaluation as every OT distance.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        means = class_means(x.float() if x.dtype != torch.float64 else x, groups)
    return transport_cost(means, groups.pair_i, groups.pair_j, None, None, groups.num_pairs)
