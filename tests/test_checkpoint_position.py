"""What a mid-epoch checkpoint holds, said as such: ``evaluate``'s messages and ``eval.json``'s
``step`` after a SIGTERM inside epoch 1, the stop notice naming the signal that came, and a
``log.csv`` (header only) in a run stopped before its first epoch ended."""

from __future__ import annotations

import csv
import json
import os
import signal

from otcpcc.cli import main
from otcpcc.runs.checkpoint import load_checkpoint
from otcpcc.runs.log import LOG_COLUMNS
from otcpcc.training import loop

# 72 training samples, batches of 16: 5 steps an epoch
TINY = ["--data", "synthetic", "--data-opt", "train_per_class=12", "--data-opt",
        "test_per_class=6", "--data-opt", "branching=[2, 3]", "--model-opt", "hidden=[16]",
        "--epochs", "2", "--batch-size", "16", "--device", "cpu", "--no-progress"]


def test_a_mid_epoch_checkpoint_is_named_with_its_steps(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real, n = loop.train_step, [0]

    def step_then_sigterm(*a, **k):
        res = real(*a, **k)
        n[0] += 1
        if n[0] == 3:  # epoch 1, step 3 of 5
            os.kill(os.getpid(), signal.SIGTERM)
        return res

    monkeypatch.setattr(loop, "train_step", step_then_sigterm)
    assert main(["train", *TINY, "--out", str(out)]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert ("otcpcc: stopped by SIGTERM: finishing this step and saving a checkpoint (SIGTERM "
            "again, or Ctrl-C, to abort)") in err, err
    assert "Ctrl-C again" not in err
    ckpt = load_checkpoint(out / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (0, 3)
    with open(out / "log.csv", newline="") as f:  # there from the start: header, no rows yet
        assert list(csv.reader(f)) == [list(LOG_COLUMNS)]

    assert main(["evaluate", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "its last.pt holds epoch 0 of 2 plus 3 steps of epoch 1:" in err, err
    assert "--partial to evaluate its checkpoint of epoch 0 plus 3 steps of epoch 1 anyway" in err
    assert main(["evaluate", str(out), "--partial"]) == 0
    err = capsys.readouterr().err
    assert "these are the figures of its checkpoint of epoch 0 plus 3 steps of epoch 1" in err, err
    saved = json.loads((out / "eval.json").read_text())
    assert (saved["epoch"], saved["step"], saved["partial"]) == (0, 3, True)

    monkeypatch.setattr(loop, "train_step", real)
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    with open(out / "log.csv", newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
    assert main(["evaluate", str(out)]) == 0
    saved = json.loads((out / "eval.json").read_text())
    assert (saved["epoch"], saved["step"], saved["partial"]) == (2, 0, False)  # an epoch boundary
