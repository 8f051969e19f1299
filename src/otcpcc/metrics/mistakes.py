"""How costly the mistakes are: mistake severity, hierarchical distance@k, expected cost, the cost
of hard decisions, and the cost-matrix CSV loader."""

from __future__ import annotations

import csv
import hashlib
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..textfile import parse_number, read_text
from ..tree.matching import did_you_mean, listed
from ._arrays import MAX_COST, _as_labels, _as_probs, _as_scores, _as_square


def mistake_severity(preds: Any, labels: Any, D: Any) -> float:
    """Mean distance ``D[label_i, pred_i]`` over the mistakes ``pred_i != label_i``.

    Args:
        preds: [N] predicted fine ids (e.g. ``probs.argmax(1)``).
        labels: [N] true fine ids.
        D: [K, K] class distance or cost matrix, rows = true class, columns = predicted class (as
            every cost matrix here); e.g. ``tree.distance_matrix()``, the tree path length (for
            unit-weight trees with all leaves at one depth, twice the LCA height).

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
    return float(d[y[wrong], p[wrong]].mean())


def hier_dist_at_k(probs: Any, labels: Any, D: Any, k: int) -> float:
    """Average hierarchical distance@k (Bertinetto et al., 2020, "Making better mistakes").

    ``(1/N) sum_i (1/k) sum_{j in topk(i)} D[label_i, j]`` (rows = true class), where ``topk(i)`` are the ``k``
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
    return float(d[y[:, None], top].mean())


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


def decision_cost(preds: Any, labels: Any, C: Any) -> float:
    """Mean cost of hard decisions: ``(1/N) sum_i C[labels_i, preds_i]`` (0 where correct when
    ``C`` has a zero diagonal).

    Unlike :func:`expected_cost`, which averages ``C[y, j]`` over the model's whole predictive
    distribution, this is the cost actually paid by a decision rule (argmax, or
    :func:`~otcpcc.metrics.decision.crm_predict`). With ``C`` = the tree distance and argmax
    decisions it equals ``hier_dist_at_k(probs, labels, C, 1)``.

    Args:
        preds: [N] predicted fine ids; labels: [N] true fine ids; C: [K, K] ``C[true, predicted]``.

    Returns:
        The mean (NaN for an empty input).
    """
    c = _as_square(C, "C")
    k = c.shape[0]
    y = _as_labels(labels, None, k)
    p = _as_labels(preds, y.shape[0], k, "preds")
    if y.shape[0] == 0:
        return math.nan
    return float(c[y, p].mean())


def cost_matrix_sha256(cost: Any) -> str | None:
    """SHA-256 (hex) of a [K, K] cost matrix as float64, shape included; ``None`` for ``None``
    (the tree distance). Two matrices get the same fingerprint iff they hold the same values in
    the same class order. O(K²)."""
    if cost is None:
        return None
    a = np.ascontiguousarray(np.asarray(cost, dtype=np.float64))
    return hashlib.sha256(repr(a.shape).encode() + a.tobytes()).hexdigest()


def check_mistake_costs(C: np.ndarray, where: str) -> None:
    """ValueError (one line, naming ``where``) when the [K, K] cost matrix ``C`` (K >= 2) has no
    positive off-diagonal entry: every mistake would cost 0, so expected costs are 0 and a
    cost-aware decision (:func:`~otcpcc.metrics.decision.crm_predict`) is an arbitrary tie
    (it always picks class 0). O(K²)."""
    c = np.asarray(C, dtype=np.float64)
    off = ~np.eye(c.shape[0], dtype=bool)
    if c.shape[0] >= 2 and not (c[off] > 0).any():
        raise ValueError(f"{where}: every mistake costs 0 (no positive off-diagonal entry), so "
                         "costs and CRM decisions would be meaningless; give positive costs for "
                         "mistakes (C[true, predicted] > 0 where predicted != true)")


def _all_numbers(cells: Sequence[str]) -> bool:
    """Whether every non-empty cell reads as a number (and one at least does)."""
    filled = [c for c in cells if c]
    try:
        [parse_number(c) for c in filled]
    except ValueError:
        return False
    return bool(filled)


def _only_names(cells: Sequence[str], names: Sequence[str]) -> bool:
    """Whether numeric ``cells`` are class names that read as numbers (digits: '0'..'9') rather
    than costs: every non-empty cell is a class name and at most one repeats (a typo), whereas a
    row of costs repeats its values (0, 1, 1, ...). Names with a class missing or one listed
    twice then get the message naming that class, not "the header row is missing"."""
    filled = [c for c in cells if c]
    return set(filled) <= set(names) and len(filled) - len(set(filled)) <= 1


def _number_fix(cell: str) -> str:
    """How to write ``cell`` as a number a data file may hold (see ``textfile.parse_number``)."""
    if "_" in cell:
        return "no '_' digit separators, e.g. 1000"
    if "," in cell:
        return "a '.' decimal point, e.g. 0.5; quote nothing"
    return "ASCII digits, '.', an exponent such as 1e-3"


def _unmatched_keys(what: str, unknown: list[str], missing: list[str]) -> str | None:
    """One line on a cost file's ``what`` ("row"/"column") names: those that are no class
    (``unknown``), the classes without one (``missing``), "did you mean" for a misspelling, the
    fix; ``None`` when both lists are empty."""
    parts = []
    if unknown:
        parts.append(f"{what} {listed(unknown)} is not one of the dataset's classes"
                     if len(unknown) == 1 else
                     f"{what}s {listed(unknown)} are not among the dataset's classes")
    if missing:
        parts.append(f"class {listed(missing)} has no {what}" if len(missing) == 1 else
                     f"classes {listed(missing)} have no {what}")
    if not parts:
        return None
    fix = (f"fix the spelling (the file needs one {what} per class)" if unknown and missing else
           f"fix the spelling or remove the {what}" if unknown else
           f"add a {what} for {'it' if len(missing) == 1 else 'each'} (the file must cover every "
           "class)")
    return f"{' and '.join(parts)}{did_you_mean(unknown, missing)}; {fix}"


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
    text = read_text(path, "a CSV cost matrix (a header row of class names, then one row per class)")
    try:
        rows = [[cell.strip() for cell in r] for r in csv.reader(io.StringIO(text, newline=""))]
    except csv.Error as e:
        raise ValueError(f"{path}: not a readable CSV table ({e}); an unclosed quote swallows "
                         "the lines after it: check the file's quotes") from None
    rows = [r for r in rows if any(r)]  # drop blank lines
    if len(rows) < 2:
        raise ValueError(f"{path}: needs a header row of class names and one row per class")
    header, body = rows[0], rows[1:]
    # no header: a bare matrix, or rows "name,costs" only (the corner cell may hold anything)
    if _all_numbers(header[1:]) and not _only_names(header[1:], names):
        raise ValueError(
            f"{path}: the first row ({','.join(header[:4])}{',...' if len(header) > 4 else ''}) "
            "holds numbers, not class names: the header row is missing; add a first row naming "
            f"the class of each column (e.g. ',{','.join(names[:3])}{',...' if len(names) > 3 else ''}') "
            "and start each row with its class name")
    firsts = [r[0] for r in body]
    if _all_numbers(firsts) and not _only_names(firsts, names):
        raise ValueError(
            f"{path}: the rows start with numbers ({','.join(body[0][:3])},...), not class names: "
            f"start each row with the name of its true class (e.g. '{names[0]},0,...') and give "
            "the header an empty first cell above that column")
    lengths = [len(r) for r in body]
    found = [what for sep, what in (("\t", "tabs"), (";", "semicolons")) if sep in header[0]]
    if len(header) == 1 and found:  # e.g. saved with tabs or semicolons (a locale's "CSV")
        raise ValueError(f"{path}: the header row is one cell: its cells are separated by "
                         f"{found[0]}, not commas; re-save it as comma-separated CSV")
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
        problem = _unmatched_keys(what, [k for k in keys if k not in set(names)],
                                  [n for n in names if n not in seen])
        if problem:
            raise ValueError(f"{path}: {problem}")
    col_index = {n: j for j, n in enumerate(cols)}
    row_index = {n: i for i, n in enumerate(row_names)}
    k = len(names)
    out = np.empty((k, k), dtype=np.float64)
    for i, rn in enumerate(names):
        r = body[row_index[rn]]
        for j, cn in enumerate(names):
            cell = r[1 + col_index[cn]]
            try:
                v = parse_number(cell)
            except ValueError:
                raise ValueError(
                    f"{path}: cost for true {rn!r}, predicted {cn!r} is {cell!r}, not a number; "
                    f"write a plain non-negative number ({_number_fix(cell)})"
                ) from None
            if not math.isfinite(v) or v < 0:
                raise ValueError(
                    f"{path}: cost for true {rn!r}, predicted {cn!r} is {cell}; "
                    f"costs must be finite and >= 0"
                )
            if v > MAX_COST:  # sums over a test set (expected cost) would overflow to inf
                raise ValueError(
                    f"{path}: cost for true {rn!r}, predicted {cn!r} is {cell}, above {MAX_COST:g}: "
                    "averages over a test set would overflow; rescale the matrix (e.g. divide it by "
                    "its largest entry)")
            out[i, j] = v
    return out
