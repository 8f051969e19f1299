"""Regressions from trying the tool as a new user and from a fault campaign (issue 9, items 2-13):
defaults, flags and help of the CLI, errors that name flags, runs that are only written once every
setting is checked, a lock per run directory, exact resume with workers and augmentation,
non-finite losses, a full disk."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_errors import one_line_error
from fakes import write_cifar10, write_image_folder
from otcpcc.bench import speed
from otcpcc.cli import main
from otcpcc.runs import checkpoint as ckpt_mod
from otcpcc.runs.checkpoint import load_checkpoint
from otcpcc.runs.config import TrainConfig
from otcpcc.runs.lock import RunLock
from otcpcc.training import loop as train_mod
from otcpcc.training.optim import extension_note, lr_at

TINY = ["--data", "synthetic", "--data-opt", "train_per_class=12", "--data-opt",
        "test_per_class=6", "--data-opt", "branching=[2, 3]", "--model-opt", "hidden=[16]",
        "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--no-progress"]
TREE_EDGES = "animal mammal\nanimal fish\nmammal dog\nmammal cat\nfish trout\n"


def folder_data(root: Path) -> tuple[Path, Path]:
    write_image_folder(root / "data", ["cat", "dog", "trout"], train_per_class=2, val_per_class=1)
    tree = root / "tree.txt"
    tree.write_text(TREE_EDGES)
    return root / "data", tree


def folder_flags(data: Path, tree: Path) -> list[str]:
    return ["--data", "folder", "--data-dir", str(data), "--tree", str(tree), "--data-opt",
            "image_size=16", "--epochs", "1", "-b", "3", "--device", "cpu", "--no-progress"]


# ------------------------------------------------------------------ 2. train trains the method
def test_item02_train_defaults_to_fastft_with_lambda_1(tmp_path):
    from otcpcc.cli.commands import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(["train"]))
    assert (cfg.distance, cfg.lam) == ("fastft", 1.0)
    assert TrainConfig().distance == "fastft"
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["distance"] == "fastft" and metrics["lam"] == 1.0
    log = (out / "log.csv").read_text().splitlines()
    cpcc = log[1].split(",")[log[0].split(",").index("cpcc")]
    assert cpcc != ""  # the CPCC term was computed, not plain CE
    assert config_from_args(build_parser().parse_args(["train", "--distance", "none"])).distance \
        == "none"


# ------------------------------------------------------- 3. compare/sweep refuse unused flags
@pytest.mark.parametrize("argv, needle", [
    (["compare", "--distance", "emd"], "compare does not use --distance; pass --methods"),
    (["sweep", "--lam", "2"], "sweep does not use --lam; pass --lams"),
    (["sweep", "-b", "32"], "sweep does not use --batch-size; pass --batch-sizes"),
])
def test_item03_compare_and_sweep_refuse_flags_they_override(tmp_path, capsys, argv, needle,
                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = one_line_error(capsys, main(argv))
    assert needle in err
    assert not (tmp_path / "runs").exists()


def test_item03_sweep_help_agrees_with_its_distance_default(capsys):
    assert main(["sweep", "--help"]) == 0
    text = capsys.readouterr().out
    assert "fastft (fft, default)" in text and "(plain CE, default)" not in text
    assert not re.search(r"--lam\b(?!s)|--batch-size\b(?!s)", text)  # set by --lams/--batch-sizes


# ----------------------------------------------------- 4. resume with more epochs, said exactly
def test_item04_extending_a_cosine_run_says_what_the_schedule_does(tmp_path, capsys):
    cfg = TrainConfig(epochs=20, lr=0.1)
    note = extension_note(cfg, trained_for=15, done=15)
    # hand values: 0.05 * (1 + cos(pi * 14 / 15)) = 0.00109; 0.05 * (1 + cos(pi * 15 / 20))
    assert "epochs 16-20 follow the 20-epoch cosine schedule, starting at lr 0.0146" in note
    assert "(epoch 15 ran at 0.00109)" in note
    assert lr_at(cfg, 15) == pytest.approx(0.05 * (1 + np.cos(np.pi * 0.75)))
    assert extension_note(cfg.replace(schedule="step"), 15, 15) is None  # exact: no note
    assert extension_note(cfg, 20, 15) is None  # same length: nothing to say
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2"]) == 0
    err = capsys.readouterr().err
    assert "note: this run was scheduled for 1 epoch(s) and now runs 2: epoch 2 follows" in err


# ----------------------------------------------------------- 5. bench defaults, reference budget
def test_item05_bench_defaults_are_the_flags_of_the_readme_table():
    args = speed.build_parser().parse_args(["--batch-sizes", "256,1024"])
    assert (args.repeats, args.reference_repeats, args.warmup) == (31, 3, 3)


def test_item05_reference_estimate_ignores_first_call_costs(monkeypatch):
    """A fake baseline on a fake clock: 0.1 s extra the first time it runs, then 2 ms per class
    pair. The estimate for 100 classes must be 9.9 s (4950 pairs) at every batch size, whichever
    batch size comes first (without the untimed first call it was 1.76 s: the one-time cost
    made the small probe look slow, so the fitted per-pair cost came out 6x too low)."""
    clock = {"t": 0.0, "calls": 0}

    def reference_cpcc_loss(x, labels, tree_dist, distance, **options):
        k = len(torch.unique(labels))
        clock["t"] += (0.1 if clock["calls"] == 0 else 0.0) + 0.002 * k * (k - 1) / 2
        clock["calls"] += 1
        return (x * 0).sum()

    monkeypatch.setattr(speed.time, "perf_counter", lambda: clock["t"])
    fake = types.SimpleNamespace(reference_cpcc_loss=reference_cpcc_loss)
    for batch in (256, 1024):
        x, y, tree = speed.make_problem(batch, 100, 20, 8, seed=0, device=torch.device("cpu"),
                                        dtype=torch.float32)
        est = speed.estimate_reference_seconds(fake, x, y, tree.distance_matrix(), "l2", {})
        assert est == pytest.approx(0.002 * 4950, rel=1e-6), batch


def test_item05_reference_timing_stops_at_the_budget(monkeypatch):
    clock = {"t": 0.0, "calls": 0}

    def slow(x, y):
        clock["t"] += 50.0
        clock["calls"] += 1
        return (x * 0).sum()

    monkeypatch.setattr(speed.time, "perf_counter", lambda: clock["t"])
    x = torch.zeros(4, 2, requires_grad=True)
    ms, _, _ = speed.time_fwd_bwd(slow, x, torch.zeros(4), repeats=3, budget_s=60.0)
    assert clock["calls"] == 2 and ms == pytest.approx(50_000.0)


# ------------------------------------------------------------------------- 6. help is plain text
@pytest.mark.parametrize("command", ["", "train", "evaluate", "compare", "sweep", "diagnose",
                                     "bench"])
def test_item06_help_shows_no_restructuredtext(capsys, command):
    assert main([command, "--help"] if command else ["--help"]) == 0
    text = capsys.readouterr().out
    assert text.strip()
    assert "``" not in text and "::" not in text and ":class:" not in text


# -------------------------------------------------------------------- 7. errors name the flags
def test_item07_errors_name_the_flags_the_user_typed(tmp_path, capsys):
    err = one_line_error(capsys, main(["train", "--data", "cifar100", "--out",
                                       str(tmp_path / "a")]))
    assert "needs --data-dir" in err
    err = one_line_error(capsys, main(["train", "--data", "cifar10", "--data-dir",
                                       str(tmp_path / "nowhere"), "--out", str(tmp_path / "a")]))
    assert "--data-dir" in err and "does not exist" in err and "lacks" not in err
    (tmp_path / "imagenet").mkdir()
    err = one_line_error(capsys, main(["train", "--data", "breeds-living17", "--data-dir",
                                       str(tmp_path / "imagenet"), "--out", str(tmp_path / "a")]))
    assert "--hierarchy-dir" in err and "hierarchy_dir=..." not in err
    data, tree = folder_data(tmp_path)
    (data / "train" / "cat" / "cat_0.JPEG").write_bytes(b"not a jpeg")
    err = one_line_error(capsys, main(["train", *folder_flags(data, tree), "--out",
                                       str(tmp_path / "a")]))
    assert "--skip-bad-images" in err
    assert not (tmp_path / "a").exists()  # item 9: a failed first epoch leaves nothing


def test_item07_skipped_images_are_printed_and_recorded(tmp_path, capsys):
    data, tree = folder_data(tmp_path)
    (data / "train" / "cat" / "cat_0.JPEG").write_bytes(b"not a jpeg")
    (data / "val" / "dog" / "broken.JPEG").write_bytes(b"")
    out = tmp_path / "run"
    flags = [f for f in folder_flags(data, tree) if f != "--no-progress"]
    assert main(["train", *flags, "--skip-bad-images", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "skipped 2 undecodable image(s) (train 1, test 1)" in err
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert config["meta"]["skipped_images"] == {"train": 1, "test": 1}
    assert metrics["skipped_images"] == {"train": 1, "test": 1}


# ------------------------------------- 8. exact resume with workers and augmentation (CPU)
@pytest.mark.slow
def test_item08_mid_epoch_resume_with_a_worker_and_augmentation_is_exact(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "c10")
    flags = ["--data", "cifar10", "--data-dir", str(tmp_path / "c10"), "--arch", "cnn",
             "-b", "4", "--epochs", "2", "-j", "1", "--distance", "none", "--device", "cpu",
             "--no-progress"]  # 20 images, augmentation on: 5 steps per epoch
    assert main(["train", *flags, "--out", str(tmp_path / "straight")]) == 0

    real_step, calls = train_mod.train_step, {"n": 0}

    def step_then_ctrl_c(*a, **k):
        out = real_step(*a, **k)
        calls["n"] += 1
        if calls["n"] == 2:  # epoch 1, step 2 of 5
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(train_mod, "train_step", step_then_ctrl_c)
    assert main(["train", *flags, "--out", str(tmp_path / "cut")]) == 130
    state = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (state["epoch"], state["step"]) == (0, 2)
    monkeypatch.setattr(train_mod, "train_step", real_step)
    assert main(["train", "--out", str(tmp_path / "cut"), "--resume", "--no-progress"]) == 0
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "last.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_item08_augmentation_draws_depend_on_position_not_on_process_state():
    from otcpcc.training.control import SeededSamples, sample_seed

    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.rand(2), i

    data = SeededSamples(Noisy())
    s = sample_seed(0, 1, 0, 5)
    first = data[(2, s)][0]
    torch.rand(100)  # the caller's generator moves on
    before = torch.get_rng_state()
    assert torch.equal(data[(2, s)][0], first)
    assert torch.equal(torch.get_rng_state(), before)  # and is left as it was
    assert not torch.equal(data[(2, sample_seed(0, 1, 0, 6))][0], first)


# ------------------------------------------------------ 9. nothing written before validation
@pytest.mark.parametrize("flags, needle", [
    (["--arch", "bogus"], "bogus"),
    (["--model-opt", "foo=1"], "foo"),
    (["--model-opt", "hidden=abc"], "hidden"),
    (["--freeze", "*"], "no trainable parameters"),
    (["--train-only", "zzz"], "zzz"),
    (["--seed", "4611686018427387904"], "pass --seed between 0 and 4294967295"),
])
def test_item09_bad_settings_leave_no_run_behind(tmp_path, capsys, flags, needle):
    out = tmp_path / "run"
    err = one_line_error(capsys, main(["train", *TINY, "--out", str(out), *flags]))
    assert needle in err
    assert not out.exists()
    assert main(["train", *TINY, "--out", str(out)]) == 0  # the retry needs no --force


def test_item09_mlp_on_images_and_empty_feature_vectors_leave_no_run(tmp_path, capsys):
    write_cifar10(tmp_path / "c10")
    out = tmp_path / "run"
    code = main(["train", "--data", "cifar10", "--data-dir", str(tmp_path / "c10"), "--arch",
                 "mlp", "--epochs", "1", "--device", "cpu", "--no-progress", "--out", str(out)])
    one_line_error(capsys, code)
    assert not out.exists()
    npz = tmp_path / "f.npz"
    np.savez(npz, features=np.zeros((10, 0), np.float32), labels=np.arange(10) % 2)
    err = one_line_error(capsys, main(["train", "--data", "features", "--data-dir", str(npz),
                                       "--device", "cpu", "--no-progress", "--out", str(out)]))
    assert "d >= 1" in err and not out.exists()


def test_item09_failed_resume_keeps_config_json(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    config = (out / "config.json").read_bytes()
    raw = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(raw[: len(raw) // 2])
    err = one_line_error(capsys, main(["train", "--out", str(out), "--resume", "--epochs", "3",
                                       "--workers", "0"]))
    assert "cannot read checkpoint" in err
    assert (out / "config.json").read_bytes() == config


def test_item09_ctrl_c_before_the_first_step_leaves_no_run(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "train_one_epoch", interrupted)  # after config.json is written
    assert main(["train", *TINY, "--out", str(out)]) == 130
    assert not out.exists()
    monkeypatch.undo()
    assert main(["train", *TINY, "--out", str(out)]) == 0


def test_item09_compare_refuses_a_bad_cost_matrix_before_training(tmp_path, capsys, monkeypatch):
    from otcpcc.data import get_dataset

    neg = tmp_path / "neg.csv"
    names = list(get_dataset("synthetic", train_per_class=2, test_per_class=1,
                             branching=[2, 3]).tree.leaves)
    rows = ["," + ",".join(names)] + [n + "," + ",".join("-1" for _ in names) for n in names]
    neg.write_text("\n".join(rows) + "\n")
    monkeypatch.setattr(train_mod, "_train", lambda *a, **k: pytest.fail("trained"))
    code = main(["compare", *TINY, "--distances", "l2", "--seeds", "1", "--cost-matrix",
                 str(neg), "--out", str(tmp_path / "cmp")])
    assert "is -1; costs must be finite and >= 0" in one_line_error(capsys, code)
    assert not (tmp_path / "cmp").exists()


# --------------------------------------------------------------------- 10. one writer per run
def test_item10_a_second_writer_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    with RunLock(out):
        err = one_line_error(capsys, main(["train", *TINY, "--out", str(out)]))
        assert "being written by another otcpcc process" in err and f"pid {os.getpid()}" in err
        assert not (out / "config.json").exists()
    assert not (out / ".lock").exists()
    assert main(["train", *TINY, "--out", str(out)]) == 0
    assert not (out / ".lock").exists()


def test_item10_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    (out / ".lock").write_text(f"{dead.stdout.strip()} somehost\n")  # kill -9 left it behind
    assert main(["train", *TINY, "--out", str(out)]) == 0
    assert (out / "metrics.json").is_file() and not (out / ".lock").exists()


# ---------------------------------------------------------------------- 11. empty splits
def test_item11_empty_splits_are_refused_up_front(tmp_path, capsys, monkeypatch):
    data, tree = folder_data(tmp_path)
    for f in (data / "val").rglob("*.JPEG"):
        f.unlink()
    steps = []
    monkeypatch.setattr(train_mod, "train_one_epoch", lambda *a, **k: steps.append(1))
    out = tmp_path / "run"
    err = one_line_error(capsys, main(["train", *folder_flags(data, tree), "--out", str(out)]))
    assert "the test split of folder" in err and "is empty" in err
    assert not steps and not out.exists()
    npz = tmp_path / "f.npz"
    np.savez(npz, train_features=np.zeros((0, 3), np.float32), train_labels=np.zeros(0, int),
             test_features=np.ones((4, 3), np.float32), test_labels=np.arange(4) % 2)
    err = one_line_error(capsys, main(["train", "--data", "features", "--data-dir", str(npz),
                                       "--device", "cpu", "--no-progress", "--out", str(out)]))
    assert "empty" in err and not steps and not out.exists()


# ------------------------------------------------------------------ 12. non-finite loss
def test_item12_a_nan_loss_stops_at_its_step_and_keeps_the_last_finite_checkpoint(
        tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real_step, calls = train_mod.train_step, {"n": 0}

    def nan_in_epoch_2(*a, **k):
        stats = real_step(*a, **k)
        calls["n"] += 1
        if calls["n"] == 5 + 1:  # 72 samples, batch 16: 5 steps per epoch; epoch 2, step 1
            stats.loss = float("nan")
        return stats

    monkeypatch.setattr(train_mod, "train_step", nan_in_epoch_2)
    flags = [f if f != "1" else "3" for f in TINY]  # --epochs 3 (the only "1" in TINY)
    err = one_line_error(capsys, main(["train", *flags, "--out", str(out)]))
    assert "the loss became nan at epoch 2/3, step 1" in err
    assert "last.pt keeps the last finite state" in err
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values()
                                       if v.is_floating_point())
    # a huge learning rate: nan from the first epoch on, nothing kept
    err = one_line_error(capsys, main(["train", *TINY, "--distance", "none", "--lr", "1e10",
                                       "--out", str(tmp_path / "lr")]))
    assert "the loss became" in err and "nothing was kept" in err
    assert not (tmp_path / "lr").exists()


# ---------------------------------------------------------------------- 13. disk full
def test_item13_disk_full_during_a_checkpoint_leaves_no_partial_file(tmp_path, capsys,
                                                                     monkeypatch):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    before = (out / "last.pt").read_bytes()
    real_save = torch.save

    def disk_full(obj, f, *a, **k):
        real_save(obj, f, *a, **k)  # a partial file on disk ...
        raise OSError(errno.ENOSPC, "No space left on device")  # ... then the disk is full

    monkeypatch.setattr(ckpt_mod.torch, "save", disk_full)
    err = one_line_error(capsys, main(["train", "--out", str(out), "--resume", "--epochs", "2",
                                       "--no-progress"]))
    assert "No space left on device" in err and "cannot write checkpoint" in err
    assert not (out / "ckpt.tmp").exists()
    assert (out / "last.pt").read_bytes() == before
    monkeypatch.undo()
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 0


# ----------------------------------------------------------------------------- review findings
def test_compare_and_pilot_check_inputs_before_writing(tmp_path, capsys):
    """A bad CPCC target or seeds count: one line, exit 2, and no --out left behind (the retry needs
    no --force); --dist-opt applies to the methods whose distance takes it."""
    from otcpcc.runs.config import TrainConfig
    from otcpcc.study.compare import check_compare

    tiny = ["--data", "synthetic", "--data-opt", "train_per_class=6", "--data-opt", "test_per_class=3",
            "--epochs", "1", "--no-progress"]
    bad = tmp_path / "nan.csv"
    names = [f"c{i}.f{j}" for i in range(4) for j in range(5)]
    bad.write_text("," + ",".join(names) + "\n" + "".join(
        n + "," + ",".join("nan" for _ in names) + "\n" for n in names))
    out = tmp_path / "cmp"
    code = main(["compare", *tiny, "--methods", "none,l2", "--cpcc-target", str(bad), "--out", str(out)])
    assert code == 2 and not out.exists()
    assert "otcpcc: error:" in capsys.readouterr().err
    pilot_out = tmp_path / "pilot"
    assert main(["pilot", *tiny, "--seeds", "0", "--out", str(pilot_out)]) == 2
    assert not pilot_out.exists()
    cfg = TrainConfig.from_dict({"distance": "none", "distance_options": {"reg": 5.0}})
    _, configs = check_compare(cfg, ["none", "sk", "fastft"], 1)
    assert configs["sinkhorn"].distance_options == {"reg": 5.0} and configs["fastft"].distance_options == {}
    with pytest.raises(ValueError, match="apply to none of the methods"):
        check_compare(cfg, ["none", "fastft"], 1)
