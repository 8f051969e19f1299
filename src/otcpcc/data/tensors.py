"""Small helpers shared by the in-memory (embedded) datasets: option checks, splits, datasets.

Everything here is deterministic given its ``seed`` and never touches a global random state.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset


def tensor_dataset(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> TensorDataset:
    """A ``TensorDataset`` of ``(x float32 [N, ...], y int64 [N])``; items are ``(x_i, y_i)``."""
    xt = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x)
    yt = torch.as_tensor(np.ascontiguousarray(y) if isinstance(y, np.ndarray) else y)
    xt = xt.to(torch.float32).contiguous()
    yt = yt.to(torch.int64).reshape(-1).contiguous()
    if xt.shape[0] != yt.shape[0]:
        raise ValueError(
            f"x has {xt.shape[0]} rows but y has {yt.shape[0]} labels; pass one label per row"
        )
    return TensorDataset(xt, yt)


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split of ``range(N)`` into (train indices, test indices).

    For each class c with n_c samples, ``round(n_c * test_fraction)`` of them (clipped to
    ``[1, n_c - 1]`` when ``n_c >= 2``; a class of one sample stays in train) go to test,
    chosen by a permutation drawn from ``numpy.random.default_rng(seed)``; classes are visited
    in sorted order. Both returned index arrays are sorted (int64).
    """
    labels = np.asarray(labels).reshape(-1)
    test_fraction = check_fraction("test_fraction", test_fraction)
    rng = np.random.default_rng(check_seed(seed))
    train_parts, test_parts = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(idx.size)]
        n_test = int(round(idx.size * test_fraction))
        if idx.size >= 2:
            n_test = min(max(n_test, 1), idx.size - 1)
        else:
            n_test = 0
        test_parts.append(idx[:n_test])
        train_parts.append(idx[n_test:])
    train = np.sort(np.concatenate(train_parts)).astype(np.int64) if train_parts else np.zeros(0, np.int64)
    test = np.sort(np.concatenate(test_parts)).astype(np.int64) if test_parts else np.zeros(0, np.int64)
    return train, test


# ----------------------------------------------------------------------------- option checks


def reject_unknown(dataset: str, unknown: Mapping[str, Any], valid: list[str]) -> None:
    """Raise if a loader received options it does not know."""
    if unknown:
        names = ", ".join(sorted(unknown))
        raise ValueError(
            f"unknown option(s) {names} for dataset {dataset!r}; valid options: {', '.join(valid)}"
        )


def check_seed(seed: Any) -> int:
    """A seed must be a non-negative int."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """An int ``>= minimum`` (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_float(name: str, value: Any, *, positive: bool = False) -> float:
    """A finite real ``>= 0`` (``> 0`` with ``positive=True``)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def check_fraction(name: str, value: Any) -> float:
    """A real strictly between 0 and 1."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """A plain bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)
