"""The figures of a comparison: the accuracy / expected-cost trade-off per method, tree vs learned
distance heatmaps, dendrograms, PCA/t-SNE maps, training curves; and the caption of each (what it
shows, from which seeds)."""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..training.health import feature_degeneracy
from .tables import FIGURES, _finite, decision_cost_key, fmt, method_name, seed_list


def collect_features(run_dir: str | os.PathLike, split: str = "test", *,
                     data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of a run's model on one split of its data.

    Rebuilds the dataset and model the way ``otcpcc evaluate`` does
    (:func:`otcpcc.evaluate.load_run`: ``config.json``, ``tree.json``, ``last.pt``) and runs the
    model (eval mode, no grad, CPU, dataset order) over ``split`` ("train", "test" or an extra
    split of the dataset) with :func:`otcpcc.train.predict`. Returns ``features`` float32
    [N, feature_dim] (the input of the final linear layer) and ``labels`` int64 [N] (fine class
    ids = leaf ids of the run's tree). ``data_dir``: the data's location when it moved since
    training (as ``otcpcc evaluate --data-dir``).
    """
    from ..evaluation.evaluate import _split, load_run
    from ..evaluation.inference import predict

    run = load_run(run_dir, device="cpu", data_dir=data_dir)
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


def _mean_std(row: Mapping[str, Any], key: str) -> tuple[float, float]:
    mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
    return (float(mean) if _finite(mean) else float("nan"),
            float(std) if _finite(std) else 0.0)


def can_plot_tradeoff(aggregate: Sequence[Mapping[str, Any]]) -> bool:
    """Whether some method has both a mean fine accuracy and a mean expected cost."""
    key = decision_cost_key(aggregate)
    return any(_finite(r.get("fine_acc_mean")) and _finite(r.get(f"{key}_mean")) for r in aggregate)


def plot_tradeoff(aggregate: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Fine accuracy (x) against the cost of the decisions (y; ``expected_cost_argmax`` when the
    rows have it, else ``expected_cost``), one colour per method: mean over seeds with
    ±1 std error bars; filled = argmax decision, hollow = CRM decision (``*_crm`` metrics, when
    present), joined by a thin line (same model, other decision rule)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    cmap = plt.get_cmap("tab10")
    crm_shown = False
    key = decision_cost_key(aggregate)  # the argmax decisions' cost, beside the CRM decisions'
    for i, row in enumerate(aggregate):
        color = cmap(i % 10)
        x, xe = _mean_std(row, "fine_acc")
        y, ye = _mean_std(row, key)
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        name = method_name(row)
        ax.errorbar(x, y, xerr=xe, yerr=ye, fmt="o", color=color, ms=7, capsize=3, label=name)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8,
                    color=color)
        xc, xce = _mean_std(row, "fine_acc_crm")
        yc, yce = _mean_std(row, "expected_cost_crm")
        if np.isfinite(xc) and np.isfinite(yc):
            crm_shown = True
            ax.plot([x, xc], [y, yc], "-", color=color, lw=0.8, alpha=0.6)
            ax.errorbar(xc, yc, xerr=xce, yerr=yce, fmt="o", mfc="white", color=color, ms=7,
                        capsize=3)
    ax.set_xlabel("fine accuracy (higher is better)")
    ax.set_ylabel("cost of the decisions (lower is better)")
    title = "accuracy vs cost of decisions per method"
    ax.set_title(title + (" (filled: argmax, hollow: CRM)" if crm_shown else ""), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def _seeds_text(seeds: Sequence[int]) -> str:
    if not seeds:
        return "the seeds of the summary"
    if len(seeds) == 1:
        return f"seed {seeds[0]} only: no error bars"
    return "seeds " + ", ".join(map(str, seeds))


def _run_seed(run_dir: Path) -> str:
    """The seed of a run directory: ``config.json``'s ``seed``, else the ``seed<k>`` in its name."""
    try:
        seed = json.loads((Path(run_dir) / "config.json").read_text()).get("seed")
        if isinstance(seed, int):
            return str(seed)
    except (OSError, ValueError, AttributeError):
        pass
    m = re.fullmatch(r"seed(\d+)", Path(run_dir).name)
    return m.group(1) if m else "its first run"


def _first_seed_text(first: Mapping[str, Path]) -> str:
    seeds = {name: _run_seed(d) for name, d in first.items()}
    if len(set(seeds.values())) == 1:
        return f"seed {next(iter(seeds.values()))} of each method"
    return "one run per method: " + ", ".join(f"{n} seed {s}" for n, s in seeds.items())


def figure_captions(aggregate: Sequence[Mapping[str, Any]], runs: Sequence[Mapping[str, Any]],
                    first: Mapping[str, Path], cost_source: str = "tree distance"
                    ) -> dict[str, str]:
    """The caption under each figure: what it shows and which seeds it comes from."""
    seeds = seed_list(runs)
    crm = any(_finite(r.get("expected_cost_crm_mean")) for r in aggregate)
    one = _first_seed_text(first) if first else ""
    n_runs = ", ".join(f"{method_name(r)} {r.get('n_runs', '?')}" for r in aggregate)
    return {
        "tradeoff.png": (
            f"Fine accuracy against the mean cost of the decisions, C[true, decided] (cost matrix: "
            f"{cost_source}), per method: mean "
            f"over {_seeds_text(seeds)}; error bars ±1 sample standard deviation over seeds "
            f"(runs per method: {n_runs})."
            + (" Filled markers: argmax decision; hollow: conditional-risk (CRM) decision of "
               "the same models." if crm else "")
            + " Better is to the right and down."),
        "heatmaps.png": (
            "Tree distance, then each method's learned class distance (ℓ2 between class means "
            "of its test features), classes in the tree's dendrogram order; titles give the "
            f"mean TestCPCC(ℓ2) over seeds. Matrices from {one}."),
        "dendrogram.png": (
            "The given tree's dendrogram beside the average-linkage dendrogram of each "
            f"method's learned class distances (ℓ2 between test class means); {one}."),
        "embedding.png": (
            "PCA (left) and t-SNE (right) of at most 1000 test features per method, coloured "
            f"by the tree's coarsest level; {one}."),
        "curves.png": (
            "Training curves per epoch: total loss, cross-entropy, batch CPCC, accuracy (test "
            f"solid, train dashed); one colour per method, one line per seed ({_seeds_text(seeds)})."),
    }


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
                   runs: Sequence[Mapping[str, Any]] = (), cost_source: str = "tree distance",
                   notes: list[str] | None = None, data_dir: str | None = None) -> list[tuple[str, str]]:
    """Write the PNGs into ``out``; return ``(file name, caption)`` per figure written.

    The trade-off figure needs only ``aggregate`` (any method with fine accuracy and expected
    cost); the others need ``run_dirs`` (method → run directories) and are skipped without them.
    ``runs``: the summary rows (for the seeds named in the captions). ``data_dir``: where the
    runs' data is now (:func:`collect_features`).

    Features are computed here; the plots run in a child process (:func:`render_isolated`) so
    that a native crash skips a figure instead of ending the command. A method whose test
    features are degenerate (non-finite or (nearly) identical: a collapsed run) is left out of
    the heatmaps, dendrograms and embedding map, and the embedding map is skipped when no method
    is left. Each omission or skip appends a one-line note to ``notes``.
    """
    from .render import render_isolated

    notes = notes if notes is not None else []
    dirs_by_method = {name: _run_list(v) for name, v in run_dirs.items() if _run_list(v)}
    first = {name: dirs[0] for name, dirs in dirs_by_method.items()}
    captions = figure_captions(aggregate, runs, first, cost_source)
    jobs: list[dict[str, Any]] = []
    if can_plot_tradeoff(aggregate):
        jobs.append({"name": "tradeoff.png", "func": _FN + "plot_tradeoff",
                     "kwargs": {"aggregate": [dict(r) for r in aggregate], "path": out / "tradeoff.png"}})
    good: dict[str, Any] = {}
    if first:
        tree = _load_tree(next(iter(first.values())))
        tree_d = np.asarray(tree.distance_matrix(), dtype=np.float64)
        k = tree.num_classes
        feats = {}
        for name, d in first.items():
            try:
                feats[name] = collect_features(d, "test", data_dir=data_dir)
            except (ValueError, OSError) as e:  # e.g. its last.pt removed or corrupt since it was evaluated
                notes.append(f"`{name}` left out of the heatmaps, dendrogram and embedding figures: "
                             f"its run {d} cannot be loaded ({str(e).split('; ')[0]})")
        bad = {name: why for name, (x, _) in feats.items() if (why := feature_degeneracy(x))}
        for name, why in bad.items():
            notes.append(f"`{name}` left out of the heatmaps, dendrogram and embedding figures: its "
                         f"test features are degenerate ({why})")
        good = {name: xy for name, xy in feats.items() if name not in bad}
        learned = {name: learned_distance_matrix(x, y, k) for name, (x, y) in good.items()}
        cp = {method_name(r): r.get("test_cpcc_l2_mean") for r in aggregate}
        titles = {n: f"{n} (TestCPCC l2 {fmt(cp.get(n), 2)})" for n in learned}
        levels = tree.levels
        if levels:
            coarse_ids, coarse_names = np.asarray(levels[-1].ids), list(levels[-1].names)
        else:
            coarse_ids, coarse_names = np.arange(k), list(tree.leaves)
        logs = {n: [d / "log.csv" for d in dirs if (d / "log.csv").exists()]
                for n, dirs in dirs_by_method.items()}
        jobs += [
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
    written = render_isolated(jobs, notes) if jobs else set()
    return [(f, captions[f]) for f in FIGURES if f in written]
