"""otcpcc: make a model's feature space respect a label hierarchy (CPCC with optimal-transport distances)."""

from .distances import class_distances
from .objectives import CPCCLoss, cpcc
from .tree import LabelTree

__version__ = "0.1.0"

__all__ = ["CPCCLoss", "LabelTree", "class_distances", "cpcc", "__version__"]
