"""Noise of a paired timing comparison: a distribution-free interval for the median difference.

``otcpcc bench --train-step`` times, in each round ``r``, one step without the CPCC term
(``a_r``) and one with it (``b_r``). The per-round paired differences ``d_r = b_r - a_r`` share
the round's slow or fast spell, so their spread is the noise of the comparison itself.

Interval (order statistics, the sign-test inversion; exact for any continuous distribution, no
normality assumed): sort ``d_(1) <= ... <= d_(n)``; with ``B ~ Binomial(n, 1/2)``, take

    k = max{ k >= 1 : 2 * P(B <= k - 1) <= alpha }

and report ``[d_(k), d_(n+1-k)]``. It covers the population median of ``d`` with probability
``1 - 2 * P(B <= k - 1) >= 1 - alpha`` (each ``d_r`` falls below the median with probability 1/2,
independently across rounds). It excludes 0 exactly when a two-sided sign test rejects
"median difference = 0" at level ``alpha``. For ``alpha = 0.05`` it needs ``n >= 6`` rounds
(``2 * 2**-5 = 0.0625 > 0.05``, ``2 * 2**-6 = 0.031``); with fewer there is no interval.
Examples (alpha = 0.05): n = 6 -> ranks (1, 6); n = 10 -> (2, 9); n = 20 -> (6, 15).
Cost: O(n log n) for the sort, O(n) binomial terms.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

WITHIN_NOISE = "within noise"
MEASURABLE = "measurable"
TOO_FEW = "too few rounds"


def median_ci_ranks(n: int, alpha: float = 0.05) -> tuple[int, int] | None:
    """1-based ranks ``(k, n + 1 - k)`` of the order statistics bounding the ``1 - alpha``
    interval for the median of ``n`` samples (module docstring), or ``None`` when even
    ``(1, n)`` covers less than ``1 - alpha`` (n < 6 for alpha = 0.05)."""
    if n < 1 or not 0.0 < alpha < 1.0:
        raise ValueError(f"need n >= 1 and 0 < alpha < 1, got n={n}, alpha={alpha}")
    best = None
    cdf = 0.0  # P(B <= k - 1), exact binomial terms
    for k in range(1, (n + 1) // 2 + 1):
        cdf += math.comb(n, k - 1) / 2.0**n
        if 2.0 * cdf > alpha:
            break
        best = k
    return None if best is None else (best, n + 1 - best)


def min_rounds(alpha: float = 0.05) -> int:
    """The fewest samples with a ``1 - alpha`` median interval: ``ceil(log2(2 / alpha))``, where
    ``2 * 2**-n <= alpha`` (6 for alpha = 0.05)."""
    return max(1, math.ceil(math.log2(2.0 / alpha) - 1e-12))


def median_ci(values: Sequence[float], alpha: float = 0.05) -> tuple[float, float] | None:
    """The ``1 - alpha`` order-statistic interval ``[v_(k), v_(n+1-k)]`` for the median of
    ``values`` (see :func:`median_ci_ranks`); ``None`` with too few values."""
    ranks = median_ci_ranks(len(values), alpha)
    if ranks is None:
        return None
    ordered = sorted(values)
    return ordered[ranks[0] - 1], ordered[ranks[1] - 1]


def paired_overhead(
    base_ms: Sequence[float], with_ms: Sequence[float], alpha: float = 0.05,
) -> dict:
    """What the second of two paired timings adds, as a percentage of the first's median.

    ``base_ms[r]`` and ``with_ms[r]`` are round ``r``'s two times. Returns ``overhead_pct =
    100 * median(d) / median(base_ms)`` with ``d_r = with_ms[r] - base_ms[r]``, the interval
    ``ci_low_pct, ci_high_pct`` (the order-statistic interval of ``d``, same scaling; ``None``
    with too few rounds) and ``call``: ``"within noise"`` when the interval contains 0,
    ``"measurable"`` when it does not, ``"too few rounds"`` when there is no interval."""
    if len(base_ms) != len(with_ms) or not base_ms:
        raise ValueError(f"need equally many paired times, got {len(base_ms)} and {len(with_ms)}")
    diffs = [w - b for b, w in zip(base_ms, with_ms, strict=True)]
    scale = 100.0 / statistics.median(base_ms)
    ci = median_ci(diffs, alpha)
    if ci is None:
        low = high = None
        call = TOO_FEW
    else:
        low, high = scale * ci[0], scale * ci[1]
        call = WITHIN_NOISE if ci[0] <= 0.0 <= ci[1] else MEASURABLE
    return {"overhead_pct": scale * statistics.median(diffs), "ci_low_pct": low,
            "ci_high_pct": high, "call": call}
