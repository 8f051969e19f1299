"""Group a batch by class once: the shared first step of every class-to-class distance."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ClassGroups:
    """A batch grouped by label, and every pair of present classes.

    The batch is stably sorted by label, so within a class samples keep their batch order.

    Attributes:
        order: [N] long, ``features[order]`` is the grouped batch.
        classes: [k] long, sorted present labels.
        counts: [k] long, samples per present class.
        offsets: [k] long, start of each class in the grouped batch.
        pair_i, pair_j: [k(k-1)/2] long, class positions (into ``classes``) of every pair i < j,
            in :func:`itertools.combinations` order.
        counts_host: the counts as a Python list (used to size ragged layouts).
    """

    order: Tensor
    classes: Tensor
    counts: Tensor
    offsets: Tensor
    pair_i: Tensor
    pair_j: Tensor
    counts_host: list[int]

    @property
    def num_classes(self) -> int:
        return int(self.classes.numel())

    @property
    def num_pairs(self) -> int:
        return int(self.pair_i.numel())

    def class_index(self) -> Tensor:
        """[N] long: for each grouped sample, the position of its class in ``classes``."""
        return torch.repeat_interleave(
            torch.arange(self.num_classes, device=self.counts.device), self.counts
        )


def group_by_class(labels: Tensor) -> ClassGroups:
    """Stable sort of ``labels`` [N] by value; O(N log N), one host sync for the class sizes."""
    labels = labels.reshape(-1)
    order = torch.argsort(labels, stable=True)
    classes, counts = torch.unique_consecutive(labels[order], return_counts=True)
    offsets = torch.cumsum(counts, 0) - counts
    k = int(classes.numel())
    pair_i, pair_j = torch.triu_indices(k, k, offset=1, device=labels.device)
    return ClassGroups(
        order=order,
        classes=classes,
        counts=counts,
        offsets=offsets,
        pair_i=pair_i,
        pair_j=pair_j,
        counts_host=counts.tolist(),
    )
