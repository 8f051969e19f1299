"""Training objectives on features or logits, one file each: the CPCC regulariser (``cpcc.py``)."""

from .cpcc import CPCCLoss, cpcc, pearson

__all__ = ["CPCCLoss", "cpcc", "pearson"]
