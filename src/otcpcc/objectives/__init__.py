"""Training objectives on features or logits, one file each: the CPCC regulariser (``cpcc.py``),
hierarchical cross-entropy (``hxe.py``) and soft-label cross-entropy (``soft_labels.py``)."""

from .correlation import pearson
from .cpcc import CPCCLoss, cpcc
from .hxe import HXELoss
from .soft_labels import SoftLabelLoss, soft_targets

__all__ = ["CPCCLoss", "HXELoss", "SoftLabelLoss", "cpcc", "pearson", "soft_targets"]
