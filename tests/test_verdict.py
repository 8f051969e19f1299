"""Paired verdicts over seeds: the t-interval against SciPy, direction-aware calls, the sentences,
and a tiny `compare` end to end (2 seeds, real training) producing them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from otcpcc.study import compare, report, sentences, verdict
from otcpcc.study.methods import resolve_method


def test_interval_equals_scipy_t_interval_on_paired_differences():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 10):
        base, method = rng.normal(size=n), rng.normal(size=n) + 0.3
        diffs = method - base
        mean, low, high = verdict.paired_interval(diffs)
        lo, hi = stats.t.interval(0.95, n - 1, loc=diffs.mean(), scale=stats.sem(diffs))
        assert mean == pytest.approx(diffs.mean(), rel=1e-12)
        assert (low, high) == (pytest.approx(lo, rel=1e-10), pytest.approx(hi, rel=1e-10))
    assert verdict.paired_interval([0.4]) == (0.4, None, None)
    with pytest.raises(ValueError, match="share no seed"):
        verdict.paired_interval([])


def test_calls_are_direction_aware():
    assert verdict.call("fine_acc", 0.01, 0.03) == "better"
    assert verdict.call("fine_acc", -0.03, -0.01) == "worse"
    assert verdict.call("expected_cost_crm", -0.03, -0.01) == "better"
    assert verdict.call("mistake_severity", 0.1, 0.2) == "worse"
    assert verdict.call("test_cpcc_emd", -0.1, 0.2) == "within noise"
    assert verdict.call("map_coarse", 0.0, 0.2) == "within noise"  # touching 0 is not a verdict
    assert verdict.call("fine_acc", None, None) == "one seed"


def _rows(values: dict[str, list[float]], metric: str = "expected_cost_argmax"):
    return [{"method": m, "distance": "none", "seed": s, metric: v}
            for m, vs in values.items() for s, v in enumerate(vs)]


def test_identical_differences_from_few_seeds_are_no_spread_not_a_verdict():
    """Differences equal in every seed (a discrete metric: 6/288 twice) give s_d = 0 and an
    interval of width 0; with fewer than 6 seeds that is not evidence (two-sided sign test p =
    2 · 0.5^n > 0.05), from 6 on it is. The values below are the new user's: CRM costs per seed."""
    def runs(a, b):
        return ([{"distance": "none", "seed": s, "expected_cost_crm": v} for s, v in enumerate(a)]
                + [{"distance": "fastft", "seed": s, "expected_cost_crm": v} for s, v in enumerate(b)])
    two = verdict.verdicts(runs([0.3264, 0.3056], [0.3056, 0.2847]), metrics=["expected_cost_crm"])
    v = verdict.verdicts(runs([6 / 288, 12 / 288], [0.0, 6 / 288]), metrics=["expected_cost_crm"])[0]
    assert (v["call"], v["ci_low"], v["ci_high"], v["n"]) == ("no spread", None, None, 2)
    assert v["diff_mean"] == pytest.approx(-6 / 288)
    assert two[0]["call"] == "better"  # a real (if tiny) spread keeps its t-interval
    five = verdict.verdicts(runs([0.1] * 5, [0.05] * 5), metrics=["expected_cost_crm"])[0]
    six = verdict.verdicts(runs([0.1] * 6, [0.05] * 6), metrics=["expected_cost_crm"])[0]
    assert five["call"] == "no spread"
    assert 2 * 0.5 ** 6 < 0.05 < 2 * 0.5 ** 5 and six["call"] == "better"
    assert six["ci_low"] == pytest.approx(-0.05) and six["ci_high"] == pytest.approx(-0.05)
    same = verdict.verdicts(runs([0.1, 0.2], [0.1, 0.2]), metrics=["expected_cost_crm"])[0]
    assert same["call"] == "within noise"  # no difference at all is no difference
    phrase = sentences.verdict_phrase(v)
    assert phrase == ("lowers expected cost under CRM by 0.021 (the same in every seed: noise not "
                      "measured)"), phrase


def test_verdicts_pair_by_seed_and_skip_missing_values():
    runs = _rows({"none": [1.0, 1.2, 1.1, 0.9], "hxe": [0.9, 1.08, 1.0, None]})
    runs.append({"method": "hxe", "distance": "none", "seed": 7, "expected_cost_argmax": 5.0})
    (v,) = verdict.verdicts(runs, metrics=["expected_cost_argmax"])
    diffs = np.array([-0.1, -0.12, -0.1])  # seeds 0..2; seed 3 has no value, seed 7 no baseline
    lo, hi = stats.t.interval(0.95, 2, loc=diffs.mean(), scale=stats.sem(diffs))
    assert v["method"] == "hxe" and v["baseline"] == "none" and v["n"] == 3
    assert v["diff_mean"] == pytest.approx(diffs.mean())
    assert (v["ci_low"], v["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    assert v["call"] == "better"  # the whole interval below 0 and lower cost is better
    assert verdict.verdicts(_rows({"hxe": [1.0]})) == []  # no baseline run: no verdict
    (one,) = verdict.verdicts(_rows({"none": [1.0], "soft": [0.5]}), metrics=["expected_cost_argmax"])
    assert (one["ci_low"], one["ci_high"], one["call"]) == (None, None, "one seed")


def test_ot_verdicts_pair_each_ot_method_with_its_class_means_counterpart():
    """fastft against l2 and hxe+emd against hxe+l2 (paired by seed, t-interval as SciPy); a
    method without an OT distance, or whose counterpart was not run, gets none."""
    assert verdict.means_counterpart("fastft") == "l2"
    assert verdict.means_counterpart("hxe+emd") == "hxe+l2"
    assert verdict.means_counterpart("soft") is None and verdict.means_counterpart("l2") is None
    runs = _rows({"none": [1.0, 1.1, 1.2], "l2": [0.9, 1.0, 1.05], "fastft": [0.8, 0.85, 0.9],
                  "hxe+l2": [0.7, 0.7, 0.7], "hxe+emd": [0.8, 0.7, 0.6], "swd": [0.5, 0.5, 0.5]})
    rows = verdict.ot_verdicts(runs, metrics=["expected_cost_argmax"])
    assert [(r["method"], r["baseline"]) for r in rows] == [
        ("fastft", "l2"), ("hxe+emd", "hxe+l2"), ("swd", "l2")]
    diffs = np.array([0.8, 0.85, 0.9]) - np.array([0.9, 1.0, 1.05])
    lo, hi = stats.t.interval(0.95, 2, loc=diffs.mean(), scale=stats.sem(diffs))
    assert rows[0]["diff_mean"] == pytest.approx(diffs.mean())
    assert (rows[0]["ci_low"], rows[0]["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    assert rows[0]["call"] == "better" and rows[1]["call"] == "within noise"
    lines = sentences.ot_sentences(rows)
    assert "Against l2 (the same method with class means), fastft lowers" in lines[0]
    assert "optimal transport changes the decision costs here" in lines[0]
    assert "ends within noise of class means" in lines[1]
    assert verdict.ot_verdicts(_rows({"none": [1.0], "fastft": [0.9]})) == []
    assert sentences.ot_sentences([]) == []


def test_method_entries():
    assert resolve_method("hxe+fft") == resolve_method("FASTFT+hxe")
    spec = resolve_method("soft+sk")
    assert (spec.name, spec.method, spec.distance, spec.label) == (
        "soft+sinkhorn", "soft", "sinkhorn", "soft-label CE + Sinkhorn-CPCC")
    assert resolve_method("ce").name == resolve_method("flat").name == "none"
    for bad in ("hxe+soft", "l2+fastft", "nope"):
        with pytest.raises(ValueError, match="unknown method"):
            resolve_method(bad)


TINY = dict(data="synthetic", data_options={"branching": [2, 3], "train_per_class": 12,
                                            "test_per_class": 6},
            epochs=1, batch_size=16, model_options={"hidden": [32, 16]}, device="cpu")


@pytest.mark.slow
def test_tiny_compare_with_two_seeds_produces_verdicts(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "render_figures", lambda *a, **k: [])  # figures: test_report.py
    out = compare.run_compare(TINY, ["none", "hxe", "soft+fastft"], seeds=2, out=tmp_path / "c",
                              progress=False)
    summary = json.loads((out / "summary.json").read_text())
    runs = summary["runs"]
    assert [(r["method"], r["distance"], r["seed"]) for r in runs] == [
        ("none", "none", 0), ("none", "none", 1), ("hxe", "none", 0), ("hxe", "none", 1),
        ("soft+fastft", "fastft", 0), ("soft+fastft", "fastft", 1)]
    cfg = json.loads((out / "soft+fastft" / "seed1" / "config.json").read_text())
    assert (cfg["method"], cfg["distance"], cfg["seed"]) == ("soft", "fastft", 1)
    for r in runs:
        ev = json.loads((out / r["method"] / f"seed{r['seed']}" / "eval.json").read_text())
        for key in ("fine_acc_crm", "mistake_severity_crm", "expected_cost_crm",
                    "expected_cost_argmax"):
            assert r[key] == pytest.approx(ev[key], nan_ok=True), key
        assert r["expected_cost_argmax"] == pytest.approx(r["hier_dist@1"])  # tree cost
    assert [a["method"] for a in summary["aggregate"]] == ["none", "hxe", "soft+fastft"]
    assert summary["ot_verdicts"] == []  # no soft+l2 was run: nothing to say about OT
    rows = summary["verdicts"]
    assert {(v["method"], v["metric"]) for v in rows} == {
        (m, k) for m in ("hxe", "soft+fastft")
        for k in (*verdict.METRICS, "map_coarse")}
    for v in rows:  # each verdict recomputed from the run rows, paired by seed
        diffs = [m[v["metric"]] - b[v["metric"]]
                 for m, b in zip([r for r in runs if r["method"] == v["method"]],
                                 [r for r in runs if r["method"] == "none"], strict=True)]
        assert v["n"] == 2 and v["diff_mean"] == pytest.approx(np.mean(diffs))
        assert v["ci_low"] <= v["diff_mean"] <= v["ci_high"]
        assert v["call"] in ("better", "worse", "within noise")
    md = (out / "report.md").read_text()
    assert "## Verdict" in md and "- Against none, hxe " in md and "- Against none, soft+fastft " in md
    assert "paired over seeds 0, 1" in md and "<h2>Verdict</h2>" in (out / "report.html").read_text()
