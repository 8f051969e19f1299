"""Which parameters train: freeze / train-only name patterns, frozen BatchNorm kept in eval mode,
parameter counts."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from torch import nn


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) numbers of scalar parameters (shared parameters counted once)."""
    params = list(model.parameters())
    return (sum(p.numel() for p in params),
            sum(p.numel() for p in params if p.requires_grad))


def set_frozen_bn_eval(model: nn.Module) -> list[str]:
    """Put every BatchNorm layer whose affine parameters are all frozen (``requires_grad`` False)
    in eval mode: it then normalises with its running statistics and no longer updates them.

    Call it after ``model.train()`` (a :class:`FeatureClassifier` does so itself unless built with
    ``frozen_bn="train"``). BatchNorm layers without affine parameters are left as they are.
    Returns the names of the modules switched to eval mode.
    """
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
                names.append(name)
    return names


def _pattern_matches(name: str, pattern: str) -> bool:
    names = [name]
    if name.startswith("backbone."):
        names.append(name[len("backbone."):])
    prefix = pattern.rstrip(".") + ".*"
    return any(fnmatchcase(n, pattern) or fnmatchcase(n, prefix) for n in names)


def _set_trainable(model: nn.Module, patterns: Sequence[str], trainable: bool) -> None:
    named = list(model.named_parameters())
    hits = {pat: [n for n, _ in named if _pattern_matches(n, pat)] for pat in patterns}
    empty = [pat for pat, names in hits.items() if not names]
    if empty:
        top = sorted({n.split(".")[1] if n.startswith("backbone.") else n.split(".")[0]
                      for n, _ in named})
        which = "train_only" if trainable else "freeze"
        raise ValueError(f"{which} pattern(s) {empty} match no parameter; patterns are fnmatch "
                         f"patterns or prefixes of names such as {top[:8]} or 'backbone'")
    matched = {n for names in hits.values() for n in names}
    for name, p in named:
        if trainable:  # train_only: matched + classifier trainable, rest frozen
            p.requires_grad_(name in matched or name.startswith("classifier."))
        elif name in matched:
            p.requires_grad_(False)


# --------------------------------------------------------------------------------------------
# weights
