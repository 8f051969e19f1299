"""otcpcc pilot: paired verdicts, the closing rule (harms named, the seeds estimate against SciPy),
the one answer to "does OT matter?", and one tiny end-to-end pilot."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from otcpcc.cli import main
from otcpcc.study import recommendation as rec
from otcpcc.study.pilot import closing_recommendation
from otcpcc.study.seeds_needed import seeds_needed
from otcpcc.study.sentences import seeds_sentence
from otcpcc.study.tables import aggregate_runs
from otcpcc.study.verdict import ot_verdicts
from otcpcc.study.verdict import verdicts as paired_verdicts


def _runs():
    cost = {"none": [1.0, 1.2, 1.1], "l2": [0.8, 0.95, 0.9], "fastft": [1.1, 1.0, 1.3]}
    acc = {"none": [0.8, 0.8, 0.8], "l2": [0.8, 0.81, 0.79], "fastft": [0.8, 0.8, 0.8]}
    return [{"distance": m, "seed": s, "expected_cost_argmax": cost[m][s], "fine_acc": acc[m][s]}
            for m in cost for s in range(3)]


def test_closing_rule_prefers_ot_only_when_its_ot_verdict_says_better():
    """Both CPCC variants better than flat CE: l2 (the cheaper) unless fastft's paired verdict
    against l2 is 'better' too; the input diagnosis is quoted, never decides; the point means
    alone (fastft's lower) do not decide either."""
    agg = [{"distance": m, "expected_cost_argmax_mean": c}
           for m, c in (("none", 0.50), ("l2", 0.48), ("fastft", 0.47))]
    verdicts = [_v("l2", "expected_cost_argmax", -0.02, -0.03, -0.01, "better"),
                _v("fastft", "expected_cost_argmax", -0.03, -0.04, -0.02, "better"),
                _v("l2", "fine_acc", 0.0, -0.01, 0.01, "within noise"),
                _v("fastft", "fine_acc", 0.0, -0.01, 0.01, "within noise")]
    for diag in (DIAG, dict(DIAG, recommend="l2")):
        out = rec.recommendation(diag, agg, verdicts, ot_verdicts=[_ot("within noise", -0.01)])
        assert out["recommended_method"] == "l2", out["recommendation"]
        assert ("fastft also lowered it beyond seed noise but is within seed noise of l2 (class "
                "means) on it: the means suffice here, at less cost.") in out["recommendation"]
        out = rec.recommendation(diag, agg, verdicts, ot_verdicts=[_ot("better", -0.01, -0.015, -0.005)])
        assert out["recommended_method"] == "fastft", out["recommendation"]
        assert ("Against l2 (class means) fastft lowers that cost beyond seed noise too (\u22120.010, "
                "95% CI [\u22120.015, \u22120.005]).") in out["recommendation"]
    out = rec.recommendation(DIAG, agg, verdicts)  # no OT verdicts (e.g. no l2 run): l2
    assert out["recommended_method"] == "l2"
    only_ot = [dict(v, call="within noise") if v["method"] == "l2" else v for v in verdicts]
    assert rec.recommendation(DIAG, agg, only_ot)["recommended_method"] == "fastft"
    worse = [dict(v, call="within noise") for v in verdicts]
    assert rec.closing_recommendation(DIAG, agg, worse).startswith("Use flat cross-entropy")
    runs = _runs()  # verdicts computed from per-seed runs: l2 better, fastft not
    assert closing_recommendation(DIAG, aggregate_runs(runs), paired_verdicts(runs)).startswith("Use l2:")


def test_pilot_end_to_end_tiny(tmp_path, monkeypatch, capsys):
    # compare's figures (t-SNE, dendrograms) are tested elsewhere; skip them here for speed
    monkeypatch.setattr("otcpcc.study.compare.render_report", lambda *a, **k: None)
    code = main(["pilot", "--data", "synthetic", "--data-opt", "branching=[2, 2]",
                 "--data-opt", "train_per_class=20", "--data-opt", "test_per_class=10",
                 "--epochs", "1", "--seeds", "2", "--methods", "none,l2,fastft", "--batch-size", "32",
                 "--device", "cpu", "--no-progress", "--out", str(tmp_path / "p")])
    assert code == 0
    out = tmp_path / "p"
    res = json.loads((out / "pilot.json").read_text())
    assert res["diagnosis"]["recommend"] in ("ot", "l2")
    assert {v["method"] for v in res["verdicts"]} == {"l2", "fastft"}
    assert res["recommended_method"] in ("none", "l2", "fastft") and res["recommendation"]
    assert set(res["better"]) | set(res["worse"]) <= {"l2", "fastft"}
    assert res["seeds_estimate"]["method"] in ("l2", "fastft")
    assert res["seeds_needed"] is None or 2 <= res["seeds_needed"] <= 100
    assert res["ot_matters"] in ("yes", "no", "within noise")  # fastft against l2, 2 seeds
    assert [(e["method"], e["baseline"]) for e in res["ot_evidence"]] == [("fastft", "l2")]
    assert res["ot_input_diagnosis"] == res["diagnosis"]["recommend"]
    printed = capsys.readouterr().out.splitlines()  # the answers in the terminal, then the report
    assert printed[-1] == str(out / "report.html") and max(map(len, printed[:-1])) <= 100
    assert " ".join(x.strip() for x in printed[:-2]) == f"otcpcc pilot: {res['recommendation']}"
    assert printed[-2].endswith(f"after training)? {res['ot_matters']}")
    for hint in re.findall(r"--features-of ([^`]+)`", (out / "report.md").read_text()):
        assert (Path(hint) / "config.json").is_file(), hint  # a path that works where pilot ran
    md = (out / "report.md").read_text()
    assert "## Recommendation" in md and "Cost of mistakes" in md and "Paired verdicts" in md
    # one answer to "does OT matter?": after training; the input diagnosis titled as such
    assert md.count("Does optimal transport matter") == 1
    assert "## Does optimal transport matter here?\n\n**" in md
    assert "## Input features, before training: the diagnosis says **" in md
    assert "expected cost of" not in md
    assert (out / "diagnosis" / "diagnose.json").is_file()
    assert "data:image/png;base64" in (out / "report.html").read_text()
    assert main(["pilot", "--data", "synthetic", "--out", str(out), "--no-progress"]) == 2


# ------------------------------------------------------------ the recommendation on hand-made inputs
DIAG = {"recommend": "ot", "cpcc_l2": 0.01, "cpcc_emd": 0.67, "rank_agreement_l2_emd": 0.29}


def _oracle_seeds(diffs, cap=100):
    """Brute force with SciPy: the first n >= 2 whose 95% t-interval at the observed mean and sd
    (scipy.stats.t.interval) excludes 0."""
    m, s = np.mean(diffs), np.std(diffs, ddof=1)
    for n in range(2, cap + 1):
        lo, hi = stats.t.interval(0.95, n - 1, loc=m, scale=s / math.sqrt(n))
        if lo > 0 or hi < 0:
            return n
    return None


def test_seeds_needed_against_scipy_t():
    for diffs in ([-0.03, -0.01], [-0.020, -0.012, -0.031], [0.05, -0.01], [0.013, 0.066],
                  [-0.01, -0.03, 0.004, -0.02, -0.015]):
        est = seeds_needed(diffs)
        n = _oracle_seeds(diffs)
        assert est["status"] == "estimate" and est["n"] == n, diffs
        m, s = abs(np.mean(diffs)), np.std(diffs, ddof=1)  # n is the first that passes
        assert stats.t.ppf(0.975, n - 1) * s / math.sqrt(n) < m
        assert n == 2 or stats.t.ppf(0.975, n - 2) * s / math.sqrt(n - 1) >= m
    # hand check, mean 0.02, sd 0.01414: n = 4: 3.182 · 0.01414 / 2 = 0.0225 ≥ 0.02; n = 5:
    # 2.776 · 0.01414 / √5 = 0.0176 < 0.02
    assert seeds_needed([-0.03, -0.01])["n"] == 5
    flat = seeds_needed([-0.02, -0.02])  # the same in both seeds: the noise is unknown, not 0
    assert (flat["status"], flat["n"], flat["n_upper"]) == ("no spread", None, None)
    assert "the seed noise is not measured" in seeds_sentence(
        dict(flat, method="fastft", baseline="none", metric="expected_cost_crm"))
    big = seeds_needed([0.011, -0.01])  # mean 0.0005 against sd 0.015: needs ~3600 seeds
    assert (big["status"], big["n"]) == ("beyond cap", None) and _oracle_seeds([0.011, -0.01]) is None
    for none in ([0.01, -0.01], [0.02], []):  # mean 0; one seed; nothing: no estimate
        assert seeds_needed(none)["status"] == "cannot estimate" and seeds_needed(none)["n"] is None


def test_seeds_needed_also_at_the_upper_bound_of_the_spread():
    """The spread from k seeds is itself uncertain: its one-sided 95% upper bound (chi-square) and
    the seeds needed there, against scipy (2 seeds: the bound is 16x the observed sd)."""
    for diffs in ([-0.05, -0.04], [-0.020, -0.012, -0.031], [-0.01, -0.03, 0.004, -0.02, -0.015]):
        est = seeds_needed(diffs)
        k, s = len(diffs), np.std(diffs, ddof=1)
        want = s * math.sqrt((k - 1) / stats.chi2.ppf(0.05, k - 1))
        assert est["sd_upper"] == pytest.approx(want, rel=1e-12)
        m = abs(np.mean(diffs))  # the first n whose t-interval at (m, want) excludes 0, if any
        first = next((n for n in range(2, 101)
                      if stats.t.ppf(0.975, n - 1) * want / math.sqrt(n) < m), None)
        assert est["n_upper"] == first
    assert seeds_needed([-0.05, -0.04])["sd_upper"] / np.std([-0.05, -0.04], ddof=1) == pytest.approx(15.95, abs=0.01)
    # by hand: mean 0.045, sd 0.00707: t(0.975, 2) 4.303 · 0.00707 / √3 = 0.0176 < 0.045 (n = 2:
    # 12.71 · 0.00707 / √2 = 0.064 does not): 3 seeds; at sd_upper 0.1128: t(0.975, 26) 2.056 ·
    # 0.1128 / √27 = 0.0446 < 0.045, while t(0.975, 25) 2.060 · 0.1128 / √26 = 0.0455 does not: 27
    est = seeds_needed([-0.05, -0.04])
    assert (est["n"], est["n_upper"]) == (3, 27)


def _two_seed_runs(cost, acc=None):
    acc = acc or {m: [0.8, 0.8] for m in cost}
    return [{"method": m, "distance": m, "seed": s, "expected_cost_argmax": cost[m][s],
             "fine_acc": acc[m][s]} for m in cost for s in range(2)]


def _inputs(runs):
    v = paired_verdicts(runs, metrics=["expected_cost_argmax", "fine_acc"])
    return aggregate_runs(runs), v, ot_verdicts(runs, metrics=["expected_cost_argmax", "fine_acc"])


def test_closing_gives_the_seeds_estimate_when_nothing_separates():
    runs = _two_seed_runs({"none": [1.0, 1.1], "soft": [0.99, 1.12], "l2": [0.96, 1.08],
                           "fastft": [1.02, 1.11]})
    agg, v, ov = _inputs(runs)
    out = rec.recommendation(DIAG, agg, v, runs, ov)
    n = _oracle_seeds([0.96 - 1.0, 1.08 - 1.1])  # l2 is the cheapest candidate: 4 seeds
    assert n == 4 and out["seeds_needed"] == n and out["recommended_method"] == "none"
    text = out["recommendation"]
    assert text.startswith("Use flat cross-entropy for now: no candidate lowered the cost of the "
                           "decisions (argmax) beyond seed noise")
    assert (f"l2, the candidate with the lowest mean cost of the decisions (argmax), is 0.030 lower per seed than "
            f"flat CE (none) (sd 0.014 over 2 paired seeds): at that effect size and noise, about "
            f"{n} seeds would make the 95% interval exclude 0 (`--seeds {n}`)") in text
    assert "A longer pilot" not in text and "expected cost" not in text
    assert ("The spread itself is uncertain from 2 seeds: at its 95% upper bound (sd 0.226) it "
            "would take more than 100 seeds.") in text
    assert out["seeds_estimate"]["method"] == "l2" and out["better"] == out["worse"] == []
    # a tiny difference against large noise: not worth chasing; one seed: cannot be estimated
    far = _two_seed_runs({"none": [1.0, 1.1], "l2": [0.989, 1.11]})
    out = rec.recommendation(DIAG, *_inputs(far)[:2], far)
    assert out["seeds_needed"] is None
    assert "even 100 seeds would not separate them; the difference is too small against the seed " \
           "noise to be worth chasing" in out["recommendation"]
    # every candidate worse than flat CE on average (a new user's pilot was told "about 24
    # seeds" for one): no estimate, and the sentence says why
    worse = _two_seed_runs({"none": [1.0, 1.1], "l2": [1.05, 1.13], "fastft": [1.06, 1.2]})
    out = rec.recommendation(DIAG, *_inputs(worse)[:2], worse)
    assert out["seeds_needed"] is None and out["seeds_estimate"]["status"] == "no better candidate"
    assert ("l2, the candidate with the lowest mean cost of the decisions (argmax), is 0.040 higher "
            "per seed than flat CE (none) (sd 0.014 over 2 paired seeds): no candidate beats flat CE "
            "(none) on average, so more seeds would not separate one in its favour.") in out["recommendation"]
    assert "--seeds" not in out["recommendation"]
    one = [r for r in far if r["seed"] == 0]
    out = rec.recommendation(DIAG, *_inputs(one)[:2], one)
    assert out["seeds_needed"] is None and "cannot be estimated from 1 paired seed" in out["recommendation"]
    zero = _two_seed_runs({"none": [1.0, 1.1], "l2": [1.01, 1.09]})
    assert "l2, the candidate with the lowest mean cost of the decisions (argmax), is on average equal to flat CE " \
           "(none)'s (sd 0.014 over 2 paired seeds): with a zero mean difference no number of " \
           "seeds" in seeds_sentence(rec.recommendation(DIAG, *_inputs(zero)[:2], zero)["seeds_estimate"])


def _v(method, metric, d, lo, hi, call):
    return {"method": method, "metric": metric, "baseline": "none", "n": 2, "diff_mean": d,
            "ci_low": lo, "ci_high": hi, "call": call}


def test_closing_names_every_significant_harm_with_its_interval():
    agg = [{"method": m, "expected_cost_argmax_mean": c} for m, c in
           (("none", 0.50), ("soft", 0.49), ("l2", 0.48), ("fastft", 0.54))]
    verdicts = [_v("soft", "expected_cost_argmax", -0.01, -0.03, 0.01, "within noise"),
                _v("soft", "fine_acc", -0.02, -0.03, -0.01, "worse"),
                _v("l2", "expected_cost_argmax", -0.02, -0.05, 0.01, "within noise"),
                _v("l2", "fine_acc", 0.0, -0.01, 0.01, "within noise"),
                _v("fastft", "expected_cost_argmax", 0.0395, 0.013, 0.066, "worse"),
                _v("fastft", "fine_acc", 0.0, -0.01, 0.01, "within noise")]
    out = rec.recommendation(DIAG, agg, verdicts)
    harm = ("Worse than flat CE beyond seed noise: fastft on the cost of the decisions (argmax) "
            "(+0.040, 95% CI [0.013, 0.066]); soft on fine accuracy (\u22122.0 points, 95% CI "
            "[\u22123.0, \u22121.0]).")
    assert harm in out["recommendation"], out["recommendation"]
    assert (out["worse"], out["worse_fine_acc"], out["recommended_method"]) == (["fastft"], ["soft"], "none")
    # the harms are named when a method is recommended too
    verdicts[2] = _v("l2", "expected_cost_argmax", -0.02, -0.03, -0.01, "better")
    out = rec.recommendation(DIAG, agg, verdicts)
    assert out["recommendation"].startswith("Use l2: cost of the decisions (argmax) 0.500 → 0.480 "
                                            "(paired difference \u22120.020, 95% CI [\u22120.030, "
                                            "\u22120.010]); on the input features, before training")
    assert harm in out["recommendation"] and "expected cost" not in out["recommendation"]
    assert (out["recommended_method"], out["better"]) == ("l2", ["l2"])
    # better on cost but worse on fine accuracy: not "no candidate lowered the cost"
    verdicts[3] = _v("l2", "fine_acc", -0.02, -0.03, -0.01, "worse")
    text = rec.closing_recommendation(DIAG, agg, verdicts)
    assert "no candidate lowered" not in text and text.startswith(
        "Use flat cross-entropy for now: l2 lowered the cost of the decisions (argmax) beyond seed "
        "noise but also lowered fine accuracy beyond it")
    assert "l2 on fine accuracy (\u22122.0 points" in text
    fine = [dict(x, call="within noise") for x in verdicts]
    assert "No candidate was worse than flat CE beyond seed noise" in rec.closing_recommendation(
        DIAG, agg, fine)


def _ot(call, d=0.01, lo=-0.02, hi=0.04, method="fastft", base="l2"):
    return {"method": method, "metric": "expected_cost_argmax", "baseline": base, "n": 2,
            "diff_mean": d, "ci_low": lo, "ci_high": hi, "call": call}


def test_one_answer_to_does_ot_matter():
    L2 = dict(DIAG, recommend="l2")
    cases = [([_ot("better", -0.02, -0.03, -0.01)], DIAG, "yes", True),
             ([_ot("better", -0.02, -0.03, -0.01)], L2, "yes", False),
             ([_ot("worse", 0.02, 0.01, 0.03)], DIAG, "no", False),
             ([_ot("within noise")], DIAG, "within noise", None),  # not evidence either way
             ([_ot("within noise")], L2, "within noise", None),
             ([_ot("better", -0.02, -0.03, -0.01), _ot("worse", 0.02, 0.01, 0.03, "hxe+emd",
                                                      "hxe+l2")], DIAG, "mixed", None),
             ([_ot("one seed", 0.01, None, None)], DIAG, None, None),
             ([], DIAG, None, None)]
    for rows, diag, matters, agrees in cases:
        a = rec.ot_answer(diag, rows)
        assert (a["ot_matters"], a["ot_agrees_with_diagnosis"]) == (matters, agrees), (rows, diag)
        assert a["ot_input_diagnosis"] == diag["recommend"] and len(a["ot_evidence"]) == len(rows)
    text = rec.ot_paragraph(DIAG, [_ot("within noise")])
    assert text.startswith("**Not shown**, after training: with optimal transport the cost of the "
                           "decisions (argmax) ends within seed noise of class means")
    assert "Against l2 (the same method with class means), fastft raises cost of the decisions " \
           "(argmax) by 0.010 ± 0.030 (within noise)." in text
    assert "Before training (evidence from the input features): the diagnosis says ot (CPCC l2 " \
           "0.01 vs emd 0.67, Spearman 0.29)" in text
    assert "After training this neither confirms nor contradicts it: the input features favour OT, " \
           "but OT does not measurably change the cost of the decisions (within noise is not " \
           "evidence of no effect); the after-training comparison is the answer" in text
    assert "The two disagree: the input features favour OT, but after training class means make " \
           "cheaper decisions" in rec.ot_paragraph(DIAG, [_ot("worse", 0.02, 0.01, 0.03)])
    assert "The two disagree: the input features do not favour OT, yet after training OT makes " \
           "cheaper decisions" in rec.ot_paragraph(dict(DIAG, recommend="l2"),
                                                   [_ot("better", -0.02, -0.03, -0.01)])
    assert "The two agree." in rec.ot_paragraph(DIAG, [_ot("better", -0.02, -0.03, -0.01)])
    l2_noise = rec.ot_paragraph(L2, [_ot("within noise")])  # was "The two agree."
    assert "agree" not in l2_noise and l2_noise.endswith(
        "The after-training comparison neither confirms nor contradicts it: within noise is not "
        "evidence of no effect.")
    assert rec.ot_paragraph(DIAG, []).startswith("**Not measured** after training: no OT method")
    assert rec.ot_paragraph(DIAG, [_ot("no spread", -0.02, None, None)]).startswith(
        "**Not measured** after training: the cost of the decisions (argmax) differed by the same "
        "amount in every seed, so the seed noise is unknown")
    assert "The two" not in rec.ot_paragraph(DIAG, [])
    # a recommended OT method within noise of its class-means twin says so
    agg = [{"method": "none", "expected_cost_argmax_mean": 0.5},
           {"method": "fastft", "expected_cost_argmax_mean": 0.45}]
    v = [_v("fastft", "expected_cost_argmax", -0.05, -0.07, -0.03, "better")]
    assert "Against l2 (class means) fastft is within seed noise" in rec.closing_recommendation(
        DIAG, agg, v, ot_verdicts=[_ot("within noise")])


def test_recommendation_refuses_inputs_it_cannot_judge():
    """Without flat CE there is nothing to pair against (it used to say "rerun with --seeds 3");
    without a diagnosis, a KeyError; and an overflowed interval is no verdict, not 'better'."""
    agg = [{"distance": m, "expected_cost_argmax_mean": 0.5} for m in ("l2", "fastft")]
    with pytest.raises(ValueError, match="needs flat CE"):
        rec.recommendation(DIAG, agg, [])
    with pytest.raises(ValueError, match="needs the diagnosis"):
        rec.recommendation({}, agg, [])
    runs = [{"distance": m, "seed": s, "expected_cost_argmax": v}
            for s in range(2) for m, v in (("none", -1e308), ("fastft", 1e308))]
    v = paired_verdicts(runs, metrics=["expected_cost_argmax"])[0]
    assert v["call"] == "no data", v
