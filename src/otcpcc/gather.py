r"""Gather a batch from every rank with gradient, for CPCC on the global batch under DDP.

Each rank computes the same global loss L on the gathered batch. The backward of the gather
sums, over ranks, the gradients that flow into each rank's slice, so a rank's local features get
:math:`W \cdot \partial L / \partial x_{\text{local}}` (W ranks). DDP then averages parameter
gradients over ranks, which divides by W again: the update equals that of one process on the
whole global batch (W ranks × batch b ≡ 1 process × batch W·b), with no extra scaling.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` [n_r, ...] from all ranks in rank order (sizes may differ), with gradient."""
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    sizes_host = [int(s) for s in sizes]
    n_max = max(sizes_host)
    pad = x.new_zeros((n_max - x.shape[0], *x.shape[1:]))
    parts = all_gather(torch.cat([x, pad]))
    return torch.cat([p[:s] for p, s in zip(parts, sizes_host, strict=True)])


def all_gather_labels(y: Tensor) -> Tensor:
    """Concatenate integer labels from all ranks (no gradient), in rank order."""
    if not is_distributed():
        return y
    n = torch.tensor([y.shape[0]], device=y.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    sizes_host = [int(s) for s in sizes]
    n_max = max(sizes_host)
    padded = torch.cat([y, y.new_zeros(n_max - y.shape[0])])
    parts = [torch.empty_like(padded) for _ in sizes_host]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes_host, strict=True)])
