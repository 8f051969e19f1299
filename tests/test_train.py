"""Training loop, checkpoints, exact resume, interruption, evaluation of a run."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import signal

import numpy as np
import pytest
import torch

from otcpcc.evaluation.evaluate import evaluate_run
from otcpcc.evaluation.inference import subsample_per_class
from otcpcc.runs.checkpoint import get_rng_state, load_checkpoint, set_rng_state
from otcpcc.runs.config import ConfigError, TrainConfig
from otcpcc.runs.log import LOG_COLUMNS
from otcpcc.runs.rundir import RunDirError
from otcpcc.training import TrainingInterrupted, train
from otcpcc.training import loop as train_mod
from otcpcc.training.control import ResumableSampler
from otcpcc.training.optim import lr_at
from otcpcc.tree import LabelTree

TINY_DATA = {"train_per_class": 12, "test_per_class": 6, "branching": [2, 3]}  # 6 classes


def tiny(**kw) -> TrainConfig:
    base = dict(data="synthetic", data_options=dict(TINY_DATA), epochs=2, batch_size=16,
                lr=0.05, model_options={"hidden": [32, 16]}, device="cpu")
    base.update(kw)
    return TrainConfig.from_dict(base)


def rows(run):
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def params(run):
    return load_checkpoint(run / "last.pt")["model"]


def same_run(a, b):
    """Identical logs (but wall time), metrics and parameters."""
    for ra, rb in zip(rows(a), rows(b), strict=True):
        for k in ("epoch", "loss", "ce", "cpcc", "train_acc", "test_acc", "lr"):
            assert ra[k] == rb[k], (k, ra[k], rb[k])
    ma = json.loads((a / "metrics.json").read_text())
    mb = json.loads((b / "metrics.json").read_text())
    for k in ("train_acc", "train_loss", "test_acc", "test_cpcc", "epochs"):
        assert ma[k] == mb[k], k
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k


# --------------------------------------------------------------------------- pure pieces
def test_lr_schedules_match_hand_values():
    c = tiny(epochs=10, lr=0.2, schedule="cosine")
    assert lr_at(c, 0) == pytest.approx(0.2)
    assert lr_at(c, 5) == pytest.approx(0.1)  # (1 + cos(pi/2)) / 2
    assert lr_at(c, 9) == pytest.approx(0.2 * (1 + math.cos(math.pi * 0.9)) / 2)
    s = tiny(epochs=10, lr=0.2, schedule="step", step_size=3, gamma=0.5)
    assert [lr_at(s, e) for e in (0, 2, 3, 6, 9)] == pytest.approx([0.2, 0.2, 0.1, 0.05, 0.025])
    w = tiny(epochs=10, lr=0.3, schedule="none", warmup_epochs=2)
    assert [lr_at(w, e) for e in (0, 1, 2, 9)] == pytest.approx([0.1, 0.2, 0.3, 0.3])
    wc = tiny(epochs=6, lr=1.0, schedule="cosine", warmup_epochs=2)
    assert lr_at(wc, 2) == pytest.approx(1.0) and lr_at(wc, 4) == pytest.approx(0.5)


def test_resumable_sampler_skips_a_prefix_of_the_epoch_order():
    from torch.utils.data import DistributedSampler

    data = list(range(50))
    s = ResumableSampler(DistributedSampler(data, num_replicas=1, rank=0, seed=7), seed=7)
    s.set_epoch(3)
    full = list(s)
    assert sorted(i for i, _ in full) == data
    assert len({seed for _, seed in full}) == 50  # one augmentation seed per position
    s.set_epoch(3, skip_samples=20)
    assert list(s) == full[20:] and len(s) == 30  # same indices and seeds after a skip
    s.set_epoch(4)
    assert [i for i, _ in s] != [i for i, _ in full]  # a new order every epoch


def test_subsample_per_class_caps_each_class_and_is_deterministic():
    y = np.repeat([0, 1, 2], [5, 300, 120])
    idx = subsample_per_class(y, 100, seed=3)
    assert np.bincount(y[idx]).tolist() == [5, 100, 100]
    assert np.array_equal(idx, subsample_per_class(y, 100, seed=3))
    assert np.all(np.diff(idx) > 0)


def test_rng_state_round_trips_through_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)  # noqa: NPY002
    random.seed(3)
    np.random.standard_normal()  # noqa: NPY002  (cache a gaussian in the numpy state)
    state = get_rng_state()
    torch.save(state, tmp_path / "s.pt")
    expected = (torch.rand(3), np.random.random(3), random.random())  # noqa: NPY002
    set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True))
    got = (torch.rand(3), np.random.random(3), random.random())  # noqa: NPY002
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1]) and expected[2] == got[2]


# --------------------------------------------------------------------------- training runs
@pytest.mark.parametrize("distance", ["none", "fastft"])
def test_train_writes_a_complete_run_directory(tmp_path, distance):
    run = train(tiny(distance=distance), tmp_path / "run", progress=False)
    for name in ("config.json", "tree.json", "log.csv", "last.pt", "metrics.json"):
        assert (run / name).is_file(), name
    assert not (run / "ckpt.tmp").exists()
    log = rows(run)
    assert [r["epoch"] for r in log] == ["1", "2"] and list(log[0]) == list(LOG_COLUMNS)
    assert (log[0]["cpcc"] == "") == (distance == "none")
    m = json.loads((run / "metrics.json").read_text())
    for key in ("train_acc", "test_acc", "test_cpcc", "test_cpcc_distance", "epoch_times",
                "samples_per_s", "world_size"):
        assert key in m, key
    assert m["world_size"] == 1 and len(m["epoch_times"]) == 2
    assert m["test_cpcc_distance"] == ("l2" if distance == "none" else "fastft")
    assert -1 <= m["test_cpcc"] <= 1 and 0 <= m["test_acc"] <= 1
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["arch"] == "mlp" and cfg["distance"] == distance  # resolved values
    assert set(cfg["meta"]["versions"]) == {"otcpcc", "torch", "numpy", "python"}
    assert "git_commit" in cfg["meta"]
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 0
    tree = LabelTree.from_file(run / "tree.json")
    assert tree.num_classes == 6


def test_hxe_with_alpha_0_trains_exactly_like_cross_entropy(tmp_path):
    from otcpcc.objectives import HXELoss, SoftLabelLoss
    from otcpcc.training.optim import make_task_loss

    ce = train(tiny(epochs=1), tmp_path / "ce", progress=False)
    hxe0 = train(tiny(epochs=1, method="hxe", alpha=0.0), tmp_path / "hxe0", progress=False)
    a, b = rows(ce)[0], rows(hxe0)[0]
    assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=1e-5)
    assert float(b["train_acc"]) == float(a["train_acc"])
    wa = torch.load(ce / "last.pt", weights_only=True)["model"]
    wb = torch.load(hxe0 / "last.pt", weights_only=True)["model"]
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-6)
    tree = LabelTree.from_file(ce / "tree.json")
    assert isinstance(make_task_loss(tiny(method="hxe", alpha=0.3), tree), HXELoss)
    assert make_task_loss(tiny(method="soft", beta=4), tree).beta == 4.0
    assert isinstance(make_task_loss(tiny(method="soft"), tree), SoftLabelLoss)
    # hxe + CPCC: the loss column is the task loss plus lam * (1 - CPCC)
    both = train(tiny(epochs=1, method="hxe", distance="fastft", lam=2.0), tmp_path / "both",
                 progress=False)
    r = rows(both)[0]
    assert json.loads((both / "config.json").read_text())["method"] == "hxe"
    assert float(r["loss"]) > float(r["ce"])  # the CPCC term is added (batch-weighted means)
    # alpha > 0 really trains on HXE: its first-epoch loss is below CE's (weights e^{-alpha d} < 1)
    hxe = train(tiny(epochs=1, method="hxe", alpha=1.0), tmp_path / "hxe1", progress=False)
    assert float(rows(hxe)[0]["ce"]) < 0.8 * float(a["ce"])


def test_test_accuracy_in_metrics_matches_a_forward_pass(tmp_path):
    from otcpcc.evaluation.evaluate import load_run

    run = train(tiny(), tmp_path / "run", progress=False)
    loaded = load_run(run)
    x = torch.stack([loaded.bundle.test[i][0] for i in range(len(loaded.bundle.test))])
    y = torch.tensor([int(loaded.bundle.test[i][1]) for i in range(len(loaded.bundle.test))])
    with torch.no_grad():
        _, logits = loaded.model(x)
    acc = float((logits.argmax(1) == y).float().mean())
    assert json.loads((run / "metrics.json").read_text())["test_acc"] == pytest.approx(acc)


@pytest.mark.slow
def test_resume_to_more_epochs_equals_the_straight_run(tmp_path):
    # swd draws random projections from the global torch RNG: exactness needs the RNG restored
    cfg = tiny(distance="swd", schedule="step", step_size=2, gamma=0.5, epochs=3)
    straight = train(cfg, tmp_path / "straight", progress=False)
    part = train(cfg.replace(epochs=2), tmp_path / "part", progress=False)
    train(cfg, part, resume=True, progress=False)
    same_run(straight, part)


@pytest.mark.slow
def test_interrupt_mid_epoch_then_resume_is_exact(tmp_path, monkeypatch):
    cfg = tiny(distance="swd", epochs=3)  # cosine over 3 epochs, 5 steps per epoch
    straight = train(cfg, tmp_path / "straight", progress=False)

    real_step, calls = train_mod.train_step, {"n": 0}

    def step_then_ctrl_c(*a, **k):
        out = real_step(*a, **k)
        calls["n"] += 1
        if calls["n"] == 7:  # epoch 2, step 2 of 5
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(train_mod, "train_step", step_then_ctrl_c)
    with pytest.raises(TrainingInterrupted):
        train(cfg, tmp_path / "cut", progress=False)
    assert calls["n"] == 7  # stopped right after the step that saw Ctrl-C
    ckpt = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 2)
    assert len(rows(tmp_path / "cut")) == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    monkeypatch.setattr(train_mod, "train_step", real_step)
    train(cfg, tmp_path / "cut", resume=True, progress=False)
    same_run(straight, tmp_path / "cut")


def test_existing_run_is_never_overwritten_silently(tmp_path):
    run = train(tiny(epochs=1), tmp_path / "run", progress=False)
    with pytest.raises(RunDirError, match="--force"):
        train(tiny(epochs=1), run, progress=False)
    (run / "eval.json").write_text("{}")
    (run / "notes.txt").write_text("mine")
    train(tiny(epochs=1, seed=1), run, force=True, progress=False)
    assert not (run / "eval.json").exists()  # stale results of the old run removed
    assert (run / "notes.txt").read_text() == "mine"  # nothing else touched
    assert json.loads((run / "config.json").read_text())["seed"] == 1


def test_resume_errors_name_the_problem(tmp_path):
    with pytest.raises(RunDirError, match="nothing to resume"):
        train(tiny(), tmp_path / "none", resume=True, progress=False)
    run = train(tiny(epochs=1), tmp_path / "run", progress=False)
    with pytest.raises(RunDirError, match=r"lam \(1.0 -> 0.5\)"):
        train(tiny(epochs=2, lam=0.5), run, resume=True, progress=False)
    with pytest.raises(RunDirError, match="either --resume"):
        train(tiny(), run, resume=True, force=True, progress=False)


def test_bad_config_values_raise_config_error():
    for kw, pattern in (({"distance": "wasserstein"}, "unknown distance"),
                        ({"lam": -1}, "lambda must be >= 0"),
                        ({"batch_size": 0}, "batch_size must be a positive"),
                        ({"data": "cifar11"}, "did you mean 'cifar10'"),
                        ({"optimizer": "lbfgs"}, "unknown optimizer"),
                        ({"device": "tpu"}, "unknown device"),
                        ({"epocs": 3}, "did you mean 'epochs'"),
                        ({"method": "focal"}, "unknown method 'focal'"),
                        ({"method": "hxe", "alpha": -0.5}, "alpha must be >= 0"),
                        ({"method": "soft", "beta": 0}, "beta must be > 0")):
        with pytest.raises(ConfigError, match=pattern):
            TrainConfig.from_dict({**kw})


# --------------------------------------------------------------------------- evaluation
def test_evaluate_run_writes_every_metric(tmp_path):
    run = train(tiny(distance="fastft", epochs=1), tmp_path / "run", progress=False)
    res = evaluate_run(run)
    saved = json.loads((run / "eval.json").read_text())
    levels = [lv.name for lv in LabelTree.from_file(run / "tree.json").levels]
    assert levels
    for key in ("fine_acc", "fine_top1", "fine_top2", *(f"{lv}_acc" for lv in levels),
                "map_fine", *(f"map_{lv}" for lv in levels), "mistake_severity", "hier_dist@1",
                "hier_dist@5", "expected_cost",
                "test_cpcc_l2", "test_cpcc_emd", "test_cpcc_fastft", "test_cpcc",
                "multimodality", "cpcc_subsample"):
        assert key in saved, key
    assert res["test_cpcc"] == res["test_cpcc_fastft"]  # the run's own distance is fastft
    # TestCPCC(fastft) and TestCPCC(l2) against the per-pair reference loop on the same test features
    from otcpcc.bench.reference import reference_cpcc_loss
    from otcpcc.evaluation.evaluate import load_run
    from otcpcc.evaluation.inference import predict

    loaded = load_run(run)
    out = predict(loaded.model, loaded.bundle.test, loaded.env, loaded.cfg)
    feats, labels = out["features"].double(), out["labels"]
    tree_d = loaded.tree.distance_matrix()
    for name in ("fastft", "l2"):
        want = 1.0 - float(reference_cpcc_loss(feats, labels, tree_d, name))
        assert res[f"test_cpcc_{name}"] == pytest.approx(want, abs=1e-5), name
    assert res["cost_matrix"] == "tree distance"
    assert {"mean_components", "recommendation", "per_class"} <= set(saved["multimodality"])
    # hier_dist@1 is the mean tree distance of top-1 predictions = severity * error rate
    err = 1 - res["fine_top1"]
    assert res["hier_dist@1"] == pytest.approx(res["mistake_severity"] * err if err else 0)
    m = json.loads((run / "metrics.json").read_text())
    assert res["fine_top1"] == pytest.approx(m["test_acc"])
    assert res["test_cpcc_fastft"] == pytest.approx(m["test_cpcc"])


def test_evaluate_with_a_cost_matrix_csv(tmp_path):
    from otcpcc.evaluation.evaluate import load_run

    run = train(tiny(epochs=1), tmp_path / "run", progress=False)
    names = LabelTree.from_file(run / "tree.json").leaves
    path = tmp_path / "cost.csv"
    lines = ["," + ",".join(reversed(names))]  # columns in another order than the classes
    for i, n in enumerate(names):
        lines.append(n + "," + ",".join("0" if m == n else str(i + 1) for m in reversed(names)))
    path.write_text("\n".join(lines) + "\n")
    res = evaluate_run(run, cost_matrix=str(path))
    # oracle: cost of row i is (i + 1) off the diagonal -> E = mean (i + 1) * (1 - p_true)
    loaded = load_run(run)
    data = loaded.bundle.test
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor([int(data[i][1]) for i in range(len(data))])
    with torch.no_grad():
        p = torch.softmax(loaded.model(x)[1].double(), 1)
    expected = float(((y + 1).double() * (1 - p[torch.arange(len(y)), y])).mean())
    assert res["expected_cost"] == pytest.approx(expected, rel=1e-5)
    assert res["cost_matrix"] == str(path)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\nx,1,2\n")
    with pytest.raises(ValueError):
        evaluate_run(run, cost_matrix=str(bad))


def test_evaluate_refuses_missing_or_foreign_directories(tmp_path):
    with pytest.raises(RunDirError, match="not found"):
        evaluate_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="no config.json"):
        evaluate_run(tmp_path / "empty")


# --------------------------------------------------------------------------- subpopulation shift
def _toy_shift(data_dir=None, seed=0, **options):
    """Synthetic 2 x 4 tree; fine classes 0,1 (and 4,5) are source, 2,3 (and 6,7) target."""
    from torch.utils.data import TensorDataset

    from otcpcc.data import DataBundle
    from otcpcc.data.synthetic import load_synthetic

    b = load_synthetic(seed=seed, branching=[2, 4], train_per_class=12, test_per_class=6)

    def part(ds, keep):
        x, y = ds.tensors
        m = torch.isin(y, torch.tensor(keep))
        return TensorDataset(x[m], y[m])

    src, tgt = [0, 1, 4, 5], [2, 3, 6, 7]
    return DataBundle("toy-shift", part(b.train, src), part(b.test, src), b.tree, b.input_shape,
                      extra={"target_train": part(b.train, tgt), "target_test": part(b.test, tgt)})


def test_evaluate_adds_zero_shot_one_shot_and_cross_retrieval_on_target_splits(tmp_path,
                                                                               monkeypatch):
    import otcpcc.data
    from otcpcc.evaluation.evaluate import load_run

    monkeypatch.setitem(otcpcc.data.DATASETS, "toy-shift", "otcpcc.data.synthetic:load_synthetic")
    monkeypatch.setattr(otcpcc.data, "get_dataset", lambda name, **kw: _toy_shift(**kw))
    run = train(tiny(data="toy-shift", data_options={}, epochs=2), tmp_path / "run", progress=False)
    res = evaluate_run(run)["target"]
    tree = LabelTree.from_file(run / "tree.json")
    coarse = tree.levels[-1]
    assert coarse.ids[[0, 1, 2, 3]].tolist() == [coarse.ids[0]] * 4  # targets share coarse nodes

    loaded = load_run(run)
    x, y = loaded.bundle.extra["target_test"].tensors
    with torch.no_grad():
        p = torch.softmax(loaded.model(x)[1].double(), 1).numpy()
    p[:, [2, 3, 6, 7]] = 0  # only source classes were trained
    q = np.stack([p[:, coarse.ids == c].sum(1) for c in range(len(coarse.names))], 1)
    expected = float(np.mean(q.argmax(1) == coarse.ids[y.numpy()]))
    assert res[f"zero_shot_{coarse.name}_acc"] == pytest.approx(expected)
    assert res["num_target_classes"] == 4 and len(res["one_shot_samples"]) == 4
    assert 0 <= res["one_shot_fine_acc"] <= 1
    assert f"map_{coarse.name}" in res and "map_fine" not in res
    _, ty = loaded.bundle.extra["target_train"].tensors
    assert sorted(ty[res["one_shot_samples"]].tolist()) == [2, 3, 6, 7]  # one shot per class


def test_a_step_whose_features_diverge_is_a_non_finite_step_not_a_bad_input_error():
    """A model that overflows (features NaN/inf) made CPCCLoss raise its bad-input ValueError,
    which stopped a whole compare; the step now reports a NaN loss, which the loop turns into
    NonFiniteLoss (a note inside compare). Finite bad input still raises."""
    from otcpcc import CPCCLoss, LabelTree
    from otcpcc.training.step import train_step

    tree = LabelTree.from_parents({"a": "P", "b": "P", "c": "Q", "d": "Q", "P": "R", "Q": "R"})

    class Blowup(torch.nn.Module):
        def __init__(self, scale: float):
            super().__init__()
            self.lin, self.scale = torch.nn.Linear(3, 4), scale

        def forward(self, x):
            f = self.lin(x) * self.scale
            return f, f

    cfg = TrainConfig.from_dict(dict(data="synthetic", lam=1.0, device="cpu"))
    x, y = torch.randn(8, 3), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    model = Blowup(float("inf"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = train_step(model, CPCCLoss(tree), opt, x, y, cfg, torch.device("cpu"), False)
    assert math.isnan(stats.loss) and stats.n == 8
    model = Blowup(1.0)
    three = LabelTree.from_parents({"a": "P", "b": "P", "c": "R", "P": "R"})  # label 3 is no leaf
    with pytest.raises(ValueError, match="not a leaf id"):
        train_step(model, CPCCLoss(three), torch.optim.SGD(model.parameters(), lr=0.1), x, y,
                   cfg, torch.device("cpu"), False)
