"""One optimisation step (loss = task loss + lambda * (1 - CPCC)) and the running sums of an epoch.

The task loss is cross-entropy, or the run's ``--method`` loss (``training.optim.make_task_loss``);
the ``ce`` figures of the log hold its value."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed.env import DistEnv
from ..runs.config import TrainConfig


@dataclass
class StepStats:
    loss: float
    ce: float  # the task loss (CE, HXE or soft-label CE)
    cpcc: float  # batch CPCC (nan when not computed)
    correct: int
    n: int


def train_step(model: nn.Module, criterion: nn.Module | None, optimizer: torch.optim.Optimizer,
               x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, device: torch.device,
               amp: bool, task_loss: nn.Module | None = None) -> StepStats:
    """One optimisation step on a batch: loss = task_loss(logits, y) + lam * (1 - CPCC);
    ``task_loss`` None = cross-entropy."""
    x = x.to(device, non_blocking=True)
    y = y.to(device, non_blocking=True).long()
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
        features, logits = model(x)
    try:
        ce = F.cross_entropy(logits.float(), y) if task_loss is None else task_loss(logits.float(), y)
    except ValueError:  # HXE / soft labels refuse NaN logits: a diverged model, as below
        if bool(torch.isfinite(logits.detach()).all()):
            raise
        nan = float("nan")
        return StepStats(nan, nan, nan, 0, int(y.numel()))
    loss, cpcc_value = ce, float("nan")
    if criterion is not None:
        try:
            if cfg.lam > 0:
                reg = criterion(features.float(), y)  # 1 - CPCC of the (global) batch
                loss = ce + cfg.lam * reg
            else:  # lam = 0: monitor CPCC without training on it
                with torch.no_grad():
                    reg = criterion(features.float().detach(), y)
        except ValueError:
            if bool(torch.isfinite(features.detach()).all()):
                raise
            # the model diverged (NaN/inf features): a non-finite step, which the loop turns
            # into NonFiniteLoss (a note inside compare), not a bad-input error
            nan = float("nan")
            return StepStats(nan, nan, nan, 0, int(y.numel()))
        cpcc_value = 1.0 - float(reg.detach())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    correct = int((logits.detach().argmax(dim=1) == y).sum())
    return StepStats(float(loss.detach()), float(ce.detach()), cpcc_value, correct, int(y.numel()))


@dataclass
class EpochTotals:
    """Running sums over one epoch (saved in mid-epoch checkpoints)."""

    loss: float = 0.0
    ce: float = 0.0
    cpcc: float = 0.0
    cpcc_steps: int = 0
    correct: int = 0
    n: int = 0
    steps: int = 0
    seconds: float = 0.0

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> EpochTotals:
        return cls(**state) if state else cls()

    def add(self, s: StepStats) -> None:
        self.loss += s.loss * s.n
        self.ce += s.ce * s.n
        if not math.isnan(s.cpcc):
            self.cpcc += s.cpcc
            self.cpcc_steps += 1
        self.correct += s.correct
        self.n += s.n
        self.steps += 1

    def postfix(self, seconds: float) -> dict[str, str]:
        n = max(self.n, 1)
        out = {"loss": f"{self.loss / n:.3f}", "ce": f"{self.ce / n:.3f}"}
        if self.cpcc_steps:
            out["cpcc"] = f"{self.cpcc / self.cpcc_steps:.3f}"
        out["acc"] = f"{self.correct / n:.3f}"
        out["samples/s"] = f"{self.n / max(self.seconds + seconds, 1e-9):.0f}"
        return out

    def finish(self, env: DistEnv, *, epoch: int, lr: float) -> dict[str, Any]:
        """The epoch's log row, with sums reduced over ranks (per-rank rates added up)."""
        sums = env.sum([self.loss, self.ce, self.correct, self.n])
        loss, ce, correct, n = sums
        n = max(n, 1.0)
        return {
            "epoch": epoch,
            "loss": loss / n,
            "ce": ce / n,
            "cpcc": self.cpcc / self.cpcc_steps if self.cpcc_steps else float("nan"),
            "train_acc": correct / n,
            "test_acc": float("nan"),
            "lr": lr,
            "epoch_time": self.seconds,
            "samples_per_s": n / max(self.seconds, 1e-9),
        }


