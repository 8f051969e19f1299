"""scikit-learn's 8x8 handwritten digits (ships with scikit-learn, no download) with the MNIST tree.

Tree (from earlier CPCC work on MNIST), bottom-up: digit -> mid group
{0,2,4} / {6,8} / {1,3,5} / {7,9} -> parity even / odd -> root. With unit edge weights the
leaf distances are 2 (same mid group), 4 (same parity) and 6 (different parity).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..tree import LabelTree
from .bundle import DataBundle
from .tensors import (
    check_bool,
    check_fraction,
    check_seed,
    reject_unknown,
    stratified_split,
    tensor_dataset,
)

#: digit -> mid group id: 0 = {0,2,4}, 1 = {6,8}, 2 = {1,3,5}, 3 = {7,9}
DIGIT_TO_MID = np.array([0, 2, 0, 2, 0, 2, 1, 3, 1, 3], dtype=np.int64)
#: digit -> parity id: 0 = even, 1 = odd
DIGIT_TO_PARITY = np.arange(10, dtype=np.int64) % 2
MID_NAMES = ["g024", "g68", "g135", "g79"]
PARITY_NAMES = ["even", "odd"]


def digits_tree() -> LabelTree:
    """The MNIST tree over leaves ``"0".."9"``; levels ``mid`` (4 groups) then ``parity`` (2)."""
    return LabelTree.from_levels(
        [DIGIT_TO_MID, DIGIT_TO_PARITY],
        leaf_names=[str(d) for d in range(10)],
        level_names=["mid", "parity"],
        node_names=[MID_NAMES, PARITY_NAMES],
    )


def load_digits(data_dir: str | None = None, seed: int = 0, **options: Any) -> DataBundle:
    """The 1797 8x8 digits, pixels scaled from 0..16 to [0, 1], split stratified by ``seed``.

    Options: ``test_fraction=0.2`` (share of each class held out, see
    :func:`~otcpcc.data.tensors.stratified_split`); ``flatten=False`` (items ``x`` are float32
    ``[1, 8, 8]`` images, or ``[64]`` vectors with ``flatten=True``). ``data_dir`` is ignored.
    Labels are the digits 0..9 (= leaf ids of :func:`digits_tree`).
    """
    from sklearn.datasets import load_digits as sk_load_digits

    valid = ["test_fraction", "flatten"]
    reject_unknown("digits", {k: v for k, v in options.items() if k not in valid}, valid)
    test_fraction = check_fraction("test_fraction", options.get("test_fraction", 0.2))
    flatten = check_bool("flatten", options.get("flatten", False))
    seed = check_seed(seed)

    raw = sk_load_digits()
    x = raw.data.astype(np.float32) / 16.0  # [1797, 64]
    y = raw.target.astype(np.int64)
    shape = (64,) if flatten else (1, 8, 8)
    x = x.reshape((-1, *shape))
    train_idx, test_idx = stratified_split(y, test_fraction, seed)
    return DataBundle(
        name="digits",
        train=tensor_dataset(x[train_idx], y[train_idx]),
        test=tensor_dataset(x[test_idx], y[test_idx]),
        tree=digits_tree(),
        input_shape=shape,
        meta={
            "seed": seed,
            "test_fraction": test_fraction,
            "flatten": flatten,
            "source": "sklearn.datasets.load_digits",
            "n_train": int(train_idx.size),
            "n_test": int(test_idx.size),
        },
    )


__all__ = ["DIGIT_TO_MID", "DIGIT_TO_PARITY", "digits_tree", "load_digits"]
