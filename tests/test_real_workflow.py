"""End to end on tiny files in each real layout: `otcpcc train` + `otcpcc evaluate` on CIFAR-100
pickles, an image folder with a tree file and a BREEDS living17 ImageNet folder; one train step
and an evaluate for every backbone; `--weights` from a torchvision state dict (with frozen
BatchNorm statistics); `--preset paper`.

Oracles: the published CIFAR-100 superclass table and BREEDS-format hierarchy files (coarse and
zero-shot accuracies recomputed from the model's outputs), the weights file itself (a frozen
backbone must come out bit-identical, running statistics included), the reference code's
pre.json values (preset).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml

from cli_errors import one_line_error
from fakes import C100_F2C, write_breeds_hierarchy, write_cifar100, write_image_folder
from otcpcc.cli import main
from otcpcc.data import DATASETS
from otcpcc.data.breeds import BREEDS_SETTINGS, BreedsHierarchy, breeds_split
from otcpcc.evaluation.evaluate import evaluate_run, load_run
from otcpcc.evaluation.inference import predict
from otcpcc.runs.config import PRESETS, ConfigError, TrainConfig, preset_values
from otcpcc.training import train

RUN = ["--device", "cpu", "--no-progress"]
TINY_VIT = {"num_layers": 1, "hidden_dim": 32, "mlp_dim": 64, "num_heads": 2}
FOLDER_CLASSES = ["cat", "dog", "trout"]
TREE_EDGES = "animal mammal\nanimal fish\nmammal dog\nmammal cat\nmammal cow\nfish trout\n"


def expected_eval(run: Path) -> dict:
    """Independent recomputation of a run's fine top-1, mistake severity and TestCPCC(l2): the model's
    test predictions, brute-force tree path lengths (tree.json) and scipy's pearsonr on class means."""
    from itertools import combinations

    from scipy.stats import pearsonr

    loaded = load_run(run)
    out = predict(loaded.model, loaded.bundle.test, loaded.env, loaded.cfg)
    pred, y = out["logits"].argmax(1).numpy(), out["labels"].numpy()
    tree = loaded.tree

    def path_length(i: int, j: int) -> float:
        up_i = [tree.leaves[i], *tree.ancestors(tree.leaves[i])]
        up_j = [tree.leaves[j], *tree.ancestors(tree.leaves[j])]
        lca = next(n for n in up_i if n in up_j)
        return float(up_i.index(lca) + up_j.index(lca))  # unit weights

    wrong = pred != y
    sev = float(np.mean([path_length(t, q) for t, q in zip(y[wrong], pred[wrong], strict=True)])) \
        if wrong.any() else math.nan
    f = out["features"].double().numpy()
    present = np.unique(y)
    means = {c: f[y == c].mean(0) for c in present}
    pairs = list(combinations(present, 2))
    rho = [np.linalg.norm(means[a] - means[b]) for a, b in pairs]
    tdist = [path_length(a, b) for a, b in pairs]
    # class distances equal up to float32 rounding carry no signal: TestCPCC is then undefined (0.0)
    spread = float(np.std(rho) / np.max(rho)) if rho else 0.0
    cp = float(pearsonr(tdist, rho)[0]) if len(pairs) > 2 and spread > 1e-5 else 0.0
    return {"fine_top1": float(np.mean(pred == y)), "mistake_severity": sev, "test_cpcc_l2": cp}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def cifar100_dir(tmp_path_factory) -> Path:
    """100 train images (one per class), 20 test images (fine ids 0, 5, ..., 95)."""
    root = tmp_path_factory.mktemp("c100")
    write_cifar100(root, train_per_class=1, test_fine=range(0, 100, 5))
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, Path]:
    """An image folder (3 classes x 2 train / 1 val images) and an edges tree file."""
    root = tmp_path_factory.mktemp("folder")
    write_image_folder(root / "data", FOLDER_CLASSES, train_per_class=2, val_per_class=1)
    tree = root / "tree.txt"
    tree.write_text(TREE_EDGES)
    return root / "data", tree


# ----------------------------------------------------------------------------- (a) CIFAR-100


@pytest.mark.slow
def test_cifar100_pickles_train_and_evaluate(cifar100_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--data", "cifar100", "--data-dir", str(cifar100_dir), "--arch",
                 "resnet18", "--model-opt", "stem=imagenet", "--epochs", "1", "-b", "20",
                 "--distance", "fastft", *RUN, "--out", str(out)])
    assert code == 0
    metrics = read_json(out / "metrics.json")
    assert (metrics["num_classes"], metrics["num_train"], metrics["num_test"]) == (100, 100, 20)
    assert metrics["feature_dim"] == 512 and metrics["arch"] == "resnet18"
    assert main(["evaluate", str(out)]) == 0
    assert "coarse_acc" in capsys.readouterr().out
    res = read_json(out / "eval.json")
    for key in ("fine_top1", "fine_top2", "coarse_acc", "map_fine", "map_coarse",
                "test_cpcc_l2", "test_cpcc_emd", "test_cpcc_fastft", "mistake_severity"):
        assert key in res, key
    # oracle: coarse accuracy from the model's test outputs and the published superclass table
    run = load_run(out)
    pred = predict(run.model, run.bundle.test, run.env, run.cfg)
    probs = torch.softmax(pred["logits"].double(), dim=1).numpy()
    labels = pred["labels"].numpy()
    coarse_probs = np.stack([probs[:, C100_F2C == c].sum(axis=1) for c in range(20)], axis=1)
    assert res["coarse_acc"] == pytest.approx(
        np.mean(coarse_probs.argmax(axis=1) == C100_F2C[labels]))
    assert res["fine_top1"] == pytest.approx(np.mean(probs.argmax(axis=1) == labels))


# ----------------------------------------------------------------------------- (b) folder + tree


@pytest.mark.slow
def test_image_folder_with_tree_file_train_and_evaluate(folder, tmp_path, capsys):
    data, tree = folder
    out = tmp_path / "run"
    code = main(["train", "--data", "folder", "--data-dir", str(data), "--tree", str(tree),
                 "--data-opt", "image_size=32", "--epochs", "1", "-b", "3", "--distance", "l2",
                 *RUN, "--out", str(out)])
    assert code == 0
    saved = read_json(out / "tree.json")
    assert "cow" not in json.dumps(saved)  # the tree is restricted to the classes with data
    assert main(["evaluate", str(out), "--json"]) == 0
    res = read_json(out / "eval.json")
    assert res["num_classes"] == 3 and res["n"] == 3
    assert {"depth1_acc", "map_depth1", "fine_top1"} <= set(res)
    # every mistake costs a tree path length: 2 (cat <-> dog) or 4 (mammal <-> fish)
    want = expected_eval(out)
    assert res["fine_top1"] == pytest.approx(want["fine_top1"])
    assert res["mistake_severity"] == pytest.approx(want["mistake_severity"], nan_ok=True)
    # a class folder that is not a leaf of the tree: one line naming it, exit status 2
    bad = tmp_path / "bad"
    write_image_folder(bad, [*FOLDER_CLASSES, "zebra"], train_per_class=1, val_per_class=1)
    code = main(["train", "--data", "folder", "--data-dir", str(bad), "--tree", str(tree),
                 *RUN, "--out", str(tmp_path / "bad_run")])
    assert "zebra" in one_line_error(capsys, code)


# ----------------------------------------------------------------------------- (c) BREEDS


@pytest.mark.slow
def test_breeds_living17_train_and_evaluate_with_target_tasks(tmp_path, capsys):
    BREEDS_DIR = write_breeds_hierarchy(tmp_path / "hier")  # noqa: N806
    h = BreedsHierarchy(BREEDS_DIR)
    level, ancestor, n_sub, _ = BREEDS_SETTINGS["living17"]
    supers, src, tgt = breeds_split(h, level, ancestor, n_sub)
    wnids = [w for group in src + tgt for w in group]
    write_image_folder(tmp_path / "imagenet", wnids, train_per_class=1, val_per_class=1, size=8)
    out = tmp_path / "run"
    code = main(["train", "--data", "breeds-living17", "--data-dir", str(tmp_path / "imagenet"),
                 "--hierarchy-dir", str(BREEDS_DIR), "--data-opt", "image_size=16",
                 "--epochs", "1", "-b", "34", "--distance", "fastft", *RUN, "--out", str(out)])
    assert code == 0
    assert main(["evaluate", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "target.zero_shot_superclass_acc" in printed and "target.one_shot_fine_acc" in printed
    res = read_json(out / "eval.json")
    assert res["num_classes"] == 68 and res["n"] == 34  # source classes in the source test
    target = res["target"]
    assert target["n"] == 34 and target["num_target_classes"] == 34
    assert len(target["one_shot_samples"]) == 34
    for key in ("zero_shot_superclass_acc", "one_shot_fine_acc", "map_superclass"):
        assert 0.0 <= target[key] <= 1.0, key
    # oracle: zero-shot superclass accuracy from the model's target-test outputs, with the
    # superclass of every wnid read from the hierarchy files (not from the loader's tree)
    run = load_run(out)
    leaves = list(run.tree.leaves)
    super_of = np.array([next(i for i, s in enumerate(supers) if w in h.leaves_below(s))
                         for w in leaves])
    pred = predict(run.model, run.bundle.extra["target_test"], run.env, run.cfg)
    probs = torch.softmax(pred["logits"].double(), dim=1).numpy()
    source = np.array([leaves.index(w) for group in src for w in group])
    coarse = np.stack([probs[:, source[super_of[source] == s]].sum(axis=1)
                       for s in range(len(supers))], axis=1)
    labels = pred["labels"].numpy()
    assert target["zero_shot_superclass_acc"] == pytest.approx(
        np.mean(coarse.argmax(axis=1) == super_of[labels]))


# ----------------------------------------------------------------------------- (d) backbones


@pytest.mark.slow
@pytest.mark.parametrize("arch, options, feature_dim", [
    ("resnet18", {"stem": "imagenet"}, 512),
    ("resnet34", {"stem": "imagenet"}, 512),
    ("resnet50", {"stem": "imagenet"}, 2048),
    ("vit_b_16", TINY_VIT, 32),
    ("vit_l_16", TINY_VIT, 32),
])
def test_one_step_and_evaluate_for_every_backbone(folder, tmp_path, arch, options, feature_dim):
    data, tree = folder
    cfg = TrainConfig(data="folder", data_dir=str(data), tree=str(tree),
                      data_options={"image_size": 32}, arch=arch, model_options=dict(options),
                      epochs=1, batch_size=6, distance="l2", device="cpu")
    run = train(cfg, tmp_path / arch, progress=False)
    metrics = read_json(run / "metrics.json")
    assert metrics["arch"] == arch and metrics["feature_dim"] == feature_dim
    with open(run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and math.isfinite(float(rows[0]["loss"]))
    assert float(rows[0]["samples_per_s"]) * float(rows[0]["epoch_time"]) == pytest.approx(6)
    res = evaluate_run(run)
    want = expected_eval(run)
    assert res["fine_top1"] == pytest.approx(want["fine_top1"])
    assert res["test_cpcc_l2"] == pytest.approx(want["test_cpcc_l2"], abs=1e-3)  # float32 features


# ----------------------------------------------------------------------------- (e) --weights


@pytest.mark.slow
def test_torchvision_weights_through_the_cli_with_frozen_batchnorm(folder, tmp_path, capsys):
    data, _ = folder
    torch.manual_seed(0)
    net = torchvision.models.resnet18()  # native keys, 1000-class fc (dropped: 3 classes here)
    for m in net.modules():  # non-trivial statistics, so an update would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    sd = net.state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    data_flags = ["--data", "folder", "--data-dir", str(data), "--data-opt", "image_size=32"]
    out = tmp_path / "run"
    code = main(["train", *data_flags, "--arch", "resnet18", "--model-opt", "stem=imagenet",
                 "--weights", str(path), "--freeze", "backbone", "--epochs", "1", "-b", "6",
                 "--distance", "none",  # a folder without --tree has a flat tree: no CPCC to train
                 *RUN, "--out", str(out)])
    assert code == 0
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)["model"]
    got = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    assert set(got) == {k for k in sd if not k.startswith("fc.")}
    # frozen weights and frozen BatchNorm statistics come out exactly as in the file (in
    # training mode the statistics would have moved: num_batches_tracked would be 1)
    for k, v in got.items():
        assert torch.equal(v, sd[k]), k
    assert state["classifier.weight"].shape == (3, 512)
    # a missing file: one line, exit status 2, nothing written
    code = main(["train", *data_flags, "--arch", "resnet18", "--weights",
                 str(tmp_path / "nope.pth"), *RUN, "--out", str(tmp_path / "missing")])
    err = one_line_error(capsys, code)
    assert "nope.pth" in err and "does not exist" in err
    assert not (tmp_path / "missing").exists()


# ----------------------------------------------------------------------------- (f) --preset


@pytest.mark.slow
def test_preset_paper_resolves_published_values_into_config_json(cifar100_dir, tmp_path):
    out = tmp_path / "run"
    code = main(["train", "--preset", "paper", "--data", "cifar100", "--data-dir",
                 str(cifar100_dir), "--epochs", "1", "--lr", "0.05", "--model-opt",
                 "stem=imagenet", *RUN, "--out", str(out)])
    assert code == 0
    cfg = read_json(out / "config.json")
    # cifar/pre.json of the CPCC reference code; batch 1024 and lambda 1 from OT-CPCC's defaults;
    # --epochs and --lr given on the command line win over the preset
    expected = {"preset": "paper", "epochs": 1, "lr": 0.05, "momentum": 0.9, "wd": 5e-4,
                "schedule": "step", "step_size": 60, "gamma": 0.2, "optimizer": "sgd",
                "batch_size": 1024, "lam": 1.0, "arch": "resnet18", "warmup_epochs": 0,
                "data_options": {"subpop": True}, "model_options": {"stem": "imagenet"}}
    assert {k: cfg[k] for k in expected} == expected
    metrics = read_json(out / "metrics.json")
    assert metrics["num_train"] == 60  # source classes only (3 of 5 per superclass)
    with open(out / "log.csv") as f:
        assert float(next(csv.DictReader(f))["lr"]) == pytest.approx(0.05)
    # the subpopulation-shift tasks on the target classes (the two smallest fine ids of each
    # superclass in the published table)
    assert main(["evaluate", str(out)]) == 0
    target = read_json(out / "eval.json")["target"]
    is_target = {f for c in range(20) for f in np.flatnonzero(C100_F2C == c)[:2]}
    assert target["n"] == sum(f in is_target for f in range(0, 100, 5))
    assert target["num_target_classes"] == target["n"]  # one test image per class here
    assert len(target["one_shot_samples"]) == 40  # one target_train image per target class
    for key in ("zero_shot_coarse_acc", "one_shot_fine_acc", "map_coarse"):
        assert 0.0 <= target[key] <= 1.0, key


def test_preset_order_defaults_preset_file_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"lr": 0.02, "data_options": {"augment": False}}))
    cfg = TrainConfig.from_args({"config": str(path), "preset": "paper", "data": "cifar10",
                                 "momentum": 0.5, "data_options": {"levels": "x"}})
    # preset cifar10 = OT-CPCC dataset/cifar10/pre.json: 100 epochs, lr 0.01, momentum 0.9,
    # weight decay 5e-4, StepLR(60, 0.1); the file's lr and the flag's momentum win
    assert (cfg.epochs, cfg.lr, cfg.momentum, cfg.wd, cfg.step_size, cfg.gamma) == \
        (100, 0.02, 0.5, 5e-4, 60, 0.1)
    assert cfg.data_options == {"augment": False, "levels": "x"}
    # a preset named in the file itself; values the reference pre.json leaves out are torch's
    # defaults (SGD momentum 0, StepLR gamma 0.1)
    path.write_text(yaml.safe_dump({"preset": "paper", "data": "breeds-entity13"}))
    e13 = TrainConfig.from_args({"config": str(path)})
    assert (e13.epochs, e13.lr, e13.momentum, e13.wd, e13.step_size, e13.gamma) == \
        (300, 0.01, 0.0, 1e-4, 100, 0.1)
    inat = TrainConfig.from_dict({"preset": "paper", "data": "inat2021"})
    assert inat.train_only == ["layer4"] and inat.data_options == {"fine": "class",
                                                                   "coarse": "phylum",
                                                                   "subpop": True}
    # every preset names a real dataset and validates; a full dict (config.json) is not touched
    for name in PRESETS:
        assert name in DATASETS
        TrainConfig.from_dict({"preset": "paper", "data": name})
    full = {**TrainConfig().to_dict(), "preset": "paper", "data": "cifar100"}
    assert TrainConfig.from_dict(full).lr == TrainConfig().lr
    with pytest.raises(ConfigError, match="no published values for dataset 'digits'"):
        preset_values("paper", "digits")


def test_preset_errors_are_one_line(tmp_path, capsys):
    err = one_line_error(capsys, main(["train", "--preset", "paper", *RUN,
                                       "--out", str(tmp_path / "r")]))
    assert "no published values for dataset 'synthetic'" in err and "cifar100" in err
    err = one_line_error(capsys, main(["train", "--preset", "best", *RUN]))
    assert "invalid choice: 'best'" in err
    assert not (tmp_path / "r").exists()
