"""Render a comparison: a table of mean ± std per method, the return-on-investment line, figures.

``render_report(out, summary, run_dirs)`` writes into ``out``:

- ``report.md`` and ``report.html`` (self-contained: figures embedded as base64 PNG): one row per
  method, one column per metric, ``mean ± std`` over seeds, the best mean per column in bold
  (``**…**`` / ``<strong>``). Higher is better for accuracies, CPCC and mAP; lower is better for
  mistake severity, hierarchical distance@k and expected cost; other columns are not marked.
- the return-on-investment line per method against the flat baseline ``none``:
  relative change of mistake severity and expected cost, at the change of fine accuracy in
  percentage points (accuracies are fractions in [0, 1]).
- ``heatmaps.png``: tree distance and each method's learned class distance (ℓ2 between class
  means of the test features, ``otcpcc.class_distances``), classes in the tree's dendrogram order.
- ``dendrogram.png``: the given tree's dendrogram beside the dendrogram (average linkage) of each
  method's learned class distances.
- ``embedding.png``: PCA and t-SNE of (at most 1000) test features per method, coloured by the
  coarsest level of the tree.
- ``curves.png``: training curves (loss, CE, batch CPCC, train/test accuracy) from each run's
  ``log.csv``.

Figures use one run directory per method (its first seed); curves use every run.
"""

from __future__ import annotations

import base64
import csv
import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# metric-name rules for "which value is best": exact names first, then prefixes/suffixes
_LOWER_BETTER_PREFIX = ("mistake_severity", "hier_dist@", "expected_cost")
_HIGHER_BETTER_PREFIX = ("fine_acc", "fine_top", "test_cpcc", "map_", "cpcc")
_HIGHER_BETTER_SUFFIX = ("_acc",)
# metrics shown first in the table, in this order (the rest follow in summary order)
_LEAD_COLUMNS = ("fine_acc", "fine_top2")
_CPCC_COLUMNS = ("test_cpcc_l2", "test_cpcc_emd", "test_cpcc_own")
_COST_COLUMNS = ("mistake_severity", "hier_dist@1", "hier_dist@5", "expected_cost")
# keys never shown as table columns: identifiers, bookkeeping, duplicates of a shown column
# (``fine_top1`` = fine_acc, ``test_cpcc`` = test_cpcc_own, ``test_cpcc_<d>`` for the training
# distance d is in test_cpcc_own)
_HIDDEN = {"seed", "fine_top1", "n_runs", "n", "num_classes", "epoch", "lam", "test_cpcc"}
_HIDDEN_PREFIX = ("cpcc_subsample", "test_cpcc_sinkhorn", "test_cpcc_swd", "test_cpcc_fastft")
# each method's TestCPCC under its own distance: different yardsticks, so no "best" across rows
_NO_DIRECTION = {"test_cpcc_own"}
MINUS = "\u2212"
FIGURES = ("heatmaps.png", "dendrogram.png", "embedding.png", "curves.png")


# --------------------------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------------------------
def metric_direction(name: str) -> str | None:
    """``"max"`` if a higher value of metric ``name`` is better, ``"min"`` if lower, else ``None``.

    Higher: ``fine_acc``, ``fine_top*``, any ``*_acc``, ``test_cpcc*``, ``cpcc*``, ``map_*``.
    Lower: ``mistake_severity``, ``hier_dist@k``, ``expected_cost``. Anything else (times,
    counts, diagnostics) has no direction and is never marked best; nor has ``test_cpcc_own``
    (each method's TestCPCC under its own training distance: not one yardstick).
    """
    if name in _NO_DIRECTION:
        return None
    if name.startswith(_LOWER_BETTER_PREFIX):
        return "min"
    if name.startswith(_HIGHER_BETTER_PREFIX) or name.endswith(_HIGHER_BETTER_SUFFIX):
        return "max"
    return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return _is_number(v) and math.isfinite(float(v))


def aggregate_runs(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation of every numeric metric, per distance.

    Groups ``runs`` by ``run["distance"]`` (first-appearance order). For each key other than
    ``seed`` that is numeric in at least one run: ``<key>_mean`` = mean over the runs where the
    value is finite, ``<key>_std`` = sample standard deviation (ddof=1) over them, ``None`` for a
    single value (undefined: the table then shows the mean alone); both ``None`` when no run has a
    finite value (e.g. mistake severity of a model that makes no mistake).
    ``n_runs`` = number of runs of that distance.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        if "distance" not in run:
            raise ValueError("every run in the summary needs a 'distance' key; add it")
        groups.setdefault(str(run["distance"]), []).append(run)
    keys: list[str] = []  # metric keys: numeric in at least one run (same keys for every row)
    for run in runs:
        keys += [k for k, v in run.items() if k not in keys and k != "seed" and _is_number(v)]
    out = []
    for dist, rows in groups.items():
        agg: dict[str, Any] = {"distance": dist, "n_runs": len(rows)}
        for k in keys:
            vals = np.array([float(r[k]) for r in rows if _finite(r.get(k))], dtype=np.float64)
            if len(vals) == 0:
                agg[f"{k}_mean"] = agg[f"{k}_std"] = None
            else:
                agg[f"{k}_mean"] = float(vals.mean())
                agg[f"{k}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else None
        out.append(agg)
    return out


def table_columns(aggregate: Sequence[Mapping[str, Any]]) -> list[str]:
    """Metric names shown in the table: accuracies first, then CPCC, mAP, costs, the rest."""
    names: list[str] = []
    for row in aggregate:
        for k in row:
            if k.endswith("_mean") and k[: -len("_mean")] not in names:
                names.append(k[: -len("_mean")])
    names = [n for n in names if n not in _HIDDEN and not n.startswith(_HIDDEN_PREFIX)]
    accs = [n for n in names if n.endswith("_acc") and n not in _LEAD_COLUMNS]
    maps = [n for n in names if n.startswith("map_")]
    order = [*_LEAD_COLUMNS, *accs, *_CPCC_COLUMNS, *maps, *_COST_COLUMNS]
    first = [n for n in order if n in names]
    return first + [n for n in names if n not in first]


def best_rows(aggregate: Sequence[Mapping[str, Any]], metric: str) -> set[int]:
    """Rows whose ``<metric>_mean`` is best (ties all count); empty when it has no direction."""
    direction = metric_direction(metric)
    vals = [row.get(f"{metric}_mean") for row in aggregate]
    finite = [float(v) for v in vals if _finite(v)]
    if direction is None or not finite:
        return set()
    best = max(finite) if direction == "max" else min(finite)
    return {i for i, v in enumerate(vals) if _finite(v) and math.isclose(float(v), best,
                                                                        rel_tol=1e-12, abs_tol=0.0)}


def fmt(v: Any, digits: int = 3) -> str:
    """``v`` with ``digits`` decimals, a real minus sign, and ``–`` for missing / NaN."""
    if not _finite(v):
        return "\u2013"
    return f"{float(v):.{digits}f}".replace("-", MINUS)


def cell(row: Mapping[str, Any], metric: str) -> str:
    """``mean ± std`` of ``metric`` in an aggregate row; the mean alone when the std is missing
    (one seed); ``–`` when the mean is missing."""
    mean, std = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
    if not _finite(mean):
        return fmt(None)
    return f"{fmt(mean)} ± {fmt(std)}" if _finite(std) else fmt(mean)


def relative_change(old: float, new: float) -> float:
    """(new − old) / old, NaN when ``old`` is 0 or either value is missing."""
    if not (_finite(old) and _finite(new)) or float(old) == 0.0:
        return float("nan")
    return (float(new) - float(old)) / float(old)


def _signed(v: float, digits: int, unit: str = "") -> str:
    if not _finite(v):
        return "n/a"
    s = f"{v:+.{digits}f}"
    if float(s) == 0.0:
        s = f"{0.0:.{digits}f}"  # no "+0.0" / "-0.0"
    return s.replace("-", MINUS) + unit


def roi(base: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, float]:
    """Return on investment of one method over the baseline (aggregate rows with ``*_mean``).

    ``severity_old/new/change`` and ``cost_old/new/change`` (relative change, a fraction),
    ``acc_points`` = 100 · (fine_acc_new − fine_acc_old), ``cpcc_emd_old/new``.
    """
    def g(r: Mapping[str, Any], k: str) -> float:
        v = r.get(f"{k}_mean")
        return float(v) if _finite(v) else float("nan")

    out = {
        "severity_old": g(base, "mistake_severity"),
        "severity_new": g(row, "mistake_severity"),
        "cost_old": g(base, "expected_cost"),
        "cost_new": g(row, "expected_cost"),
        "acc_points": 100.0 * (g(row, "fine_acc") - g(base, "fine_acc")),
        "cpcc_emd_old": g(base, "test_cpcc_emd"),
        "cpcc_emd_new": g(row, "test_cpcc_emd"),
    }
    out["severity_change"] = relative_change(out["severity_old"], out["severity_new"])
    out["cost_change"] = relative_change(out["cost_old"], out["cost_new"])
    return out


def roi_line(name: str, base: Mapping[str, Any], row: Mapping[str, Any]) -> str:
    """One line, e.g. ``fastft: mistake severity 3.10 → 2.60 (−16%), expected cost 1.20 → 1.00
    (−17%) at fine accuracy −0.4 points; TestCPCC(emd) 0.21 → 0.85``."""
    r = roi(base, row)
    sev = (f"mistake severity {fmt(r['severity_old'], 2)} → {fmt(r['severity_new'], 2)} "
           f"({_signed(100 * r['severity_change'], 0, '%')})")
    cost = (f"expected cost {fmt(r['cost_old'], 2)} → {fmt(r['cost_new'], 2)} "
            f"({_signed(100 * r['cost_change'], 0, '%')})")
    acc = f"fine accuracy {_signed(r['acc_points'], 1, ' points')}"
    cp = f"TestCPCC(emd) {fmt(r['cpcc_emd_old'], 2)} → {fmt(r['cpcc_emd_new'], 2)}"
    return f"{name}: {sev}, {cost} at {acc}; {cp}"


def roi_lines(aggregate: Sequence[Mapping[str, Any]], baseline: str = "none") -> list[str]:
    """The ROI line of every method against ``baseline`` (a note if the baseline was not run)."""
    base = next((r for r in aggregate if r["distance"] == baseline), None)
    if base is None:
        return [f"No `{baseline}` run to compare against: add `{baseline}` to the distances."]
    return [roi_line(r["distance"], base, r) for r in aggregate if r["distance"] != baseline]


# --------------------------------------------------------------------------------------------
# features of a trained run
# --------------------------------------------------------------------------------------------
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
    from .evaluate import _split, load_run
    from .train import predict

    run = load_run(run_dir, device="cpu")
    res = predict(run.model, _split(run.bundle, split), run.env, run.cfg)
    return (res["features"].numpy().astype(np.float32, copy=False),
            res["labels"].numpy().astype(np.int64, copy=False))


def _load_tree(run_dir: Path):
    from .tree import LabelTree

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

    from .distances import class_distances

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
    """(PCA, t-SNE) 2-D coordinates of ``features`` [n, d]; t-SNE perplexity min(15, (n−1)/3)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = np.asarray(features, dtype=np.float64)
    n = len(x)
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
        if len(coarse_names) <= 20:
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


def render_figures(out: Path, aggregate: Sequence[Mapping[str, Any]],
                   run_dirs: Mapping[str, Any], max_points: int = 1000) -> list[str]:
    """Write the four PNGs into ``out``; return their file names (none if no run directories)."""
    runs = {name: _run_list(v) for name, v in run_dirs.items() if _run_list(v)}
    if not runs:
        return []
    first = {name: dirs[0] for name, dirs in runs.items()}
    tree = _load_tree(next(iter(first.values())))
    tree_d = np.asarray(tree.distance_matrix(), dtype=np.float64)
    k = tree.num_classes
    feats = {name: collect_features(d, "test") for name, d in first.items()}
    learned = {name: learned_distance_matrix(x, y, k) for name, (x, y) in feats.items()}
    cp = {r["distance"]: r.get("test_cpcc_l2_mean") for r in aggregate}
    titles = {n: f"{n} (TestCPCC l2 {fmt(cp.get(n), 2)})" for n in learned}
    plot_heatmaps(tree_d, learned, out / "heatmaps.png", titles)
    plot_dendrograms(tree_d, learned, tree.leaves, out / "dendrogram.png")
    levels = tree.levels
    if levels:
        coarse_ids, coarse_names = np.asarray(levels[-1].ids), list(levels[-1].names)
    else:
        coarse_ids, coarse_names = np.arange(k), list(tree.leaves)
    plot_embeddings(feats, coarse_ids, coarse_names, out / "embedding.png", max_points)
    logs = {n: [d / "log.csv" for d in dirs if (d / "log.csv").exists()]
            for n, dirs in runs.items()}
    plot_curves(logs, out / "curves.png")
    return list(FIGURES)


def markdown_table(aggregate: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table: method, runs, then ``mean ± std`` per metric; best per column in bold."""
    cols = table_columns(aggregate)
    best = {c: best_rows(aggregate, c) for c in cols}
    lines = ["| method | runs | " + " | ".join(cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for i, row in enumerate(aggregate):
        cells = [f"**{cell(row, c)}**" if i in best[c] else cell(row, c) for c in cols]
        lines.append(f"| {row['distance']} | {row.get('n_runs', '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def html_table(aggregate: Sequence[Mapping[str, Any]]) -> str:
    """The same table as HTML; best per column in ``<strong>``."""
    cols = table_columns(aggregate)
    best = {c: best_rows(aggregate, c) for c in cols}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["method", "runs", *cols])
    body = []
    for i, row in enumerate(aggregate):
        tds = [f"<td>{html.escape(str(row['distance']))}</td>",
               f"<td>{html.escape(str(row.get('n_runs', '')))}</td>"]
        for c in cols:
            text = html.escape(cell(row, c))
            tds.append(f"<td><strong>{text}</strong></td>" if i in best[c] else f"<td>{text}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return (f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body)
            + "\n</tbody>\n</table>")


_LEGEND = ("Mean ± sample standard deviation over seeds (the mean alone for one seed); "
           "the best mean per column is in bold (higher is better for accuracies, CPCC and "
           "mAP; lower for mistake severity, hier_dist@k and expected cost).")


def render_markdown(aggregate: Sequence[Mapping[str, Any]], figures: Sequence[str]) -> str:
    parts = ["# otcpcc comparison", "", _LEGEND, "", markdown_table(aggregate), "",
             "## Return on investment (against `none`)", ""]
    parts += [f"- {line}" for line in roi_lines(aggregate)]
    if figures:
        parts += ["", "## Figures", ""] + [f"![{f[:-4]}]({f})" for f in figures]
    return "\n".join(parts) + "\n"


def render_html(aggregate: Sequence[Mapping[str, Any]], out: Path, figures: Sequence[str]) -> str:
    imgs = []
    for f in figures:
        data = base64.b64encode((out / f).read_bytes()).decode("ascii")
        imgs.append(f'<h3>{html.escape(f[:-4])}</h3>\n<img alt="{html.escape(f[:-4])}" '
                    f'src="data:image/png;base64,{data}">')
    roi_items = "\n".join(f"<li>{html.escape(line).replace('`', '')}</li>"
                          for line in roi_lines(aggregate))
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #bbb;padding:3px 6px;text-align:right}"
             "img{max-width:100%}")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>otcpcc comparison</title>\n<style>{style}</style>\n</head>\n<body>\n"
        f"<h1>otcpcc comparison</h1>\n<p>{html.escape(_LEGEND)}</p>\n{html_table(aggregate)}\n"
        f"<h2>Return on investment (against none)</h2>\n<ul>\n{roi_items}\n</ul>\n"
        + (("<h2>Figures</h2>\n" + "\n".join(imgs) + "\n") if imgs else "")
        + "</body>\n</html>\n"
    )


def render_report(out: str | os.PathLike, summary: Mapping[str, Any],
                  run_dirs: Mapping[str, Any], *, max_points: int = 1000) -> None:
    """Write ``report.md``, ``report.html`` and the PNG figures into ``out``.

    ``summary``: ``{"runs": [...], "aggregate": [...]}`` as written by ``run_compare`` (the
    aggregate is recomputed from ``runs`` when absent). ``run_dirs``: method name → run directory
    or list of run directories (one per seed); figures use the first, curves use all. An empty
    mapping writes the table and ROI line without figures. ``max_points``: test points per
    method in the PCA/t-SNE map (t-SNE is the slow part: ~1–4 s per method at 1000 points).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if "runs" not in summary:
        raise ValueError("summary has no 'runs' list: pass the dict written to summary.json")
    aggregate = summary.get("aggregate") or aggregate_runs(summary["runs"])
    figures = render_figures(out, aggregate, run_dirs, max_points)
    (out / "report.md").write_text(render_markdown(aggregate, figures), encoding="utf-8")
    (out / "report.html").write_text(render_html(aggregate, out, figures), encoding="utf-8")
