r"""Cost-aware decisions: the conditional-risk minimiser (CRM).

Karthik, Prabhu, Dokania, Torr, "No Cost Likelihood Manipulation at Test Time for Making Better
Mistakes in Deep Networks", ICLR 2021: keep the trained model, change only the decision. Given
the predicted class posterior p(i | x) and a cost matrix C[true, predicted], predict the class of
least expected cost (the Bayes decision under C),

.. math:: \hat y(x) = \arg\min_j \sum_i p(i \mid x)\, C[i, j].

With the 0/1 cost ``C = 1 - I`` the risk of j is :math:`1 - p(j \mid x)`, so CRM is the argmax.
It helps only as far as the probabilities are calibrated; the paper uses the tree's LCA distance
as C (here the default is the tree path length, ``tree.distance_matrix()``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._arrays import _as_probs, _as_square


def crm_predict(probs: Any, cost: Any) -> Any:
    """Conditional-risk decisions ``argmin_j sum_i probs[n, i] * cost[i, j]`` for every row n.

    Args:
        probs: [N, K] class probabilities (rows sum to 1), numpy or torch.
        cost: [K, K] costs, ``cost[true, predicted]`` (e.g. ``tree.distance_matrix()``).

    Returns:
        [N] int64 class ids (ties: the lowest id), a torch tensor on ``probs``' device when
        ``probs`` is one, else a numpy array. One [N, K] x [K, K] product: O(N K^2).
    """
    c = _as_square(cost, "cost")
    p = _as_probs(probs, "probs", c.shape[0])
    risk = p @ c  # [N, K]: expected cost of predicting each class
    out = np.argmin(risk, axis=1).astype(np.int64) if p.shape[0] else np.zeros(0, np.int64)
    if hasattr(probs, "detach") and hasattr(probs, "device"):
        import torch

        return torch.as_tensor(out, device=probs.device)
    return out
