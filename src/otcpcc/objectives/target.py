r"""CPCC targets: the class-to-class distances t(i, j) that CPCC correlates feature distances with.

The tree is one choice, :math:`t(i, j)` = path length between leaves i and j
(``tree.distance_matrix()``). Any symmetric [K, K] class-distance matrix works the same way, e.g.
a misclassification cost matrix: CPCC then asks the feature geometry to reflect those costs.

* :func:`target_matrix` turns a ``LabelTree`` or a matrix into a validated float64 [K, K] tensor.
* :func:`load_cpcc_target` reads a cost-matrix CSV (the format of
  :func:`otcpcc.metrics.load_cost_matrix`, keyed by class names) and symmetrises it as
  :math:`(C + C^\top)/2`, saying whether it had to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

SYMMETRY_RTOL = 1e-6  # |T - Tᵀ| <= SYMMETRY_RTOL * max|T| counts as symmetric


def _as_array(target: Any) -> np.ndarray:
    if isinstance(target, Tensor):
        return target.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(target, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"CPCC target: expected a LabelTree or a [K, K] class-distance matrix, "
                         f"got {type(target).__name__}") from None


def _check_size(k: int) -> None:
    if k < 2:
        raise ValueError(f"CPCC target has {k} class{'es' if k != 1 else ''}; a target needs at least 2 "
                         "classes (CPCC correlates distances between pairs of classes): give a [K, K] "
                         "matrix or a tree with K >= 2 leaves")


def too_few_classes(k: int, fix: str = "train without it (--distance none)") -> str:
    """The one-line reason CPCC cannot regularise K < 3 classes (one pair or none: no correlation)."""
    return (f"CPCC needs at least 3 classes, got {k}: with {'one class pair' if k == 2 else 'no pair'} "
            f"there is no correlation to take, so the regulariser would do nothing; {fix}")


def constant_distance(t: np.ndarray) -> float | None:
    """The one distance shared by every pair of classes of a [K, K] matrix with K >= 3 (CPCC is
    then undefined: the targets have no variance), else None."""
    off = t[~np.eye(t.shape[0], dtype=bool)]
    return float(off[0]) if t.shape[0] >= 3 and np.ptp(off) == 0 else None


def check_target_matrix(t: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Validate a class-distance matrix: square [K, K], finite, >= 0, zero diagonal, symmetric
    within :data:`SYMMETRY_RTOL`; returns it exactly symmetrised ((T + Tᵀ)/2). One-line errors."""
    if t.ndim != 2 or t.shape[0] != t.shape[1]:
        raise ValueError(f"CPCC target matrix must be square [K, K], got shape {t.shape}")
    _check_size(t.shape[0])
    if num_classes is not None and t.shape[0] != num_classes:
        raise ValueError(f"CPCC target matrix is {t.shape[0]}x{t.shape[0]} but there are "
                         f"{num_classes} classes; give one row and column per class")
    if not np.isfinite(t).all():
        i, j = np.argwhere(~np.isfinite(t))[0]
        raise ValueError(f"CPCC target matrix entry ({i}, {j}) is {t[i, j]}; entries must be finite")
    if (t < 0).any():
        i, j = np.argwhere(t < 0)[0]
        raise ValueError(f"CPCC target matrix entry ({i}, {j}) is {t[i, j]}; distances must be >= 0")
    diag = np.abs(np.diag(t))
    if (diag > 0).any():
        i = int(np.argmax(diag))
        raise ValueError(f"CPCC target matrix has {t[i, i]} on its diagonal at class {i}; "
                         "a class's distance to itself must be 0")
    gap = np.abs(t - t.T)
    if t.size and gap.max() > SYMMETRY_RTOL * max(float(np.abs(t).max()), 1e-300):
        i, j = np.unravel_index(int(np.argmax(gap)), gap.shape)
        raise ValueError(f"CPCC target matrix is not symmetric: ({i}, {j}) is {t[i, j]} but "
                         f"({j}, {i}) is {t[j, i]}; symmetrise it, e.g. (C + C.T) / 2")
    same = constant_distance(t)
    if same is not None:
        raise ValueError(f"CPCC target matrix: every distance between two classes is {same:g}, so "
                         "the correlation is undefined (the loss would stay at 1 with no gradient); "
                         "give distances that differ between class pairs")
    return (t + t.T) / 2


def target_matrix(target: Any, num_classes: int | None = None) -> Tensor:
    """[K, K] float64 CPCC target from a ``LabelTree`` (its ``distance_matrix()``) or a matrix
    (tensor / array / nested lists) checked by :func:`check_target_matrix`."""
    if hasattr(target, "distance_matrix"):
        d = torch.tensor(np.asarray(target.distance_matrix()), dtype=torch.float64)
        _check_size(d.shape[0])
        return d
    if isinstance(target, (str, Path)):
        raise ValueError(f"CPCC target {str(target)!r} is a path; load it first with "
                         "load_cpcc_target(path, class_names)")
    t = check_target_matrix(_as_array(target), num_classes)
    return torch.from_numpy(np.ascontiguousarray(t))


def load_cpcc_target(path: str | Path, class_names: list[str]) -> tuple[np.ndarray, bool]:
    """Read a cost-matrix CSV as a CPCC target: ``(T, was_asymmetric)`` with T = (C + Cᵀ)/2.

    The diagonal must be 0 (cost of a correct prediction); C[true, predicted] may be asymmetric,
    CPCC needs a distance, hence the symmetrisation (callers print a note when it changed C).
    """
    from ..metrics import load_cost_matrix

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CPCC target {str(path)!r} not found; check --cpcc-target")
    c = load_cost_matrix(path, class_names)
    asym = bool(np.abs(c - c.T).max() > SYMMETRY_RTOL * max(float(np.abs(c).max()), 1e-300))
    sym = (c + c.T) / 2
    try:
        sym = check_target_matrix(sym, len(class_names))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return sym, asym
