"""The one container every dataset loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch.utils.data import Dataset

from ..tree import LabelTree


@dataclass
class DataBundle:
    """A dataset ready for training: splits, the label tree and the input shape.

    ``train`` and ``test`` yield ``(x, y)`` with ``y`` the fine class id, which is the leaf index
    in ``tree``. ``extra`` holds further splits (e.g. BREEDS-style ``target_train`` and
    ``target_test``); ``meta`` holds free-form facts (source/target class lists, file paths).
    """

    name: str
    train: Dataset
    test: Dataset
    tree: LabelTree
    input_shape: tuple[int, ...]
    extra: dict[str, Dataset] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.tree.num_classes
