"""Collapse detection (training/health.py), figure guards on degenerate features, and figures
rendered in a child process that may crash (study/render.py).

Thresholds are worked by hand from the module docstring: with K = 12, chance c = 1/12 = 0.0833,
"at chance" means ≤ c + min(0.05·(1 − c), c/2) = 0.0833 + 0.0417 = 0.125; "had learned" means
≥ c + 0.25·(1 − c) = 0.3125; "diverged" means CE > 10·ln 12 = 24.85.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.image import imread

from otcpcc import LabelTree
from otcpcc.study import figures
from otcpcc.study.render import render_isolated
from otcpcc.training.health import (
    at_chance,
    chance_accuracy,
    collapse_reason,
    feature_degeneracy,
    train_accuracy_collapse,
)


def _rows(accs, ces=None):
    ces = ces if ces is not None else [2.4] * len(accs)
    return [{"epoch": i + 1, "train_acc": a, "ce": c} for i, (a, c) in enumerate(zip(accs, ces, strict=True))]


def test_chance_thresholds_hand_worked():
    assert chance_accuracy(12) == pytest.approx(1 / 12)
    assert at_chance(0.125, 12) and not at_chance(0.1251, 12)
    assert at_chance(0.525, 2) and not at_chance(0.53, 2)  # K=2: 0.5 + min(0.025, 0.25)
    assert at_chance(0.0015, 1000) and not at_chance(0.0016, 1000)  # 0.001 + min(.04995, .0005)


def test_train_accuracy_fell_to_chance():
    # the flat-CE run (raw norm-50 embeddings): 0.49, 0.76, 0.33, then 0.116 at epoch 4
    hist = _rows([0.489, 0.760, 0.328, 0.116])
    why = train_accuracy_collapse(hist, 12)
    assert why is not None and "fell to chance" in why and "0.116 after 0.760" in why
    assert train_accuracy_collapse(hist[:3], 12) is None  # 0.328 > 0.125: not yet
    # a peak below 0.3125 is not "had learned"; CE 2.4 < 24.85: no divergence -> a slow start
    assert train_accuracy_collapse(_rows([0.30, 0.10]), 12) is None
    assert train_accuracy_collapse(_rows([0.32, 0.10]), 12) is not None
    assert train_accuracy_collapse(_rows([0.08, 0.09, 0.10, 0.11]), 12) is None  # slow start
    assert train_accuracy_collapse(_rows([0.9, 0.08]), 1) is None  # one class: no chance level


def test_train_accuracy_diverged():
    hist = _rows([0.128, 0.069], [1.28e7, 5.46])  # lr 5: CE exploded at epoch 1
    assert train_accuracy_collapse(hist[:1], 12) is None  # 0.128 > 0.125
    why = train_accuracy_collapse(hist, 12)
    assert why is not None and "diverged" in why and "24.8" in why
    assert train_accuracy_collapse(_rows([0.07], [24.8]), 12) is None  # just below 10 ln 12
    assert train_accuracy_collapse(_rows([0.07], [24.9]), 12) is not None
    assert "diverged" in train_accuracy_collapse(_rows([0.07], [math.nan]), 12)
    assert train_accuracy_collapse([{"train_acc": 0.07}], 12) is None  # no CE column


def test_feature_degeneracy():
    rng = np.random.default_rng(0)
    assert feature_degeneracy(rng.normal(size=(50, 8))) is None
    assert "identical" in feature_degeneracy(np.full((50, 8), 3.0))
    assert "identical" in feature_degeneracy(np.zeros((50, 8)))  # dead ReLUs: 0/0
    base = np.tile(rng.normal(size=8) * 50, (50, 1))
    assert "identical" in feature_degeneracy(base + 1e-4 * rng.normal(size=(50, 8)))  # rel ~3e-6
    assert feature_degeneracy(base + 1e-1 * rng.normal(size=(50, 8))) is None  # rel ~3e-3
    bad = rng.normal(size=(5, 3))
    bad[1, 0], bad[3, 2] = np.nan, np.inf
    assert feature_degeneracy(bad) == "non-finite features (2 of 5 rows)"
    assert feature_degeneracy(np.ones((1, 3))) is None and feature_degeneracy(np.zeros((0, 3))) is None


def test_collapse_reason_on_the_split():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(12), 3)
    ok = {"features": rng.normal(size=(36, 4)), "logits": rng.normal(size=(36, 12)),
          "labels": labels}
    assert collapse_reason(_rows([0.5, 0.6]), 12, ok) is None
    flat = dict(ok, features=np.ones((36, 4)))
    assert collapse_reason(_rows([0.5, 0.6]), 12, flat) == (
        "features of all 36 samples are (nearly) identical on the test split")
    one = dict(ok, logits=np.tile(np.eye(12)[3], (36, 1)))  # always class 3
    assert "one class answered" in collapse_reason(_rows([0.09]), 12, one)
    assert collapse_reason(_rows([0.6]), 12, one) is None  # train accuracy 0.6: not at chance
    assert collapse_reason(_rows([0.09]), 12, dict(one, labels=np.zeros(36))) is None  # 1 class


# ------------------------------------------------------------------ figures on degenerate input
LEVELS = [np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 0, 0, 1, 1])]


@pytest.mark.parametrize("value", [0.0, 7.5])
def test_every_figure_function_takes_constant_features(tmp_path, value):
    tree = LabelTree.from_levels(LEVELS)
    tree_d = np.asarray(tree.distance_matrix(), dtype=float)
    y = np.repeat(np.arange(6), 10)
    x = np.full((60, 5), value, dtype=np.float32)
    pca, tsne = figures.embed_2d(x)
    assert pca.shape == tsne.shape == (60, 2) and not pca.any() and not tsne.any()
    learned = figures.learned_distance_matrix(x, y, 6)
    np.testing.assert_array_equal(learned, np.zeros((6, 6)))  # identical class means
    nan = np.full((6, 6), np.nan)
    figures.plot_heatmaps(tree_d, {"flat": learned, "nan": nan}, tmp_path / "h.png")
    figures.plot_dendrograms(tree_d, {"flat": learned, "nan": nan}, tree.leaves, tmp_path / "d.png")
    figures.plot_embeddings({"flat": (x, y)}, np.asarray(LEVELS[-1]), ["a", "b"], tmp_path / "e.png")
    for f in ("h.png", "d.png", "e.png"):
        assert imread(tmp_path / f).shape[0] > 100


def test_render_figures_skips_degenerate_methods(tmp_path, monkeypatch):
    tree = LabelTree.from_levels(LEVELS)
    dirs = {name: tmp_path / name for name in ("none", "l2")}
    for d in dirs.values():
        d.mkdir()
        tree.to_file(d / "tree.json", format="json")
    y = np.repeat(np.arange(6), 10)
    feats = {"none": np.full((60, 4), 2.0, np.float32),
             "l2": np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)}
    monkeypatch.setattr(figures, "collect_features", lambda d, split="test", data_dir=None: (feats[d.name], y))
    aggregate = [{"distance": "none"}, {"distance": "l2"}]
    out = tmp_path / "out"
    out.mkdir()
    notes: list[str] = []
    written = [f for f, _ in figures.render_figures(out, aggregate, dirs, 100, notes=notes)]
    assert written == ["heatmaps.png", "dendrogram.png", "embedding.png", "curves.png"]
    assert len(notes) == 1 and notes[0].startswith("`none` left out") and "identical" in notes[0]
    feats["l2"] = np.full((60, 4), np.nan, np.float32)  # every method degenerate
    notes.clear()
    written = [f for f, _ in figures.render_figures(out, aggregate, dirs, 100, notes=notes)]
    assert written == ["heatmaps.png", "dendrogram.png", "curves.png"]
    assert not (out / "embedding.png").exists()  # the earlier one is not left behind
    assert any(n.startswith("figure skipped: embedding.png") for n in notes)
    assert any("non-finite features (60 of 60 rows)" in n for n in notes)


def test_render_isolated_survives_a_segfault_and_an_error(tmp_path):
    tree = LabelTree.from_levels(LEVELS)
    tree_d = np.asarray(tree.distance_matrix(), dtype=float)
    fn = "otcpcc.study.figures:plot_heatmaps"
    jobs = [{"name": "a.png", "func": fn, "kwargs": {"tree_d": tree_d, "learned": {},
                                                     "path": tmp_path / "a.png"}},
            {"name": "crash.png", "func": "faulthandler:_sigsegv"},  # a real native crash
            {"name": "bad.png", "func": fn, "kwargs": {"tree_d": "x", "learned": {},
                                                       "path": tmp_path / "bad.png"}},
            {"name": "b.png", "func": fn, "kwargs": {"tree_d": tree_d, "learned": {},
                                                     "path": tmp_path / "b.png"}}]
    notes: list[str] = []
    assert render_isolated(jobs, notes) == ["a.png", "b.png"]
    assert (tmp_path / "a.png").is_file() and (tmp_path / "b.png").is_file()
    assert notes[0] == "figure skipped: crash.png: the renderer crashed (SIGSEGV)"
    assert notes[1].startswith("figure skipped: bad.png: ") and len(notes) == 2
    notes.clear()
    hang = [{"name": "slow.png", "func": "time:sleep", "args": [30]}]
    assert render_isolated(hang, notes, timeout_s=1.0) == []
    assert notes == ["figure skipped: slow.png: the renderer took longer than 1 s"]
