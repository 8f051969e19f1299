"""`otcpcc` command line: flags, config files, one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cli_errors import one_line_error
from otcpcc.cli import commands as cli
from otcpcc.cli import main
from otcpcc.runs.config import TrainConfig

TINY = ["--data", "synthetic", "--data-opt", "train_per_class=12", "--data-opt",
        "test_per_class=6", "--data-opt", "branching=[2, 3]", "--model-opt", "hidden=[16]",
        "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--distance", "l2", "--out", str(out)]) == 0
    return out


def test_train_then_evaluate_from_the_command_line(tiny_run, capsys):
    assert json.loads((tiny_run / "config.json").read_text())["distance"] == "l2"
    assert main(["evaluate", str(tiny_run)]) == 0
    out = capsys.readouterr().out
    assert "test_cpcc_emd" in out and "eval.json" in out
    assert "fine_top1" in json.loads((tiny_run / "eval.json").read_text())


@pytest.mark.parametrize("flags, needle", [
    (["--distance", "wasserstein"], "unknown distance 'wasserstein'"),
    (["--lam", "-1"], "lambda must be >= 0"),
    (["--batch-size", "0"], "batch_size must be a positive integer"),
    (["--data", "imagenet"], "unknown dataset 'imagenet'"),
    (["--epochs", "x"], "invalid int value"),
    (["--data-opt", "colour=red"], "colour"),
    (["--distance", "fastft", "--dist-opt", "foo=1"], "'fastft' has no option 'foo'"),
    (["--distance", "l2", "--reg", "1"], "'l2' has no option 'reg'"),
    (["--distance", "fastft", "--dist-opt", "weights=bogus"], "unknown sample weighting 'bogus'"),
    (["--distance", "swd", "--n-projections", "0"], "n_projections must be an integer >= 1"),
    (["--distance", "l2", "--lam", "inf"], "lam must be a finite number"),
    (["--lr", "inf"], "lr must be a finite number"),
    (["--wd", "nan"], "wd must be a finite number"),
    (["--method", "focal"], "invalid choice: 'focal'"),
    (["--method", "hxe", "--alpha", "-1"], "alpha must be >= 0"),
    (["--method", "soft", "--beta", "0"], "beta must be > 0"),
])
def test_bad_values_give_one_line_and_status_2(tmp_path, capsys, flags, needle):
    code = main(["train", *TINY, "--out", str(tmp_path / "r"), *flags])
    assert needle in one_line_error(capsys, code)
    assert not (tmp_path / "r" / "config.json").exists()


def test_existing_run_needs_force_and_resume_needs_same_config(tiny_run, capsys):
    err = one_line_error(capsys, main(["train", *TINY, "--distance", "l2", "--out", str(tiny_run)]))
    assert "already holds a run" in err and "--force" in err
    code = main(["train", *TINY, "--distance", "fastft", "--out", str(tiny_run), "--resume"])
    err = one_line_error(capsys, code)
    assert "distance ('l2' -> 'fastft')" in err
    # the run's own settings are the base of a resume; more epochs extend it
    code = main(["train", "--out", str(tiny_run), "--resume", "--epochs", "2", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((tiny_run / "metrics.json").read_text())["epochs"] == 2


def test_evaluate_errors(tmp_path, tiny_run, capsys):
    err = one_line_error(capsys, main(["evaluate", str(tmp_path / "missing")]))
    assert "not found" in err
    bad = tmp_path / "cost.csv"
    bad.write_text("x,y\ny,0,1\n")
    err = one_line_error(capsys, main(["evaluate", str(tiny_run), "--cost-matrix", str(bad)]))
    assert "cost.csv" in err
    err = one_line_error(capsys, main(["evaluate", str(tiny_run), "--cost-matrix",
                                       str(tmp_path / "none.csv")]))
    assert "not found" in err


def test_config_file_then_flags(tmp_path, capsys):
    yml = tmp_path / "c.yaml"
    yml.write_text("data: synthetic\ndistance: none\nlam: 0.25\nepochs: 7\n"
                   "distance_options: {reg: 3}\n")  # (options are checked against a distance)
    args = cli.build_parser().parse_args(["train", "--config", str(yml), "--epochs", "2",
                                          "--reg", "5", "--n-projections", "4"])
    cfg = cli.config_from_args(args)
    assert (cfg.lam, cfg.epochs) == (0.25, 2)  # file value kept, flag wins
    assert cfg.distance_options == {"reg": 5.0, "n_projections": 4}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": "synthetic", "learning_rate": 0.1}))
    err = one_line_error(capsys, main(["train", "--config", str(bad), "--out", str(tmp_path)]))
    assert "unknown key 'learning_rate'" in err
    err = one_line_error(capsys, main(["train", "--config", str(tmp_path / "nope.yaml")]))
    assert "not found" in err


def test_run_config_json_round_trips_as_config(tiny_run):
    cfg = TrainConfig.from_file(tiny_run / "config.json")
    assert cfg.distance == "l2" and cfg.data_options["branching"] == [2, 3]


def test_interrupt_exits_130_with_one_line(monkeypatch, capsys, tmp_path):
    from otcpcc.training import TrainingInterrupted

    def interrupted(cfg, out, **kw):
        raise TrainingInterrupted(out)

    monkeypatch.setattr("otcpcc.training.train", interrupted)
    code = main(["train", *TINY, "--out", str(tmp_path / "r")])
    err = one_line_error(capsys, code, rc=130)
    assert "--resume" in err


def test_diagnose_prints_table_and_recommendation(capsys, tmp_path):
    code = main(["diagnose", "--data", "synthetic", "--data-opt", "train_per_class=30",
                 "--data-opt", "branching=[2, 3]", "--max-components", "2",
                 "--out", str(tmp_path / "d")])
    assert code == 0
    out = capsys.readouterr().out
    assert "mean components" in out and "recommend:" in out
    lines = out.strip().splitlines()
    assert len(lines) == 1 + 1 + 6 + 3  # title, header, 6 classes, mean, l2 vs emd, recommend
    assert all(ln.split()[-1] in ("1", "2") for ln in lines[2:8])
    saved = json.loads((tmp_path / "d" / "diagnose.json").read_text())
    for key in ("mean_components", "frac_multimodal", "rank_agreement_l2_emd", "cpcc_l2",
                "cpcc_emd", "recommend", "reasons"):
        assert key in saved
    assert saved["recommend"] in ("ot", "l2") and saved["reasons"]
    assert f"recommend: {saved['recommend']}" in out
    for name in ("diagnose.md", "diagnose.html", "diagnose.png"):
        assert (tmp_path / "d" / name).stat().st_size > 0
    assert "data:image/png;base64" in (tmp_path / "d" / "diagnose.html").read_text()


def test_diagnose_on_an_npz_of_features(capsys, tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 25)
    x = (rng.normal(size=(4, 8)) * 3)[y] + rng.normal(size=(100, 8))
    tree = json.dumps({"a": "p", "b": "p", "c": "q", "d": "q", "p": "r", "q": "r"})
    np.savez(tmp_path / "emb.npz", features=x.astype(np.float32), labels=y, tree_parents=tree)
    code = main(["diagnose", "--data", "features", "--data-dir", str(tmp_path / "emb.npz"),
                 "--json"])
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    assert res["mean_components"] == 1.0 and res["recommend"] == "l2"


def test_help_everywhere(capsys):
    for cmd in ([], ["train"], ["evaluate"], ["compare"], ["sweep"], ["diagnose"],
                ["pilot"]):
        assert main([*cmd, "--help"]) == 0
        assert "usage: otcpcc" in capsys.readouterr().out


def test_python_dash_m_otcpcc_help():
    res = subprocess.run([sys.executable, "-m", "otcpcc", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and "train" in res.stdout and "evaluate" in res.stdout


def test_compare_and_sweep_pass_their_settings_on(monkeypatch, tmp_path):
    calls = {}

    def fake_compare(cfg, distances, seeds, out, force=False, progress=True, cost_matrix=None,
                     resume=False):
        calls["compare"] = (cfg, distances, seeds, out, force, progress, cost_matrix)
        calls["resume"] = resume
        return out

    def fake_sweep(cfg, lams, batch_sizes, out, force=False, progress=True, resume=False):
        calls["sweep"] = (cfg, lams, batch_sizes, out, force, progress)
        return out

    monkeypatch.setattr("otcpcc.study.compare.run_compare", fake_compare)
    monkeypatch.setattr("otcpcc.study.compare.run_sweep", fake_sweep)
    assert main(["compare"]) == 0  # no flags: synthetic, none,hxe,soft,l2,fastft, runs/compare
    cfg, distances, seeds, out, force, progress, cost = calls["compare"]
    assert cfg.data == "synthetic" and seeds == 3
    assert distances == ["none", "hxe", "soft", "l2", "fastft"]
    assert str(out) == "runs/compare" and not force and progress and cost is None
    assert not calls["resume"] and main(["compare", "--resume"]) == 0 and calls["resume"]
    assert main(["compare", "--distances", "l2,emd", "--seeds", "2", "--lam", "0.5", "--out",
                 str(tmp_path), "--force", "--no-progress", "--epochs", "4"]) == 0
    cfg, distances, seeds, out, force, progress, _ = calls["compare"]
    assert (distances, seeds, out, force, progress) == (["l2", "emd"], 2, tmp_path, True, False)
    assert (cfg.lam, cfg.epochs) == (0.5, 4)
    assert main(["compare", "--methods", "none,hxe+fastft", "--alpha", "0.3", "--beta", "4",
                 "--no-progress"]) == 0
    cfg, methods, *_ = calls["compare"]
    assert methods == ["none", "hxe+fastft"] and (cfg.alpha, cfg.beta) == (0.3, 4.0)
    assert main(["compare", "--method", "hxe", "--no-progress"]) == 2  # methods go to --methods
    assert main(["sweep", "--lams", "0,1.5", "--batch-sizes", "32,64"]) == 0
    cfg, lams, sizes, out, _, _ = calls["sweep"]
    assert cfg.distance == "fastft" and lams == [0.0, 1.5] and sizes == [32, 64]
    assert str(out) == "runs/sweep"


def test_bench_gets_the_rest_of_the_command_line(monkeypatch):
    seen = {}

    def fake_bench(argv):
        seen["argv"] = argv
        return 0

    monkeypatch.setattr("otcpcc.bench.speed.main", fake_bench)
    assert main(["bench", "--classes", "10", "--device", "cpu"]) == 0
    assert seen["argv"] == ["--classes", "10", "--device", "cpu"]
    assert main(["bench"]) == 0 and seen["argv"] == []


def test_bad_distance_option_with_force_keeps_the_existing_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--distance", "l2", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code = main(["train", *TINY, "--distance", "fastft", "--dist-opt", "foo=1", "--force",
                 "--out", str(out)])
    assert "no option 'foo'" in one_line_error(capsys, code)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_tree_file_missing_a_class_names_the_file_and_the_classes(tmp_path, capsys):
    tree = tmp_path / "tree.txt"
    tree.write_text("root c0\nc0 c0.f0\nc0 c0.f1\nroot c1\nc1 c1.f0\n")  # c1.f1, c1.f2, c0.f2 missing
    code = main(["train", *TINY, "--tree", str(tree), "--out", str(tmp_path / "r")])
    err = one_line_error(capsys, code)
    assert "tree.txt" in err and "'c0.f2'" in err and "add them under their parents" in err
    assert not (tmp_path / "r" / "config.json").exists()


def test_swd_test_cpcc_is_reproducible(tmp_path):
    out = tmp_path / "swd"
    assert main(["train", *TINY, "--distance", "swd", "--out", str(out)]) == 0
    assert main(["evaluate", str(out)]) == 0
    first = json.loads((out / "eval.json").read_text())["test_cpcc_swd"]
    assert main(["evaluate", str(out)]) == 0
    assert json.loads((out / "eval.json").read_text())["test_cpcc_swd"] == first
    assert json.loads((out / "metrics.json").read_text())["test_cpcc"] == pytest.approx(first)
