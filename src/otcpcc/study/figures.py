"""The figures of a comparison: tree vs learned distance heatmaps, dendrograms, PCA/t-SNE maps,
training curves."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..training.health import feature_degeneracy
from .tables import FIGURES, fmt, row_name


def collect_features(run_dir: str | os.PathLike, split: str = "test") -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """Features and labels of a run's model on one split of its data.

    Rebuilds the dataset and model the way ``otcpcc evaluate`` does
    (:func:`otcpcc.evaluate.load_run`: ``config.json``, ``tree.json``, ``last.pt``) and runs the
    model (eval mode, no grad, CPU, dataset order) over ``split`` ("train", "test" or an extra
    split of the dataset) with :func:`otcpcc.train.predict`. Returns ``features`` float32
    [N, feature_dim] (the input of the final linear layer) and ``labels`` int64 [N] (fine class
    ids = leaf ids of the run's tree).
    """
    from ..evaluation.evaluate import _split, load_run
    from ..evaluation.inference import predict

    run = load_run(run_dir, device="cpu")
    res = predict(run.model, _split(run.bundle, split), run.env, run.cfg)
    return (res["features"].numpy().astype(np.float32, copy=False),
            res["labels"].numpy().astype(np.int64, copy=False))


def _load_tree(run_dir: Path):
    from ..tree import LabelTree

    path = Path(run_dir) / "tree.json"
    if not path.exists():
        raise ValueError(f"{path} is missing: pass a run directory written by `otcpcc train`")
    return LabelTree.from_file(path, format="json")


def learned_distance_matrix(features: np.ndarray, labels: np.ndarray, num_classes: int
                            ) -> np.ndarray:
    """[K, K] ℓ2 distances between class means (``otcpcc.class_distances(..., "l2")``).

    Rows and columns of classes absent from ``labels`` are NaN; the diagonal is 0.
    """
    import torch
    from scipy.spatial.distance import squareform

    from ..distances import class_distances

    classes, rho = class_distances(torch.as_tensor(np.asarray(features, dtype=np.float32)),
                                   torch.as_tensor(np.asarray(labels, dtype=np.int64)), "l2")
    idx = np.asarray(classes.detach().cpu().numpy(), dtype=np.int64)
    full = np.full((num_classes, num_classes), np.nan)
    full[np.ix_(idx, idx)] = squareform(rho.detach().cpu().numpy().astype(np.float64),
                                        checks=False)
    return full


# --------------------------------------------------------------------------------------------
# figures (matplotlib Agg); each function writes one PNG and returns its path
# --------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def tree_leaf_order(tree_d: np.ndarray) -> np.ndarray:
    """Leaf order of the average-linkage dendrogram of a tree-distance matrix (groups siblings)."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    if len(tree_d) < 2:
        return np.arange(len(tree_d))
    return leaves_list(linkage(squareform(tree_d, checks=False), "average"))


def plot_heatmaps(tree_d: np.ndarray, learned: Mapping[str, np.ndarray], path: Path,
                  titles: Mapping[str, str] | None = None) -> Path:
    """Tree distances, then each method's learned class distances, in dendrogram order."""
    plt = _pyplot()
    order = tree_leaf_order(tree_d)
    panels = [("tree distance", tree_d)] + [
        ((titles or {}).get(name, name), m) for name, m in learned.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.2), squeeze=False)
    for ax, (title, m) in zip(axes[0], panels, strict=True):
        im = ax.imshow(m[np.ix_(order, order)], cmap="viridis")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def _dendrogram(ax, d: np.ndarray, names: Sequence[str], title: str) -> None:
    from scipy.cluster.hierarchy import dendrogram, linkage
    from scipy.spatial.distance import squareform

    keep = ~np.isnan(d).all(axis=1) if len(d) else np.zeros(0, bool)
    d = d[np.ix_(keep, keep)]
    names = [n for n, k in zip(names, keep, strict=True) if k]
    ax.set_title(title, fontsize=9)
    if len(d) < 2:
        ax.text(0.5, 0.5, "fewer than 2 classes", ha="center", transform=ax.transAxes)
        return
    z = linkage(squareform(np.nan_to_num(d), checks=False), "average")
    show = len(names) <= 40
    dendrogram(z, ax=ax, labels=list(names) if show else None, no_labels=not show,
               leaf_font_size=7, orientation="left", color_threshold=0)


def plot_dendrograms(tree_d: np.ndarray, learned: Mapping[str, np.ndarray],
                     leaf_names: Sequence[str], path: Path) -> Path:
    """The given tree's dendrogram beside each method's learned-distance dendrogram."""
    plt = _pyplot()
    panels = [("given tree", tree_d)] + [(f"{n} (learned, average linkage)", m)
                                        for n, m in learned.items()]
    height = max(3.0, 0.16 * min(len(leaf_names), 40) + 1.0)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), height), squeeze=False)
    for ax, (title, m) in zip(axes[0], panels, strict=True):
        _dendrogram(ax, m, leaf_names, title)
    return _save(fig, path)


def subsample(n: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``n`` items (all when n ≤ max_points)."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def embed_2d(features: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(PCA, t-SNE) 2-D coordinates of ``features`` [n, d]; t-SNE perplexity min(15, (n−1)/3).

    Degenerate input (non-finite, or every row (nearly) the same: ``feature_degeneracy``) gets
    zeros for both, without calling PCA or t-SNE (they divide by a zero variance, and t-SNE's
    native code has crashed the process on such input).
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    if feature_degeneracy(x) is not None:
        return np.zeros((n, 2)), np.zeros((n, 2))
    pca = PCA(n_components=2, random_state=seed).fit_transform(x) if n >= 2 else np.zeros((n, 2))
    if n < 5:
        return pca, pca.copy()
    perplexity = float(min(15.0, max(1.0, (n - 1) / 3.0)))
    # one OpenMP thread: t-SNE's threads spin-wait and slow down 20x on a busy machine
    with threadpool_limits(limits=1, user_api="openmp"):
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                    max_iter=500).fit_transform(x)
    return pca, tsne


def plot_embeddings(features: Mapping[str, tuple[np.ndarray, np.ndarray]], coarse_ids: np.ndarray,
                    coarse_names: Sequence[str], path: Path, max_points: int = 1000,
                    seed: int = 0) -> Path:
    """Per method (row): PCA and t-SNE of ≤ ``max_points`` test features, coloured by coarse class.

    ``features[name] = (X [N, d], fine labels [N])``; ``coarse_ids[fine] = coarse id``.
    """
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if len(coarse_names) <= 10 else "tab20")
    fig, axes = plt.subplots(len(features), 2, figsize=(8, 3.6 * len(features)), squeeze=False)
    for row, (name, (x, y)) in zip(axes, features.items(), strict=True):
        idx = subsample(len(x), max_points, seed)
        why = feature_degeneracy(np.asarray(x)[idx])
        if why is not None:  # nothing to map: say so in the panels
            for ax, kind in zip(row, ("PCA", "t-SNE"), strict=True):
                ax.set_title(f"{name}: {kind}", fontsize=9)
                ax.text(0.5, 0.5, f"skipped:\n{why}", ha="center", va="center", fontsize=8,
                        wrap=True, transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
            continue
        coarse = np.asarray(coarse_ids)[np.asarray(y)[idx]]
        for ax, coords, kind in zip(row, embed_2d(np.asarray(x)[idx], seed), ("PCA", "t-SNE"),
                                    strict=True):
            for c in np.unique(coarse):
                m = coarse == c
                ax.scatter(coords[m, 0], coords[m, 1], s=5, color=cmap(int(c) % cmap.N),
                           label=str(coarse_names[int(c)]))
            ax.set_title(f"{name}: {kind}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        if len(coarse_names) <= 20 and row[1].get_legend_handles_labels()[0]:
            row[1].legend(fontsize=6, markerscale=2, loc="best")
    return _save(fig, path)


def read_log(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Columns of a ``log.csv`` as float arrays (empty cells → NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}

    def num(v: str | None) -> float:
        try:
            return float(v) if v not in (None, "") else float("nan")
        except ValueError:
            return float("nan")

    return {k: np.array([num(r.get(k)) for r in rows]) for k in rows[0]}


_CURVES = (("loss", "total loss"), ("ce", "cross-entropy"), ("cpcc", "batch CPCC (train)"),
           ("test_acc", "accuracy (test solid, train dashed)"))


def _plot_finite(ax, x: np.ndarray, y: np.ndarray, **kw: Any) -> None:
    """Plot only the finite points (test accuracy is NaN on epochs without evaluation)."""
    m = np.isfinite(x) & np.isfinite(y)
    if m.any():
        ax.plot(x[m], y[m], marker="o" if m.sum() == 1 else None, **kw)


def plot_curves(logs: Mapping[str, Sequence[Path]], path: Path) -> Path:
    """Training curves, one colour per method, one line per run (seed)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(_CURVES), figsize=(4 * len(_CURVES), 3.2), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for i, (name, files) in enumerate(logs.items()):
        color = cmap(i % 10)
        for j, f in enumerate(files):
            log = read_log(f)
            if "epoch" not in log:
                continue
            label = name if j == 0 else None
            for ax, (col, title) in zip(axes[0], _CURVES, strict=True):
                ax.set_title(title, fontsize=9)
                ax.set_xlabel("epoch")
                if col in log:
                    _plot_finite(ax, log["epoch"], log[col], color=color, label=label, alpha=0.85)
                if col == "test_acc" and "train_acc" in log:
                    _plot_finite(ax, log["epoch"], log["train_acc"], color=color, ls="--",
                                 alpha=0.6)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------
def _run_list(v: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    if isinstance(v, (str, os.PathLike)):
        return [Path(v)]
    return [Path(p) for p in v]


_FN = __name__ + ":"  # jobs name this module's plot functions


def render_figures(out: Path, aggregate: Sequence[Mapping[str, Any]],
                   run_dirs: Mapping[str, Any], max_points: int = 1000,
                   notes: list[str] | None = None) -> list[str]:
    """Write the PNGs into ``out``; return the names of those written (none without run dirs).

    Features are computed here; the plots run in a child process (:func:`render_isolated`) so
    that a native crash skips a figure instead of ending the command. A method whose test
    features are degenerate (non-finite or (nearly) identical: a collapsed run) is left out of
    the heatmaps, dendrograms and embedding map, and the embedding map is skipped when no method
    is left. Each omission or skip appends a one-line note to ``notes``.
    """
    from .render import render_isolated

    notes = notes if notes is not None else []
    runs = {name: _run_list(v) for name, v in run_dirs.items() if _run_list(v)}
    if not runs:
        return []
    first = {name: dirs[0] for name, dirs in runs.items()}
    tree = _load_tree(next(iter(first.values())))
    tree_d = np.asarray(tree.distance_matrix(), dtype=np.float64)
    k = tree.num_classes
    feats = {name: collect_features(d, "test") for name, d in first.items()}
    bad = {name: why for name, (x, _) in feats.items() if (why := feature_degeneracy(x))}
    for name, why in bad.items():
        notes.append(f"`{name}` left out of the heatmaps, dendrogram and embedding figures: its "
                     f"test features are degenerate ({why})")
    good = {name: xy for name, xy in feats.items() if name not in bad}
    learned = {name: learned_distance_matrix(x, y, k) for name, (x, y) in good.items()}
    cp = {row_name(r): r.get("test_cpcc_l2_mean") for r in aggregate}
    titles = {n: f"{n} (TestCPCC l2 {fmt(cp.get(n), 2)})" for n in learned}
    levels = tree.levels
    if levels:
        coarse_ids, coarse_names = np.asarray(levels[-1].ids), list(levels[-1].names)
    else:
        coarse_ids, coarse_names = np.arange(k), list(tree.leaves)
    logs = {n: [d / "log.csv" for d in dirs if (d / "log.csv").exists()]
            for n, dirs in runs.items()}
    jobs: list[dict[str, Any]] = [
        {"name": "heatmaps.png", "func": _FN + "plot_heatmaps",
         "kwargs": {"tree_d": tree_d, "learned": learned, "path": out / "heatmaps.png",
                    "titles": titles}},
        {"name": "dendrogram.png", "func": _FN + "plot_dendrograms",
         "kwargs": {"tree_d": tree_d, "learned": learned, "leaf_names": list(tree.leaves),
                    "path": out / "dendrogram.png"}}]
    if good:
        jobs.append({"name": "embedding.png", "func": _FN + "plot_embeddings",
                     "kwargs": {"features": good, "coarse_ids": coarse_ids,
                                "coarse_names": coarse_names, "path": out / "embedding.png",
                                "max_points": max_points}})
    else:
        notes.append("figure skipped: embedding.png: every method's test features are "
                     "degenerate (nothing to map with PCA/t-SNE)")
    jobs.append({"name": "curves.png", "func": _FN + "plot_curves",
                 "kwargs": {"logs": logs, "path": out / "curves.png"}})
    for job in jobs:  # a stale figure from an earlier report must not be shown as this one's
        (out / job["name"]).unlink(missing_ok=True)
    if not good:
        (out / "embedding.png").unlink(missing_ok=True)
    written = render_isolated(jobs, notes)
    return [f for f in FIGURES if f in written]
