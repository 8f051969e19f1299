"""Accuracy at every level of the tree from fine probabilities."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._arrays import _as_labels, _as_probs, _level_list


def level_accuracies(probs: Any, labels: Any, tree: Any) -> dict[str, float]:
    """Fine top-1 / top-2 accuracy and the accuracy at every coarse level of ``tree``.

    Args:
        probs: [N, K] softmax probabilities, column j = leaf j of ``tree``.
        labels: [N] fine class ids in 0..K-1.
        tree: a :class:`~otcpcc.tree.LabelTree` (uses ``num_classes`` and ``levels``).

    Returns:
        ``{"fine_top1", "fine_top2", f"{level.name}_acc" for each level in tree.levels}``.
        ``fine_top2`` counts a hit when the label is among the two highest scores (ties broken
        by the lower class id); with K == 1 it equals ``fine_top1``. At level ``l`` with
        ancestor map ``a_l`` (leaf id -> ancestor id), the coarse probability of node ``c`` is
        ``q_c = sum_{j: a_l(j) = c} p_j``; the prediction is ``argmax_c q_c``, compared with
        ``a_l(label)``. An empty input gives NaN accuracies.
    """
    k = int(tree.num_classes)
    p = _as_probs(probs, num_classes=k)
    y = _as_labels(labels, p.shape[0], k)
    out: dict[str, float] = {}
    if p.shape[0] == 0:
        out["fine_top1"] = out["fine_top2"] = math.nan
        for name, _, _ in _level_list(tree):
            out[f"{name}_acc"] = math.nan
        return out
    order = np.argsort(-p, axis=1, kind="stable")
    out["fine_top1"] = float(np.mean(order[:, 0] == y))
    top2 = order[:, : min(2, k)]
    out["fine_top2"] = float(np.mean(np.any(top2 == y[:, None], axis=1)))
    for name, ids, n in _level_list(tree):
        member = np.zeros((k, n))
        member[np.arange(k), ids] = 1.0  # [K, n] leaf -> ancestor one-hot
        coarse = p @ member  # [N, n]
        out[f"{name}_acc"] = float(np.mean(coarse.argmax(axis=1) == ids[y]))
    return out
