"""The pilot's closing recommendation and its one answer to "does optimal transport matter here?".

Inputs: the diagnosis of the input features (``otcpcc.evaluation.diagnose``: ``recommend``,
``cpcc_l2``, ``cpcc_emd``, ``rank_agreement_l2_emd``), the comparison's aggregate rows
(``<metric>_mean``), its paired verdicts against flat CE and its OT verdicts (each OT method
against the same method with class means; ``otcpcc.study.verdict``), and the per-seed runs.

- :func:`recommendation`: the closing paragraph and its machine-readable fields. A method is
  *supported* when its decision-cost verdict (``COST_METRIC``, the mean C[true, argmax]) is
  ``better`` and its fine-accuracy verdict is not ``worse``; among supported ones an OT method is
  preferred only when its OT verdict (against the same method with class means, paired by seed)
  on the decision cost is ``better`` (the lowest mean cost among such), else ℓ2 if supported (the
  cheaper, and as good within seed noise), else the supported method with the lowest mean
  decision cost; none supported: flat CE. The input diagnosis is quoted as before-training
  evidence; it does not pick (a point-mean difference within seed noise is no reason to pay for
  OT). The paragraph also names every
  method ``worse`` than flat CE on the decision cost or on fine accuracy, with its interval, and,
  when the candidate with the lowest mean decision cost is not yet separated from flat CE, how
  many seeds would separate it (``otcpcc.study.seeds_needed``).
- :func:`ot_answer` / :func:`ot_paragraph`: the after-training answer (the OT verdicts on the
  decision cost) as *the* answer, the input diagnosis as before-training evidence, and whether
  the two disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .seeds_needed import cheapest_estimate, separated
from .sentences import means_pair_phrase, metric_label, seeds_sentence
from .tables import _finite, _signed, fmt, method_name

COST_METRIC = "expected_cost_argmax"  # the cost of the model's decisions (argmax), per sample
COST_WORDS = "cost of the decisions (argmax)"
NON_OT = ("l2", "hxe", "soft")  # supported methods that are not OT-CPCC


def _diagnosis_says(diagnosis: Mapping[str, Any]) -> str:
    return (f"the diagnosis says {diagnosis['recommend']} (CPCC l2 {fmt(diagnosis.get('cpcc_l2'), 2)}"
            f" vs emd {fmt(diagnosis.get('cpcc_emd'), 2)}, Spearman "
            f"{fmt(diagnosis.get('rank_agreement_l2_emd'), 2)})")


def _interval(v: Mapping[str, Any]) -> str:
    """"fastft on the cost of the decisions (argmax) (+0.040, 95% CI [0.013, 0.066])"."""
    words, scale, unit, digits = metric_label(str(v["metric"]))
    lo, hi = v.get("ci_low"), v.get("ci_high")
    ci = (f", 95% CI [{fmt(float(lo) * scale, digits)}, {fmt(float(hi) * scale, digits)}]"
          if _finite(lo) and _finite(hi) else "")
    d = v.get("diff_mean")
    diff = _signed(float(d) * scale, digits, unit) if _finite(d) else "n/a"
    article = "the " if words.startswith("cost") else ""
    return f"{v['method']} on {article}{words} ({diff}{ci})"


def _cost_ci(v: Mapping[str, Any]) -> str:
    """"−0.020, 95% CI [−0.030, −0.010]": a decision-cost verdict's mean difference and interval."""
    return f"{fmt(v['diff_mean'], 3)}, 95% CI [{fmt(v['ci_low'], 3)}, {fmt(v['ci_high'], 3)}]"


def _names(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def recommendation(diagnosis: Mapping[str, Any], aggregate: Sequence[Mapping[str, Any]],
                   verdicts: Sequence[Mapping[str, Any]], runs: Sequence[Mapping[str, Any]] = (),
                   ot_verdicts: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The closing paragraph and its fields (module docstring).

    Returns ``{"recommendation": text, "recommended_method": name ("none" for flat CE),
    "better": methods better than flat CE on the decision cost, "worse": worse on it,
    "worse_fine_acc": worse on fine accuracy, "seeds_needed": n or None, "seeds_estimate":
    :func:`otcpcc.study.seeds_needed.cheapest_estimate` or None}``. ``runs`` (the per-seed
    summary rows) are needed for the seeds estimate only.
    """
    if not isinstance(diagnosis, Mapping) or "recommend" not in diagnosis:
        raise ValueError("recommendation needs the diagnosis of otcpcc.evaluation.diagnose (a "
                         "mapping with its 'recommend' field)")
    cost = {method_name(r): r.get(f"{COST_METRIC}_mean") for r in aggregate}
    if "none" not in cost:
        raise ValueError("recommendation needs flat CE ('none') among the compared methods: its "
                         "verdicts are paired against it; compare with --methods none,...")
    calls = {(v["method"], v["metric"]): v for v in verdicts}

    def named(metric: str, call: str) -> list[str]:
        return [str(v["method"]) for v in verdicts if v["metric"] == metric and v["call"] == call]

    better, worse, worse_acc = (named(COST_METRIC, "better"), named(COST_METRIC, "worse"),
                                named("fine_acc", "worse"))
    supported = [m for m in cost if m != "none" and m in better and m not in worse_acc]
    diag = "on the input features, before training, " + _diagnosis_says(diagnosis)
    if supported:
        def mean_cost(m: str) -> float:
            return float(cost[m]) if _finite(cost[m]) else float("inf")

        ot_call = {o["method"]: o for o in ot_verdicts if o.get("metric") == COST_METRIC}
        ot = [m for m in supported if m not in NON_OT]
        ot_better = [m for m in ot if ot_call.get(m, {}).get("call") == "better"]
        if ot_better:
            pick = min(ot_better, key=mean_cost)
        else:
            pick = "l2" if "l2" in supported else min(supported, key=mean_cost)
        v = calls[(pick, COST_METRIC)]
        text = [f"Use {pick}: {COST_WORDS} {fmt(cost.get('none'), 3)} → {fmt(cost[pick], 3)} "
                f"(paired difference {_cost_ci(v)}); {diag}."]
        if pick in ot_better:
            o = ot_call[pick]
            text.append(f"Against {o['baseline']} (class means) {pick} lowers that cost beyond seed "
                        f"noise too ({_cost_ci(o)}).")
        elif pick not in NON_OT and ot_call.get(pick, {}).get("call") == "within noise":
            text.append(f"Against {ot_call[pick]['baseline']} (class means) {pick} is within seed "
                        "noise on that cost (below).")
        tied = [m for m in ot if ot_call.get(m, {}).get("call") == "within noise"]
        if pick == "l2" and tied:
            verb = "is" if len(tied) == 1 else "are"
            text.append(f"{_names(tied)} also lowered it beyond seed noise but {verb} within seed "
                        "noise of l2 (class means) on it: the means suffice here, at less cost.")
    else:
        pick = "none"
        traded = [m for m in better if m in worse_acc]
        if traded:
            lead = (f"{_names(traded)} lowered the {COST_WORDS} beyond seed noise but also lowered "
                    "fine accuracy beyond it, and no other candidate lowered that cost beyond seed "
                    "noise on this budget")
        else:
            lead = f"no candidate lowered the {COST_WORDS} beyond seed noise on this budget"
        text = [f"Use flat cross-entropy for now: {lead}; {diag}."]
    harms = [_interval(calls[(m, COST_METRIC)]) for m in worse]
    harms += [_interval(calls[(m, "fine_acc")]) for m in worse_acc]
    if harms:
        text.append("Worse than flat CE beyond seed noise: " + "; ".join(harms) + ".")
    elif any(_finite(v.get("ci_low")) for v in verdicts):
        text.append(f"No candidate was worse than flat CE beyond seed noise on the {COST_WORDS} "
                    "or on fine accuracy.")
    est = cheapest_estimate(runs, aggregate, COST_METRIC) if runs else None
    if est and not separated(est):
        text.append(seeds_sentence(est) or "")
    return {"recommendation": " ".join(text), "recommended_method": pick, "better": better,
            "worse": worse, "worse_fine_acc": worse_acc,
            "seeds_needed": est["n"] if est else None, "seeds_estimate": est}


def closing_recommendation(diagnosis: Mapping[str, Any], aggregate: Sequence[Mapping[str, Any]],
                           verdicts: Sequence[Mapping[str, Any]],
                           runs: Sequence[Mapping[str, Any]] = (),
                           ot_verdicts: Sequence[Mapping[str, Any]] = ()) -> str:
    """The closing paragraph of :func:`recommendation`."""
    return str(recommendation(diagnosis, aggregate, verdicts, runs, ot_verdicts)["recommendation"])


def ot_answer(diagnosis: Mapping[str, Any], ot_verdicts: Sequence[Mapping[str, Any]]
              ) -> dict[str, Any]:
    """Does optimal transport matter here? From the OT verdicts on the decision cost.

    ``ot_matters``: ``"yes"`` when an OT method's decisions cost less than with class means beyond
    seed noise (call ``better``), ``"no"`` when they cost more (``worse``: class means do better),
    ``"mixed"`` when both happen (two OT methods), ``"within noise"`` when every interval contains
    0, None when no OT method was run with its class-means counterpart or with one seed only.
    ``ot_evidence``: those verdict rows (method, baseline, n, diff_mean, ci_low, ci_high, call).
    ``ot_input_diagnosis``: the diagnosis of the input features (``ot``/``l2``/``undetermined``), before training.
    ``ot_agrees_with_diagnosis``: whether the two point the same way (``ot`` with ``yes``; ``l2``
    with ``no``); None when there is no after-training answer, it is mixed, or it is within noise
    (which neither confirms nor contradicts the diagnosis: it is not evidence of no effect).
    """
    rows = [v for v in ot_verdicts if v.get("metric") == COST_METRIC]
    keys = ("method", "baseline", "metric", "n", "diff_mean", "ci_low", "ci_high", "call")
    found = {str(v.get("call")) for v in rows}
    matters = ("mixed" if {"better", "worse"} <= found else "yes" if "better" in found else
               "no" if "worse" in found else "within noise" if "within noise" in found else None)
    before = diagnosis.get("recommend")
    agrees = (None if matters in (None, "mixed", "within noise") or before not in ("ot", "l2")
              else (before == "ot") == (matters == "yes"))
    return {"ot_matters": matters, "ot_evidence": [{k: v.get(k) for k in keys} for v in rows],
            "ot_input_diagnosis": before, "ot_agrees_with_diagnosis": agrees}


_ANSWERS = {
    "yes": f"**Yes**, after training: the {COST_WORDS} is lower with optimal transport than with "
           "class means, beyond seed noise.",
    "no": f"**No**, after training: the {COST_WORDS} is higher with optimal transport than with "
          "class means, beyond seed noise (class means do better).",
    "mixed": f"**Mixed**, after training: one OT method lowers the {COST_WORDS} against class means "
             "and another raises it, beyond seed noise.",
    "within noise": f"**Not shown**, after training: with optimal transport the {COST_WORDS} ends "
                    "within seed noise of class means (within noise is not evidence of no effect).",
}

_DISAGREE = {  # the after-training answer when the input diagnosis pointed the other way
    "yes": "The two disagree: the input features do not favour OT, yet after training OT makes "
           "cheaper decisions",
    "no": "The two disagree: the input features favour OT, but after training class means make "
          "cheaper decisions",
    "within noise": "After training this neither confirms nor contradicts it: the input features "
                    "favour OT, but OT does not measurably change the cost of the decisions (within "
                    "noise is not evidence of no effect)",
}


def ot_paragraph(diagnosis: Mapping[str, Any], ot_verdicts: Sequence[Mapping[str, Any]],
                 features_hint: str = "compare/none/seed0") -> str:
    """The report's one answer to "does optimal transport matter here?" (:func:`ot_answer`): the
    after-training answer first, then each OT method's verdicts against class means, then the
    input diagnosis as before-training evidence, and whether the two disagree.
    ``features_hint``: a flat-CE run directory to name for ``otcpcc diagnose --features-of``."""
    ans = ot_answer(diagnosis, ot_verdicts)
    matters = ans["ot_matters"]
    if matters is not None:
        head = _ANSWERS[matters]
    elif any(v.get("call") == "one seed" for v in ot_verdicts):
        head = ("**Not measured** after training: with one seed there is no interval; rerun with "
                "--seeds 3 or more.")
    elif any(v.get("call") == "no spread" and v.get("metric") == COST_METRIC for v in ot_verdicts):
        head = (f"**Not measured** after training: the {COST_WORDS} differed by the same amount in "
                "every seed, so the seed noise is unknown; rerun with more seeds.")
    elif ot_verdicts:
        head = f"**Not measured** after training: the runs have no {COST_WORDS}."
    else:
        head = ("**Not measured** after training: no OT method was trained together with the same "
                "method with class means (e.g. `--methods none,l2,fastft`).")
    lines = [head]
    if any(_finite(v.get("ci_low")) for v in ot_verdicts):
        lines.append("(Paired by seed: mean difference ± half-width of its 95% t-interval.)")
    for m in dict.fromkeys(str(v.get("method")) for v in ot_verdicts):
        lines.append(means_pair_phrase([v for v in ot_verdicts if str(v.get("method")) == m]) + ".")
    rec = diagnosis.get("recommend")
    gloss = ("the class distributions carry hierarchy the class means miss" if rec == "ot" else
             "optimal transport adds no hierarchy over the class means there" if rec == "l2" else
             "too few samples per class to tell")
    lines.append(f"Before training (evidence from the input features): {_diagnosis_says(diagnosis)}"
                 f": {gloss}.")
    differs = matters == "within noise" and rec == "ot"  # favoured before, not shown after
    if ans["ot_agrees_with_diagnosis"] is False or differs:
        lines.append(_DISAGREE[matters] + "; the after-training comparison is the answer, since "
                     "training reshapes the features (`otcpcc diagnose --features-of "
                     f"{features_hint}` diagnoses the learned ones).")
    elif ans["ot_agrees_with_diagnosis"]:
        lines.append("The two agree.")
    elif matters == "within noise" and rec == "l2":
        lines.append("The after-training comparison neither confirms nor contradicts it: within "
                     "noise is not evidence of no effect.")
    elif matters is None:
        lines.append("That is evidence about the inputs only, not about the cost of mistakes after "
                     "training.")
    return " ".join(lines)
