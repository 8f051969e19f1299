"""Precomputed embeddings (issue 14): standardised by default with train-split statistics, the same
transform at evaluation, and collapsed runs that are reported instead of crashing the report.

The data mimics the issue's: 64-d embeddings of norm ≈ 50 (a large shared component, like CLIP
features), 12 classes under a 2-level tree, 90 train / 30 test per class, a ``split`` array.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from otcpcc.cli import main
from otcpcc.data.features import load_features, standardization
from otcpcc.evaluation.evaluate import evaluate_run, load_run
from otcpcc.runs.rundir import RunDirError
from otcpcc.training import train


def make_embeddings(path, seed=0, d=64, n_train=90, n_test=30, norm=50.0):
    """12 classes = 4 groups × 3; rows ≈ common (norm 50) + group mean + class offset + noise."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=d)
    common *= norm / np.linalg.norm(common)
    fine = np.repeat(rng.normal(size=(4, d)) * 3.0, 3, axis=0) + rng.normal(size=(12, d)) * 2.0
    x, y, split = [], [], []
    for c in range(12):
        for name, n in (("train", n_train), ("test", n_test)):
            x.append(common + fine[c] + rng.normal(size=(n, d)) * 2.0)
            y += [c] * n
            split += [name] * n
    x = np.concatenate(x).astype(np.float32)
    levels = np.stack([np.arange(12) // 3, np.arange(12) // 6])
    np.savez(path, features=x, labels=np.array(y), split=np.array(split), levels=levels)
    return x, np.array(y), np.array(split)


def test_standardised_with_train_statistics(tmp_path):
    x, _, split = make_embeddings(tmp_path / "emb.npz", n_train=20, n_test=5)
    assert 45 < np.linalg.norm(x, axis=1).mean() < 60
    b = load_features(tmp_path / "emb.npz")
    tr, te = x[split == "train"].astype(np.float64), x[split == "test"].astype(np.float64)
    mean, std = tr.mean(0), tr.std(0)  # numpy oracle, ddof 0, train split only
    xtr, xte = b.train.tensors[0].numpy(), b.test.tensors[0].numpy()
    np.testing.assert_allclose(xtr.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(xtr.std(0), 1.0, rtol=1e-4)
    np.testing.assert_allclose(xte, (te - mean) / std, rtol=1e-5, atol=1e-5)  # train stats
    np.testing.assert_allclose(b.meta["standardize"]["mean"], mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(b.meta["standardize"]["std"], std, rtol=1e-6)
    raw = load_features(tmp_path / "emb.npz", standardize=False)
    np.testing.assert_array_equal(raw.test.tensors[0].numpy(), x[split == "test"])
    assert raw.meta["standardize"] is None
    with pytest.raises(ValueError, match="standardize must be True or False"):
        load_features(tmp_path / "emb.npz", standardize="maybe")
    # a dimension constant on the train split is centred, never divided by ~0
    c = np.array([[5.0, 1.0], [5.0, 2.0], [5.0, 3.0]])
    m, s = standardization(c)
    np.testing.assert_array_equal(s, [1.0, np.std([1.0, 2.0, 3.0], dtype=np.float32)])
    assert m[0] == 5.0


def test_evaluation_applies_the_recorded_transform(tmp_path):
    x, _, split = make_embeddings(tmp_path / "emb.npz", n_train=10, n_test=4)
    cfg = {"data": "features", "data_dir": str(tmp_path / "emb.npz"), "epochs": 1,
           "batch_size": 64, "device": "cpu"}
    run = train(cfg, tmp_path / "run", progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    rec = metrics["input_standardization"]
    assert len(rec["mean"]) == len(rec["std"]) == 64 and metrics["collapsed"] is None
    loaded = load_run(run)
    expected = (x[split == "test"] - np.array(rec["mean"])) / np.array(rec["std"])
    np.testing.assert_allclose(loaded.bundle.test.tensors[0].numpy(), expected, rtol=1e-5,
                               atol=1e-5)
    # the data file changed since training: refuse instead of applying another transform
    x2 = x.copy()
    x2[split == "train"] *= 2.0
    with np.load(tmp_path / "emb.npz") as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(tmp_path / "emb.npz", **{**arrays, "features": x2})
    with pytest.raises(RunDirError, match="input standardisation .* differs"):
        evaluate_run(run)


def test_issue_embeddings_train_well_above_chance(tmp_path, capsys):
    # the issue's geometry with fewer rows (30 train / 10 test per class) and 3 epochs, for speed
    make_embeddings(tmp_path / "emb.npz", n_train=30, n_test=10)
    out = tmp_path / "cmp"
    code = main(["compare", "--data", "features", "--data-dir", str(tmp_path / "emb.npz"),
                 "--distances", "none,l2", "--seeds", "1", "--epochs", "3", "--out", str(out)])
    assert code == 0
    err = capsys.readouterr().err
    assert "collapsed" not in err
    summary = json.loads((out / "summary.json").read_text())
    for row in summary["runs"]:  # chance is 1/12 = 0.083; raw embeddings ended there (issue)
        assert row["fine_acc"] > 0.8, row["distance"]
        assert row["collapsed"] is None
    assert (out / "report.md").is_file() and "## Notes" not in (out / "report.md").read_text()


def test_collapsed_run_is_reported_and_the_report_completes(tmp_path, capsys):
    make_embeddings(tmp_path / "emb.npz", n_train=30, n_test=10)
    out = tmp_path / "cmp"
    code = main(["compare", "--data", "features", "--data-dir", str(tmp_path / "emb.npz"),
                 "--distances", "none", "--seeds", "1", "--epochs", "2", "--lr", "2",
                 "--batch-size", "32", "--out", str(out)])
    assert code == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "run collapsed" in ln]
    assert lines == ["otcpcc: run collapsed at epoch 1: features of all 120 samples are (nearly) "
                     "identical on the test split; lower --lr"]
    metrics = json.loads((out / "none" / "seed0" / "metrics.json").read_text())
    assert metrics["collapsed"] == {"epoch": 1, "reason": "features of all 120 samples are "
                                    "(nearly) identical on the test split"}
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert "`none` seed 0: run collapsed at epoch 1: features of all 120" in md
    assert "figure skipped: embedding.png" in md and "figure skipped: embedding.png" in html
    assert "none seed 0: run collapsed at epoch 1" in html
    assert not (out / "embedding.png").exists()
    for f in ("heatmaps.png", "dendrogram.png", "curves.png"):
        assert (out / f).is_file() and f"({f})" in md
    assert metrics["test_acc"] == pytest.approx(1 / 12)  # what the issue saw, now explained


def test_a_diverged_run_is_a_note_and_the_comparison_goes_on(tmp_path, capsys, monkeypatch):
    """A run whose loss turns NaN/inf stops (issue 9.12); compare records it, reports the others."""
    import otcpcc.training
    from otcpcc.training.control import NonFiniteLoss

    real = otcpcc.training.train

    def train(cfg, out, **kw):
        if cfg.distance == "l2":
            raise NonFiniteLoss("the loss became nan at epoch 1/2, step 3; training stopped and no epoch "
                                f"had finished, so nothing was kept in {out}; lower --lr")
        return real(cfg, out, **kw)

    monkeypatch.setattr(otcpcc.training, "train", train)
    make_embeddings(tmp_path / "emb.npz", n_train=30, n_test=10)
    out = tmp_path / "cmp"
    code = main(["compare", "--data", "features", "--data-dir", str(tmp_path / "emb.npz"),
                 "--distances", "none,l2", "--seeds", "1", "--epochs", "2",
                 "--batch-size", "32", "--out", str(out)])
    assert code == 0
    assert "the comparison goes on without this run" in capsys.readouterr().err
    rows = {r["method"]: r for r in json.loads((out / "summary.json").read_text())["runs"]}
    assert rows["l2"]["collapsed"] == ("epoch 1: the loss became non-finite at step 3 "
                                       "(training stopped; no metrics)")
    assert "fine_acc" not in rows["l2"] and rows["none"]["fine_acc"] > 0.5
    md = (out / "report.md").read_text()
    assert "`l2` seed 0: run collapsed at epoch 1: the loss became non-finite at step 3" in md
