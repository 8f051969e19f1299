r"""Is a method better than flat cross-entropy, or is the difference noise? Paired verdicts over seeds.

Every method trains with the same seeds as the baseline ``none`` on the same data (``data_seed`` is
fixed), so seed s of a method and seed s of the baseline form a pair. For a metric m and the n
seeds where both runs have a finite value, with differences :math:`d_s = m_s(\text{method}) -
m_s(\text{none})`:

.. math:: \bar d \pm t_{0.975,\,n-1}\; \frac{s_d}{\sqrt n}

(:math:`s_d` the sample standard deviation, ddof = 1): the 95% Student-t confidence interval of
the mean paired difference, as ``scipy.stats.t.interval(0.95, n - 1, loc=d̄, scale=s_d/√n)``.
The call is direction-aware (:func:`otcpcc.study.tables.metric_direction`): ``better`` when the
whole interval lies on the good side of 0, ``worse`` on the bad side, ``within noise`` when it
contains 0. One seed gives no interval: ``ci_low``/``ci_high`` are ``None`` and the call is
``one seed``.

Differences that are the same in every seed (a discrete metric on a small test split: e.g.
6/288 twice) have :math:`s_d = 0` and a t-interval of width 0, which would call any such
difference significant. With fewer than ``NO_SPREAD_MIN_SEEDS`` seeds the noise is then simply
not measured: the call is ``no spread`` and there is no interval. From 6 seeds on, n equal signs
are significant by themselves (exact sign test, two-sided p = 2 · 0.5ⁿ ≤ 0.031), so the
degenerate interval's call stands.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .tables import _finite, metric_direction

BASELINE = "none"
CONFIDENCE = 0.95
NO_SPREAD_MIN_SEEDS = 6  # fewer seeds with identical differences: the call is "no spread"
NO_SPREAD_RTOL = 1e-9  # a spread below this fraction of the largest |difference| is rounding
# compared for every method; plus the coarsest level's retrieval mAP (map_<coarse_level>)
METRICS = ("fine_acc", "expected_cost_argmax", "expected_cost_crm", "expected_cost",
           "mistake_severity", "test_cpcc_emd")


def paired_interval(diffs: Sequence[float], confidence: float = CONFIDENCE
                    ) -> tuple[float, float | None, float | None]:
    """(mean, low, high) of the t-interval of the mean of ``diffs``; (mean, None, None) for one
    value. O(n)."""
    from scipy.stats import t

    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        raise ValueError("no paired differences: the method and the baseline share no seed")
    mean = float(d.mean())
    if d.size < 2:
        return mean, None, None
    with np.errstate(invalid="ignore", over="ignore"):  # overflowed differences: NaN, "no data"
        sd = float(d.std(ddof=1))
    half = float(t.ppf(0.5 + confidence / 2, d.size - 1)) * sd / math.sqrt(d.size)
    return mean, mean - half, mean + half


def call(metric: str, low: float | None, high: float | None) -> str:
    """``better`` / ``worse`` / ``within noise`` for an interval of (method − baseline) of
    ``metric``; ``one seed`` when there is no interval."""
    if low is None or high is None:
        return "one seed"
    if not (math.isfinite(low) and math.isfinite(high)):  # differences beyond the float range
        return "no data"
    if low <= 0.0 <= high:
        return "within noise"
    up = low > 0.0
    direction = metric_direction(metric)
    if direction is None:
        return "higher" if up else "lower"
    return "better" if up == (direction == "max") else "worse"


def _name(run: Mapping[str, Any]) -> str:
    return str(run.get("method") or run["distance"])


def coarse_map_metric(runs: Sequence[Mapping[str, Any]]) -> str | None:
    """``map_<level>`` of the coarsest level (each row's ``coarse_level``), if the runs have it."""
    for run in runs:
        level = run.get("coarse_level")
        if level and f"map_{level}" in run:
            return f"map_{level}"
    return None


def _differences(rows: Mapping[Any, Mapping[str, Any]], base: Mapping[Any, Mapping[str, Any]],
                 metric: str) -> list[float]:
    """method − baseline of ``metric`` on every seed where both (rows keyed by seed) are finite."""
    return [float(rows[s][metric]) - float(base[s][metric]) for s in rows
            if s in base and _finite(rows[s].get(metric)) and _finite(base[s].get(metric))]


def paired_differences(runs: Sequence[Mapping[str, Any]], method: str, metric: str,
                       baseline: str = BASELINE) -> list[float]:
    """The per-seed differences ``metric(method) − metric(baseline)`` that :func:`verdicts` tests
    (seeds where both have a finite value, in the method's seed order); empty when either was not
    run."""
    rows = {r.get("seed"): r for r in runs if _name(r) == method}
    base = {r.get("seed"): r for r in runs if _name(r) == baseline}
    return _differences(rows, base, metric)


def no_spread(diffs: Sequence[float]) -> bool:
    """Whether ``diffs`` (two or more) are equal up to rounding with too few of them for n equal
    signs to be evidence (module docstring)."""
    d = np.asarray(diffs, dtype=np.float64)
    return (2 <= d.size < NO_SPREAD_MIN_SEEDS
            and float(d.std(ddof=1)) <= NO_SPREAD_RTOL * float(np.abs(d).max()))


def verdicts(runs: Sequence[Mapping[str, Any]], baseline: str = BASELINE,
             metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Paired verdict of every method against ``baseline``, for every metric.

    Args:
        runs: summary rows (``method`` or ``distance``, ``seed``, metric values).
        baseline: the method compared against (default ``none``, flat cross-entropy).
        metrics: default :data:`METRICS` plus the coarse mAP (:func:`coarse_map_metric`).

    Returns:
        ``[{method, metric, baseline, n, diff_mean, ci_low, ci_high, call}]``, methods in
        first-appearance order; empty when ``baseline`` was not run. A metric with no finite
        pair has ``diff_mean`` None and call ``no data``; identical differences from fewer than
        ``NO_SPREAD_MIN_SEEDS`` seeds: call ``no spread``, no interval.
    """
    if metrics is None:
        coarse = coarse_map_metric(runs)
        metrics = [*METRICS, *([coarse] if coarse else [])]
    by_method: dict[str, dict[Any, Mapping[str, Any]]] = {}
    for run in runs:
        by_method.setdefault(_name(run), {})[run.get("seed")] = run
    base = by_method.get(baseline)
    if base is None:
        return []
    out = []
    for name, rows in by_method.items():
        if name == baseline:
            continue
        for metric in metrics:
            diffs = _differences(rows, base, metric)
            row: dict[str, Any] = {"method": name, "metric": metric, "baseline": baseline,
                                   "n": len(diffs), "diff_mean": None, "ci_low": None,
                                   "ci_high": None, "call": "no data"}
            if diffs:
                mean, low, high = paired_interval(diffs)
                verdict = call(metric, low, high)
                if verdict in ("better", "worse") and no_spread(diffs):
                    low = high = None
                    verdict = "no spread"
                row.update(diff_mean=mean, ci_low=low, ci_high=high, call=verdict)
            out.append(row)
    return out


OT_DISTANCES = ("fastft", "fft", "emd", "sinkhorn", "sk", "swd")
OT_METRICS = ("expected_cost_argmax", "expected_cost_crm", "fine_acc", "test_cpcc_emd")


def means_counterpart(method: str) -> str | None:
    """The same method with class means (ℓ2) in place of its optimal-transport distance:
    ``fastft`` → ``l2``, ``hxe+emd`` → ``hxe+l2``; None for a method without an OT distance."""
    parts = method.split("+")
    if parts[-1] not in OT_DISTANCES:
        return None
    return "+".join([*parts[:-1], "l2"])


def ot_verdicts(runs: Sequence[Mapping[str, Any]],
                metrics: Sequence[str] = OT_METRICS) -> list[dict[str, Any]]:
    """Does optimal transport matter? Each OT-CPCC method paired over seeds against its ℓ2
    counterpart (:func:`means_counterpart`) when that was run too; rows as :func:`verdicts`, with
    ``baseline`` the counterpart. Empty when no such pair was run."""
    names = list(dict.fromkeys(_name(r) for r in runs))
    out: list[dict[str, Any]] = []
    for name in names:
        base = means_counterpart(name)
        if base is None or base not in names:
            continue
        pair = [r for r in runs if _name(r) in (name, base)]
        out += verdicts(pair, baseline=base, metrics=[m for m in metrics
                                                      if any(m in r for r in pair)])
    return out
