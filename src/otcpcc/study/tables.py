"""The numbers of a comparison: mean ± std per method over seeds, which value is best per metric,
the metric groups of the report's tables and the return-on-investment line against the flat
baseline.

A summary row names its method by ``method`` (``none``, ``hxe``, ``soft``, ``l2``, ``fastft``, …);
rows written before methods existed have only ``distance``, which then serves as the method name
(:func:`method_name`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# metric-name rules for "which value is best": exact names first, then prefixes/suffixes
_LOWER_BETTER_PREFIX = ("mistake_severity", "hier_dist@", "expected_cost")
_HIGHER_BETTER_PREFIX = ("fine_acc", "fine_top", "test_cpcc", "map_", "cpcc")
_HIGHER_BETTER_SUFFIX = ("_acc",)
# metrics shown first in the table, in this order (the rest follow in summary order)
_LEAD_COLUMNS = ("fine_acc", "fine_top2", "fine_acc_crm")
_CPCC_COLUMNS = ("test_cpcc_l2", "test_cpcc_emd", "test_cpcc_own")
_COST_COLUMNS = ("mistake_severity", "mistake_severity_crm", "hier_dist@1", "hier_dist@5",
                 "expected_cost", "expected_cost_argmax", "expected_cost_crm")
# keys never shown as table columns: identifiers, bookkeeping, duplicates of a shown column
# (``fine_top1`` = fine_acc, ``test_cpcc`` = test_cpcc_own, ``test_cpcc_<d>`` for the training
# distance d is in test_cpcc_own; ``step``: the steps of a mid-epoch checkpoint's eval.json)
_HIDDEN = {"seed", "fine_top1", "n_runs", "n", "num_classes", "epoch", "step", "lam", "test_cpcc",
           "alpha", "beta"}
_HIDDEN_PREFIX = ("cpcc_subsample", "test_cpcc_sinkhorn", "test_cpcc_swd", "test_cpcc_fastft",
                  "test_cpcc_target_sinkhorn", "test_cpcc_target_swd", "test_cpcc_target_fastft")
# each method's TestCPCC under its own distance: different yardsticks, so no "best" across rows
_NO_DIRECTION = {"test_cpcc_own", "test_cpcc_target_own"}
MINUS = "\u2212"
FIGURES = ("tradeoff.png", "heatmaps.png", "dendrogram.png", "embedding.png", "curves.png")
# the report's metric groups (one table each), in this order; "Other" takes every remaining metric
_ACC_GROUP = "Accuracy (higher is better)"
_COST_GROUP = "Mistakes (lower is better)"
_HIER_GROUP = "Hierarchy in the features (higher is better)"
_OTHER_GROUP = "Other"
_COST_ORDER = ("mistake_severity", "mistake_severity_crm", "hier_dist@1", "hier_dist@5",
               "expected_cost", "expected_cost_crm")


# --------------------------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------------------------
def metric_direction(name: str) -> str | None:
    """``"max"`` if a higher value of metric ``name`` is better, ``"min"`` if lower, else ``None``.

    Higher: ``fine_acc``, ``fine_top*``, any ``*_acc``, ``test_cpcc*``, ``cpcc*``, ``map_*``.
    Lower: ``mistake_severity``, ``hier_dist@k``, ``expected_cost``. Anything else (times,
    counts, diagnostics) has no direction and is never marked best; nor has ``test_cpcc_own``
    (each method's TestCPCC under its own training distance: not one yardstick).
    """
    if name in _NO_DIRECTION:
        return None
    if name.startswith(_LOWER_BETTER_PREFIX):
        return "min"
    if name.startswith(_HIGHER_BETTER_PREFIX) or name.endswith(_HIGHER_BETTER_SUFFIX):
        return "max"
    return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return _is_number(v) and math.isfinite(float(v))


def method_name(row: Mapping[str, Any]) -> str:
    """A summary or aggregate row's method: ``row["method"]``, else ``row["distance"]`` (rows
    written before ``--methods`` existed)."""
    name = row.get("method")
    if name is None:
        if "distance" not in row:
            raise ValueError("every run in the summary needs a 'method' or 'distance' key; add it")
        name = row["distance"]
    return str(name)


def aggregate_runs(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation of every numeric metric, per method.

    Groups ``runs`` by :func:`method_name` (first-appearance order); each aggregate row starts with
    ``method``, ``distance`` (the group's first run's distance, or its method name) and
    ``n_runs``. For each key other than
    ``seed`` that is numeric in at least one run: ``<key>_mean`` = mean over the runs where the
    value is finite, ``<key>_std`` = sample standard deviation (ddof=1) over them, ``None`` for a
    single value (undefined: the table then shows the mean alone); both ``None`` when no run has a
    finite value (e.g. mistake severity of a model that makes no mistake).
    ``n_runs`` = number of runs of that method.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault(method_name(run), []).append(run)
    keys: list[str] = []  # metric keys: numeric in at least one run (same keys for every row)
    for run in runs:
        keys += [k for k, v in run.items() if k not in keys and k != "seed" and _is_number(v)]
    out = []
    for name, rows in groups.items():
        agg: dict[str, Any] = {"method": name, "distance": str(rows[0].get("distance", name)),
                               "n_runs": len(rows)}
        for k in keys:
            vals = np.array([float(r[k]) for r in rows if _finite(r.get(k))], dtype=np.float64)
            if len(vals) == 0:
                agg[f"{k}_mean"] = agg[f"{k}_std"] = None
            else:
                agg[f"{k}_mean"] = float(vals.mean())
                agg[f"{k}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else None
        out.append(agg)
    return out


def seed_list(runs: Sequence[Mapping[str, Any]]) -> list[int]:
    """The distinct seeds of the summary rows, sorted."""
    return sorted({int(r["seed"]) for r in runs if _finite(r.get("seed"))})


def table_columns(aggregate: Sequence[Mapping[str, Any]]) -> list[str]:
    """Metric names shown in the table: accuracies first, then CPCC, mAP, costs, the rest."""
    names: list[str] = []
    for row in aggregate:
        for k in row:
            if k.endswith("_mean") and k[: -len("_mean")] not in names:
                names.append(k[: -len("_mean")])
    names = [n for n in names if n not in _HIDDEN and not n.startswith(_HIDDEN_PREFIX)]
    accs = [n for n in names if n.endswith("_acc") and n not in _LEAD_COLUMNS]
    maps = [n for n in names if n.startswith("map_")]
    order = [*_LEAD_COLUMNS, *accs, *_CPCC_COLUMNS, *maps, *_COST_COLUMNS]
    first = [n for n in order if n in names]
    return first + [n for n in names if n not in first]


def table_groups(aggregate: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[str]]]:
    """The report's tables: ``(title, metrics)`` per non-empty group of :func:`table_columns`.

    Accuracy: ``fine_acc``, ``fine_acc_crm`` (CRM decision), ``fine_top2``, every ``*_acc``.
    Mistakes: mistake severity, hierarchical distance@k, expected cost (argmax, then CRM).
    Hierarchy in the features: TestCPCC (l2, emd, own) and retrieval mAP. Other: the rest.
    """
    cols = table_columns(aggregate)
    acc = [c for c in ("fine_acc", "fine_acc_crm", "fine_top2") if c in cols]
    acc += [c for c in cols if c.endswith("_acc") and c not in acc]
    cost = [c for c in _COST_ORDER if c in cols]
    cost += [c for c in cols if metric_direction(c) == "min" and c not in cost]
    hier = [c for c in cols if c in _CPCC_COLUMNS or c.startswith("map_")]
    rest = [c for c in cols if c not in {*acc, *cost, *hier}]
    groups = ((_ACC_GROUP, acc), (_COST_GROUP, cost), (_HIER_GROUP, hier), (_OTHER_GROUP, rest))
    return [(title, names) for title, names in groups if names]


def method_chunks(aggregate: Sequence[Mapping[str, Any]], per_table: int = 8
                  ) -> list[list[int]]:
    """Indices of the aggregate rows, ``per_table`` at a time: the methods become the columns of
    the report's tables, so that a table stays narrow however many metrics there are."""
    n = len(aggregate)
    return [list(range(i, min(i + per_table, n))) for i in range(0, n, per_table)] or [[]]


def best_rows(aggregate: Sequence[Mapping[str, Any]], metric: str) -> set[int]:
    """Rows whose ``<metric>_mean`` is best (ties all count); empty when it has no direction."""
    direction = metric_direction(metric)
    vals = [row.get(f"{metric}_mean") for row in aggregate]
    finite = [float(v) for v in vals if _finite(v)]
    if direction is None or not finite:
        return set()
    best = max(finite) if direction == "max" else min(finite)
    return {i for i, v in enumerate(vals) if _finite(v) and math.isclose(float(v), best,
                                                                        rel_tol=1e-12, abs_tol=0.0)}


def md_cell(text: Any) -> str:
    """``text`` for a Markdown table cell: a ``|`` in it (a class or level name) escaped and line
    breaks made spaces, so the row keeps its columns."""
    return " ".join(str(text).replace("|", "\\|").splitlines())


def fmt(v: Any, digits: int = 3) -> str:
    """``v`` with ``digits`` decimals, a real minus sign, and ``–`` for missing / NaN."""
    if not _finite(v):
        return "\u2013"
    return f"{float(v):.{digits}f}".replace("-", MINUS)


def cell(row: Mapping[str, Any], metric: str) -> str:
    """``mean ± std`` of ``metric`` in an aggregate row; the mean alone when the std is missing
    (one seed); ``–`` when the mean is missing."""
    mean, std = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
    if not _finite(mean):
        return fmt(None)
    return f"{fmt(mean)} ± {fmt(std)}" if _finite(std) else fmt(mean)


def relative_change(old: float, new: float) -> float:
    """(new − old) / old, NaN when ``old`` is 0 or either value is missing."""
    if not (_finite(old) and _finite(new)) or float(old) == 0.0:
        return float("nan")
    return (float(new) - float(old)) / float(old)


def _signed(v: float, digits: int, unit: str = "") -> str:
    if not _finite(v):
        return "n/a"
    s = f"{v:+.{digits}f}"
    if float(s) == 0.0:
        s = f"{0.0:.{digits}f}"  # no "+0.0" / "-0.0"
    return s.replace("-", MINUS) + unit


def decision_cost_key(rows: Sequence[Mapping[str, Any]]) -> str:
    """``expected_cost_argmax`` (the mean cost C[y, argmax]: what the model's decisions cost, the
    counterpart of the CRM decisions' cost) where the rows (summary, aggregate or verdict rows)
    have it, else the soft ``expected_cost`` (summaries written before it existed)."""
    has = any("expected_cost_argmax" in (r.get("metric"), *r.keys()) or
              "expected_cost_argmax_mean" in r for r in rows)
    return "expected_cost_argmax" if has else "expected_cost"


def roi(base: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, float]:
    """Return on investment of one method over the baseline (aggregate rows with ``*_mean``).

    ``severity_old/new/change`` and ``cost_old/new/change`` (relative change, a fraction),
    ``acc_points`` = 100 · (fine_acc_new − fine_acc_old), ``cpcc_emd_old/new``.
    """
    def g(r: Mapping[str, Any], k: str) -> float:
        v = r.get(f"{k}_mean")
        return float(v) if _finite(v) else float("nan")

    out = {
        "severity_old": g(base, "mistake_severity"),
        "severity_new": g(row, "mistake_severity"),
        "cost_old": g(base, decision_cost_key([base])),
        "cost_new": g(row, decision_cost_key([base])),
        "acc_points": 100.0 * (g(row, "fine_acc") - g(base, "fine_acc")),
        "cpcc_emd_old": g(base, "test_cpcc_emd"),
        "cpcc_emd_new": g(row, "test_cpcc_emd"),
    }
    out["severity_change"] = relative_change(out["severity_old"], out["severity_new"])
    out["cost_change"] = relative_change(out["cost_old"], out["cost_new"])
    return out


def roi_line(name: str, base: Mapping[str, Any], row: Mapping[str, Any]) -> str:
    """One line, e.g. ``fastft: mistake severity 3.10 → 2.60 (−16%), expected cost 1.20 → 1.00
    (−17%) at fine accuracy −0.4 points; TestCPCC(emd) 0.21 → 0.85``."""
    r = roi(base, row)
    sev = (f"mistake severity {fmt(r['severity_old'], 2)} → {fmt(r['severity_new'], 2)} "
           f"({_signed(100 * r['severity_change'], 0, '%')})")
    what = "cost of the decisions" if decision_cost_key([base]) == "expected_cost_argmax" else "expected cost"
    cost = (f"{what} {fmt(r['cost_old'], 2)} → {fmt(r['cost_new'], 2)} "
            f"({_signed(100 * r['cost_change'], 0, '%')})")
    acc = f"fine accuracy {_signed(r['acc_points'], 1, ' points')}"
    cp = f"TestCPCC(emd) {fmt(r['cpcc_emd_old'], 2)} → {fmt(r['cpcc_emd_new'], 2)}"
    return f"{name}: {sev}, {cost} at {acc}; {cp}"


def roi_lines(aggregate: Sequence[Mapping[str, Any]], baseline: str = "none") -> list[str]:
    """The ROI line of every method against ``baseline`` (a note if the baseline was not run)."""
    base = next((r for r in aggregate if method_name(r) == baseline), None)
    if base is None:
        return [f"No `{baseline}` run to compare against: add `{baseline}` to the methods."]
    return [roi_line(method_name(r), base, r) for r in aggregate if method_name(r) != baseline]

