"""Bad-input trial, second round: SIGTERM like Ctrl-C, studies without flat CE, OS errors on --out
and eval.json, diagnose --features-of with --data, classes with no training samples."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from cli_errors import own_error as one_line_error
from otcpcc.cli import main
from otcpcc.runs.checkpoint import load_checkpoint

TINY = ["--data", "synthetic", "--data-opt", "train_per_class=12", "--data-opt",
        "test_per_class=6", "--data-opt", "branching=[2, 3]", "--model-opt", "hidden=[16]",
        "--epochs", "2", "--batch-size", "16", "--device", "cpu", "--no-progress"]


# ------------------------------------------------------------ 1. SIGTERM is handled as Ctrl-C is
# The child runs the real entry point; a real SIGTERM reaches it from outside Python's control
# flow, at step 3 of epoch 1 (5 steps an epoch) or once config.json is written (no checkpoint).
_CHILD = """
import os, signal, sys
from otcpcc.training import loop
where, argv = sys.argv[1], sys.argv[2:]
if where == "step3":
    real, n = loop.train_step, [0]
    def step(*a, **k):
        out = real(*a, **k)
        n[0] += 1
        if n[0] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return out
    loop.train_step = step
else:  # right after config.json and tree.json are written, before the epochs
    real_prepare = loop.prepare_run_dir
    def prepare(*a, **k):
        real_prepare(*a, **k)
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the run")
    loop.prepare_run_dir = prepare
from otcpcc.cli import main
sys.exit(main(argv))
"""


def _child(where, argv):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", _CHILD, where, *argv], env=env,
                          capture_output=True, text=True, timeout=300)


def test_sigterm_mid_epoch_saves_a_checkpoint_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    done = _child("step3", ["train", *TINY, "--out", str(out)])
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == (f"otcpcc: stopped by SIGTERM; checkpoint saved in {out}/last.pt; continue "
                    f"with otcpcc train --out {out} --resume"), done.stderr
    ckpt = load_checkpoint(out / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (0, 3)  # the step that saw SIGTERM finished, then saved
    assert not (out / ".lock").exists() and not (out / "ckpt.tmp").exists()
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2


def test_sigterm_before_the_first_checkpoint_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    done = _child("start", ["train", *TINY, "--out", str(out)])
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "otcpcc: stopped by SIGTERM", done.stderr
    assert not out.exists()  # config.json, tree.json and the lock went: a plain rerun is allowed
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0


def test_sigterm_in_a_compare_is_resumable(tmp_path, capsys, monkeypatch):
    from otcpcc.study import compare as compare_mod

    out = tmp_path / "cmp"
    argv = ["compare", *TINY, "--epochs", "1", "--methods", "none", "--seeds", "1",
            "--out", str(out)]
    done = _child("step3", argv)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("otcpcc: stopped by SIGTERM; the finished runs and a checkpoint in ")
    assert last.endswith(f"--out {out} --resume"), last
    monkeypatch.setattr(compare_mod, "render_report", lambda *a, **k: None)  # figures: elsewhere
    assert main([*argv[:-2], "--out", str(out), "--resume"]) == 0
    assert len(json.loads((out / "summary.json").read_text())["runs"]) == 1


# ------------------------------------------------------- 2. studies without flat CE, repeated methods
STUDY = [a if a != "2" else "1" for a in TINY]  # one epoch


@pytest.mark.parametrize("command", ["compare", "pilot"])
def test_a_method_listed_twice_is_refused_naming_it(tmp_path, capsys, command):
    out = tmp_path / "s"
    err = one_line_error(capsys, main([command, *STUDY, "--methods", "none,l2,ce,fastft,fft",
                                       "--out", str(out)]), "none 2 times (none, ce)",
                         "fastft 2 times (fastft, fft)", "--methods none,l2,fastft")
    assert "fastft" in err and not out.exists()


def test_pilot_without_flat_ce_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "p"
    one_line_error(capsys, main(["pilot", *STUDY, "--seeds", "2", "--methods", "l2,fastft",
                                 "--out", str(out)]),
                   "pilot needs none (flat CE)", "--methods none,l2,fastft")
    assert not out.exists()


def test_compare_without_flat_ce_says_there_is_no_baseline(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["compare", *STUDY, "--seeds", "2", "--methods", "l2,swd", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdicts"] == [] and "No baseline `none` (flat CE)" in summary["verdicts_note"]
    assert {v["baseline"] for v in summary["ot_verdicts"]} == {"l2"}  # swd vs l2 still judged
    report = (out / "report.md").read_text()
    assert "No baseline `none` (flat CE) among the methods" in report
    assert "written without them" not in report and "--seeds 3 or more" not in report


# ------------------------------------------------------------------ 3. OS errors as one line
@pytest.mark.parametrize("command", ["train", "compare", "pilot"])
def test_out_under_a_file_is_one_line_and_writes_nothing(tmp_path, capsys, command):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    one_line_error(capsys, main([command, *STUDY, "--out", str(afile / "sub")]),
                   f"--out {afile / 'sub'} is inside {afile}, which is a file", "pass --out a folder")
    assert afile.read_text() == "mine" and sorted(tmp_path.iterdir()) == [afile]


def test_out_the_system_refuses_is_one_line(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    def refused(self, *a, **k):
        raise FileNotFoundError(2, "No such file or directory")  # as mkdir /proc/otc says

    monkeypatch.setattr(Path, "mkdir", refused)
    one_line_error(capsys, main(["train", *STUDY, "--out", str(tmp_path / "x")]),
                   f"--out {tmp_path / 'x'}: cannot create this folder (No such file or directory)",
                   "a folder you can write to")


def test_a_folder_named_like_a_run_file_is_one_line_and_leaves_no_temporary(tmp_path, capsys):
    from otcpcc.runs.checkpoint import write_json

    (tmp_path / "metrics.json").mkdir()
    with pytest.raises(OSError) as e:
        write_json(tmp_path / "metrics.json", {"a": 1})
    assert str(e.value).startswith(f"cannot write {tmp_path / 'metrics.json'} (")
    assert f"{tmp_path / 'metrics.json'} is a folder, not otcpcc's file" in str(e.value)
    assert "Errno" not in str(e.value) and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_evaluate_refuses_an_eval_json_folder_before_evaluating(tmp_path, capsys, monkeypatch):
    from otcpcc.evaluation import evaluate as evaluate_mod

    run = tmp_path / "run"
    assert main(["train", *STUDY, "--out", str(run)]) == 0
    (run / "eval.json").mkdir()
    monkeypatch.setattr(evaluate_mod, "predict", lambda *a, **k: pytest.fail("evaluated"))
    one_line_error(capsys, main(["evaluate", str(run)]),
                   f"{run / 'eval.json'} is a folder, not otcpcc's evaluation file",
                   "move or remove it")
    assert not (run / "eval.json.tmp").exists() and (run / "eval.json").is_dir()


# --------------------------------------------------------- 4. diagnose --features-of RUN --data ...
@pytest.mark.parametrize("flags, named", [
    (["--data", "synthetic"], "--data cannot"),  # the run's own dataset: still not used, refused
    (["--data-opt", "train_per_class=99"], "--data-opt cannot"),
    (["--data", "digits", "--data-opt", "a=1"], "--data and --data-opt cannot"),
])
def test_diagnose_refuses_data_flags_with_a_run(tmp_path, capsys, monkeypatch, flags, named):
    from otcpcc.evaluation import diagnose as diagnose_mod

    monkeypatch.setattr(diagnose_mod, "load_run", lambda *a, **k: pytest.fail("loaded the run"))
    run = tmp_path / "run"
    one_line_error(capsys, main(["diagnose", "--features-of", str(run), *flags]), named,
                   f"--features-of {run}", "diagnose input features with --data alone")


# ------------------------------------------------------ 5. a class with no training samples
def test_a_class_only_in_the_test_split_is_noted_and_recorded(tmp_path, capsys):
    import numpy as np

    rng = np.random.default_rng(0)
    npz = tmp_path / "f.npz"
    np.savez(npz, train_features=rng.normal(size=(40, 4)).astype("f4"),
             train_labels=np.repeat([0, 1], 20), test_features=rng.normal(size=(15, 4)).astype("f4"),
             test_labels=np.repeat([0, 1, 2], 5), class_names=np.array(["a", "b", "c"]))
    out = tmp_path / "run"
    assert main(["train", "--data", "features", "--data-dir", str(npz), "--distance", "none",
                 "--epochs", "1", "--batch-size", "16", "--out", str(out)]) == 0
    notes = [ln for ln in capsys.readouterr().err.splitlines() if "no training samples" in ln]
    assert notes == ["otcpcc: note: 1 class(es) have no training samples: 'c'; the model cannot "
                     "learn them (their test accuracy will be 0); put some of their samples in "
                     "the train split"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes_without_train_samples"] == ["c"]


def test_an_interrupted_study_rewrite_leaves_the_finished_summary_whole(tmp_path, monkeypatch):
    """summary.json (and the reports, pilot.json) are written through a temporary file: a stop
    while compare --resume rewrites them leaves the finished study's files as they were (a
    breaker's SIGTERM left summary.json at 0 bytes beside the old report)."""
    monkeypatch.setattr("otcpcc.study.compare.render_report", lambda *a, **k: None)
    out = tmp_path / "c"
    args = ["compare", *TINY, "--methods", "none", "--seeds", "1", "--out", str(out)]
    assert main(args) == 0
    before = (out / "summary.json").read_bytes()

    def stop(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr("otcpcc.runs.checkpoint.os.fsync", stop)
    assert main([*args, "--resume"]) == 130  # stopped as by Ctrl-C, while writing summary.json
    assert (out / "summary.json").read_bytes() == before
    assert not list(out.glob("*.tmp"))
