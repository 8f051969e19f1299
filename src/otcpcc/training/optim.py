"""The task loss, the CPCC regulariser and the optimiser of a run, and its learning rate as a pure
function of the epoch."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..runs.config import TrainConfig


def make_task_loss(cfg: TrainConfig, tree) -> nn.Module:
    """The loss on the logits: ``CrossEntropyLoss`` (``ce``), ``HXELoss(tree, alpha)`` (``hxe``)
    or ``SoftLabelLoss(tree, beta)`` (``soft``); each maps (logits [N, K], labels [N]) to the
    batch mean."""
    from ..objectives import HXELoss, SoftLabelLoss

    if cfg.method == "hxe":
        return HXELoss(tree, alpha=cfg.alpha)
    if cfg.method == "soft":
        return SoftLabelLoss(tree, beta=cfg.beta)
    return nn.CrossEntropyLoss()


def make_criterion(cfg: TrainConfig, tree, gather: bool = False) -> nn.Module | None:
    """``CPCCLoss(tree or target matrix, distance, gather, cuda_graph, **distance_options)``, or
    ``None`` for plain CE."""
    if cfg.distance == "none":
        return None
    from ..objectives import CPCCLoss

    return CPCCLoss(tree, distance=cfg.distance, gather=gather, cuda_graph=cfg.cuda_graph,
                    **cfg.distance_options)


def make_optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.wd)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.wd)


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate of 0-based ``epoch``.

    Warm-up ``w`` epochs: ``lr * (epoch + 1) / (w + 1)``. Then, with ``t = epoch - w`` and
    ``T = epochs - w``: cosine ``lr * (1 + cos(pi t / T)) / 2``; step ``lr * gamma ** (t //
    step_size)``; none ``lr``.
    """
    w = cfg.warmup_epochs
    if epoch < w:
        return cfg.lr * (epoch + 1) / (w + 1)
    t, total = epoch - w, max(cfg.epochs - w, 1)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t / total))
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** (t // cfg.step_size)
    return cfg.lr




def extension_note(cfg: TrainConfig, trained_for: int, done: int) -> str | None:
    """What resuming a run trained for ``trained_for`` epochs with ``cfg.epochs`` does to the
    learning rate, when that differs from one uninterrupted ``cfg.epochs`` run; else ``None``.

    The learning rate is ``lr_at(cfg, epoch)`` of the *new* ``cfg.epochs``. Step and constant
    schedules do not depend on ``epochs``, so the extended run equals one run of ``cfg.epochs``
    (bit for bit on the CPU). A cosine schedule does: its first ``done`` epochs followed the
    ``trained_for``-epoch curve and the rest follow the ``cfg.epochs`` one, so the learning rate
    jumps (e.g. 15 -> 20 epochs at lr 0.1: 0.00109 at epoch 15, then 0.0146 at epoch 16, where one
    20-epoch run has 0.0206 and 0.0146).
    """
    if trained_for == cfg.epochs or cfg.schedule != "cosine" or done >= cfg.epochs:
        return None
    old = cfg.replace(epochs=trained_for)
    last = lr_at(old, done - 1) if done > 0 else None
    before = f" (epoch {done} ran at {last:.3g})" if last is not None else ""
    rest = (f"epoch {cfg.epochs} follows" if done + 1 == cfg.epochs else
            f"epochs {done + 1}-{cfg.epochs} follow")
    return (f"this run was scheduled for {trained_for} epoch(s) and now runs {cfg.epochs}: "
            f"{rest} the {cfg.epochs}-epoch cosine schedule, starting at "
            f"lr {lr_at(cfg, done):.3g}{before}, so the result differs from one uninterrupted "
            f"{cfg.epochs}-epoch run (train from the start for that)")
