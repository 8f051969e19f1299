"""A run's CPCC target matrix (``--cpcc-target FILE``): loaded once, copied into the run directory.

The run directory keeps the exact (symmetrised) matrix the run was trained against as
``cpcc_target.csv`` (header of class names, one row per class: the format
:func:`otcpcc.metrics.load_cost_matrix` reads), so evaluation and resuming never depend on the
original file still being there or unchanged.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np

from .checkpoint import atomic_write_text
from .config import TrainConfig

TARGET_FILE = "cpcc_target.csv"


def load_run_target(cfg: TrainConfig, class_names: list[str], run_dir: Path | None = None,
                    say=None) -> np.ndarray | None:
    """The [K, K] CPCC target of ``cfg`` (None: the tree). A resumed run reads its own copy.

    An asymmetric cost matrix is symmetrised as (C + Cᵀ)/2, with a note through ``say``
    (default: stderr)."""
    if not cfg.cpcc_target:
        return None
    from ..objectives.target import load_cpcc_target

    if run_dir is not None:  # resuming: the exact matrix the run started with, never the original again
        return read_run_target(run_dir, class_names, cfg.cpcc_target)
    path = Path(cfg.cpcc_target)
    matrix, asym = load_cpcc_target(path, class_names)
    if asym:
        msg = (f"otcpcc: note: --cpcc-target {path} is not symmetric; CPCC uses (C + C^T)/2 "
               "(a distance between classes)")
        (say or (lambda m: print(m, file=sys.stderr)))(msg)
    return matrix


def save_run_target(run_dir: Path, matrix: np.ndarray, class_names: list[str]) -> None:
    """Write ``matrix`` as ``run_dir/cpcc_target.csv`` (exact float repr; atomic)."""
    buf = io.StringIO()
    buf.write("," + ",".join(class_names) + "\n")
    for name, row in zip(class_names, matrix, strict=True):
        buf.write(name + "," + ",".join(repr(float(v)) for v in row) + "\n")
    atomic_write_text(run_dir / TARGET_FILE, buf.getvalue())


def read_run_target(run_dir: Path, class_names: list[str], cpcc_target: str | None = None) -> np.ndarray | None:
    """The target a run was trained against (its ``cpcc_target.csv``), or None (trained against
    its tree). ``cpcc_target``: the run's ``--cpcc-target`` (config.json); when set, a missing copy
    is a ValueError (metrics against it would silently go missing), not None."""
    path = Path(run_dir) / TARGET_FILE
    if not path.is_file():
        if cpcc_target:
            raise ValueError(
                f"{path} is missing, but the run was trained with --cpcc-target {cpcc_target}; "
                f"restore the run's copy of that matrix (e.g. cp {cpcc_target} {path}, if that file "
                "is unchanged)")
        return None
    from ..objectives.target import load_cpcc_target

    return load_cpcc_target(path, class_names)[0]
