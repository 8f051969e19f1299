"""Evaluation metrics for hierarchy-aware classifiers (numpy arrays or torch tensors in).

Conventions (the reference evaluation protocol; README, section Commands, paragraph
"Evaluation"). ``K`` fine classes, leaf id == class id == column of ``probs``.

- Accuracy at every level of the tree: fine top-1/top-2, and at each coarse level the argmax of the
  *summed* fine probabilities over each ancestor's leaves (not the ancestor of the fine argmax).
- Retrieval mAP at every level: prototypes are mean train features per class at that level, the
  score is cosine similarity, AP per class via :func:`sklearn.metrics.average_precision_score`.
- Mistake severity (mean tree distance of top-1 mistakes), average hierarchical distance@k
  (Bertinetto et al. 2020, "Making better mistakes"), expected misclassification cost under a
  cost matrix ``C[true, predicted]`` (default: the tree's path-length matrix).
- Cost-aware decisions: the conditional-risk minimiser ``crm_predict`` (Karthik et al. 2021)
  and ``decision_cost``, the mean cost ``C[y, prediction]`` a decision rule actually pays.
- Multi-modality diagnostic: Gaussian mixtures per class chosen by AIC, to tell whether optimal
  transport class distances should beat distances between class means.

Every input may be a numpy array, a torch tensor (any device / dtype) or a nested sequence.
Bad input raises :class:`ValueError` with a one-line message naming the problem and the fix.
"""

from .accuracy import level_accuracies
from .decision import crm_predict
from .mistakes import (
    cost_matrix_sha256,
    decision_cost,
    expected_cost,
    hier_dist_at_k,
    load_cost_matrix,
    mistake_severity,
)
from .multimodality import multimodality
from .retrieval import retrieval_map
from .summary import evaluate_all

__all__ = [
    "cost_matrix_sha256",
    "crm_predict",
    "decision_cost",
    "evaluate_all",
    "expected_cost",
    "hier_dist_at_k",
    "level_accuracies",
    "load_cost_matrix",
    "mistake_severity",
    "multimodality",
    "retrieval_map",
]
