r"""Soft-label cross-entropy: Bertinetto, Mueller, Tertikas, Samangooei, Lord, "Making Better
Mistakes: Leveraging Class Hierarchies with Deep Networks", CVPR 2020, §3.3.

The one-hot target of class y is replaced by

.. math:: q_y(j) = \frac{\exp(-\beta\, D[y, j] / \max D)}{\sum_k \exp(-\beta\, D[y, k] / \max D)},

D = ``tree.distance_matrix()`` (weighted path length between leaves; the paper uses the LCA height,
half of it on a balanced unit-weight tree, which only rescales β), and the loss is
:math:`-\sum_j q_y(j) \log \mathrm{softmax}(z)_j`, averaged over the batch. Large β approaches
cross-entropy; β → 0 approaches the uniform target. O(N K) per call; the [K, K] target table is
built once. NaN/inf logits raise a one-line ValueError (one host sync, for the scalar loss); an
empty batch gives 0.0 with a zero gradient, as :class:`~otcpcc.objectives.hxe.HXELoss`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cpcc import check_logits_labels, empty_task_loss, finished_task_loss, real_option


def soft_targets(distance: Any, beta: float) -> Tensor:
    """[K, K] float64: row y is q_y, the softmax over j of ``-beta * D[y, j] / max(D)``."""
    d = torch.tensor(np.array(distance, dtype=np.float64))
    scale = float(d.max()) if d.numel() and float(d.max()) > 0 else 1.0  # one leaf: D = 0
    return torch.softmax(-float(beta) * d / scale, dim=1)


class SoftLabelLoss(nn.Module):
    r"""Cross-entropy of logits [N, K] against the soft targets :math:`q_y` of leaf labels [N];
    the batch mean.

    Args:
        tree: a :class:`~otcpcc.LabelTree` (its distance matrix gives D).
        beta: β > 0, the sharpness of the targets (the paper reports β ∈ {4, …, 30}).
    """

    def __init__(self, tree: Any, beta: float = 10.0):
        super().__init__()
        beta = real_option(beta, "beta", "10")
        if not 0 < beta < float("inf"):
            raise ValueError(f"beta must be a finite number > 0, got {beta}; pass e.g. 10")
        self.beta = beta
        self.num_classes = int(tree.num_classes)
        self.register_buffer("targets", soft_targets(tree.distance_matrix(), beta), persistent=False)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, num_classes={self.num_classes}"

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:  # noqa: D102
        labels = check_logits_labels(logits, labels, self.num_classes, "SoftLabelLoss")
        if logits.shape[0] == 0:
            return empty_task_loss(logits)
        if self.targets.device != logits.device:  # moved once, as CPCCLoss's target
            self.targets = self.targets.to(logits.device)
        q = self.targets[labels].to(logits.dtype)
        return finished_task_loss(F.cross_entropy(logits, q), logits, labels, "the soft-label loss")
