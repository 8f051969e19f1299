"""Input conversion and validation shared by the metrics (numpy arrays, torch tensors or sequences in)."""

from __future__ import annotations

from typing import Any

import numpy as np

# Tolerance on probability rows: each must sum to 1 within this (absolute).
_PROB_SUM_ATOL = 1e-2


def _to_numpy(x: Any) -> np.ndarray:
    """Convert a numpy array / torch tensor / sequence to a numpy array (floats via float64)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor, without importing torch
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.double()  # also covers bfloat16, which numpy cannot hold
        return x.numpy()
    return np.asarray(x)


def _as_scores(x: Any, name: str, num_classes: int | None = None) -> np.ndarray:
    """Return a finite float64 array [N, K]."""
    a = _to_numpy(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, K], got shape {a.shape}; pass one row per sample")
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real numbers, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if a.shape[1] == 0:
        raise ValueError(f"{name} has 0 columns; pass one column per fine class")
    if num_classes is not None and a.shape[1] != num_classes:
        raise ValueError(
            f"{name} has {a.shape[1]} columns but the tree has K={num_classes} classes; "
            f"pass one column per leaf, in leaf order"
        )
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf; check the model outputs")
    return a


def _as_probs(x: Any, name: str = "probs", num_classes: int | None = None) -> np.ndarray:
    """Return probabilities [N, K]: non-negative rows summing to 1 (within 1e-2)."""
    p = _as_scores(x, name, num_classes)
    if p.size and p.min() < 0:
        raise ValueError(f"{name} has negative entries; pass softmax probabilities, not logits")
    if p.size:
        sums = p.sum(axis=1)
        bad = np.flatnonzero(np.abs(sums - 1.0) > _PROB_SUM_ATOL)
        if bad.size:
            raise ValueError(
                f"{name} row {bad[0]} sums to {sums[bad[0]]:.4g}, not 1; "
                f"pass softmax probabilities (logits.softmax(-1))"
            )
    return p


def _as_labels(y: Any, n: int | None, num_classes: int, name: str = "labels") -> np.ndarray:
    """Return int64 labels [N] in [0, num_classes)."""
    a = _to_numpy(y)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D [N], got shape {a.shape}; flatten the labels")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} entries but there are {n} samples; align them")
    if a.size == 0:
        return a.astype(np.int64)
    if np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.int64)
    elif np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a)) and np.all(a == a.round()):
        a = a.astype(np.int64)
    else:
        raise ValueError(f"{name} must be integer class ids, got dtype {a.dtype}")
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"{name} contains class id {bad}, outside 0..{num_classes - 1}; "
            f"labels must be leaf ids of the tree / columns of the score matrix"
        )
    return a


# largest cost (in magnitude) a cost or distance matrix may hold: sums over a test set and over
# the classes (N · K · MAX_COST) stay far below float64's 1.8e308, so no metric overflows to inf
MAX_COST = 1e200


def _as_square(m: Any, name: str, k: int | None = None) -> np.ndarray:
    """Return a finite float64 square matrix [K, K] (K checked when given) whose entries are at
    most :data:`MAX_COST` in magnitude. O(K²)."""
    a = _to_numpy(m)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{name} must be a square [K, K] matrix, got shape {a.shape}")
    if k is not None and a.shape[0] != k:
        raise ValueError(
            f"{name} has shape {a.shape} but K={k} classes; pass a [{k}, {k}] matrix in leaf order"
        )
    a = a.astype(np.float64, copy=False)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf; every entry must be a finite number")
    big = np.abs(a).max(initial=0.0)
    if big > MAX_COST:
        raise ValueError(f"{name} holds {big:g}, above {MAX_COST:g}: sums over a test set would "
                         "overflow to inf; rescale the matrix (e.g. divide it by its largest entry)")
    return a


def _as_features(x: Any, name: str) -> np.ndarray:
    a = _to_numpy(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, d], got shape {a.shape}; flatten the features")
    a = a.astype(np.float64, copy=False)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf; check the encoder outputs")
    return a


def _level_list(tree: Any) -> list[tuple[str, np.ndarray, int]]:
    """(name, ids [K] int64, number of nodes) for each coarse level of ``tree``, finest first."""
    out = []
    for level in tree.levels:
        ids = np.asarray(level.ids, dtype=np.int64)
        n = max(len(level.names), int(ids.max()) + 1 if ids.size else 0)
        out.append((level.name, ids, n))
    return out
