"""`otcpcc compare/pilot --resume`: an interrupted comparison, resumed, writes the same summary as an
uninterrupted one; finished runs are reused, the cut run continues from its checkpoint; a resume
with other settings is refused naming them. And the pilot loads its data once."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal

import pytest

from cli_errors import one_line_error
from otcpcc.cli import main
from otcpcc.study import compare as compare_mod
from otcpcc.training import loop as train_mod

# 6 classes x 12 = 72 training samples, batch 16: 5 steps per epoch; 2 epochs of cosine
TINY = ["--data", "synthetic", "--data-opt", "train_per_class=12", "--data-opt",
        "test_per_class=6", "--data-opt", "branching=[2, 3]", "--model-opt", "hidden=[16]",
        "--epochs", "2", "--batch-size", "16", "--device", "cpu", "--no-progress"]
STUDY = [*TINY, "--methods", "none,l2", "--seeds", "2"]
TIMING = ("train_time_s",)  # wall-clock seconds: the only numbers two runs may not share


def without_timing(obj):
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items() if not k.startswith(TIMING)}
    if isinstance(obj, list):
        return [without_timing(v) for v in obj]
    return obj


def write_costs(path, cost):
    """A cost-matrix CSV over TINY's 6 classes: header of names, then "name,costs" per true class."""
    from otcpcc.runs.build import load_data
    from otcpcc.runs.config import TrainConfig

    names = list(load_data(TrainConfig(data="synthetic", data_options={
        "branching": [2, 3], "train_per_class": 12, "test_per_class": 6})).tree.leaves)
    rows = [f"{a}," + ",".join(str(cost(i, j)) for j in range(len(names))) for i, a in enumerate(names)]
    path.write_text("," + ",".join(names) + "\n" + "\n".join(rows) + "\n")
    return path


def signal_at_step(monkeypatch, at: int, sig: int):
    """Send ``sig`` to this process right after training step number ``at`` (counted over every
    run); returns the real step function, to restore."""
    real_step, steps = train_mod.train_step, {"n": 0}

    def step_then_signal(*a, **k):
        out = real_step(*a, **k)
        steps["n"] += 1
        if steps["n"] == at:
            os.kill(os.getpid(), sig)
        return out

    monkeypatch.setattr(train_mod, "train_step", step_then_signal)
    return real_step


@pytest.fixture
def no_figures(monkeypatch):
    # the report's figures (t-SNE, dendrograms) are tested elsewhere; summary.json is what counts
    monkeypatch.setattr(compare_mod, "render_report", lambda *a, **k: None)


def spy_train(monkeypatch):
    """Record (run directory, resume) of every training run started."""
    from otcpcc import training

    real, calls = training.train, []

    def spy(cfg, out, **kw):
        calls.append((f"{out.parent.name}/{out.name}", kw.get("resume", False)))
        return real(cfg, out, **kw)

    monkeypatch.setattr(training, "train", spy)
    return calls


def test_compare_resumed_after_ctrl_c_equals_uninterrupted(tmp_path, monkeypatch, capsys, no_figures):
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    assert main(["compare", *STUDY, "--out", str(straight)]) == 0

    # Ctrl-C in the second run (none/seed1), epoch 2, step 2 of 5: run 1 finished, run 2 checkpointed
    real_step = signal_at_step(monkeypatch, 10 + 7, signal.SIGINT)
    assert main(["compare", *STUDY, "--out", str(cut)]) == 130
    err = capsys.readouterr().err
    assert f"checkpoint in {cut / 'none' / 'seed1'}/last.pt" in err
    assert err.strip().splitlines()[-1].endswith("--out " + str(cut) + " --resume")
    assert not (cut / "summary.json").exists() and (cut / "none" / "seed0" / "eval.json").is_file()
    first_eval = (cut / "none" / "seed0" / "eval.json").stat().st_mtime_ns
    monkeypatch.setattr(train_mod, "train_step", real_step)

    calls = spy_train(monkeypatch)
    assert main(["compare", *STUDY, "--out", str(cut), "--resume"]) == 0
    # run 1 reused (not trained, not evaluated again), run 2 continued, runs 3-4 trained anew
    assert calls == [("none/seed1", True), ("l2/seed0", False), ("l2/seed1", False)]
    assert (cut / "none" / "seed0" / "eval.json").stat().st_mtime_ns == first_eval
    a = json.loads((straight / "summary.json").read_text())
    b = json.loads((cut / "summary.json").read_text())
    assert len(b["runs"]) == 4 and b["verdicts"]
    assert without_timing(b) == without_timing(a)  # every number, to the last digit

    # resuming a finished comparison trains nothing and writes the same summary again
    calls.clear()
    assert main(["compare", *STUDY, "--out", str(cut), "--resume"]) == 0
    assert calls == []
    assert without_timing(json.loads((cut / "summary.json").read_text())) == without_timing(a)


def test_compare_resume_refuses_other_settings_and_keeps_today_s_refusals(tmp_path, capsys, monkeypatch,
                                                                          no_figures):
    out = tmp_path / "c"
    one = [*TINY, "--epochs", "1", "--methods", "none", "--seeds", "1", "--out", str(out)]
    assert main(["compare", *one]) == 0
    summary = (out / "summary.json").read_bytes()
    capsys.readouterr()

    def error(argv):
        assert main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("otcpcc: error: ")
        return lines[0]

    msg = error(["compare", *one, "--epochs", "2", "--methods", "none,l2", "--lam", "0.5", "--resume"])
    assert "epochs (1 -> 2)" in msg and "lam (1.0 -> 0.5)" in msg
    assert "methods (['none'] -> ['none', 'l2'])" in msg
    costs = write_costs(tmp_path / "costs.csv", lambda i, j: int(i != j))
    assert "cost_matrix (tree distance -> " in error(["compare", *one, "--cost-matrix", str(costs),
                                                      "--resume"])
    assert "--resume" in error(["compare", *one])  # without --resume: refused as before, names it
    assert "not both" in error(["compare", *one, "--resume", "--force"])
    assert "nothing to resume" in error(["compare", *TINY, "--out", str(tmp_path / "new"), "--resume"])
    (tmp_path / "old" / "none").mkdir(parents=True)  # a comparison without study.json
    assert "holds no study.json" in error(["compare", *TINY, "--out", str(tmp_path / "old"), "--resume"])
    assert (out / "summary.json").read_bytes() == summary  # nothing was touched
    assert not (tmp_path / "new").exists()
    # --device / --workers may change, as for train --resume
    assert main(["compare", *one, "--workers", "0", "--resume"]) == 0


def test_pilot_loads_the_data_once_and_resumes(tmp_path, monkeypatch, capsys, no_figures):
    from otcpcc.runs import build

    real, loads = build._load_data, []
    monkeypatch.setattr(build, "_load_data", lambda cfg: loads.append(cfg.data) or real(cfg))
    costs = write_costs(tmp_path / "costs.csv", lambda i, j: abs(i - j))
    loads.clear()
    pilot = ["pilot", *TINY, "--epochs", "1", "--methods", "none,l2", "--seeds", "1",
             "--cost-matrix", str(costs)]
    calls = spy_train(monkeypatch)
    assert main([*pilot, "--out", str(tmp_path / "p")]) == 0
    runs = len(calls)
    # one load for the diagnosis and the cost-matrix check, then one per training run and one per
    # evaluation of a run (each loads its own)
    assert runs == 2 and len(loads) == 1 + 2 * runs, loads

    # interrupted after the diagnosis and the first run; resumed: same pilot.json, nothing redone
    stop = {"n": 0}
    real_tae = compare_mod._train_and_evaluate

    def ctrl_c_before_second(*a, **k):
        stop["n"] += 1
        if stop["n"] == 2:
            raise KeyboardInterrupt
        return real_tae(*a, **k)

    monkeypatch.setattr(compare_mod, "_train_and_evaluate", ctrl_c_before_second)
    assert main([*pilot, "--out", str(tmp_path / "q")]) == 130
    assert "--resume" in capsys.readouterr().err
    monkeypatch.setattr(compare_mod, "_train_and_evaluate", real_tae)
    calls.clear()
    loads.clear()
    assert main([*pilot, "--out", str(tmp_path / "q"), "--resume"]) == 0
    assert calls == [("l2/seed0", False)]
    assert len(loads) == 1 + 2  # the cost-matrix check (the diagnosis is reused) + one run
    a = json.loads((tmp_path / "p" / "pilot.json").read_text())
    b = json.loads((tmp_path / "q" / "pilot.json").read_text())
    assert b == a
    assert main([*pilot, "--seeds", "2", "--out", str(tmp_path / "q"), "--resume"]) == 2
    assert "seeds (1 -> 2)" in capsys.readouterr().err


def test_compare_resume_evaluates_again_a_run_evaluated_with_another_cost_matrix(tmp_path, monkeypatch,
                                                                                 capsys, no_figures):
    """A run's eval.json recomputed by hand with another --cost-matrix is not reused as it stands
    (its rows would mix costs): --resume evaluates that run again with the study's matrix."""
    out = tmp_path / "c"
    costs = write_costs(tmp_path / "costs.csv", lambda i, j: int(i != j))
    other = write_costs(tmp_path / "other.csv", lambda i, j: 5 * int(i != j))
    one = [*TINY, "--epochs", "1", "--methods", "none", "--seeds", "1", "--out", str(out),
           "--cost-matrix", str(costs)]
    assert main(["compare", *one]) == 0
    first = json.loads((out / "summary.json").read_text())["runs"][0]
    run = out / "none" / "seed0"
    assert main(["evaluate", str(run), "--cost-matrix", str(other)]) == 0
    by_hand = json.loads((run / "eval.json").read_text())
    assert by_hand["expected_cost"] == pytest.approx(5 * first["expected_cost"])  # 5 x the costs
    capsys.readouterr()
    calls = spy_train(monkeypatch)
    assert main(["compare", *one, "--resume"]) == 0
    assert calls == []  # evaluated again, not trained again
    again = json.loads((out / "summary.json").read_text())["runs"][0]
    assert again["expected_cost"] == pytest.approx(first["expected_cost"])
    assert json.loads((run / "eval.json").read_text())["cost_matrix"] == str(costs)
    # evaluated with the study's matrix: reused as it stands (not rewritten)
    stamp = (run / "eval.json").stat().st_mtime_ns
    assert main(["compare", *one, "--resume"]) == 0
    assert (run / "eval.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("cut", ["evaluated", "trained"])
def test_compare_resume_refuses_a_finished_run_trained_with_other_settings(tmp_path, monkeypatch, capsys,
                                                                           no_figures, cut):
    """A finished run whose config.json asks another lam (edited, or copied in from another
    study) used to be reused silently: its numbers would sit in the summary under the study's
    settings. Now one line names the run, the setting and the fix; nothing is rewritten."""
    out = tmp_path / "c"
    one = [*TINY, "--epochs", "1", "--methods", "l2", "--seeds", "1", "--out", str(out)]
    assert main(["compare", *one]) == 0
    run = out / "l2" / "seed0"
    assert main(["compare", *one, "--resume"]) == 0  # unchanged (arch "auto" resolved): reused
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**saved, "lam": 5.0}))
    if cut == "trained":
        (run / "eval.json").unlink()
    summary = (out / "summary.json").read_bytes()
    capsys.readouterr()
    assert main(["compare", *one, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("otcpcc: error:"), err
    assert "lam (5.0 -> 1.0)" in err and f"delete {run}" in err
    assert (out / "summary.json").read_bytes() == summary


def test_sweep_resumed_after_sigterm_equals_uninterrupted(tmp_path, monkeypatch, capsys):
    """A sweep stopped by SIGTERM in its second run says how to continue; --resume reuses the first
    run, continues the second from its checkpoint, trains the rest, and writes the same sweep.csv."""
    monkeypatch.setattr(compare_mod, "plot_sweep", lambda *a, **k: None)
    tiny = [a for a in TINY if a not in ("--batch-size", "16")]
    sweep = [*tiny, "--distance", "l2", "--lams", "0.5,1", "--batch-sizes", "16"]
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    assert main(["sweep", *sweep, "--out", str(straight)]) == 0

    real_step = signal_at_step(monkeypatch, 10 + 7, signal.SIGTERM)  # second run, epoch 2, step 2
    assert main(["sweep", *sweep, "--out", str(cut)]) == 143
    err = capsys.readouterr().err
    assert f"checkpoint in {cut / 'lam1_bs16'}/last.pt" in err
    assert err.strip().splitlines()[-1].endswith("--out " + str(cut) + " --resume")
    assert not (cut / "sweep.csv").exists()
    monkeypatch.setattr(train_mod, "train_step", real_step)

    calls = spy_train(monkeypatch)
    assert main(["sweep", *sweep, "--out", str(cut), "--resume"]) == 0
    assert calls == [("cut/lam1_bs16", True)]

    def rows(path):
        return [without_timing(r) for r in csv.DictReader(path.open())]
    assert len(rows(cut / "sweep.csv")) == 2
    assert rows(cut / "sweep.csv") == rows(straight / "sweep.csv")  # every number
    capsys.readouterr()
    assert main(["sweep", *[a if a != "0.5,1" else "0.5,2" for a in sweep], "--out", str(cut), "--resume"]) == 2
    assert "grid ([" in capsys.readouterr().err


def test_sweep_refuses_lambdas_that_share_a_run_directory_and_writes_its_csv_whole(tmp_path, monkeypatch, capsys):
    """Breaker findings: --lams 0.1234567,0.1234568 shared lam0.123457_bs<B> (one run overwrote the
    other); a stop while sweep.csv was rewritten left it with its header only."""
    one_line_error(capsys, main(["sweep", "--lams", "0.1234567,0.1234568", "--batch-sizes", "16",
                                 "--out", str(tmp_path / "s")]), "agree to 6 digits")
    assert not (tmp_path / "s").exists()
    path = tmp_path / "sweep.csv"
    compare_mod.write_csv([{"lam": 0.5, "fine_acc": 0.25}], path)
    before = path.read_text()

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare_mod.csv.DictWriter, "writerow", stop)
    with pytest.raises(KeyboardInterrupt):
        compare_mod.write_csv([{"lam": 1.0, "fine_acc": 0.5}], path)
    assert path.read_text() == before and before.splitlines()[1] == "0.5,0.25"


def test_a_corrupt_run_inside_a_study_names_the_fix_that_works_there(tmp_path, monkeypatch, capsys, no_figures):
    """Breaker finding: a run directory of an interrupted study with a corrupt checkpoint,
    config.json or a missing config.json gave train's own fix ("retrain, or restore the file",
    "check the --config path"); inside a study the fix is to delete that run and resume. It is
    named now, in one line, and doing it gives the uninterrupted study's numbers."""
    out = tmp_path / "c"
    one = [*TINY, "--epochs", "1", "--methods", "l2", "--seeds", "1", "--out", str(out)]
    assert main(["compare", *one]) == 0
    run = out / "l2" / "seed0"
    want = without_timing(json.loads((out / "summary.json").read_text())["runs"])
    breaks = {"checkpoint": lambda: ((run / "metrics.json").unlink(), (run / "eval.json").unlink(),
                                     (run / "last.pt").write_bytes(b"garbage")),
              "config syntax": lambda: (run / "config.json").write_text("{"),
              "config missing": lambda: (run / "config.json").unlink(),
              "config invalid": lambda: (run / "config.json").write_text('{"epochs": "two"}'),
              "cut, no config": lambda: [(run / n).unlink() for n in ("metrics.json", "eval.json",
                                                                       "config.json")],
              "a file there": lambda: (shutil.rmtree(run), run.write_text("x"))}
    for name, corrupt in breaks.items():
        corrupt()
        capsys.readouterr()
        one_line_error(capsys, main(["compare", *one, "--resume"]),
                       f"; delete {run} and rerun with --resume to train that run again (the study's "
                       "other runs are kept)")
        run.unlink() if run.is_file() else shutil.rmtree(run)
        assert main(["compare", *one, "--resume"]) == 0, name
        assert without_timing(json.loads((out / "summary.json").read_text())["runs"]) == want, name


def test_sweep_notes_the_config_keys_it_sets_itself_and_they_may_change_on_resume(tmp_path, monkeypatch, capsys):
    """Breaker finding: a --config file's lam and batch_size were silently unused by sweep (which
    trains its grid), yet study.json kept them, so editing lam in the file blocked --resume with
    "lam (5.0 -> 6.0)", a setting no run used. Now a note says they are not used, and --resume
    ignores them; the keys a study sets itself are those whose flags it refuses."""
    from otcpcc.cli.args import NOT_USED
    from otcpcc.study.resume import SET_BY_STUDY

    assert {c: set(v) for c, v in NOT_USED.items()} == {c: set(v) for c, v in SET_BY_STUDY.items()}
    monkeypatch.setattr(compare_mod, "plot_sweep", lambda *a, **k: None)
    cfg, out = tmp_path / "c.yaml", tmp_path / "s"
    cfg.write_text("lam: 5\nbatch_size: 32\n")
    tiny = [a for a in TINY if a not in ("--batch-size", "16", "--no-progress")]
    sweep = ["sweep", "--config", str(cfg), *tiny, "--epochs", "1", "--distance", "l2", "--lams", "0.5",
             "--batch-sizes", "16", "--out", str(out)]
    assert main(sweep) == 0
    assert (f"otcpcc: note: lam and batch_size in {cfg} are not used: sweep takes them from --lams and "
            "--batch-sizes (on the command line only)" in capsys.readouterr().err)
    row = next(csv.DictReader((out / "sweep.csv").open()))
    assert float(row["lam"]) == 0.5 and int(row["batch_size"]) == 16
    cfg.write_text("lam: 6\nbatch_size: 32\n")
    assert main([*sweep, "--resume"]) == 0
    run_cfg = str(out / "lam0.5_bs16" / "config.json")  # a run's own config.json: arch resolved from "auto"
    assert json.loads((out / "lam0.5_bs16" / "config.json").read_text())["arch"] != "auto"
    assert main([*[run_cfg if a == str(cfg) else a for a in sweep], "--resume"]) == 0
    cfg.write_text("lams: [1, 2]\n")  # the grid is given by flags only: named as such
    capsys.readouterr()
    one_line_error(capsys, main([*sweep, "--resume"]), f"'lams' in {cfg} is not a config key: sweep's --lams "
                   "is given on the command line only")
    cfg.write_text("lam: 6\nbatch_size: 32\n")
    capsys.readouterr()  # a setting the runs use: still refused
    one_line_error(capsys, main([*sweep[:-2], "--no-progress", "--epochs", "2", "--out", str(out), "--resume"]),
                   "epochs (1 -> 2)")


def test_a_study_resumed_with_its_data_moved_evaluates_and_plots_from_the_new_place(tmp_path, monkeypatch, capsys):
    """Breaker finding: --data-dir may change on --resume, but a finished run evaluated again and
    the report's figures loaded the data from the path saved in each run's config.json (here a
    relative path from another working directory): "--data-dir lv.npz does not exist", and the
    suggested fix (delete the run, resume) failed again in the figures."""
    import numpy as np

    rng = np.random.default_rng(0)
    (tmp_path / "npz").mkdir()
    y = np.arange(72) % 6
    np.savez(tmp_path / "npz" / "lv.npz", features=(rng.normal(size=(72, 4)) + y[:, None]).astype("float32"),
             labels=y, levels=np.array([[0, 0, 0, 1, 1, 1]]))
    study = ["compare", "--data", "features", "--methods", "none,l2", "--seeds", "1", "--epochs", "1",
             "--batch-size", "16", "--no-progress"]
    monkeypatch.chdir(tmp_path / "npz")
    assert main([*study, "--data-dir", "lv.npz", "--out", "../cm"]) == 0
    want = without_timing(json.loads((tmp_path / "cm" / "summary.json").read_text())["runs"])
    (tmp_path / "cm" / "l2" / "seed0" / "eval.json").unlink()
    monkeypatch.chdir(tmp_path)
    assert main([*study, "--data-dir", "npz/lv.npz", "--out", "cm", "--resume"]) == 0, capsys.readouterr().err
    got = without_timing(json.loads((tmp_path / "cm" / "summary.json").read_text())["runs"])
    assert got == want and (tmp_path / "cm" / "heatmaps.png").is_file()


def test_a_run_whose_checkpoint_broke_after_evaluation_is_left_out_of_the_figures(tmp_path, capsys):
    """Breaker finding: a finished run's eval.json is reused on --resume, but the report's figures
    load its model: a last.pt removed or corrupted since then ended the whole study with
    evaluate's advice. The run is now left out of those figures, with a note saying why."""
    out = tmp_path / "c"
    one = [*TINY, "--epochs", "1", "--methods", "none,l2", "--seeds", "1", "--out", str(out)]
    assert main(["compare", *one]) == 0
    (out / "l2" / "seed0" / "last.pt").write_bytes(b"garbage")
    assert main(["compare", *one, "--resume"]) == 0, capsys.readouterr().err
    report = (out / "report.md").read_text()
    assert (f"`l2` left out of the heatmaps, dendrogram and embedding figures: its run {out / 'l2' / 'seed0'} "
            "cannot be loaded (cannot read checkpoint") in report
