"""otcpcc: make a model's feature space respect a label hierarchy (CPCC with optimal-transport distances)."""

from .distances import class_distances
from .metrics.decision import crm_predict
from .objectives import CPCCLoss, HXELoss, SoftLabelLoss, cpcc
from .tree import LabelTree

__version__ = "0.1.0"

__all__ = ["CPCCLoss", "HXELoss", "LabelTree", "SoftLabelLoss", "class_distances", "cpcc",
           "crm_predict", "__version__"]
