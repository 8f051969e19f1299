"""Bad input found in review: each gives one line naming the problem and the fix (CLI: exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cli_errors import one_line_error
from otcpcc import CPCCLoss, LabelTree, cpcc
from otcpcc.bench import scale, speed
from otcpcc.cli import main
from otcpcc.data.breeds import BreedsHierarchy
from otcpcc.data.inat import load_inat2021
from otcpcc.metrics import load_cost_matrix
from otcpcc.runs.config import load_config_file
from otcpcc.runs.target import save_run_target

TINY = ["--data", "synthetic", "--data-opt", "train_per_class=12", "--data-opt",
        "test_per_class=6", "--data-opt", "branching=[2, 3]", "--model-opt", "hidden=[16]",
        "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--no-progress"]
BINARY = b"\x83\x01\xff binary, not text"


@pytest.fixture(scope="module")
def target_run(tmp_path_factory):
    """A tiny run trained against a --cpcc-target matrix (the tree's own distances)."""
    from otcpcc.data import get_dataset

    tmp = tmp_path_factory.mktemp("review")
    tree = get_dataset("synthetic", train_per_class=12, test_per_class=6, branching=[2, 3]).tree
    save_run_target(tmp, np.asarray(tree.distance_matrix()), list(tree.leaves))  # the CSV format
    out = tmp / "run"
    assert main(["train", *TINY, "--distance", "l2", "--cpcc-target", str(tmp / "cpcc_target.csv"),
                 "--out", str(out)]) == 0
    return out


# ------------------------------------------------------------- 1. binary / non-UTF-8 text files
@pytest.mark.parametrize("name, read, expected", [
    ("t.txt", lambda p: LabelTree.from_file(p), "expected an edge-list tree"),
    ("t.json", lambda p: LabelTree.from_file(p), "expected a JSON tree"),
    ("t.nwk", lambda p: LabelTree.from_file(p), "expected a Newick tree"),
    ("c.csv", lambda p: load_cost_matrix(p, ["a", "b"]), "expected a CSV cost matrix"),
    ("c.yaml", load_config_file, "expected a YAML or JSON config file"),
])
@pytest.mark.parametrize("content, problem", [(BINARY, "is not UTF-8 text (byte 0x83 at offset 0)"),
                                              (b"a b\n\x00\x00\x00", "looks binary")])
def test_library_names_a_binary_text_file_and_its_format(tmp_path, name, read, expected, content, problem):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        read(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and problem in msg and expected in msg, msg


def test_a_byte_order_mark_is_not_part_of_the_first_name(tmp_path):
    """Excel writes one; the header "a,b" (no corner cell) must still name class a."""
    (tmp_path / "c.csv").write_bytes(b"\xef\xbb\xbfa,b\na,0,1\nb,1,0\n")
    np.testing.assert_array_equal(load_cost_matrix(tmp_path / "c.csv", ["a", "b"]), [[0, 1], [1, 0]])


def test_dataset_text_files_name_themselves(tmp_path):
    (tmp_path / "train_mini.json").write_bytes(BINARY)
    (tmp_path / "val.json").write_bytes(BINARY)
    with pytest.raises(ValueError, match=r"train_mini.json is not UTF-8 text.*iNaturalist"):
        load_inat2021(tmp_path)
    for f in ("class_hierarchy.txt", "dataset_class_info.json", "node_names.txt"):
        (tmp_path / f).write_text("[]" if f.endswith(".json") else "")
    (tmp_path / "class_hierarchy.txt").write_bytes(BINARY)
    with pytest.raises(ValueError, match=r"class_hierarchy.txt is not UTF-8 text.*BREEDS"):
        BreedsHierarchy(tmp_path)
    (tmp_path / "dataset_class_info.json").write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(ValueError, match=r"dataset_class_info.json: expected a JSON list"):
        BreedsHierarchy(tmp_path)


@pytest.mark.parametrize("flag, name", [("--cpcc-target", "x.csv"), ("--tree", "x.txt"),
                                        ("--tree", "x.nwk"), ("--config", "x.yaml")])
def test_cli_names_a_binary_input_file(tmp_path, capsys, flag, name):
    (tmp_path / name).write_bytes(BINARY)
    code = main(["train", *TINY, flag, str(tmp_path / name), "--out", str(tmp_path / "r")])
    one_line_error(capsys, code, str(tmp_path / name), "is not UTF-8 text", "expected a")
    assert not (tmp_path / "r").exists()


def test_evaluate_names_a_binary_cost_matrix(target_run, tmp_path, capsys):
    (tmp_path / "c.csv").write_bytes(BINARY)
    one_line_error(capsys, main(["evaluate", str(target_run), "--cost-matrix", str(tmp_path / "c.csv")]),
                   "c.csv is not UTF-8 text", "expected a CSV cost matrix")


# ------------------------------------------------------------------- 2. degenerate CPCC targets
@pytest.mark.parametrize("target", [torch.zeros(0, 0), torch.zeros(1, 1), np.zeros((1, 1)), [[0.0]],
                                    LabelTree.from_parents({"a": "root"})])
def test_a_target_needs_two_classes(target):
    x, y = torch.randn(6, 3), torch.zeros(6, dtype=torch.long)
    for call in (lambda: CPCCLoss(target, "l2"), lambda: cpcc(x, y, target)):
        with pytest.raises(ValueError, match="a target needs at least 2 classes") as info:
            call()
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("target, needle", [
    (torch.zeros(2, 3), "must be square"),
    ([[0, float("nan")], [float("nan"), 0]], "must be finite"),
    ([[0, -1], [-1, 0]], "must be >= 0"),
    ([[0, 1], [2, 0]], "not symmetric"),
    ([[1, 1], [1, 0]], "on its diagonal"),
    ([[0, 1, 1], [1, 0, 1], [1, 1, 0]], "correlation is undefined"),
])
def test_other_degenerate_targets_are_refused(target, needle):
    with pytest.raises(ValueError, match=needle):
        CPCCLoss(target, "l2")


# ------------------------------------------------------------------------ 3. bench integer flags
@pytest.mark.parametrize("flags, needle", [
    (["--n-projections", "0"], "argument --n-projections: expected an integer >= 1, got '0'"),
    (["--n-projections", "-2"], "argument --n-projections: expected an integer >= 1"),
    (["--repeats", "0"], "argument --repeats: expected an integer >= 1"),
    (["--reference-repeats", "0"], "argument --reference-repeats: expected an integer >= 1"),
    (["--warmup", "-1"], "argument --warmup: expected an integer >= 0"),
    (["--dim", "0"], "argument --dim: expected an integer >= 1"),
    (["--classes", "1"], "argument --classes: expected an integer >= 3"),
    (["--coarse", "0"], "argument --coarse: expected an integer >= 2"),
    (["--classes", "6", "--coarse", "9"], "--coarse 9 must be below --classes 6"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--approx", "--batch", "-1"], "argument --batch: expected an integer >= 0"),
    (["--approx", "--dims", "0"], "argument --dims: expected comma-separated integers from 1 to"),
    (["--dim", "10000000000"], "argument --dim: expected an integer of at most 2147483647"),
    (["--batch-sizes", "99999999999999999999"], "argument --batch-sizes: expected comma-separated integers"),
])
def test_bench_integer_flags_are_one_line(capsys, flags, needle):
    one_line_error(capsys, main(["bench", *flags, "--batch-sizes", "8", "--no-reference"]
                                if "--approx" not in flags else ["bench", *flags]), needle)


# ------------------------------------------------------------------- 4. flags --scale/--big ignore
def test_bench_scale_and_big_refuse_the_flags_they_ignore(monkeypatch, capsys):
    monkeypatch.setattr(scale, "run_all", lambda *a: pytest.fail("ran the cases"))
    monkeypatch.setattr(speed, "bench_distances", lambda **k: pytest.fail("ran the bench"))
    one_line_error(capsys, main(["bench", "--scale", "--batch-sizes", "64", "--device", "cpu"]),
                   "bench --scale does not use --device, --batch-sizes;", "leave out --scale")
    one_line_error(capsys, main(["bench", "--scale", "--distances", "l2", "--no-reference"]),
                   "does not use --distances, --no-reference;")
    one_line_error(capsys, main(["bench", "--big", "--classes", "50"]),
                   "bench --big does not use --classes;", "--big sets K=1000")
    one_line_error(capsys, main(["bench", "--approx", "--classes", "5"]),
                   "unrecognized arguments: --classes 5")


# ------------------------------------------------------------------ 5. pilot's unused train flags
def test_pilot_hides_and_refuses_distance_and_method(tmp_path, capsys):
    assert main(["pilot", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--methods" in text and "--distance " not in text and "--method " not in text
    for flag, value in (("--distance", "emd"), ("--method", "hxe")):
        one_line_error(capsys, main(["pilot", *TINY, flag, value, "--out", str(tmp_path / "p")]),
                       f"pilot does not use {flag}; pass --methods")
    assert not (tmp_path / "p").exists()


# --------------------------------------------------- 6. a run's cpcc_target.csv deleted afterwards
def test_evaluate_and_resume_refuse_a_run_without_its_target_copy(target_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(target_run, run)
    (run / "cpcc_target.csv").unlink()
    (run / "eval.json").unlink(missing_ok=True)
    for argv in (["evaluate", str(run)], ["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress"]):
        one_line_error(capsys, main(argv), f"{run / 'cpcc_target.csv'} is missing",
                       "trained with --cpcc-target", "restore the run's copy")
    assert not (run / "eval.json").exists()
    assert json.loads((run / "config.json").read_text())["epochs"] == 1


# ----------------------------------------------------------- 7. found by attacking it afterwards
def test_a_tree_files_structural_error_names_the_file(tmp_path):
    (tmp_path / "t.txt").write_text("a b\nb a\n")
    with pytest.raises(ValueError, match=r"t\.txt: cycle in the tree"):
        LabelTree.from_file(tmp_path / "t.txt")


@pytest.mark.parametrize("x, y", [(torch.randn(6, 2).tolist(), torch.arange(6) % 2),
                                  (torch.randn(6, 2), np.arange(6) % 2)])
def test_cpcc_given_lists_or_arrays_says_so(x, y):
    tree = LabelTree.from_levels([[0, 0, 1, 1]])
    for call in (lambda: CPCCLoss(tree, "l2")(x, y), lambda: cpcc(x, y, tree)):
        with pytest.raises(ValueError, match="must be torch tensors, got .*torch.as_tensor"):
            call()


def test_data_of_one_class_is_refused_before_training(tmp_path, capsys):
    """It used to train, to accuracy 1.0."""
    np.savez(tmp_path / "f.npz", features=np.random.default_rng(0).normal(size=(40, 3)),
             labels=np.zeros(40, dtype=int))
    code = main(["train", "--data", "features", "--data-dir", str(tmp_path / "f.npz"), "--distance", "none",
                 "--epochs", "1", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "r")])
    one_line_error(capsys, code, "has 1 class(es)", "needs at least 2")
    assert not (tmp_path / "r").exists()


def test_run_files_that_are_truncated_or_folders(target_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(target_run, run)
    one_line_error(capsys, main(["evaluate", str(run), "--cost-matrix", str(tmp_path)]),
                   f"{tmp_path} is a directory; pass the path of a CSV cost matrix")
    (run / "last.pt").write_bytes((target_run / "last.pt").read_bytes()[:1000])
    err = one_line_error(capsys, main(["evaluate", str(run)]), "cannot read checkpoint", "retrain")
    assert "If you are seeing this" not in err and len(err) < 300, err  # torch's own advice dropped


@pytest.mark.parametrize("flags, needle", [
    (["--lams", "0,-1"], "--lams lists -1"),
    (["--batch-sizes", "16,0"], "argument --batch-sizes: expected comma-separated integers from 1")])
def test_sweep_names_its_own_list_flags(tmp_path, capsys, flags, needle):
    one_line_error(capsys, main(["sweep", *TINY[:10], *flags, "--out", str(tmp_path / "s")]), needle)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("flags, needle", [
    (["--model-opt", "hidden=[10000000000]"], "over the limit of 1,073,741,824"),  # was a MemoryError traceback
    (["--model-opt", "dropout=2"], "dropout must be a number in [0, 1)"),
    (["--data-opt", "=5"], "expected KEY=VALUE with a name before '='"),
    (["--data-dir", "somewhere"], "--data-dir does not apply to synthetic"),  # was silently ignored
])
def test_train_flags_found_by_attacking(tmp_path, capsys, flags, needle):
    one_line_error(capsys, main(["train", *TINY, *flags, "--out", str(tmp_path / "r")]), needle)
    assert not (tmp_path / "r").exists()


def test_a_flat_tree_is_refused_by_the_regulariser_not_silently_ignored():
    """A flat tree (or all edge weights 0) makes every class distance equal: CPCC undefined, loss
    1 with no gradient. The regulariser refuses it in one line, as a constant target matrix;
    TestCPCC on such a tree still evaluates (to 0)."""
    import torch

    from otcpcc import CPCCLoss, LabelTree, cpcc

    flat = LabelTree.from_parents({"a": "R", "b": "R", "c": "R"})
    with pytest.raises(ValueError, match="label tree is flat"):
        CPCCLoss(flat)
    x, y = torch.randn(9, 4), torch.arange(9) % 3
    assert cpcc(x, y, flat, "l2") == 0.0
    CPCCLoss(LabelTree.from_parents({"a": "P", "b": "P", "c": "R", "P": "R"}))  # not flat: fine


def test_a_cost_matrix_with_an_unclosed_quote_is_one_line(tmp_path):
    from otcpcc.metrics.mistakes import load_cost_matrix

    path = tmp_path / "costs.csv"
    path.write_text('a,b\n"' + "x" * 200_000 + "\n0,1\n", encoding="utf-8")  # a 200 KB cell
    with pytest.raises(ValueError, match="not a readable CSV table.*quotes"):
        load_cost_matrix(path, ["a", "b"])


@pytest.mark.parametrize("text", ["{\"fine_acc\": 0.5,", "[]", "{}"])
def test_a_damaged_eval_json_is_named_when_a_study_resumes(tmp_path, text):
    from otcpcc.study.resume import stored_metrics

    (tmp_path / "eval.json").write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match="eval.json .*delete it and rerun with --resume"):
        stored_metrics(tmp_path)


# ------------------------------------------- evaluate on a run still training, or interrupted
@pytest.mark.parametrize("cut", ["no metrics.json", "fewer epochs than asked"])
def test_evaluate_refuses_an_unfinished_run_unless_partial(target_run, tmp_path, capsys, cut):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(target_run, run)
    (run / "eval.json").unlink(missing_ok=True)
    if cut == "no metrics.json":  # interrupted after its last checkpoint, before metrics.json
        (run / "metrics.json").unlink()
        why = "it has no metrics.json yet"
    else:  # resumed with --epochs 3: config.json asks 3, last.pt holds 1
        cfg = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**cfg, "epochs": 3}))
        why = "its last.pt holds epoch 1 of 3"
    one_line_error(capsys, main(["evaluate", str(run)]), "has not finished training", why,
                   f"otcpcc train --out {run} --resume", "--partial")
    assert not (run / "eval.json").exists()  # nothing written
    assert main(["evaluate", str(run), "--partial"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "note" in err[0] and "epoch-1 checkpoint" in err[0], err
    saved = json.loads((run / "eval.json").read_text())
    assert saved["partial"] is True and saved["epoch"] == 1
    # a study resumed on it does not take these figures for the finished run's
    from otcpcc.study.resume import evaluated_alike

    assert not evaluated_alike(saved, run, None)
    assert evaluated_alike({**saved, "partial": False}, run, None)


# ------------------------------------------------- a CPCC weight so large that training overflows
@pytest.mark.parametrize("batch, where", [
    ("16", "the loss became nan at epoch 1/2"),  # a NaN loss during training
    ("100", "outputs became non-finite after epoch 2/2, step 1"),  # 100 > 72 samples: the last
])  # update overflows the logits (before: a "finished" run with inf logits here; on the default
#     data, NaN features in the final evaluation, blamed on lr / AMP)
def test_a_huge_lam_is_named_as_the_cause_of_the_overflow(tmp_path, capsys, batch, where):
    argv = ["train", *TINY, "--epochs", "2", "--batch-size", batch, "--distance", "l2",
            "--lam", "1e30", "--out", str(tmp_path / "r")]
    err = one_line_error(capsys, main(argv), where, "--lam 1e+30", "overflow", "lower --lam")
    assert "AMP" not in err and "--lr" not in err, err


# ------------------------------------------------ bench: --json writability, budget, reference flags
SMALL_BENCH = ["--batch-sizes", "8", "--classes", "4", "--coarse", "2", "--dim", "2", "--distances", "l2",
               "--repeats", "1", "--warmup", "0"]


@pytest.mark.parametrize("flags, needles", [
    (["--json", "/sys/x.json", "--no-reference"],
     ["--json /sys/x.json: cannot write in /sys", "a folder you can write to"]),
    (["--approx", "--json", "/sys/x.json"], ["--json /sys/x.json: cannot write in /sys"]),
    (["--json", "", "--no-reference"], ["--json was given an empty path"]),  # was "--json : is a directory"
    (["--approx", "--json", " "], ["--json was given an empty path"]),
    (["--reference-budget", "-5", "--no-reference"], ["--reference-budget: expected a number > 0, got '-5'"]),
    (["--reference-budget", "0", "--no-reference"], ["expected a number > 0, got '0'"]),
    (["--reference", "x.py", "--no-reference"], ["--reference and --no-reference contradict",
                                                 "--no-reference to time otcpcc only"]),
])
def test_bench_refuses_before_running(monkeypatch, capsys, flags, needles):
    from otcpcc.bench import approx

    monkeypatch.setattr(speed, "bench_distances", lambda **k: pytest.fail("ran the bench"))
    monkeypatch.setattr(approx, "compare", lambda *a, **k: pytest.fail("ran the bench"))
    argv = ["bench", *flags] if "--approx" in flags else ["bench", *flags, *SMALL_BENCH]
    one_line_error(capsys, main(argv), *needles)


def test_bench_json_write_check_leaves_nothing_behind(tmp_path):
    from otcpcc.flags import unwritable

    assert unwritable(str(tmp_path / "b.json")) is None
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------- SIGTERM while last.pt is written: no ckpt.tmp litter
def test_sigterm_while_saving_a_checkpoint_leaves_no_temporary_file(tmp_path):
    import os
    import subprocess
    import sys

    script = """
import os, signal, sys, torch
from otcpcc.runs.checkpoint import save_checkpoint
save_checkpoint(sys.argv[1], {"model": {}, "epoch": 1})      # the previous last.pt
def killed_midway(obj, f):                                    # torch.save, stopped halfway
    f.write(b"half a checkpoint"); f.flush()
    os.kill(os.getpid(), signal.SIGTERM)
    raise AssertionError("SIGTERM did not end the process")
torch.save = killed_midway
save_checkpoint(sys.argv[1], {"model": {}, "epoch": 2})
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -15, done.stderr  # ended by the signal, as without the handler
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no ckpt.tmp
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 1  # the previous one


def test_resume_removes_temporary_files_a_killed_run_left(target_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(target_run, run)
    (run / "ckpt.tmp").write_bytes(b"")  # SIGKILL while writing: nothing can remove them then
    (run / "eval.json.tmp").write_text("{")  # (a file the resumed run does not write again)
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert not (run / "ckpt.tmp").exists() and not (run / "eval.json.tmp").exists()


# ----------------------------------------------------------------- messages: UTF-16, header, cycles
@pytest.mark.parametrize("encoding, name", [("utf-16", "UTF-16"), ("utf-16-be", "UTF-16"),
                                            ("utf-32", "UTF-32")])
@pytest.mark.parametrize("file, read, expected", [
    ("t.txt", lambda p: LabelTree.from_file(p), "expected an edge-list tree"),
    ("c.csv", lambda p: load_cost_matrix(p, ["a", "b"]), "expected a CSV cost matrix"),
])
def test_a_utf16_text_file_is_named_utf16_with_the_fix(tmp_path, encoding, name, file, read, expected):
    path = tmp_path / file
    bom = {"utf-16-be": b"\xfe\xff"}.get(encoding, b"")  # utf-16/utf-32 write their own mark
    path.write_bytes(bom + "r a\nr b\n".encode(encoding))
    with pytest.raises(ValueError) as e:
        read(path)
    assert f"{path} is {name} text, not UTF-8" in str(e.value) and "re-save it as UTF-8" in str(e.value)
    assert expected in str(e.value) and len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize("text", ["0,1,5\n1,0,5\n5,5,0\n",  # a bare matrix
                                  "a,0,1,5\nb,1,0,5\nc,5,5,0\n"])  # rows with names, no header
def test_a_cost_matrix_without_its_header_row_says_so(tmp_path, capsys, target_run, text):
    path = tmp_path / "costs.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=r"the header row is missing; add a first row naming the "
                                         r"class of each column \(e\.g\. ',a,b,c'\)"):
        load_cost_matrix(path, ["a", "b", "c"])
    one_line_error(capsys, main(["evaluate", str(target_run), "--cost-matrix", str(path)]),
                   "holds numbers, not class names: the header row is missing")
    # classes named by numbers: a header of numbers is a header
    path.write_text(",0,1\n0,0,2\n1,3,0\n", encoding="utf-8")
    assert load_cost_matrix(path, ["1", "0"]).tolist() == [[0.0, 3.0], [2.0, 0.0]]


def test_a_cost_matrix_whose_rows_lack_the_class_name_says_so(tmp_path):
    """A header of names but bare rows of costs said "class 'a' has no column" (new-user trial)."""
    path = tmp_path / "costs.csv"
    path.write_text("a,b,c\n0,1,5\n1,0,5\n5,5,0\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"the rows start with numbers \(0,1,5,\.\.\.\), not class "
                                         r"names: start each row with the name of its true class "
                                         r"\(e\.g\. 'a,0,\.\.\.'\) and give the header an empty first cell"):
        load_cost_matrix(path, ["a", "b", "c"])


@pytest.mark.parametrize("edges, needles", [
    ("r a\na b\nb a\n", ["node 'a' has two parents, 'r' (", "t.txt:1) and 'b' (", "t.txt:3)",
                         "closes a cycle ('a' -> 'b' -> 'a', child -> parent)", "delete one of these edges"]),
    ("r a\na a\n", ["edge 'a' -> 'a' (", "t.txt:2) makes 'a' its own parent (a cycle 'a' -> 'a'); remove that edge"]),
    ("r a\nr b\na x\nb x\n", ["node 'x' has two parents, 'a' (", "t.txt:3) and 'b' (", "t.txt:4)"]),
])
def test_a_tree_file_cycle_or_second_parent_names_the_lines_and_a_fix_for_the_cli(tmp_path, capsys,
                                                                                 edges, needles):
    path = tmp_path / "t.txt"
    path.write_text(edges, encoding="utf-8")
    err = one_line_error(capsys, main(["train", *TINY, "--tree", str(path), "--out", str(tmp_path / "r")]),
                         *needles)
    assert "or pass on_multiple_parents" not in err  # an argument a CLI user cannot pass
    with pytest.raises(ValueError, match="from Python, on_multiple_parents='first' keeps the first"
                       if "two parents" in needles[0] else "its own parent"):
        LabelTree.from_edges([tuple(line.split()) for line in edges.splitlines()])


# ------------------------------------------------------------- bench --scale --help: its own help
def test_bench_scale_help_shows_the_scale_cases(monkeypatch, capsys):
    monkeypatch.setattr(scale, "run_all", lambda *a: pytest.fail("ran the cases"))
    assert main(["bench", "--scale", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: otcpcc bench --scale [-h] [--json [PATH]]"), out
    assert all(case in out for case in scale.CASES) and "--batch-sizes BATCH_SIZES" not in out
    assert "fastft-train   ok at or under 2x the GEMM" in out
    assert main(["bench", "--help"]) == 0  # the general help points at it
    assert "(see otcpcc bench --scale --help)" in " ".join(capsys.readouterr().out.split())


# --------------------------------------------------- cli/args: one parser for lists of numbers
def test_float_and_int_lists_are_one_parser_with_unchanged_messages():
    import argparse

    from otcpcc.cli import args
    from otcpcc.flags import MAX_COUNT, count_list

    assert args._float_list.__qualname__.startswith("_number_list.")
    assert args._float_list("0, 0.5,,2") == [0.0, 0.5, 2.0]
    with pytest.raises(argparse.ArgumentTypeError) as e:
        args._float_list("1,x")
    assert str(e.value) == "expected comma-separated numbers, got '1,x'"
    assert args._number_list(int, "integers")("3") == [3]
    # batch sizes and dimensions (sweep, bench, bench --approx): one parser, bounded both ways
    assert count_list("64,256,") == [64, 256] and count_list(str(MAX_COUNT)) == [MAX_COUNT]
    for bad in ("1,x", "0,4", "", str(MAX_COUNT + 1), "99999999999999999999"):
        with pytest.raises(argparse.ArgumentTypeError) as e:
            count_list(bad)
        assert str(e.value) == f"expected comma-separated integers from 1 to {MAX_COUNT}, got {bad!r}"


# ------------------------------------------------------------- found by the breaker session
@pytest.mark.parametrize("scale", [1e300, 1e-320, 1e39])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_a_target_matrix_beyond_the_features_float_range_keeps_its_cpcc(scale, dtype):
    """CPCC is invariant to the target's scale; a float64 target of 1e300 (or 1e-320) used to be
    cast to the features' float32 first (inf or 0): CPCC 0.0 and a loss of 1 with zero gradient,
    silently."""
    from scipy.stats import pearsonr

    t = np.array([[0, 2, 4, 4], [2, 0, 4, 4], [4, 4, 0, 2], [4, 4, 2, 0]], dtype=np.float64)
    g = torch.Generator().manual_seed(0)
    f = torch.randn(12, 3, generator=g).to(dtype)
    lab = torch.arange(4).repeat_interleave(3)
    rho = torch.stack([f[lab == i].float().mean(0) - f[lab == j].float().mean(0)
                       for i in range(4) for j in range(i + 1, 4)]).norm(dim=1)
    want = pearsonr([t[i, j] for i in range(4) for j in range(i + 1, 4)], rho.numpy())[0]
    assert cpcc(f, lab, t * scale) == pytest.approx(want, abs=2e-3)
    x = f.clone().requires_grad_()
    loss = CPCCLoss(t * scale, "l2")(x, lab)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(1 - want, abs=2e-3) and float(x.grad.abs().max()) > 0


@pytest.mark.parametrize("options, needle", [
    ({"projections": torch.randn(3, 0)}, "projections has shape (3, 0): no directions"),
    ({"projections": torch.full((3, 2), float("nan"))}, "projections has NaN or inf entries"),
    ({"projections": torch.full((3, 2), 1e300, dtype=torch.float64)}, "projections has NaN or inf entries"),
    ({"seed": "abc"}, "seed must be an integer"),
    ({"seed": 2**70}, "seed must be an integer"),
])
def test_swd_option_values_found_by_attacking(options, needle):
    """Each used to blame the feature scale (\"may overflow float32\") or raise int()'s or the
    generator's own message ("Overflow when unpacking long long")."""
    from otcpcc import class_distances

    with pytest.raises(ValueError) as e:
        class_distances(torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2]), "swd", **options)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_numpy_integers_are_integer_options():
    """np.int64(4) used to be refused as 'must be an integer >= 1, got np.int64(4)'."""
    from otcpcc import class_distances

    f, lab = torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 2, 2])
    one = class_distances(f, lab, "swd", n_projections=np.int64(4), seed=np.int64(1))[1]
    assert torch.equal(one, class_distances(f, lab, "swd", n_projections=4, seed=1)[1])
    two = class_distances(f, lab, "sinkhorn", max_iter=np.int32(50))[1]
    assert torch.equal(two, class_distances(f, lab, "sinkhorn", max_iter=50)[1])


@pytest.mark.parametrize("sep, what", [("\t", "tabs"), (";", "semicolons")])
def test_a_cost_matrix_separated_by_tabs_or_semicolons_says_so(tmp_path, capsys, target_run, sep, what):
    """Spreadsheets in many locales save "CSV" with semicolons (and decimal commas): this used to
    say "class 'a' has no column" (or name a ragged row) for a file that has every class."""
    path = tmp_path / "costs.csv"
    path.write_text(f"{sep}a{sep}b{sep}c\na{sep}0{sep}1,5{sep}2\nb{sep}1,5{sep}0{sep}3\nc{sep}2{sep}3{sep}0\n",
                    encoding="utf-8")
    with pytest.raises(ValueError, match=f"separated by {what}, not commas; re-save it as comma-separated CSV"):
        load_cost_matrix(path, ["a", "b", "c"])
    leaves = list(LabelTree.from_file(target_run / "tree.json").leaves)
    path.write_text(sep.join(["", *leaves]) + "\n" + "\n".join(
        sep.join([a, *("0" if a == b else "1" for b in leaves)]) for a in leaves) + "\n", encoding="utf-8")
    one_line_error(capsys, main(["evaluate", str(target_run), "--cost-matrix", str(path)]),
                   f"separated by {what}, not commas")


@pytest.mark.parametrize("edges", ["root, A\nroot, B\nA, a1\nA, a2\nB, b1\nB, b2\n",
                                   "root, A, 1\nroot B\nA a1\nA a2\nB b1\nB b2\n"])
def test_a_tree_file_written_parent_comma_child_says_remove_the_commas(tmp_path, capsys, edges):
    """'parent, child' lines used to read as nodes named 'root,' 'A,' 'B,' and fail later as
    'several roots: 'root,', 'A,', 'B,' have no parent' (or build a tree of wrong names)."""
    path = tmp_path / "t.txt"
    path.write_text(edges, encoding="utf-8")
    with pytest.raises(ValueError, match=r"t\.txt:1: expected 'parent child \[weight\]' separated by "
                                         r"whitespace only, got 'root, A.*'; remove the commas"):
        LabelTree.from_file(path)
    one_line_error(capsys, main(["train", *TINY, "--tree", str(path), "--out", str(tmp_path / "r")]),
                   "remove the commas")
    assert not (tmp_path / "r").exists()


def test_bench_approx_refuses_a_missing_run_and_a_negative_seed_before_working(tmp_path, monkeypatch, capsys):
    """--run DIR that does not exist used to be found only after the embedded inputs had been
    measured (minutes); --seed -1 ended with numpy's 'expected non-negative integer'."""
    from otcpcc.bench import approx

    def no_work(*a, **k):
        raise AssertionError("measured before the flags were checked")

    monkeypatch.setattr(approx, "embedded_inputs", no_work)
    monkeypatch.setattr(approx, "gaussian_mixture", no_work)
    one_line_error(capsys, main(["bench", "--approx", "--run", str(tmp_path / "nowhere")]),
                   "run directory", "not found")
    one_line_error(capsys, main(["bench", "--approx", "--seed", "-1"]),
                   "--seed: expected an integer >= 0, got '-1'")


def test_a_truncated_breeds_hierarchy_is_refused_not_a_smaller_dataset(tmp_path):
    """class_hierarchy.txt cut at a line boundary used to give breeds-living17 with 5 or 10
    superclasses instead of 17, silently (every remaining line is well formed)."""
    from fakes import write_breeds_hierarchy
    from otcpcc.data.breeds import load_living17

    hier = write_breeds_hierarchy(tmp_path / "hier")
    edges = (hier / "class_hierarchy.txt").read_text().splitlines(keepends=True)
    (hier / "class_hierarchy.txt").write_text("".join(edges[: len(edges) * 6 // 10]))
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(ValueError, match=r"breeds-living17: the hierarchy files in .* give 10 "
                                         r"superclasses, BREEDS' living17 has 17; class_hierarchy\.txt "
                                         r"may be truncated"):
        load_living17(tmp_path, hierarchy_dir=hier)


def test_a_cost_matrix_near_the_float_limit_is_refused_not_an_inf_expected_cost(tmp_path, capsys, target_run):
    """Costs of 1.7e308 are finite, so they were read; evaluate then printed expected_cost inf
    (with numpy's overflow warning) and wrote it to eval.json. 1e200 is still read."""
    leaves = list(LabelTree.from_file(target_run / "tree.json").leaves)
    path = tmp_path / "costs.csv"

    def write(cost):
        path.write_text(",".join(["", *leaves]) + "\n" + "\n".join(
            ",".join([a, *("0" if a == b else cost for b in leaves)]) for a in leaves) + "\n")

    write("1.7e308")
    with pytest.raises(ValueError, match=r"is 1\.7e308, above 1e\+200: averages over a test set would "
                                         r"overflow; rescale the matrix"):
        load_cost_matrix(path, leaves)
    one_line_error(capsys, main(["evaluate", str(target_run), "--cost-matrix", str(path)]), "above 1e+200")
    write("1e200")
    assert load_cost_matrix(path, leaves).max() == 1e200


def test_thread_and_worker_counts_have_a_ceiling(monkeypatch, capsys):
    """bench --approx --threads 100000 crashed the process (exit 139, 'cannot allocate memory');
    train -j 100000 would start 100000 DataLoader processes, each importing torch (the CLI reaches
    TrainConfig.validate before any data; not run here, where a regression would fork them)."""
    import os

    from otcpcc.bench import approx
    from otcpcc.runs.config import MAX_WORKERS, ConfigError, TrainConfig

    def no_work(*a, **k):
        raise AssertionError("the flag was not refused")

    monkeypatch.setattr(approx, "embedded_inputs", no_work)
    monkeypatch.setattr(approx.torch, "set_num_threads", no_work)
    most = 4 * (os.cpu_count() or 1)
    one_line_error(capsys, main(["bench", "--approx", "--threads", str(most + 1)]),
                   f"--threads: expected at most {most}")
    with pytest.raises(ConfigError, match=f"workers 100000 is above {MAX_WORKERS} data-loading processes"):
        TrainConfig(workers=100000).validate()
    TrainConfig(workers=MAX_WORKERS).validate()


def test_sizes_beyond_memory_or_range_are_one_line(monkeypatch, capsys, tmp_path):
    """Breaker findings: bench --batch-sizes 1e12 / --dim 1e10 / --n-projections 1e9 ended in a
    traceback ("can't allocate memory", an overflowing randint); train -b 1e20 said "Stop argument
    for islice()"; a sweep with it left its study.json behind. Now one line naming the flags."""
    real_bench = speed.bench_distances

    def alloc(**k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] . DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 7999999999920 bytes.")

    monkeypatch.setattr(speed, "bench_distances", alloc)
    one_line_error(capsys, main(["bench", "--distances", "l2,swd", "--batch-sizes", "8,1000000000",
                                 "--no-reference"]),
                   "out of memory on cpu for --batch-sizes 1000000000, --dim 512, --classes 100, "
                   "--n-projections 10; lower them")
    monkeypatch.setattr(speed, "bench_distances", lambda **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):  # other errors are not called memory
        main(["bench", "--distances", "l2", "--batch-sizes", "8", "--no-reference"])
    # round 2: sizes beyond the memory are refused before allocating (the kernel killed the process)
    import otcpcc.distances.memory as memory

    monkeypatch.setattr(speed, "bench_distances", real_bench)
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 10**6)
    one_line_error(capsys, main(["bench", "--distances", "l2", "--batch-sizes", "1000", "--dim", "64",
                                 "--no-reference"]),
                   "batch size 1000 with --dim 64 needs about 0.0 GB for its features and labels alone, more "
                   "than the 0.0 GB available on cpu; lower --batch-sizes or --dim")
    huge = "99999999999999999999"
    one_line_error(capsys, main(["train", "-b", huge, "--out", str(tmp_path / "t")]),
                   f"batch_size {huge} is too large; pass --batch-size between 1 and 2147483647")
    one_line_error(capsys, main(["sweep", "--batch-sizes", huge, "--out", str(tmp_path / "s")]),
                   "argument --batch-sizes: expected comma-separated integers from 1 to 2147483647")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 1e3\n")
    one_line_error(capsys, main(["train", "--config", str(cfg), "--out", str(tmp_path / "t")]),
                   "epochs must be a positive integer, got 1000.0 (a float); write it as 1000")
    for text, needle in (("0.0", "got 0.0; pass --epochs 1 or more"),
                         ('"3"', "got '3' (a string); write it without quotes")):
        cfg.write_text(f"epochs: {text}\n")
        one_line_error(capsys, main(["train", "--config", str(cfg), "--out", str(tmp_path / "t")]), needle)
    assert not (tmp_path / "t").exists() and not (tmp_path / "s").exists()


def test_damaged_run_config_is_named_and_config_files_of_any_suffix_parse(tmp_path, capsys):
    """Breaker findings: a bad value inside RUN/config.json was blamed on the flag (train --resume
    --epochs 3: "pass --epochs 1 or more"); a YAML config named c.txt failed as JSON; --config DIR
    said "not found"."""
    run = tmp_path / "r"
    tiny = ["--epochs", "1", "--no-progress", "--data-opt", "train_per_class=12", "--data-opt", "test_per_class=6"]
    assert main(["train", *tiny, "--out", str(run)]) == 0
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**saved, "epochs": "two"}))
    capsys.readouterr()
    one_line_error(capsys, main(["train", "--out", str(run), "--resume", "--epochs", "3"]),
                   f"cannot resume {run}: {run / 'config.json'} is damaged (epochs must be a positive "
                   "integer, got 'two'); restore it, or start the run over with --force")
    one_line_error(capsys, main(["evaluate", str(run)]), f"{run / 'config.json'} is damaged", "train the run again")
    for text in ('{"epochs": ', "", "[1, 2]", json.dumps({**saved, "bogus": 1})):  # round 2: named as --config
        (run / "config.json").write_text(text)
        one_line_error(capsys, main(["train", "--out", str(run), "--resume", "--epochs", "3"]),
                       f"cannot resume {run}: {run / 'config.json'} is damaged (", "start the run over")
    (run / "config.json").write_text(json.dumps(saved))  # restored: both work again
    assert main(["evaluate", str(run)]) == 0
    yaml_txt = tmp_path / "c.txt"
    yaml_txt.write_text("epochs: 1\ndata_options:\n  train_per_class: 12\n  test_per_class: 6\n")
    assert main(["train", "--config", str(yaml_txt), "--no-progress", "--out", str(tmp_path / "y")]) == 0
    assert json.loads((tmp_path / "y" / "config.json").read_text())["data_options"]["train_per_class"] == 12
    yaml_txt.write_text("a: [\n")
    capsys.readouterr()
    one_line_error(capsys, main(["train", "--config", str(yaml_txt), "--out", str(tmp_path / "z")]),
                   f"cannot parse config file {str(yaml_txt)!r} as YAML: ", "(line 2, column 1)")
    yaml_txt.write_text('{"epochs": 1 "lr": 2}\n')  # JSON-looking: JSON's own error, with its place
    one_line_error(capsys, main(["train", "--config", str(yaml_txt), "--out", str(tmp_path / "z")]),
                   "as JSON: Expecting ',' delimiter: line 1 column 14")
    one_line_error(capsys, main(["train", "--config", str(tmp_path), "--out", str(tmp_path / "z")]),
                   f"config file {str(tmp_path)!r} is a directory")
    assert not (tmp_path / "z").exists()


def test_class_names_too_few_and_a_tree_directory_are_named(tmp_path, capsys):
    """Breaker findings: an .npz whose class_names hold 3 names while its labels reach 5 was
    blamed on "the tree's 3 leaves" (the file holds no tree); --tree DIR said "not found"."""
    rng = np.random.default_rng(0)
    path = tmp_path / "f.npz"
    np.savez(path, features=rng.normal(size=(60, 4)).astype("float32"), labels=np.arange(60) % 6,
             class_names=np.array(["a", "b", "c"]))
    one_line_error(capsys, main(["train", "--data", "features", "--data-dir", str(path), "--epochs", "1",
                                 "--out", str(tmp_path / "r")]),
                   "labels go up to 5 but class_names holds 3 names", "6 or more")
    np.savez(path, features=rng.normal(size=(40, 4)).astype("float32"),
             labels=np.array([*range(3)] * 13 + [2**63], dtype=np.uint64))  # wrapped negative before
    one_line_error(capsys, main(["train", "--data", "features", "--data-dir", str(path), "--epochs", "1",
                                 "--out", str(tmp_path / "r")]), "holds class id 9223372036854775808, beyond int64")
    one_line_error(capsys, main(["train", "--data", "digits", "--tree", str(tmp_path), "--epochs", "1",
                                 "--out", str(tmp_path / "r")]),
                   f"tree file {str(tmp_path)!r} is a directory; pass the path of a tree file to --tree")
    assert not (tmp_path / "r").exists()


def test_a_run_without_its_config_json_is_not_overwritten_or_deleted(tmp_path, capsys):
    """Breaker finding: a run directory whose config.json was a folder (or missing) counted as
    empty: train went ahead, failed writing config.json, and its cleanup deleted the old last.pt,
    metrics.json, log.csv, tree.json and the folder with its contents. Now such a directory holds
    a run (refused without --force; --resume says its settings are unknown) and a folder under a
    run file's name is never deleted."""
    run = tmp_path / "r"
    tiny = ["--epochs", "1", "--no-progress", "--data-opt", "train_per_class=12", "--data-opt", "test_per_class=6"]
    assert main(["train", *tiny, "--out", str(run)]) == 0
    (run / "config.json").unlink()
    (run / "config.json").mkdir()
    (run / "config.json" / "keep").write_text("mine")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    for flags in ([], ["--resume"], ["--force"]):  # (round 3: a folder is named before anything else)
        one_line_error(capsys, main(["train", *tiny, "--out", str(run), *flags]),
                       f"{run / 'config.json'} is a folder, not otcpcc's file: move or remove it")
    (run / "config.json" / "keep").rename(tmp_path / "keep")
    (run / "config.json").rmdir()
    one_line_error(capsys, main(["train", *tiny, "--out", str(run)]), "already holds a run (tree.json)", "--force")
    one_line_error(capsys, main(["train", *tiny, "--out", str(run), "--resume"]),
                   "its config.json is missing or not a file", "start it over with --force")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert (tmp_path / "keep").read_text() == "mine"


def test_run_files_of_a_user_are_neither_overwritten_nor_followed(tmp_path, capsys):
    """Breaker round 3: a directory with only log.csv/tree.json/eval.json was trained over (files
    overwritten, eval.json deleted); a tree.json symlink was written through (the file it pointed
    to, outside the run, replaced); a last.pt folder failed only after an epoch of training, with
    advice that looped; --force deleted a user's tb/ folder; a damaged meta crashed --resume."""
    tiny = ["--epochs", "1", "--no-progress", "--data-opt", "train_per_class=12", "--data-opt", "test_per_class=6"]
    a = tmp_path / "a"
    a.mkdir()
    (a / "log.csv").write_text("mine")
    one_line_error(capsys, main(["train", *tiny, "--out", str(a)]), "already holds a run (log.csv)")
    assert (a / "log.csv").read_text() == "mine"
    outside = tmp_path / "precious.json"
    outside.write_text("precious")
    e = tmp_path / "e"
    e.mkdir()
    (e / "tree.json").symlink_to(outside)
    assert main(["train", *tiny, "--out", str(e), "--force"]) == 0
    assert outside.read_text() == "precious" and not (e / "tree.json").is_symlink()
    d = tmp_path / "d"
    (d / "last.pt").mkdir(parents=True)
    one_line_error(capsys, main(["train", *tiny, "--out", str(d), "--force"]),
                   f"{d / 'last.pt'} is a folder, not otcpcc's file: move or remove it")
    assert not (d / "config.json").exists()  # refused before anything was written
    (e / "tb").mkdir()
    (e / "tb" / "userfile").write_text("keep")
    assert main(["train", *tiny, "--out", str(e), "--force"]) == 0
    assert (e / "tb" / "userfile").read_text() == "keep"
    saved = json.loads((e / "config.json").read_text())
    for meta in ({"world_size": None}, {"world_size": "x"}):
        (e / "config.json").write_text(json.dumps({**saved, "meta": meta}))
        capsys.readouterr()
        one_line_error(capsys, main(["train", "--out", str(e), "--resume", "--epochs", "2"]),
                       f"cannot resume {e}: {e / 'config.json'} is damaged (meta.world_size {meta['world_size']!r}")
    (e / "config.json").write_text(json.dumps({**saved, "meta": 5}))  # no usable meta: as a run without one
    assert main(["train", "--out", str(e), "--resume", "--epochs", "2", "--no-progress"]) == 0
