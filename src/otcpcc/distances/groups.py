"""Group a batch by class once: the shared first step of every class-to-class distance."""

from __future__ import annotations

from collections.abc import Sequence
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
        index: [N] long, the position in ``classes`` of each grouped sample (:meth:`class_index`),
            or None to derive it from the counts.
    """

    order: Tensor
    classes: Tensor
    counts: Tensor
    offsets: Tensor
    pair_i: Tensor
    pair_j: Tensor
    counts_host: list[int]
    index: Tensor | None = None

    @property
    def num_classes(self) -> int:
        return int(self.classes.numel())

    @property
    def num_pairs(self) -> int:
        return int(self.pair_i.numel())

    def class_index(self) -> Tensor:
        """[N] long: for each grouped sample, the position of its class in ``classes``."""
        if self.index is not None:
            return self.index
        return torch.repeat_interleave(
            torch.arange(self.num_classes, device=self.counts.device), self.counts,
            output_size=sum(self.counts_host),
        )


def group_by_class(labels: Tensor) -> ClassGroups:
    """Stable sort of ``labels`` [N] by value; O(N log N), one host sync (:func:`group_and_read`)."""
    return group_and_read(labels)[0]


def group_and_read(labels: Tensor, flags: Sequence[Tensor] = ()) -> tuple[ClassGroups, list[int]]:
    """:func:`group_by_class` of ``labels`` [N], and in the same transfer the smallest and
    largest label and the values of ``flags`` (device bool or int scalars, e.g. validation
    checks): ``(groups, [min label, max label, *flags])`` (labels 0, -1 for an empty batch).

    Exactly one host sync (one [N + 2 + len(flags)] int64 transfer): the class sizes, which size
    every ragged layout. Everything else stays on the device: a sample starts a new class where its
    sorted label differs from the previous one, the running count of starts is its class
    position, and counts and class ids are scattered by position into [N] buffers whose first k
    entries are used (k = the number of non-zero counts, known once read).
    """
    labels = labels.reshape(-1)
    n = labels.shape[0]
    dev = labels.device
    order = torch.argsort(labels, stable=True)
    ordered = labels.index_select(0, order)
    index = torch.zeros(n, dtype=torch.int64, device=dev)  # class position of each sample:
    torch.cumsum(ordered[1:] != ordered[:-1], 0, out=index[1:])  # the classes started before it
    read = torch.zeros(n + 2 + len(flags), dtype=torch.int64, device=dev)
    read[:n].index_add_(0, index, index.new_ones(1).expand(n))  # class sizes, then zeros
    if n:
        read[n:n + 2] = ordered[::n - 1] if n > 1 else ordered.expand(2)  # first and last
    else:
        read[n + 1] = -1
    if flags:
        read[n + 2:] = torch.stack([f.reshape(()) for f in flags])
    host = read.tolist()  # the one sync
    counts_host = host[:n]
    k = n - counts_host.count(0)
    del counts_host[k:]
    counts = read[:k]
    classes = torch.empty_like(ordered).scatter_(0, index, ordered)[:k]  # equal values per slot
    offsets = torch.cumsum(counts, 0) - counts
    pair_i, pair_j = torch.triu_indices(k, k, offset=1, device=dev)
    groups = ClassGroups(
        order=order,
        classes=classes,
        counts=counts,
        offsets=offsets,
        pair_i=pair_i,
        pair_j=pair_j,
        counts_host=counts_host,
        index=index,
    )
    return groups, host[n:]
