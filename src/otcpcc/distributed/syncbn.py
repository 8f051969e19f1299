r"""``--sync-bn``: BatchNorm statistics over the global batch of all DDP ranks.

On CUDA this is PyTorch's :class:`torch.nn.SyncBatchNorm`. PyTorch's version has no CPU kernels
(``batch_norm_stats`` is CUDA-only), so on the CPU (gloo) the BatchNorm layers become
:class:`CPUSyncBatchNorm`, which computes the same statistics with two differentiable
all-reduces:

.. math:: \mu = \frac{\sum_r \sum_{i \in r} x_i}{\sum_r n_r}, \qquad
          \sigma^2 = \frac{\sum_r \sum_{i \in r} (x_i - \mu)^2}{\sum_r n_r}

per channel, :math:`y = \gamma (x - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta`, and running
statistics updated with the unbiased :math:`\sigma^2 \cdot n / (n - 1)` as in ``BatchNorm``. The
backward of an all-reduce (sum) is an all-reduce (sum) of the gradients, so each rank receives
the gradient of the sum of all ranks' losses, which DDP's average turns into the gradient of the
global mean loss: W ranks × batch b with sync BN ≡ 1 process × batch W·b with BatchNorm.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .gather import is_distributed


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient is summed over ranks too."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # noqa: D102
        x = x.contiguous().clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # noqa: D102
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_with_grad(x: Tensor) -> Tensor:
    """Sum of ``x`` over ranks, differentiable (identity outside a multi-rank process group)."""
    return _AllReduceSum.apply(x) if is_distributed() else x


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (any input [N, C, ...]) whose training statistics span all ranks, on the CPU.

    In training mode inside a multi-rank process group, the input is normalised with the
    global-batch statistics of the module docstring; otherwise (eval mode, one process) it is
    plain BatchNorm. (Not a subclass of ``nn.SyncBatchNorm``: DDP refuses those on the CPU.)
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input [N, C, ...], got {input.dim()}D")

    def forward(self, input: Tensor) -> Tensor:  # noqa: D102
        if not (self.training and is_distributed()):
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        c = input.shape[1]
        dims = [0, *range(2, input.dim())]
        shape = [1, c] + [1] * (input.dim() - 2)
        n_local = input.numel() // c
        sums = all_reduce_with_grad(torch.cat([input.sum(dims), input.new_full((1,), n_local)]))
        count = sums[c].detach()
        mean = sums[:c] / count
        centred = input - mean.view(shape)
        var = all_reduce_with_grad((centred * centred).sum(dims)) / count
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                unbiased = var * (count / (count - 1)) if count > 1 else var
                self.running_mean.mul_(1 - factor).add_(factor * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - factor).add_(factor * unbiased.to(self.running_var.dtype))
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm layer of ``model`` synchronised over ranks (weights and buffers kept).

    CUDA (or any non-CPU device): :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`;
    CPU: :class:`CPUSyncBatchNorm`.
    """
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert(model)


def _convert(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module,
                                                                               CPUSyncBatchNorm):
        out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
        if hasattr(module, "qconfig"):
            out.qconfig = module.qconfig
    for name, child in module.named_children():
        out.add_module(name, _convert(child))
    return out
