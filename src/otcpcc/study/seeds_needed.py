r"""How many seeds would separate a method from flat CE? An estimate at the observed effect and noise.

For k paired differences :math:`d_s = m_s(\text{method}) - m_s(\text{baseline})` over seeds, with
mean :math:`\bar d` and sample standard deviation :math:`s` (ddof = 1), the verdict's 95%
t-interval (:func:`otcpcc.study.verdict.paired_interval`) excludes 0 when

.. math:: t_{0.975,\,n-1}\; s / \sqrt n < |\bar d| .

Assuming further seeds show the same mean difference and the same spread, the estimate is the
smallest such n ≥ 2, searched up to ``cap`` (default :data:`CAP` = 100 seeds: beyond it the
difference is too small against the seed noise to be worth chasing). It is an estimate, not a
guarantee: the next seeds may show a smaller or larger difference. Fewer than 2 differences,
:math:`\bar d = 0`, or the same difference in every one of a few seeds (s = 0: the noise is not
measured, not absent) give no estimate.

The spread itself is poorly known from a few seeds, so the same search also runs at its one-sided
95% upper confidence bound :math:`s_+ = s\,\sqrt{(k-1)/\chi^2_{0.05,\,k-1}}` (k paired seeds; ×16
at k = 2, ×4.4 at k = 3, ×1.6 at k = 10): ``n_upper``, the seeds needed if the noise is that large.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .tables import _finite, method_name, metric_direction
from .verdict import BASELINE, CONFIDENCE, no_spread, paired_differences

CAP = 100  # seeds; beyond this the difference is not worth chasing at the observed noise

ESTIMATE, BEYOND_CAP, NO_ESTIMATE, NO_SPREAD = "estimate", "beyond cap", "cannot estimate", "no spread"
NO_BETTER = "no better candidate"  # the cheapest candidate is worse than the baseline on average


def seeds_needed(diffs: Sequence[float], confidence: float = CONFIDENCE, cap: int = CAP
                 ) -> dict[str, Any]:
    """The estimate of the module docstring for paired differences ``diffs`` (k values).

    Returns ``{"n", "status", "mean", "sd", "seeds", "cap", "sd_upper", "n_upper"}``: ``n`` the
    smallest n in [2, ``cap``] with
    ``t.ppf(0.5 + confidence/2, n − 1) · sd / √n < |mean|`` (None when there is none); ``status``
    ``"estimate"`` (n found), ``"beyond cap"`` (no n up to ``cap``), ``"cannot estimate"``
    (k < 2, mean 0, or a non-finite value) or ``"no spread"`` (the same difference in every one
    of too few seeds: the noise is unknown, :func:`otcpcc.study.verdict.no_spread`);
    ``mean``/``sd`` of ``diffs`` (sd None for k < 2);
    ``seeds`` = k; ``cap``; ``sd_upper`` the 95% upper bound on the spread and ``n_upper`` the
    same search at it (None beyond ``cap``; both None without an estimate). O(k + cap).
    """
    from scipy.stats import chi2

    d = np.asarray(diffs, dtype=np.float64)
    k = int(d.size)
    mean = float(d.mean()) if k else None
    sd = float(d.std(ddof=1)) if k >= 2 else None
    out: dict[str, Any] = {"n": None, "status": NO_ESTIMATE, "mean": mean, "sd": sd, "seeds": k,
                           "cap": cap, "sd_upper": None, "n_upper": None}
    if mean is None or sd is None or not math.isfinite(mean) or not math.isfinite(sd) or mean == 0:
        return out
    if no_spread(diffs):  # the noise was not measured: no basis for an estimate
        out["status"] = NO_SPREAD
        return out
    n = _smallest_n(mean, sd, confidence, cap)
    out.update(n=n, status=ESTIMATE if n is not None else BEYOND_CAP)
    sd_upper = sd * math.sqrt((k - 1) / chi2.ppf(0.05, k - 1))
    out.update(sd_upper=sd_upper, n_upper=_smallest_n(mean, sd_upper, confidence, cap))
    return out


def _smallest_n(mean: float, sd: float, confidence: float, cap: int) -> int | None:
    """Smallest n in [2, cap] with t.ppf(0.5 + confidence/2, n − 1) · sd / √n < |mean|, or None."""
    from scipy.stats import t

    ns = np.arange(2, max(cap, 2) + 1)
    hit = np.flatnonzero(t.ppf(0.5 + confidence / 2, ns - 1) * sd / np.sqrt(ns) < abs(mean))
    return int(ns[hit[0]]) if hit.size else None


def cheapest_candidate(aggregate: Sequence[Mapping[str, Any]], metric: str,
                       baseline: str = BASELINE) -> str | None:
    """The method other than ``baseline`` with the lowest finite ``<metric>_mean`` in the
    aggregate rows (the first in row order on a tie); None when there is none."""
    rows = [r for r in aggregate if method_name(r) != baseline and _finite(r.get(f"{metric}_mean"))]
    if not rows:
        return None
    return method_name(min(rows, key=lambda r: float(r[f"{metric}_mean"])))


def cheapest_estimate(runs: Sequence[Mapping[str, Any]], aggregate: Sequence[Mapping[str, Any]],
                      metric: str, baseline: str = BASELINE, cap: int = CAP) -> dict[str, Any] | None:
    """:func:`seeds_needed` for :func:`cheapest_candidate` against ``baseline`` on ``metric``,
    from its paired differences over seeds, with ``method``, ``baseline`` and ``metric`` added;
    None when there is no candidate. When even that candidate is worse than the baseline on
    average, status ``"no better candidate"`` and no estimate (seeds would only confirm it)."""
    method = cheapest_candidate(aggregate, metric, baseline)
    if method is None:
        return None
    est = seeds_needed(paired_differences(runs, method, metric, baseline), cap=cap)
    mean = est.get("mean")
    if _finite(mean) and mean != 0 and (float(mean) > 0) == (metric_direction(metric) != "max"):
        # even the best candidate is on the baseline's bad side on average: more seeds would only
        # sharpen that, so there is nothing to separate in its favour
        est.update(n=None, n_upper=None, sd_upper=None, status=NO_BETTER)
    return {"method": method, "baseline": baseline, "metric": metric, **est}


def separated(est: Mapping[str, Any]) -> bool:
    """Whether the seeds already run separate the method from the baseline (n ≤ seeds run): then
    the verdict is ``better`` or ``worse`` and there is nothing to estimate."""
    return est.get("status") == ESTIMATE and int(est["n"]) <= int(est.get("seeds") or 0)
