"""CPCC loss (placeholder until the implementation lands)."""

from torch import nn


class CPCCLoss(nn.Module):  # noqa: D101
    pass


def cpcc(features, labels, tree, distance="l2", **options):  # noqa: D103
    raise NotImplementedError
