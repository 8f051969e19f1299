"""Where this process sits in a torchrun job: rank, world size, device, and the few collective
calls the training loop and inference need (``on_main``, ``any``, ``sum``, ``gather_objects``).

Without torchrun (``WORLD_SIZE`` unset or 1) every call is the single-process identity, so the
loop never branches on ranks except through these.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..runs.config import ConfigError, TrainConfig
from ..runs.rundir import RunDirError


@dataclass
class DistEnv:
    """Where this process sits: rank, world size and device (world size 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0; every rank raises if it failed (no rank left waiting)."""
        if self.world_size == 1:
            return fn()
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except (ValueError, OSError) as e:
                error = e
        box = [None if error is None else f"{error}"]
        torch.distributed.broadcast_object_list(box, src=0)
        if error is not None:
            raise error
        if box[0] is not None:
            raise RunDirError(box[0])
        return result

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is set on any rank."""
        if self.world_size == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self._comm_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)

    def sum(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        torch.distributed.all_reduce(t)
        return t.tolist()

    def gather_objects(self, obj: Any, all_ranks: bool = False) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` (a one-element list in a single process)."""
        if self.world_size == 1:
            return [obj]
        parts: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(parts, obj)
        return parts

    def _comm_device(self) -> torch.device:
        backend = torch.distributed.get_backend()
        return self.device if backend == "nccl" else torch.device("cpu")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available; pass --device cpu")
    return torch.device(name)


def init_distributed(cfg: TrainConfig) -> DistEnv:
    """Join the torchrun process group when ``WORLD_SIZE > 1`` (nccl on CUDA, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv(device=resolve_device(cfg.device))
    dist = torch.distributed
    use_cuda = cfg.device != "cpu" and torch.cuda.is_available()
    if cfg.device.startswith("cuda") and not use_cuda:
        resolve_device(cfg.device)  # raises the one-line error
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device,
                   owns_group=owns)




def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


