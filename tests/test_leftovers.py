"""Leftovers of the bad-input and new-user trials: a stale ``evaluate --partial`` result after the
run finishes, half-written files after a refused resume, unbalanced Newick parentheses, lax
numbers in user files, overflowing cost matrices, bools as numbers, the own-distance key."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from cli_errors import own_error as one_line_error
from otcpcc import LabelTree, class_distances
from otcpcc import metrics as M
from otcpcc.cli import main
from otcpcc.metrics import load_cost_matrix
from otcpcc.study.compare import run_row
from otcpcc.study.tables import metric_direction
from otcpcc.textfile import parse_number
from otcpcc.tree.common import TreeError

TINY = ["--data", "synthetic", "--data-opt", "train_per_class=12", "--data-opt",
        "test_per_class=6", "--data-opt", "branching=[2, 3]", "--model-opt", "hidden=[16]",
        "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--no-progress"]


# ------------------------------------------- 1. a partial evaluation does not outlive training
def test_finishing_a_run_removes_its_partial_evaluation(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    (out / "metrics.json").unlink()  # as if interrupted after its last checkpoint
    assert main(["evaluate", str(out), "--partial"]) == 0
    assert main(["evaluate", str(out), "--partial", "--split", "train"]) == 0
    assert json.loads((out / "eval.json").read_text())["partial"] is True
    mine = out / "eval_notes.json"  # not an evaluation otcpcc wrote: kept
    mine.write_text('{"mine": 1}')
    capsys.readouterr()

    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert (out / "metrics.json").is_file()
    assert not (out / "eval.json").exists() and not (out / "eval_train.json").exists()
    assert mine.read_text() == '{"mine": 1}'
    assert main(["evaluate", str(out)]) == 0  # no --partial needed, and the result is final
    saved = json.loads((out / "eval.json").read_text())
    assert saved["partial"] is False and saved["epoch"] == 2


# ------------------------------------------------ 2. a refused resume leaves no temporary files
def test_a_refused_resume_removes_half_written_files_but_keeps_last_pt(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    raw = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(raw[: len(raw) // 2])
    for name in ("ckpt.tmp", "log.csv.tmp", "metrics.json.tmp", "eval_train.json.tmp"):
        (out / name).write_bytes(b"half")
    (out / "notes.tmp").write_text("the user's")
    capsys.readouterr()
    err = one_line_error(capsys, main(["train", "--out", str(out), "--resume", "--epochs", "2"]))
    assert "cannot read checkpoint" in err
    assert sorted(p.name for p in out.glob("*.tmp")) == ["notes.tmp"]
    assert (out / "last.pt").read_bytes() == raw[: len(raw) // 2]  # the user's to restore
    assert (out / "metrics.json").is_file() and (out / "log.csv").is_file()


def test_force_discards_every_file_of_the_old_run_but_no_user_file(tmp_path):
    """--force starts over: the old run's evaluations of other splits and half-written
    temporaries go too (they would describe or resume the old model); the user's files stay."""
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    assert main(["evaluate", str(out), "--split", "train"]) == 0
    for name in ("ckpt.tmp", "log.csv.tmp", "eval_test.json.tmp"):
        (out / name).write_bytes(b"half")
    (out / "notes.tmp").write_text("the user's")
    (out / "eval_notes.json").write_text('{"mine": 1}')
    assert main(["train", *TINY, "--out", str(out), "--force", "--epochs", "1"]) == 0
    assert not (out / "eval_train.json").exists()
    assert sorted(p.name for p in out.glob("*.tmp")) == ["notes.tmp"]
    assert (out / "eval_notes.json").read_text() == '{"mine": 1}'
    assert (out / "metrics.json").is_file()


# ------------------------------------------------- 3. a missing ')' in Newick is named as such
@pytest.mark.parametrize(("text", "needle"), [
    ("((a,b x,(c,d)y)root;", "3 '(' but 2 ')'; add the missing ')'"),  # was: "two names 'b' and 'x'"
    ("((a,b)x,(c,d)y root;", "3 '(' but 2 ')'; add the missing ')'"),  # was: "two names 'y' and 'root'"
    ("(a,b));", "1 '(' but 2 ')'; remove the extra ')'"),
])
def test_unbalanced_newick_names_the_file_and_the_counts(tmp_path, text, needle):
    path = tmp_path / "t.nwk"
    path.write_text(text + "\n")
    with pytest.raises(TreeError) as info:
        LabelTree.from_file(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: unbalanced parentheses") and needle in msg


def test_newick_text_in_an_edge_list_file_is_refused(tmp_path):
    path = tmp_path / "t.txt"  # read as an edge list: it used to read edge '((a,b' -> 'x,(c,d)y)root;'
    path.write_text("((a,b x,(c,d)y)root;\n")
    with pytest.raises(TreeError, match=r"t\.txt:1: this looks like a Newick tree.*\.nwk suffix"):
        LabelTree.from_file(path)


# ----------------------------------------------- 4. numbers in user files: no Python leniencies
def test_parse_number_is_float_without_its_leniencies():
    for text, value in (("1", 1.0), ("-2.5e-3", -0.0025), (".5", 0.5), ("3.", 3.0), ("+1E2", 100.0)):
        assert parse_number(text) == value == float(text)
    assert parse_number("inf") == math.inf and math.isnan(parse_number("NaN"))  # named later
    for text in ("1_000", " 1", "1 ", "1,5", "\u0661", "\uff11", "", ".", "e3", "0x1", "1e"):
        with pytest.raises(ValueError):
            parse_number(text)


def test_an_underscored_cost_is_refused_naming_its_cell(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text(",a,b\na,0,1_000\nb,1,0\n")  # float('1_000') == 1000.0
    with pytest.raises(ValueError) as info:
        load_cost_matrix(path, ["a", "b"])
    msg = str(info.value)
    assert "\n" not in msg and "true 'a', predicted 'b' is '1_000', not a number" in msg
    assert "no '_' digit separators" in msg
    path.write_text(",a,b\na,0,1000\nb,1.5e0,0\n")
    np.testing.assert_array_equal(load_cost_matrix(path, ["a", "b"]), [[0, 1000], [1.5, 0]])


@pytest.mark.parametrize(("name", "text", "needle"), [
    ("t.txt", "r a\nr b 1_0\n", "t.txt:2: expected 'parent child [weight]' with a numeric weight"),
    ("t.nwk", "(a:1_0,b)r;\n", "branch length '1_0' is not a number"),
    ("t.json", '{"parents": {"a": "r", "b": "r"}, "weights": {"a": "1_0"}}', "weight '1_0' of edge"),
])
def test_underscored_tree_weights_are_refused(tmp_path, name, text, needle):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TreeError, match=re.escape(needle)):
        LabelTree.from_file(path)
    path.write_text(text.replace("1_0", "10"))
    assert LabelTree.from_file(path).weight("b" if name == "t.txt" else "a") == 10.0


def test_a_bool_tree_weight_is_refused():
    with pytest.raises(TreeError, match="weight True of edge 'r' -> 'a' is not a number"):
        LabelTree.from_parents({"a": "r", "b": "r"}, {"a": True})


# ------------------------------------------------ 5. cost matrices that would overflow the metrics
PROBS = np.array([[0.1, 0.9], [0.1, 0.9], [0.9, 0.1]])
Y2 = np.array([0, 0, 1])


@pytest.mark.parametrize("metric", [
    lambda c: M.expected_cost(PROBS, Y2, c), lambda c: M.decision_cost(PROBS.argmax(1), Y2, c),
    lambda c: M.mistake_severity(PROBS.argmax(1), Y2, c), lambda c: M.hier_dist_at_k(PROBS, Y2, c, 2),
    lambda c: M.crm_predict(PROBS, c),
])
def test_metrics_refuse_costs_that_would_overflow(metric):
    with pytest.raises(ValueError, match=r"holds 1\.7e\+308, above 1e\+200: .*rescale the matrix"):
        metric(np.array([[0, 1.7e308], [1.7e308, 0]]))  # was inf (or a sum past float64's max)
    with pytest.raises(ValueError, match="holds 1e\\+201"):
        metric(np.array([[0, -1e201], [1.0, 0]]))


def test_metrics_at_the_largest_cost_are_finite_and_exact():
    c = np.array([[0, 1e200], [1e200, 0]])  # every prediction of PROBS is wrong, at 0.9 / 0.1
    assert M.expected_cost(PROBS, Y2, c) == pytest.approx(0.9e200, rel=1e-15)  # (0.9 + 0.9 + 0.9) / 3
    assert M.decision_cost(PROBS.argmax(1), Y2, c) == 1e200
    assert M.hier_dist_at_k(PROBS, Y2, c, 2) == 0.5e200  # (0 + 1e200) / 2 per sample


# ---------------------------------------------------- 6. a bool is not a number in distance options
@pytest.mark.parametrize(("distance", "key"), [
    ("sinkhorn", "reg"), ("sinkhorn", "tol"), ("sinkhorn", "max_iter"),
    ("swd", "p"), ("swd", "n_projections"), ("swd", "seed"),
])
@pytest.mark.parametrize("value", [True, False])
def test_bools_are_refused_where_distance_options_take_numbers(distance, key, value):
    x, y = torch.randn(12, 3), torch.arange(12) % 3
    with pytest.raises(ValueError, match=f"{distance} option {key} must be .*got {value}"):
        class_distances(x, y, distance, **{key: value})  # reg=True was read as reg=1


def test_numeric_distance_options_take_numpy_and_python_numbers():
    x, y = torch.randn(12, 3, dtype=torch.float64), torch.arange(12) % 3
    a = class_distances(x, y, "sinkhorn", reg=np.float32(0.5), tol=1e-9, max_iter=np.int64(500))
    b = class_distances(x, y, "sinkhorn", reg=0.5, tol=1e-9, max_iter=500)
    torch.testing.assert_close(a, b)


def test_cli_refuses_a_bool_sinkhorn_reg(tmp_path, capsys):
    out = tmp_path / "run"
    err = one_line_error(capsys, main(["train", *TINY, "--distance", "sinkhorn", "--dist-opt",
                                       "reg=true", "--out", str(out)]))
    assert "sinkhorn option reg must be a finite number > 0, got True" in err
    assert not out.exists()


# ------------------------------------- 7. the own-distance TestCPCC has one name in every file
def test_evaluate_names_the_own_distance_test_cpcc_as_summary_json_does(tmp_path, capsys):
    names = [f"c{a}.f{b}" for a in range(2) for b in range(3)]  # synthetic, branching [2, 3]
    cost = tmp_path / "cost.csv"  # 1 within a coarse class, 3 across
    cost.write_text("\n".join([",".join(["", *names])] + [
        ",".join([r, *("0" if r == c else "1" if r[:2] == c[:2] else "3" for c in names)])
        for r in names]) + "\n")
    out = tmp_path / "run"
    assert main(["train", *TINY, "--distance", "fastft", "--cpcc-target", str(cost),
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "eval.json").read_text())
    assert res["test_cpcc_own"] == res["test_cpcc"] == res["test_cpcc_fastft"]  # old keys stay
    assert res["test_cpcc_target_own"] == res["test_cpcc_target_fastft"]
    lines = {line.split()[0]: line.split()[1:] for line in printed.splitlines() if line.strip()}
    assert lines["test_cpcc_own"] == [f"{res['test_cpcc_own']:.4f}", "(fastft,", "the", "run's",
                                      "distance)"]
    assert lines["test_cpcc_target_own"][0] == f"{res['test_cpcc_target_own']:.4f}"
    assert "test_cpcc_fastft" not in lines and "test_cpcc_distance" not in lines
    row = run_row(out, res, method="fastft", seed=0)  # the compare report's row of this run
    assert row["test_cpcc_own"] == res["test_cpcc_own"]
    assert metric_direction("test_cpcc_own") is metric_direction("test_cpcc_target_own") is None
