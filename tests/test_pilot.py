"""otcpcc pilot: paired verdicts, the closing rule, and one tiny end-to-end pilot."""

import json

import numpy as np

from otcpcc.cli import main
from otcpcc.study.pilot import closing_recommendation
from otcpcc.study.verdict import verdicts as paired_verdicts


def _runs():
    cost = {"none": [1.0, 1.2, 1.1], "l2": [0.8, 0.95, 0.9], "fastft": [1.1, 1.0, 1.3]}
    acc = {"none": [0.8, 0.8, 0.8], "l2": [0.8, 0.81, 0.79], "fastft": [0.8, 0.8, 0.8]}
    return [{"distance": m, "seed": s, "expected_cost_argmax": cost[m][s], "fine_acc": acc[m][s]}
            for m in cost for s in range(3)]


def test_closing_rule_prefers_ot_only_when_the_diagnosis_says_so():
    runs = _runs()
    verdicts = paired_verdicts(runs)
    agg = [{"distance": m, "expected_cost_argmax_mean": np.mean([r["expected_cost_argmax"] for r in runs
                                                         if r["distance"] == m])}
           for m in ("none", "l2", "fastft")]
    diag = {"recommend": "ot", "cpcc_l2": 0.1, "cpcc_emd": 0.9, "rank_agreement_l2_emd": 0.3}
    assert closing_recommendation(diag, agg, verdicts).startswith("Use l2:")  # fastft not better
    worse = [dict(v, call="within noise") for v in verdicts]
    assert closing_recommendation(diag, agg, worse).startswith("Use flat cross-entropy")


def test_pilot_end_to_end_tiny(tmp_path, monkeypatch):
    # compare's figures (t-SNE, dendrograms) are tested elsewhere; skip them here for speed
    monkeypatch.setattr("otcpcc.study.compare.render_report", lambda *a, **k: None)
    code = main(["pilot", "--data", "synthetic", "--data-opt", "branching=[2, 2]",
                 "--data-opt", "train_per_class=20", "--data-opt", "test_per_class=10",
                 "--epochs", "1", "--seeds", "2", "--methods", "none,l2", "--batch-size", "32",
                 "--device", "cpu", "--no-progress", "--out", str(tmp_path / "p")])
    assert code == 0
    out = tmp_path / "p"
    res = json.loads((out / "pilot.json").read_text())
    assert res["diagnosis"]["recommend"] in ("ot", "l2")
    assert {v["method"] for v in res["verdicts"]} == {"l2"}
    md = (out / "report.md").read_text()
    assert "## Recommendation" in md and "Cost of mistakes" in md and "Paired verdicts" in md
    assert (out / "diagnosis" / "diagnose.json").is_file()
    assert "data:image/png;base64" in (out / "report.html").read_text()
    assert main(["pilot", "--data", "synthetic", "--out", str(out), "--no-progress"]) == 2
