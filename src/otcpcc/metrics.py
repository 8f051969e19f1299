"""Evaluation metrics for hierarchy-aware classifiers (numpy arrays or torch tensors in).

Conventions (DESIGN.md §6). ``K`` fine classes, leaf id == class id == column of ``probs``.

- Accuracy at every level of the tree: fine top-1/top-2, and at each coarse level the argmax of the
  *summed* fine probabilities over each ancestor's leaves (not the ancestor of the fine argmax).
- Retrieval mAP at every level: prototypes are mean train features per class at that level, the
  score is cosine similarity, AP per class via :func:`sklearn.metrics.average_precision_score`.
- Mistake severity (mean tree distance of top-1 mistakes), average hierarchical distance@k
  (Bertinetto et al. 2020, "Making better mistakes"), expected misclassification cost under a
  cost matrix ``C[true, predicted]`` (default: the tree's path-length matrix).
- Multi-modality diagnostic: Gaussian mixtures per class chosen by AIC, to tell whether optimal
  transport class distances should beat distances between class means.

Every input may be a numpy array, a torch tensor (any device / dtype) or a nested sequence.
Bad input raises :class:`ValueError` with a one-line message naming the problem and the fix.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "evaluate_all",
    "expected_cost",
    "hier_dist_at_k",
    "level_accuracies",
    "load_cost_matrix",
    "mistake_severity",
    "multimodality",
    "retrieval_map",
]

# Tolerance on probability rows: each must sum to 1 within this (absolute).
_PROB_SUM_ATOL = 1e-2


# --------------------------------------------------------------------------------------------
# input conversion and validation
# --------------------------------------------------------------------------------------------
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


def _as_square(m: Any, name: str, k: int | None = None) -> np.ndarray:
    """Return a finite float64 square matrix [K, K] (K checked when given)."""
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


# --------------------------------------------------------------------------------------------
# accuracies
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# retrieval
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# mistakes and costs
# --------------------------------------------------------------------------------------------
def mistake_severity(preds: Any, labels: Any, D: Any) -> float:
    """Mean distance ``D[pred_i, label_i]`` over the mistakes ``pred_i != label_i``.

    Args:
        preds: [N] predicted fine ids (e.g. ``probs.argmax(1)``).
        labels: [N] true fine ids.
        D: [K, K] class distance matrix (e.g. ``tree.distance_matrix()``, the tree path length;
            for unit-weight trees with all leaves at one depth this is twice the LCA height).

    Returns:
        The mean over mistakes, or NaN when there are none.
    """
    d = _as_square(D, "D")
    k = d.shape[0]
    y = _as_labels(labels, None, k)
    p = _as_labels(preds, y.shape[0], k, "preds")
    wrong = p != y
    if not wrong.any():
        return math.nan
    return float(d[p[wrong], y[wrong]].mean())


def hier_dist_at_k(probs: Any, labels: Any, D: Any, k: int) -> float:
    """Average hierarchical distance@k (Bertinetto et al., 2020, "Making better mistakes").

    ``(1/N) sum_i (1/k) sum_{j in topk(i)} D[j, label_i]``, where ``topk(i)`` are the ``k``
    classes with the highest scores for sample ``i`` (ties broken by the lower class id). A
    correct class in the top-k contributes ``D[y, y]`` (0 for a tree distance matrix). Only the
    ranking is used, so ``probs`` may equally be logits.

    Args:
        probs: [N, K] scores; labels: [N] fine ids; D: [K, K] distances; k: 1 <= k <= K.

    Returns:
        The average (NaN for an empty input).
    """
    d = _as_square(D, "D")
    kk = d.shape[0]
    s = _as_scores(probs, "probs", kk)
    y = _as_labels(labels, s.shape[0], kk)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= kk:
        raise ValueError(f"k must be an integer in 1..{kk} (the number of classes), got {k!r}")
    if s.shape[0] == 0:
        return math.nan
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]  # [N, k]
    return float(d[top, y[:, None]].mean())


def expected_cost(probs: Any, labels: Any, C: Any) -> float:
    """Expected misclassification cost ``(1/N) sum_i sum_j probs[i, j] * C[labels_i, j]``.

    Args:
        probs: [N, K] softmax probabilities.
        labels: [N] true fine ids.
        C: [K, K] cost matrix, rows = true class, columns = predicted class.

    Returns:
        The mean expected cost (NaN for an empty input).
    """
    c = _as_square(C, "C")
    kk = c.shape[0]
    p = _as_probs(probs, num_classes=kk)
    y = _as_labels(labels, p.shape[0], kk)
    if p.shape[0] == 0:
        return math.nan
    return float(np.mean(np.sum(p * c[y], axis=1)))


# --------------------------------------------------------------------------------------------
# multi-modality diagnostic
# --------------------------------------------------------------------------------------------
def multimodality(
    features: Any,
    labels: Any,
    max_components: int = 5,
    seed: int = 0,
    max_per_class: int = 500,
    *,
    criterion: str = "aic",
) -> dict[str, Any]:
    """Count the modes of each class with Gaussian mixtures chosen by AIC.

    For each class ``c`` with ``n_c`` samples (a random subset of ``max_per_class`` when larger,
    drawn with ``seed``): centre the class's features, reduce them with a PCA fitted on that
    class alone to ``min(10, d, n_c - 1)`` dimensions (the within-class directions, where modes
    live; a global PCA would be dominated by between-class spread), rescale by the overall
    standard deviation (so ``reg_covar`` acts at a fixed relative scale), then fit diagonal
    :class:`sklearn.mixture.GaussianMixture` models with ``1..M_c`` components, where
    ``M_c = max(1, min(max_components, n_c // 2))`` (small classes try fewer components), and
    keep the count with the lowest AIC (``criterion="bic"``: lowest BIC, which penalises extra
    components more). A class of one sample, or of identical samples, counts as one component.
    Caveat: a Gaussian mixture also spends components on heavy tails or curved shapes, so a
    count above 1 means "not one Gaussian", most often, but not only, several modes.

    Returns:
        ``{"per_class": {class_id: n_components}, "mean_components": float,
        "frac_multimodal": float (fraction of classes with more than one component),
        "recommendation": str}``. The recommendation favours optimal-transport distances
        (``emd`` / ``fastft``) when ``frac_multimodal >= 0.5``, ``l2`` otherwise.
    """
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    if criterion not in ("aic", "bic"):
        raise ValueError(f"criterion must be 'aic' or 'bic', got {criterion!r}")
    x = _as_features(features, "features")
    a = _to_numpy(labels)
    if a.ndim != 1 or a.shape[0] != x.shape[0]:
        raise ValueError(f"labels must be 1-D with {x.shape[0]} entries, got shape {a.shape}")
    if x.shape[0] == 0:
        raise ValueError("features is empty; pass at least one sample")
    y = _as_labels(a, x.shape[0], int(np.max(a)) + 1 if a.size else 1)
    if (
        isinstance(max_components, bool)
        or not isinstance(max_components, (int, np.integer))
        or max_components < 1
    ):
        raise ValueError(f"max_components must be a positive integer, got {max_components!r}")
    if (
        isinstance(max_per_class, bool)
        or not isinstance(max_per_class, (int, np.integer))
        or max_per_class < 1
    ):
        raise ValueError(f"max_per_class must be a positive integer, got {max_per_class!r}")
    rng = np.random.default_rng(seed)
    per_class: dict[int, int] = {}
    for c in np.unique(y):
        xc = x[y == c]
        if xc.shape[0] > max_per_class:
            xc = xc[rng.choice(xc.shape[0], max_per_class, replace=False)]
        n = xc.shape[0]
        xc = xc - xc.mean(axis=0)
        scale = float(xc.std())
        m = max(1, min(int(max_components), n // 2))
        if n < 2 or scale == 0.0 or m == 1:
            per_class[int(c)] = 1
            continue
        xc = xc / scale
        dims = min(10, xc.shape[1], n - 1)
        if dims < xc.shape[1]:
            xc = PCA(n_components=dims, random_state=seed).fit_transform(xc)
        aics = []
        for comps in range(1, m + 1):
            gm = GaussianMixture(comps, covariance_type="diag", random_state=seed, n_init=2)
            gm.fit(xc)
            aics.append(gm.aic(xc) if criterion == "aic" else gm.bic(xc))
        per_class[int(c)] = int(np.argmin(aics)) + 1
    counts = np.array(list(per_class.values()), dtype=np.float64)
    mean_c = float(counts.mean())
    frac = float(np.mean(counts > 1))
    if frac >= 0.5:
        rec = (
            f"{frac:.0%} of classes are multi-modal (mean {mean_c:.2f} components): "
            f"use an OT distance (distance='emd' or 'fastft'); class means blur the modes"
        )
    else:
        rec = (
            f"only {frac:.0%} of classes are multi-modal (mean {mean_c:.2f} components): "
            f"distance='l2' (class means) should do as well as OT distances, and is cheaper"
        )
    return {
        "per_class": per_class,
        "mean_components": mean_c,
        "frac_multimodal": frac,
        "recommendation": rec,
    }


# --------------------------------------------------------------------------------------------
# all at once
# --------------------------------------------------------------------------------------------
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
        hier_dist@1, hier_dist@5 (only when K >= 5), expected_cost``.
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
    return out


# --------------------------------------------------------------------------------------------
# cost matrix files
# --------------------------------------------------------------------------------------------
def load_cost_matrix(path: str | Path, class_names: Sequence[str]) -> np.ndarray:
    """Read a misclassification cost matrix from a CSV keyed by class name.

    File layout: a header row of class names (the first, corner cell may be empty or anything;
    it may also be left out), then one row per class: its name, then its costs. Entry
    ``(row r, column c)`` is the cost of predicting ``c`` when the truth is ``r``. Rows and
    columns may come in any order; the result is reordered to ``class_names``.

    Returns:
        float64 [K, K] with ``C[i, j]`` = cost(true ``class_names[i]``, predicted
        ``class_names[j]``), K = len(class_names).

    Raises:
        ValueError: empty file, ragged row, duplicate / missing / extra class, non-numeric,
            non-finite or negative cost (one line naming the class and the fix).
    """
    path = Path(path)
    names = [str(n) for n in class_names]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"class_names lists {dup!r} twice; pass each class once")
    with open(path, newline="", encoding="utf-8") as f:
        rows = [[cell.strip() for cell in r] for r in csv.reader(f)]
    rows = [r for r in rows if any(r)]  # drop blank lines
    if len(rows) < 2:
        raise ValueError(f"{path}: needs a header row of class names and one row per class")
    header, body = rows[0], rows[1:]
    lengths = [len(r) for r in body]
    width = max(set(lengths), key=lengths.count)  # the usual row length; report the odd ones
    for i, r in enumerate(body, start=2):
        if len(r) != width:
            raise ValueError(
                f"{path}: row {i} ({r[0]!r}) has {len(r)} cells, expected {width}; "
                f"give every row a name and one cost per column"
            )
    if len(header) == width:
        cols = header[1:]
    elif len(header) == width - 1:
        cols = header
    else:
        raise ValueError(
            f"{path}: header has {len(header)} cells but rows have {width}; "
            f"the header must list one class name per cost column"
        )
    row_names = [r[0] for r in body]
    for what, keys in (("column", cols), ("row", row_names)):
        seen: set[str] = set()
        for key in keys:
            if key in seen:
                raise ValueError(f"{path}: class {key!r} appears in two {what}s; keep one")
            seen.add(key)
        for name in names:
            if name not in seen:
                raise ValueError(
                    f"{path}: class {name!r} has no {what}; add a {what} for it "
                    f"(the file must cover every class)"
                )
        wanted = set(names)
        for key in keys:
            if key not in wanted:
                raise ValueError(
                    f"{path}: {what} class {key!r} is not one of the dataset's classes; "
                    f"remove it or fix the spelling"
                )
    col_index = {n: j for j, n in enumerate(cols)}
    row_index = {n: i for i, n in enumerate(row_names)}
    k = len(names)
    out = np.empty((k, k), dtype=np.float64)
    for i, rn in enumerate(names):
        r = body[row_index[rn]]
        for j, cn in enumerate(names):
            cell = r[1 + col_index[cn]]
            try:
                v = float(cell)
            except ValueError:
                raise ValueError(
                    f"{path}: cost for true {rn!r}, predicted {cn!r} is {cell!r}, not a number; "
                    f"write a non-negative number"
                ) from None
            if not math.isfinite(v) or v < 0:
                raise ValueError(
                    f"{path}: cost for true {rn!r}, predicted {cn!r} is {cell}; "
                    f"costs must be finite and >= 0"
                )
            out[i, j] = v
    return out
