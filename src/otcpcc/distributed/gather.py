r"""Gather a batch from every rank with gradient, for CPCC on the global batch under DDP.

Forward: rank r holds ``x_r`` [n_r, ...] (sizes may differ between ranks); every rank gets the
concatenation :math:`X = [x_0; x_1; \dots; x_{W-1}]` in rank order, and computes the same global
loss :math:`L(X)`.

Backward: the gradient of the gather is the *sum over ranks* of the gradients that flow into
rank r's rows (an all-reduce of :math:`\partial L / \partial X`, then rank r keeps its rows).
Since every rank computes the same L,

.. math:: g_r = \sum_{r'} \frac{\partial L}{\partial X}\Big|_{\text{rows of } r}
              = W \cdot \frac{\partial L}{\partial x_r}.

DistributedDataParallel then *averages* parameter gradients over the W ranks, which divides by
W again: :math:`\frac{1}{W}\sum_r J_r^\top g_r = \sum_r J_r^\top \partial L/\partial x_r =
\partial L/\partial\theta`, the gradient of one process on the whole global batch. So
W ranks × batch b ≡ 1 process × batch W·b with no extra scaling of the CPCC term (the mean
cross-entropy on equal local batches averages to the global mean the same way). In a custom
loop without DDP, divide the summed parameter gradients by W to get the same update.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _sizes(x: Tensor) -> list[int]:
    """Row counts of ``x`` on every rank, in rank order."""
    n = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    return [int(s) for s in sizes]


def _gather_rows(x: Tensor, sizes: list[int]) -> Tensor:
    """Concatenate ``x`` (this rank's ``sizes[rank]`` rows) from all ranks; pads to the largest."""
    n_max = max(sizes)
    padded = torch.cat([x, x.new_zeros((n_max - x.shape[0], *x.shape[1:]))]).contiguous()
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])


class _AllGatherRows(torch.autograd.Function):
    """Forward: all-gather rows. Backward: all-reduce (sum) the gradient, keep this rank's rows."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: list[int]) -> Tensor:  # noqa: D102
        rank = dist.get_rank()
        ctx.start = sum(sizes[:rank])
        ctx.stop = ctx.start + sizes[rank]
        return _gather_rows(x, sizes)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start:ctx.stop], None


def all_gather_with_grad(x: Tensor) -> Tensor:
    r"""Concatenate ``x`` [n_r, ...] from all ranks in rank order (sizes may differ), with gradient.

    Every rank must call it (and later run backward through it) the same number of times. The
    gradient reaching ``x`` is the sum over ranks of the gradients of its rows (see the module
    docstring: :math:`W\,\partial L/\partial x_r` when every rank computes the same L). Outside
    an initialised process group with more than one rank, returns ``x`` itself.
    """
    if not is_distributed():
        return x
    return _AllGatherRows.apply(x, _sizes(x))


def all_gather_labels(y: Tensor) -> Tensor:
    """Concatenate integer labels [n_r] from all ranks (no gradient), in rank order."""
    if not is_distributed():
        return y
    return _gather_rows(y, _sizes(y))
