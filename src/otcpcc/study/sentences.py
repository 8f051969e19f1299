"""The report's verdict in plain sentences.

Input: ``summary["verdicts"]``, one entry per (method, metric) against the baseline, paired over
seeds: ``{method, metric, baseline, diff_mean, ci_low, ci_high, call}`` with ``diff_mean`` the
mean of (method − baseline) over seeds, ``[ci_low, ci_high]`` its 95% t-interval (``None`` with
one seed) and ``call`` one of ``better``, ``worse``, ``within noise`` (the interval straddles 0),
``one seed``. Output: sentences such as "Against none, hxe lowers expected cost by 0.030 ± 0.010
(better) and lowers fine accuracy by 0.4 ± 0.3 points (within noise)." where ``± h`` is the
half-width of the interval. Accuracies are fractions in [0, 1], reported in percentage points.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .seeds_needed import BEYOND_CAP, CAP, ESTIMATE, NO_BETTER, NO_SPREAD
from .tables import _finite, best_rows, cell, decision_cost_key, method_name

# the order in which a method's verdicts are told; other metrics follow in summary order
_ORDER = ("expected_cost_argmax", "expected_cost", "expected_cost_crm", "fine_acc", "fine_acc_crm", "mistake_severity",
          "mistake_severity_crm", "test_cpcc_emd", "map_coarse")
_LABELS = {"fine_acc": "fine accuracy", "fine_acc_crm": "fine accuracy under CRM",
           "expected_cost": "expected cost", "expected_cost_crm": "expected cost under CRM",
           "expected_cost_argmax": "cost of the decisions (argmax)",
           "mistake_severity": "mistake severity",
           "mistake_severity_crm": "mistake severity under CRM",
           "test_cpcc_l2": "TestCPCC(l2)", "test_cpcc_emd": "TestCPCC(emd)"}
_CALLS = ("better", "worse", "within noise", "no spread")
_CALL_WORDS = {"no spread": "the same in every seed: noise not measured"}


def metric_label(metric: str) -> tuple[str, float, str, int]:
    """``(words, scale, unit, decimals)`` for a metric: accuracies (``*_acc``, ``*_acc_crm``,
    ``fine_top*``) in percentage points (scale 100, 1 decimal), ``map_<level>`` as "<level> mAP",
    the rest as they are (3 decimals)."""
    if metric in _LABELS:
        words = _LABELS[metric]
    elif metric.startswith("map_"):
        words = f"{metric[4:]} mAP"
    elif metric.endswith("_acc"):
        words = f"{metric[:-4]} accuracy"
    else:
        words = metric
    points = metric.endswith(("_acc", "_acc_crm")) or metric.startswith("fine_top")
    return (words, 100.0, " points", 1) if points else (words, 1.0, "", 3)


def _half_width(v: Mapping[str, Any]) -> float | None:
    lo, hi = v.get("ci_low"), v.get("ci_high")
    if _finite(lo) and _finite(hi):
        return (float(hi) - float(lo)) / 2.0
    return None


def verdict_phrase(v: Mapping[str, Any]) -> str:
    """One verdict as a phrase: "lowers expected cost by 0.030 ± 0.010 (better)"."""
    words, scale, unit, digits = metric_label(str(v.get("metric")))
    call = str(v.get("call") or "no call")
    call = _CALL_WORDS.get(call, call)
    d = v.get("diff_mean")
    if not _finite(d):
        return f"leaves {words} undetermined (no value)"
    d = float(d) * scale
    h = _half_width(v)
    spread = f" ± {h * scale:.{digits}f}" if h is not None else ""
    if round(d, digits) == 0.0:
        return f"changes {words} by {0.0:.{digits}f}{spread}{unit} ({call})"
    verb = "lowers" if d < 0 else "raises"
    return f"{verb} {words} by {abs(d):.{digits}f}{spread}{unit} ({call})"


def _ordered(items: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    rank = {m: i for i, m in enumerate(_ORDER)}
    return sorted(items, key=lambda v: rank.get(str(v.get("metric")), len(_ORDER)))


def _join(phrases: Sequence[str]) -> str:
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def has_intervals(verdicts: Sequence[Mapping[str, Any]]) -> bool:
    """Whether any verdict carries a confidence interval (two seeds or more)."""
    return any(_half_width(v) is not None for v in verdicts)


def _headline(aggregate: Sequence[Mapping[str, Any]]) -> list[str]:
    """Which method is best on expected cost (argmax and CRM) and on fine accuracy, by mean."""
    out = []
    for metric in (decision_cost_key(aggregate), "expected_cost_crm", "fine_acc"):
        rows = sorted(best_rows(aggregate, metric))
        if rows:
            words, *_ = metric_label(metric)
            best = " and ".join(f"{method_name(aggregate[i])} ({cell(aggregate[i], metric)})"
                                for i in rows)
            kind = "Highest" if metric == "fine_acc" else "Lowest"
            sd = " (± sd over seeds, not an interval)" if "±" in best else ""
            out.append(f"{kind} mean {words}{sd}: {best}.")
    return out


def _tally(verdicts: Sequence[Mapping[str, Any]], metric: str, baseline: str) -> str | None:
    """"Expected cost against none: better — hxe; worse — fastft; within noise — l2, soft."."""
    sel = [v for v in verdicts if v.get("metric") == metric]
    if not sel or not has_intervals(sel):
        return None
    words, *_ = metric_label(metric)
    parts = []
    for call in _CALLS:
        names = [str(v.get("method")) for v in sel if v.get("call") == call]
        if names or call != "no spread":  # the rare call only when it happened
            parts.append(f"{call} — {', '.join(names) if names else 'no method'}")
    return f"{words[:1].upper()}{words[1:]} against {baseline}: " + "; ".join(parts) + "."


# compare --methods without none: said in report.md/html and in summary.json's "verdicts_note"
NO_BASELINE = ("No baseline `none` (flat CE) among the methods: no verdicts against flat CE (add "
               "none to --methods for them)")


def verdict_sentences(verdicts: Sequence[Mapping[str, Any]] | None,
                      aggregate: Sequence[Mapping[str, Any]] = (),
                      seeds: Sequence[int] = ()) -> list[str]:
    """The "Verdict" section as a list of sentences (see the module docstring).

    First how to read it (paired over which seeds; or that one seed gives no interval), then the
    best method by mean expected cost (argmax, CRM) and fine accuracy, then the tally of calls on
    expected cost, then one sentence per method. ``verdicts`` ``None`` or empty (a summary written
    without them) gives one sentence saying so.
    """
    head = _headline(aggregate)
    names = {method_name(r) for r in aggregate}
    if not verdicts and aggregate and "none" not in names:  # compare --methods without none
        return [NO_BASELINE + ".", *head]
    if not verdicts:
        advice = "" if len(seeds) >= 2 else "; rerun `otcpcc compare` with --seeds 3 or more"
        return ["This summary has no paired verdicts (summary.json was written without them): "
                f"the means below are not tested against noise{advice}.", *head]
    baselines = list(dict.fromkeys(str(v.get("baseline", "none")) for v in verdicts))
    base = baselines[0]
    seed_text = f"seeds {', '.join(map(str, seeds))}" if seeds else "the seeds"
    if has_intervals(verdicts):
        intro = (f"Each method against {base}, paired over {seed_text} (same seed, same data): "
                 "mean difference ± half-width of its 95% t-interval; better or worse when the "
                 "interval excludes 0, within noise when it straddles 0.")
    else:
        intro = (f"One seed ({seed_text}): there is no confidence interval, so each difference "
                 f"against {base} below is a single run, not evidence either way; rerun with "
                 "--seeds 3 or more for a verdict.")
    out = [intro, *head]
    for metric in (decision_cost_key(verdicts), "expected_cost_crm"):
        line = _tally(verdicts, metric, base)
        if line:
            out.append(line)
    methods = list(dict.fromkeys(str(v.get("method")) for v in verdicts))
    for m in methods:
        mine = _ordered([v for v in verdicts if str(v.get("method")) == m])
        against = str(mine[0].get("baseline", base))
        out.append(f"Against {against}, {m} " + _join([verdict_phrase(v) for v in mine]) + ".")
    return out


def ot_sentences(ot_verdicts: Sequence[Mapping[str, Any]] | None) -> list[str]:
    """"Does optimal transport matter here?" in sentences: each OT-CPCC method against the same
    method with class means (ℓ2), paired over seeds; nothing when no such pair was run."""
    if not ot_verdicts:
        return []
    out = []
    for m in dict.fromkeys(str(v.get("method")) for v in ot_verdicts):
        mine = [v for v in ot_verdicts if str(v.get("method")) == m]
        calls = {str(v.get("call")) for v in mine if v.get("metric") in
                 ("expected_cost_argmax", "expected_cost_crm")}
        gist = ("optimal transport changes the decision costs here"
                if calls & {"better", "worse"} else
                "on the decision costs, optimal transport ends within noise of class means here")
        out.append(f"Does optimal transport matter? {means_pair_phrase(mine)}: {gist}.")
    return out


def means_pair_phrase(rows: Sequence[Mapping[str, Any]]) -> str:
    """One OT method's verdicts against its class-means counterpart (rows of
    :func:`otcpcc.study.verdict.ot_verdicts` for one method): "Against l2 (the same method with
    class means), fastft lowers … and raises … (within noise)"."""
    mine = _ordered(rows)
    return (f"Against {mine[0].get('baseline')} (the same method with class means), "
            f"{mine[0].get('method')} " + _join([verdict_phrase(v) for v in mine]))


def _baseline_words(baseline: str) -> str:
    return "flat CE (none)" if baseline == "none" else baseline


def seeds_sentence(est: Mapping[str, Any] | None) -> str | None:
    """How many seeds would separate the cheapest candidate from the baseline, in one sentence,
    from :func:`otcpcc.study.seeds_needed.cheapest_estimate` (None: no candidate). Says the
    estimate ("about 13 seeds: `--seeds 13`") at the observed mean difference and spread; beyond
    the cap, that the difference is too small against the seed noise to be worth chasing; with
    fewer than 2 seeds or a zero difference, that it cannot be estimated."""
    if not est:
        return None
    words, scale, unit, digits = metric_label(str(est["metric"]))
    who, base = str(est["method"]), _baseline_words(str(est["baseline"]))
    mean, sd, k = est.get("mean"), est.get("sd"), int(est.get("seeds") or 0)
    if not _finite(mean) or not _finite(sd):
        return (f"How many seeds would separate {who} (the lowest mean {words}) from {base} "
                f"cannot be estimated from {k} paired seed{'s' if k != 1 else ''}: rerun with "
                "--seeds 3 or more.")
    side = "lower" if float(mean) < 0 else "higher"
    gap = (f"on average equal to {base}'s" if float(mean) == 0 else
           f"{abs(float(mean)) * scale:.{digits}f}{unit} {side} per seed than {base}")
    seen = (f"{who}, the candidate with the lowest mean {words}, is {gap} (sd "
            f"{float(sd) * scale:.{digits}f}{unit} over {k} paired seeds)")
    if est.get("status") == ESTIMATE:
        n = int(est["n"])
        spread = ""
        if _finite(est.get("sd_upper")) and float(est["sd_upper"]) > float(sd):
            upper = est.get("n_upper")
            need = (f"about {int(upper)} seeds" if upper is not None
                    else f"more than {int(est.get('cap') or CAP)} seeds")
            spread = (f" The spread itself is uncertain from {k} seeds: at its 95% upper bound (sd "
                      f"{float(est['sd_upper']) * scale:.{digits}f}{unit}) it would take {need}.")
        return (f"{seen}: at that effect size and noise, about {n} seeds would make the 95% "
                f"interval exclude 0 (`--seeds {n}`); an estimate, the next seeds may show a "
                f"smaller or larger difference.{spread}")
    if est.get("status") == BEYOND_CAP:
        cap = int(est.get("cap") or CAP)
        return (f"{seen}: at that effect size and noise even {cap} seeds would not separate "
                "them; the difference is too small against the seed noise to be worth chasing.")
    if est.get("status") == NO_BETTER:
        return (f"{seen}: no candidate beats {base} on average, so more seeds would not separate "
                f"one in its favour.")
    if est.get("status") == NO_SPREAD:
        return (f"{seen}: the difference was the same in every seed, so the seed noise is not "
                f"measured and no number of seeds can be estimated; rerun with --seeds "
                f"{max(k + 2, 4)} or more.")
    return (f"{seen}: with a zero mean difference no number of seeds can be estimated to "
            "separate them.")
