"""Every metric of the evaluation protocol in one call."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._arrays import _as_features, _as_labels, _as_probs, _as_square
from .accuracy import level_accuracies
from .decision import crm_predict
from .mistakes import decision_cost, expected_cost, hier_dist_at_k, mistake_severity
from .retrieval import retrieval_map


def evaluate_all(
    probs: Any,
    labels: Any,
    test_feats: Any,
    train_feats: Any,
    train_labels: Any,
    tree: Any,
    cost_matrix: Any = None,
) -> dict[str, float]:
    """Every metric above except :func:`multimodality`, as one flat dict.

    Args:
        probs: [N, K] test softmax probabilities; labels: [N] test fine ids.
        test_feats: [N, d] test features; train_feats: [M, d]; train_labels: [M].
        tree: the :class:`~otcpcc.tree.LabelTree` (its distance matrix is ``D``).
        cost_matrix: optional [K, K] cost ``C[true, predicted]``; default ``D``.

    Returns:
        ``fine_top1, fine_top2, {level}_acc..., map_fine, map_{level}..., mistake_severity,
        hier_dist@1, hier_dist@5 (only when K >= 5), expected_cost`` (the model's expected cost
        ``mean_i sum_j p_ij C[y_i, j]``), ``expected_cost_argmax`` (mean ``C[y, argmax]``, the
        cost the argmax decisions pay), and the same for the conditional-risk decisions
        ``crm_predict(probs, C)``: ``fine_acc_crm``, ``mistake_severity_crm`` (under D),
        ``expected_cost_crm`` (mean ``C[y, crm]``).
    """
    k = int(tree.num_classes)
    p = _as_probs(probs, num_classes=k)
    y = _as_labels(labels, p.shape[0], k)
    xte = _as_features(test_feats, "test_feats")
    if xte.shape[0] != p.shape[0]:
        raise ValueError(
            f"test_feats has {xte.shape[0]} rows but probs has {p.shape[0]}; "
            f"pass features and probabilities of the same test samples"
        )
    d = _as_square(tree.distance_matrix(), "tree.distance_matrix()", k)
    c = d if cost_matrix is None else _as_square(cost_matrix, "cost_matrix", k)
    if cost_matrix is not None and c.min() < 0:
        raise ValueError("cost_matrix has negative entries; costs must be >= 0")
    out = dict(level_accuracies(p, y, tree))
    out.update(retrieval_map(train_feats, train_labels, xte, y, tree))
    preds = p.argmax(axis=1) if p.shape[0] else np.zeros(0, dtype=np.int64)
    out["mistake_severity"] = mistake_severity(preds, y, d)
    for kk in (1, 5):
        if kk <= k:
            out[f"hier_dist@{kk}"] = hier_dist_at_k(p, y, d, kk)
    out["expected_cost"] = expected_cost(p, y, c)
    out["expected_cost_argmax"] = decision_cost(preds, y, c)
    crm = crm_predict(p, c)
    out["fine_acc_crm"] = float(np.mean(crm == y)) if y.size else float("nan")
    out["mistake_severity_crm"] = mistake_severity(crm, y, d)
    out["expected_cost_crm"] = decision_cost(crm, y, c)
    return out
