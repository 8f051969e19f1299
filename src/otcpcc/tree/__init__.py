"""Label trees: :class:`LabelTree` (build, validate, distances, levels) and its file formats."""

from .common import Level, TreeError
from .labeltree import LabelTree

__all__ = ["LabelTree", "Level", "TreeError"]
