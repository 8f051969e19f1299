"""Retrieval mAP at every level of the tree with class prototypes and cosine similarity."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._arrays import _as_features, _as_labels, _level_list


def _unit_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def _map_at_level(
    train_x: np.ndarray, train_c: np.ndarray, test_x: np.ndarray, test_c: np.ndarray, n: int
) -> float:
    from sklearn.metrics import average_precision_score

    protos_cls = np.unique(train_c)
    protos = np.stack([train_x[train_c == c].mean(axis=0) for c in protos_cls])  # [P, d]
    scores = _unit_rows(test_x) @ _unit_rows(protos).T  # [N_test, P] cosine similarity
    aps = []
    for col, c in enumerate(protos_cls):
        rel = test_c == c
        if not rel.any():
            continue  # AP undefined without a relevant test sample
        aps.append(average_precision_score(rel, scores[:, col]))
    return float(np.mean(aps)) if aps else math.nan


def retrieval_map(
    train_feats: Any, train_labels: Any, test_feats: Any, test_labels: Any, tree: Any
) -> dict[str, float]:
    """Prototype retrieval mean average precision at the fine level and every coarse level.

    At each level (fine, then ``tree.levels``), every class ``c`` present in the train split
    gets a prototype ``mu_c`` = mean of its train features [d]. Each test feature ``x_i`` gets
    the score ``s_ic = cos(x_i, mu_c)``. For class ``c``, the test samples are ranked by
    ``s_ic`` and AP is computed with ``sklearn.metrics.average_precision_score`` with
    relevance ``[class of i at this level == c]``; classes with no relevant test sample are
    skipped (AP undefined), as are classes absent from train (no prototype). mAP = mean AP.

    Args:
        train_feats: [N_train, d]; train_labels: [N_train] fine ids.
        test_feats: [N_test, d]; test_labels: [N_test] fine ids.
        tree: the :class:`~otcpcc.tree.LabelTree`.

    Returns:
        ``{"map_fine": float, f"map_{level.name}": float, ...}`` (NaN when no class qualifies).
    """
    k = int(tree.num_classes)
    xtr = _as_features(train_feats, "train_feats")
    xte = _as_features(test_feats, "test_feats")
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(
            f"train_feats has dim {xtr.shape[1]} but test_feats has dim {xte.shape[1]}; "
            f"extract both with the same encoder"
        )
    if xtr.shape[0] == 0:
        raise ValueError("train_feats is empty; prototypes need at least one train sample")
    ytr = _as_labels(train_labels, xtr.shape[0], k, "train_labels")
    yte = _as_labels(test_labels, xte.shape[0], k, "test_labels")
    out = {"map_fine": _map_at_level(xtr, ytr, xte, yte, k)}
    for name, ids, n in _level_list(tree):
        out[f"map_{name}"] = _map_at_level(xtr, ids[ytr], xte, ids[yte], n)
    return out
