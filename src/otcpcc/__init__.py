"""otcpcc: make a model's feature space respect a label hierarchy (CPCC with optimal-transport distances).

The public names are imported on first use, so that ``import otcpcc.cli`` (the ``otcpcc``
command) starts without importing torch: Ctrl-C during the heavy imports then reaches the
command's handler (one line, exit 130) instead of printing a traceback.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {"class_distances": "distances", "CPCCLoss": "objectives", "cpcc": "objectives",
            "HXELoss": "objectives", "SoftLabelLoss": "objectives", "crm_predict": "metrics.decision",
            "LabelTree": "tree"}

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports them
    from .distances import class_distances
    from .metrics.decision import crm_predict
    from .objectives import CPCCLoss, HXELoss, SoftLabelLoss, cpcc
    from .tree import LabelTree


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'otcpcc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = ["CPCCLoss", "HXELoss", "LabelTree", "SoftLabelLoss", "class_distances", "cpcc",
           "crm_predict", "__version__"]
