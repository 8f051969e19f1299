"""Report rendering and the compare/sweep drivers.

Numbers in the fabricated summary are chosen so that means, standard deviations, the best cell
per column and the return-on-investment line can be worked out by hand (see each test).
"""

from __future__ import annotations

import csv
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from otcpcc import LabelTree
from otcpcc.study import compare, context, figures, report, sentences, tables

# ------------------------------------------------------------------ fabricated data
# none:   fine_acc 0.80, 0.82 -> 0.81 ± 0.01414; severity 3.0, 3.2 -> 3.10; cost 1.0, 1.4 -> 1.20
# fastft: fine_acc 0.79, 0.81 -> 0.80 ± 0.01414; severity 2.5, 2.7 -> 2.60 ± 0.1414; cost 1.0, 1.0
# l2:     one seed, fine_acc 0.83 (best), severity None (no mistakes, must be skipped) ...
RUNS = [
    {"distance": "none", "seed": 0, "fine_acc": 0.80, "test_cpcc_l2": 0.20, "test_cpcc_emd": 0.10,
     "mistake_severity": 3.0, "expected_cost": 1.0, "hier_dist@1": 0.6, "map_fine": 0.5,
     "level1_acc": 0.90, "recommendation": "l2"},
    {"distance": "none", "seed": 1, "fine_acc": 0.82, "test_cpcc_l2": 0.30, "test_cpcc_emd": 0.20,
     "mistake_severity": 3.2, "expected_cost": 1.4, "hier_dist@1": 0.8, "map_fine": 0.5,
     "level1_acc": 0.92, "recommendation": "l2"},
    {"distance": "fastft", "seed": 0, "fine_acc": 0.79, "test_cpcc_l2": 0.80, "test_cpcc_emd": 0.85,
     "mistake_severity": 2.5, "expected_cost": 1.0, "hier_dist@1": 0.5, "map_fine": 0.7,
     "level1_acc": 0.95, "recommendation": "ot"},
    {"distance": "fastft", "seed": 1, "fine_acc": 0.81, "test_cpcc_l2": 0.90, "test_cpcc_emd": 0.95,
     "mistake_severity": 2.7, "expected_cost": 1.0, "hier_dist@1": 0.5, "map_fine": 0.6,
     "level1_acc": 0.95, "recommendation": "ot"},
    {"distance": "l2", "seed": 0, "fine_acc": 0.83, "test_cpcc_l2": 0.95, "test_cpcc_emd": 0.70,
     "mistake_severity": None, "expected_cost": 0.9, "hier_dist@1": 0.55, "map_fine": 0.65,
     "level1_acc": 0.95, "recommendation": "ot"},
]

LEVELS = [np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 0, 0, 1, 1])]  # 6 leaves, mid, top


def _tree() -> LabelTree:
    return LabelTree.from_levels(LEVELS)


def _features(seed: int = 0, n_per_class: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(6), n_per_class)
    centers = np.array([[0, 0], [1, 0], [0, 4], [1, 4], [9, 0], [10, 0]], dtype=float)
    x = np.concatenate([centers[y], rng.normal(size=(len(y), 3))], axis=1) + rng.normal(
        scale=0.1, size=(len(y), 5))
    return x.astype(np.float32), y.astype(np.int64)


def _write_log(path: Path, epochs: int, offset: float) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "loss", "ce", "cpcc", "train_acc", "test_acc", "lr", "epoch_time"])
        for e in range(1, epochs + 1):
            w.writerow([e, 2 / e + offset, 1.5 / e, 0.5 / e, 1 - 0.5 / e, 0.9 - 0.5 / e, 0.1, 0.25])


def _fake_run(path: Path, offset: float = 0.0) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    _tree().to_file(path / "tree.json", format="json")
    _write_log(path / "log.csv", 4, offset)
    return path


@pytest.fixture
def fake_features(monkeypatch):
    """collect_features without a checkpoint: deterministic features from the run's name."""
    calls = []

    def collect(run_dir, split="test", data_dir=None):
        calls.append((Path(run_dir).name, split))
        return _features(seed=len(calls))

    monkeypatch.setattr(figures, "collect_features", collect)
    return calls


class StrictHTML(HTMLParser):
    """Records tags, checks that every end tag closes the innermost open element."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.tags = [], [], []
        self.cells: list[list[tuple[str, bool]]] = []  # table rows of (text, bold)
        self._row = None
        self._cell = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)
        if tag == "tr":
            self._row = []
        if tag in ("td", "th"):
            self._cell = ["", False]
        if tag == "strong" and self._cell is not None:
            self._cell[1] = True

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()
        if tag in ("td", "th"):
            self._row.append((self._cell[0], self._cell[1]))
            self._cell = None
        if tag == "tr":
            self.cells.append(self._row)

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data


def _md_tables(text: str) -> list[tuple[str, list[str], dict[str, list[str]]]]:
    """The report's Markdown tables: (title, methods, {metric: cells}) with the ↑/↓ arrows kept in
    the metric label."""
    out, title, lines = [], None, text.splitlines()
    for i, ln in enumerate(lines):
        if ln.startswith("**") and i + 2 < len(lines) and lines[i + 2].startswith("| metric |"):
            title = ln.strip("*")
        if ln.startswith("| metric |"):
            methods = [c.strip() for c in ln.strip("|").split("|")][1:]
            rows = {}
            for body in lines[i + 2:]:
                if not body.startswith("|"):
                    break
                cells = [c.strip() for c in body.strip("|").split("|")]
                rows[cells[0]] = cells[1:]
            out.append((title, methods, rows))
    return out


def _md_cells(text: str) -> dict[str, dict[str, str]]:
    """metric (no arrow) -> method -> cell, over every table of the report."""
    grid: dict[str, dict[str, str]] = {}
    for _, methods, rows in _md_tables(text):
        for label, cells in rows.items():
            grid.setdefault(label.split(" ")[0], {}).update(zip(methods, cells, strict=True))
    return grid


def _html_cells(rows: list[list[tuple[str, bool]]]) -> dict[str, dict[str, tuple[str, bool]]]:
    grid: dict[str, dict[str, tuple[str, bool]]] = {}
    methods: list[str] = []
    for row in rows:
        if row and row[0][0] == "metric":
            methods = [t for t, _ in row[1:]]
            continue
        grid.setdefault(row[0][0].split(" ")[0], {}).update(zip(methods, row[1:], strict=True))
    return grid


# ------------------------------------------------------------------ numbers
def test_metric_direction():
    for name in ("fine_acc", "fine_top2", "level1_acc", "test_cpcc_emd", "map_fine", "map_level1"):
        assert tables.metric_direction(name) == "max", name
    for name in ("mistake_severity", "hier_dist@1", "hier_dist@5", "expected_cost"):
        assert tables.metric_direction(name) == "min", name
    for name in ("train_time_s", "multimodality_mean_components", "lam"):
        assert tables.metric_direction(name) is None, name


def test_aggregate_matches_numpy_and_skips_missing():
    agg = {r["distance"]: r for r in tables.aggregate_runs(RUNS)}
    assert list(agg) == ["none", "fastft", "l2"]
    assert agg["none"]["n_runs"] == 2 and agg["l2"]["n_runs"] == 1
    assert agg["none"]["fine_acc_mean"] == pytest.approx(0.81)
    assert agg["none"]["fine_acc_std"] == pytest.approx(np.std([0.80, 0.82], ddof=1))
    assert agg["fastft"]["mistake_severity_mean"] == pytest.approx(2.6)
    assert agg["fastft"]["mistake_severity_std"] == pytest.approx(math.sqrt(0.02))
    assert agg["l2"]["fine_acc_mean"] == 0.83 and agg["l2"]["fine_acc_std"] is None  # one seed
    assert agg["l2"]["mistake_severity_mean"] is None  # no finite value
    assert "seed_mean" not in agg["none"] and "recommendation_mean" not in agg["none"]
    # a run with a NaN/None among finite ones: mean over the finite ones only
    mixed = tables.aggregate_runs([{"distance": "a", "x": v} for v in (1.0, None, np.nan, 3.0)])
    assert mixed[0]["x_mean"] == 2.0 and mixed[0]["x_std"] == pytest.approx(math.sqrt(2))
    with pytest.raises(ValueError, match="distance"):
        tables.aggregate_runs([{"x": 1.0}])


def test_roi_hand_worked():
    # severity 3.10 -> 2.60: -0.5 / 3.1 = -16.13 %; cost 1.20 -> 1.00: -16.67 %;
    # accuracy 0.81 -> 0.80: -1.0 point; TestCPCC(emd) 0.15 -> 0.90
    agg = {r["distance"]: r for r in tables.aggregate_runs(RUNS)}
    r = tables.roi(agg["none"], agg["fastft"])
    assert r["severity_change"] == pytest.approx(-0.5 / 3.1)
    assert r["cost_change"] == pytest.approx(-0.2 / 1.2)
    assert r["acc_points"] == pytest.approx(-1.0)
    line = tables.roi_line("fastft", agg["none"], agg["fastft"])
    assert line == ("fastft: mistake severity 3.10 → 2.60 (−16%), expected cost 1.20 → 1.00 "
                    "(−17%) at fine accuracy −1.0 points; TestCPCC(emd) 0.15 → 0.90")
    # missing severity (l2 made no mistakes) and a zero baseline give n/a, never a crash
    line_l2 = tables.roi_line("l2", agg["none"], agg["l2"])
    assert "mistake severity 3.10 → – (n/a)" in line_l2
    assert "expected cost 1.20 → 0.90 (−25%)" in line_l2 and "+2.0 points" in line_l2
    zero = tables.roi({"expected_cost_mean": 0.0}, {"expected_cost_mean": 1.0})
    assert math.isnan(zero["cost_change"])
    assert tables.roi_lines([{"distance": "fastft"}])[0].startswith("No `none` run")


def test_best_rows_ties_and_directions():
    agg = [{"distance": "a", "x_acc_mean": 0.5, "expected_cost_mean": 2.0},
           {"distance": "b", "x_acc_mean": 0.7, "expected_cost_mean": 1.0},
           {"distance": "c", "x_acc_mean": 0.7, "expected_cost_mean": None}]
    assert tables.best_rows(agg, "x_acc") == {1, 2}
    assert tables.best_rows(agg, "expected_cost") == {1}
    assert tables.best_rows(agg, "train_time_s") == set()


# ------------------------------------------------------------------ the report files
def test_render_report_files(tmp_path, fake_features):
    summary = {"runs": RUNS, "aggregate": tables.aggregate_runs(RUNS)}
    run_dirs = {"none": [_fake_run(tmp_path / "none" / "seed0"),
                         _fake_run(tmp_path / "none" / "seed1", 0.1)],
                "fastft": [_fake_run(tmp_path / "fastft" / "seed0")],
                "l2": _fake_run(tmp_path / "l2" / "seed0")}
    out = tmp_path / "out"
    report.render_report(out, summary, run_dirs)
    # one feature collection per method (first seed), on the test split
    assert fake_features == [("seed0", "test")] * 3

    md = (out / "report.md").read_text()
    tabs = _md_tables(md)
    # transposed: one table per metric group, one row per metric (with its direction), one column
    # per method; identifiers and strings are not rows
    assert [(t, m, list(r)) for t, m, r in tabs] == [
        ("Accuracy (higher is better)", ["none", "fastft", "l2"],
         ["runs", "fine_acc ↑", "level1_acc ↑"]),
        ("Mistakes (lower is better)", ["none", "fastft", "l2"],
         ["mistake_severity ↓", "hier_dist@1 ↓", "expected_cost ↓"]),
        ("Hierarchy in the features (higher is better)", ["none", "fastft", "l2"],
         ["test_cpcc_l2 ↑", "test_cpcc_emd ↑", "map_fine ↑"])]
    grid = _md_cells(md)
    assert grid["runs"] == {"none": "2", "fastft": "2", "l2": "1"}
    assert grid["fine_acc"]["none"] == "0.810 ± 0.014"
    assert grid["fine_acc"]["l2"] == "**0.830**"  # highest accuracy; one seed: no std
    assert grid["mistake_severity"]["fastft"] == "**2.600 ± 0.141**"  # lowest severity
    assert grid["mistake_severity"]["l2"] == "–"
    assert grid["expected_cost"]["l2"] == "**0.900**"
    assert grid["test_cpcc_emd"]["fastft"] == "**0.900 ± 0.071**"
    assert grid["test_cpcc_l2"]["l2"] == "**0.950**"
    assert grid["map_fine"]["fastft"] == "**0.650 ± 0.071**"
    assert grid["map_fine"]["l2"] == "**0.650**"  # tie: both marked
    assert grid["map_fine"]["none"] == "0.500 ± 0.000"
    bold = {m: {k for k, row in grid.items() if row[m].startswith("**")}
            for m in ("none", "fastft", "l2")}  # exactly the expected bold cells, nothing else
    assert bold == {"none": set(),
                    "fastft": {"test_cpcc_emd", "mistake_severity", "hier_dist@1", "map_fine",
                               "level1_acc"},
                    "l2": {"fine_acc", "test_cpcc_l2", "expected_cost", "map_fine",
                           "level1_acc"}}
    assert ("fastft: mistake severity 3.10 → 2.60 (−16%), expected cost 1.20 → 1.00 (−17%) "
            "at fine accuracy −1.0 points") in md
    # no verdicts in this summary: the report says so; context read from the run directories
    assert "## Verdict" in md and "no paired verdicts" in md
    assert "Lowest mean expected cost: l2 (0.900)." in md
    assert "- **Data**: not recorded: 6 fine classes, tree depth 3" in md
    assert "- **Seeds**: 0, 1 (every method" in md
    for f in tables.FIGURES:
        assert f"({f})" in md
    assert "*Fine accuracy against the mean cost of the decisions, C[true, decided] (cost matrix: " \
           "tree distance), per method: mean over seeds 0, 1;" in md
    assert "Matrices from seed 0 of each method." in md  # fake run dirs: seed from their name

    parser = StrictHTML()
    parser.feed((out / "report.html").read_text())
    parser.close()
    assert parser.errors == [] and parser.stack == []
    assert parser.tags.count("table") == 3 and parser.tags.count("img") == 5
    assert parser.tags.count("figcaption") == 5
    html_grid = _html_cells(parser.cells)
    assert {k: {m: t for m, (t, _) in v.items()} for k, v in html_grid.items()} == {
        k: {m: t.strip("*") for m, t in v.items()} for k, v in grid.items()}
    assert html_grid["mistake_severity"]["fastft"] == ("2.600 ± 0.141", True)
    assert html_grid["mistake_severity"]["none"] == ("3.100 ± 0.141", False)
    assert html_grid["fine_acc"]["l2"] == ("0.830", True)

    for f in tables.FIGURES:
        img = imread(out / f)
        assert img.shape[0] > 150 and img.shape[1] > 300, f
        assert img[..., :3].std() > 0.05, f  # not a blank canvas


def test_render_report_without_runs_dirs(tmp_path):
    report.render_report(tmp_path, {"runs": RUNS}, {})  # aggregate recomputed
    md = (tmp_path / "report.md").read_text()
    assert _md_cells(md)["runs"] == {"none": "2", "fastft": "2", "l2": "1"}
    # the trade-off needs only the summary; the other figures need run directories
    assert "![tradeoff](tradeoff.png)" in md and md.count("![") == 1
    assert not (tmp_path / "heatmaps.png").exists()
    assert "- **Backbone**: not recorded" in md and "- **Methods**: none, fastft, l2" in md
    with pytest.raises(ValueError, match="runs"):
        report.render_report(tmp_path, {}, {})


def test_learned_distance_matrix_is_class_mean_distance():
    x, y = _features()
    y = np.where(y == 3, 2, y)  # class 3 absent
    d = figures.learned_distance_matrix(x, y, 6)
    means = {c: x[y == c].astype(np.float64).mean(0) for c in (0, 1, 2, 4, 5)}
    for a in means:
        for b in means:
            assert d[a, b] == pytest.approx(np.linalg.norm(means[a] - means[b]), abs=1e-4)
    assert np.isnan(d[3]).all() and np.isnan(d[:, 3]).all()


def test_tree_leaf_order_groups_siblings():
    order = list(figures.tree_leaf_order(_tree().distance_matrix()))
    pos = {leaf: i for i, leaf in enumerate(order)}
    for a, b in ((0, 1), (2, 3), (4, 5)):
        assert abs(pos[a] - pos[b]) == 1  # siblings adjacent
    assert {pos[4], pos[5]} in ({0, 1}, {4, 5})  # the other top-level branch at one end


def test_read_log_and_subsample(tmp_path):
    _write_log(tmp_path / "log.csv", 3, 0.0)
    log = figures.read_log(tmp_path / "log.csv")
    np.testing.assert_allclose(log["loss"], [2.0, 1.0, 2 / 3])
    idx = figures.subsample(5000, 1000, seed=1)
    assert len(idx) == 1000 and len(set(idx)) == 1000 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(figures.subsample(10, 1000), np.arange(10))


# ------------------------------------------------------------------ compare / sweep drivers
def _fake_train_eval(tmp_log):
    """Stand-in for train + evaluate: metrics depend on (distance, seed, lam, batch size)."""
    def fake(cfg, run_dir, force, progress, cost_matrix, resume=False):
        tmp_log.append((cfg.distance, cfg.seed, cfg.lam, cfg.batch_size, force))
        _fake_run(Path(run_dir))
        gain = 0.0 if cfg.distance == "none" else 0.1 * cfg.lam
        own = "l2" if cfg.distance == "none" else cfg.distance
        return {"run_dir": Path(run_dir), "metrics": {  # the shape of evaluate_run's result
            "split": "test", "n": 120, "num_classes": 6, "epoch": 1, "distance": cfg.distance,
            "lam": cfg.lam, "seed": cfg.seed, "cost_matrix": "tree distance",
            "fine_acc": 0.8 + 0.01 * cfg.seed - 0.001 * cfg.batch_size / 64,
            "fine_top1": 0.8 + 0.01 * cfg.seed - 0.001 * cfg.batch_size / 64,
            "fine_top2": 0.9, "level1_acc": 0.9,
            "test_cpcc_l2": 0.2 + gain, "test_cpcc_emd": 0.1 + gain, f"test_cpcc_{own}": 0.3,
            "test_cpcc": 0.3, "test_cpcc_distance": own,
            "cpcc_subsample": {"emd": {"max_per_class": 100, "n": 600, "of": 1200, "seed": 0}},
            "mistake_severity": 3.0 - gain, "hier_dist@1": 0.5, "hier_dist@5": 2.0,
            "expected_cost": 1.0 - gain / 2, "map_fine": 0.5,
            "multimodality": {"mean_components": 2.5, "per_class": [2, 3],
                              "recommendation": "ot"},
            "nan_metric": float("nan")}}
    return fake


def test_run_compare_summary(tmp_path, monkeypatch, fake_features):
    calls = []
    monkeypatch.setattr(compare, "_train_and_evaluate", _fake_train_eval(calls))
    cfg = {"data": "synthetic", "seed": 3, "lam": 2.0, "epochs": 1, "batch_size": 256}
    with pytest.raises(ValueError, match=r"fastft 2 times \(fft, fastft\)"):  # one method twice
        compare.run_compare(cfg, ["none", "fft", "fastft"], seeds=2, out=tmp_path / "cmp")
    out = compare.run_compare(cfg, ["none", "fft"], seeds=2, out=tmp_path / "cmp",
                              progress=False)
    assert [(c[0], c[1]) for c in calls] == [("none", 3), ("none", 4), ("fastft", 3),
                                             ("fastft", 4)]  # alias resolved, same seeds
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"context", "runs", "aggregate", "verdicts", "ot_verdicts"}
    ctx = summary["context"]  # from the first run's files (the fake has tree.json only) + compare
    assert ctx == {"num_classes": 6, "tree_depth": 3, "levels": ["level1", "level2"], "lam": 2.0,
                   "methods": ["none", "fastft"], "seeds": [3, 4]}
    run = summary["runs"][2]
    assert list(run)[:10] == ["method", "distance", "seed", "lam", "fine_acc", "test_cpcc_l2",
                              "test_cpcc_emd", "test_cpcc_own", "mistake_severity",
                              "expected_cost"]
    assert run["method"] == "fastft"
    assert run["distance"] == "fastft" and run["seed"] == 3 and run["lam"] == 2.0
    assert run["fine_acc"] == run["fine_top1"] == pytest.approx(0.8 + 0.03 - 0.004)
    assert run["mistake_severity"] == pytest.approx(2.8)
    assert run["multimodality_mean_components"] == 2.5
    assert run["multimodality_recommendation"] == "ot"
    assert "multimodality_per_class" not in run and run["nan_metric"] is None
    assert run["train_time_s"] == pytest.approx(1.0)  # 4 epochs x 0.25 s in the fake log
    assert run["test_cpcc_own"] == run["test_cpcc"] == run["test_cpcc_fastft"] == 0.3
    assert run["cpcc_subsample_emd_n"] == 600 and run["test_cpcc_distance"] == "fastft"
    assert summary["runs"][0]["lam"] == 0.0  # flat CE
    agg = {a["distance"]: a for a in summary["aggregate"]}
    assert agg["fastft"]["fine_acc_mean"] == pytest.approx(0.8 + 0.035 - 0.004)
    assert agg["fastft"]["fine_acc_std"] == pytest.approx(np.std([0.826, 0.836], ddof=1))
    for name in ("report.md", "report.html", *tables.FIGURES):
        assert (out / name).is_file(), name
    md = (out / "report.md").read_text()
    assert "fastft: mistake severity 3.00 → 2.80 (−7%)" in md
    assert [list(rows) for _, _, rows in _md_tables(md)] == [
        ["runs", "fine_acc ↑", "fine_top2 ↑", "level1_acc ↑"],
        ["mistake_severity ↓", "hier_dist@1 ↓", "hier_dist@5 ↓", "expected_cost ↓"],
        ["test_cpcc_l2 ↑", "test_cpcc_emd ↑", "test_cpcc_own", "map_fine ↑"],
        ["multimodality_mean_components", "train_time_s"]]
    own = _md_cells(md)["test_cpcc_own"]
    assert not own["none"].startswith("**") and not own["fastft"].startswith("**")  # no direction
    assert "- **Seeds**: 3, 4 (every method" in md and "- **λ**: λ = 2.0" in md

    with pytest.raises(ValueError, match="--force"):
        compare.run_compare(cfg, ["none"], seeds=1, out=out, progress=False)
    compare.run_compare(cfg, ["none"], seeds=1, out=out, force=True, progress=False)
    assert calls[-1][-1] is True  # force reaches train
    with pytest.raises(ValueError, match="unknown method"):
        compare.run_compare(cfg, ["nope"], seeds=1, out=tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="seeds"):
        compare.run_compare(cfg, ["none"], seeds=0, out=tmp_path / "x", progress=False)


def test_run_sweep_csv_and_plot(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(compare, "_train_and_evaluate", _fake_train_eval(calls))
    cfg = {"data": "synthetic", "distance": "fastft", "epochs": 1}
    out = compare.run_sweep(cfg, [0.0, 0.5, 2.0], [32, 64], tmp_path / "sw", progress=False)
    assert len(calls) == 6
    with open(out / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:8] == ["lam", "batch_size", "fine_acc", "test_cpcc_l2", "test_cpcc_emd",
                                 "test_cpcc_own", "mistake_severity", "expected_cost"]
    by = {(float(r["lam"]), int(r["batch_size"])): r for r in rows}
    assert set(by) == {(lam, b) for lam in (0.0, 0.5, 2.0) for b in (32, 64)}
    assert float(by[(2.0, 32)]["test_cpcc_emd"]) == pytest.approx(0.3)
    assert float(by[(0.5, 64)]["fine_acc"]) == pytest.approx(0.799)
    assert (out / "lam0.5_bs64").is_dir()
    img = imread(out / "sweep.png")
    assert img.shape[0] > 300 and img[..., :3].std() > 0.05
    with pytest.raises(ValueError, match="distance none"):
        compare.run_sweep({"distance": "none"}, [1.0], [32], tmp_path / "s2", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        compare.run_sweep(cfg, [1.0], [0], tmp_path / "s3", progress=False)
    with pytest.raises(ValueError, match="lambda"):
        compare.run_sweep(cfg, [-1.0], [32], tmp_path / "s4", progress=False)


# ------------------------------------------------------------------ end to end (real training)
TINY = dict(data="synthetic", data_options={"branching": [2, 3], "train_per_class": 12,
                                            "test_per_class": 6},
            epochs=1, batch_size=16, model_options={"hidden": [32, 16]}, device="cpu")


@pytest.mark.slow
def test_compare_and_sweep_end_to_end(tmp_path):
    out = compare.run_compare(TINY, ["none", "fastft"], seeds=1, out=tmp_path / "cmp",
                              progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["distance"], r["seed"]) for r in summary["runs"]] == [("none", 0), ("fastft", 0)]
    for run, name in zip(summary["runs"], ("none", "fastft"), strict=True):
        ev = json.loads((out / name / "seed0" / "eval.json").read_text())
        for key in ("fine_acc", "test_cpcc_l2", "test_cpcc_emd", "mistake_severity",
                    "expected_cost", "hier_dist@1", "hier_dist@5", "map_fine"):
            assert run[key] == pytest.approx(ev[key], nan_ok=True), key
        assert run["fine_acc"] == ev["fine_top1"]
        assert run["multimodality_mean_components"] == ev["multimodality"]["mean_components"]
        assert run["train_time_s"] > 0
    assert [a["distance"] for a in summary["aggregate"]] == ["none", "fastft"]
    md = (out / "report.md").read_text()
    assert "fastft: mistake severity" in md and _md_cells(md)["runs"] == {"none": "1",
                                                                          "fastft": "1"}
    ctx = summary["context"]  # the real run's files
    assert ctx["data"] == "synthetic" and ctx["backbone"] == "mlp" and ctx["num_classes"] == 6
    assert ctx["tree_depth"] == 2 and ctx["epochs"] == 1 and ctx["batch_size"] == 16
    assert ctx["device"] == "cpu" and ctx["cost_matrix"] == "tree distance"
    assert ctx["otcpcc"] and ctx["seeds"] == [0] and ctx["methods"] == ["none", "fastft"]
    assert "One seed" in md  # compare writes verdicts; with one seed the report says there is no interval
    assert "no paired verdicts" not in md
    for f in tables.FIGURES:
        assert imread(out / f).shape[0] > 150, f
    # collect_features reproduces the model's test features (6 classes x 6 test samples)
    x, y = figures.collect_features(out / "fastft" / "seed0")
    assert x.shape[0] == y.shape[0] == 36 and x.dtype == np.float32
    np.testing.assert_array_equal(np.bincount(y), [6] * 6)

    sw = compare.run_sweep({**TINY, "distance": "fastft"}, [0.0, 1.0], [16], tmp_path / "sw",
                           progress=False)
    with open(sw / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(float(r["lam"]), int(r["batch_size"])) for r in rows] == [(0.0, 16), (1.0, 16)]
    ev = json.loads((sw / "lam1_bs16" / "eval.json").read_text())
    assert float(rows[1]["test_cpcc_emd"]) == pytest.approx(ev["test_cpcc_emd"])
    assert imread(sw / "sweep.png").shape[0] > 300


# ------------------------------------------------------------------ verdict, context, trade-off
VERDICTS = [  # hand-made, in the schema of summary.json["verdicts"]; deliberately out of order
    {"method": "hxe", "metric": "test_cpcc_emd", "baseline": "none", "diff_mean": 0.05,
     "ci_low": -0.01, "ci_high": 0.11, "call": "within noise"},
    {"method": "hxe", "metric": "fine_acc", "baseline": "none", "diff_mean": -0.004,
     "ci_low": -0.007, "ci_high": -0.001, "call": "worse"},
    {"method": "hxe", "metric": "expected_cost", "baseline": "none", "diff_mean": -0.03,
     "ci_low": -0.04, "ci_high": -0.02, "call": "better"},
    {"method": "fastft", "metric": "expected_cost", "baseline": "none", "diff_mean": 0.02,
     "ci_low": 0.01, "ci_high": 0.03, "call": "worse"},
    {"method": "fastft", "metric": "map_coarse", "baseline": "none", "diff_mean": 0.0001,
     "ci_low": -0.02, "ci_high": 0.02, "call": "within noise"},
]


def test_verdict_sentences_hand_worked():
    agg = [{"method": "none", "expected_cost_mean": 1.0, "expected_cost_std": 0.1,
            "fine_acc_mean": 0.8, "fine_acc_std": None},
           {"method": "hxe", "expected_cost_mean": 0.97, "expected_cost_std": 0.1,
            "fine_acc_mean": 0.796, "fine_acc_std": None}]
    s = sentences.verdict_sentences(VERDICTS, agg, [0, 1, 2])
    assert s[0].startswith("Each method against none, paired over seeds 0, 1, 2 (same seed")
    assert s[1:] == [
        "Lowest mean expected cost (± sd over seeds, not an interval): hxe (0.970 ± 0.100).",
        "Highest mean fine accuracy: none (0.800).",
        "Expected cost against none: better — hxe; worse — fastft; within noise — no method.",
        # ± = half-width of the interval; accuracy in points; the order: cost, accuracy, CPCC
        "Against none, hxe lowers expected cost by 0.030 ± 0.010 (better), lowers fine accuracy "
        "by 0.4 ± 0.3 points (worse) and raises TestCPCC(emd) by 0.050 ± 0.060 (within noise).",
        "Against none, fastft raises expected cost by 0.020 ± 0.010 (worse) and changes coarse "
        "mAP by 0.000 ± 0.020 (within noise)."]
    one = [{"method": "l2", "metric": "expected_cost", "baseline": "none", "diff_mean": 0.01,
            "ci_low": None, "ci_high": None, "call": "one seed"}]
    s1 = sentences.verdict_sentences(one, [], [0])
    assert s1[0].startswith("One seed (seeds 0): there is no confidence interval")
    assert s1[1:] == ["Against none, l2 raises expected cost by 0.010 (one seed)."]
    assert "no paired verdicts" in sentences.verdict_sentences(None)[0]


def test_context_lines_and_fallbacks():
    ctx = {"data": "synthetic", "data_options": {"noise": 0.8}, "num_classes": 20,
           "tree_depth": 2, "levels": ["coarse"], "backbone": "mlp", "lam": 1.0, "epochs": 15,
           "batch_size": 128, "optimizer": "sgd", "lr": 0.1, "cost_matrix": "tree distance",
           "otcpcc": "0.1.0", "torch": "2.4", "device": "cpu", "git_commit": "0123456789abc",
           "methods": ["none", "hxe"], "seeds": [0, 1, 2]}
    assert context.context_lines(ctx) == [
        ("Data", "synthetic (noise=0.8): 20 fine classes, tree depth 2 (levels below the root: "
                 "coarse, fine)"),
        ("Backbone", "mlp"),
        ("λ", "λ = 1.0 for every CPCC term (methods without CPCC train with λ = 0)"),
        ("Training", "15 epochs, batch size 128, sgd lr 0.1"),
        ("Seeds", "0, 1, 2 (every method: the same data and seeds)"),
        ("Methods", "none, hxe"),
        ("Cost matrix", "tree distance"),
        ("Software", "otcpcc 0.1.0, torch 2.4, device cpu, git commit 0123456789")]
    # nothing recorded: methods and seeds from the rows (method, else distance), the rest said
    lines = dict(context.context_lines({}, RUNS + [{"method": "hxe", "distance": "none",
                                                    "seed": 7}]))
    assert lines["Methods"] == "none, fastft, l2, hxe" and lines["Seeds"].startswith("0, 1, 7 ")
    assert lines["Backbone"] == lines["Cost matrix"] == "not recorded"


def test_rows_with_method_group_by_method_and_render(tmp_path):
    # hxe and none both train without CPCC (distance none): grouped by method, not distance
    runs = [{**r, "method": "hxe" if r["distance"] == "fastft" else r["distance"],
             "distance": "none" if r["distance"] == "fastft" else r["distance"],
             "fine_acc_crm": r["fine_acc"] - 0.01, "expected_cost_crm": r["expected_cost"] - 0.1}
            for r in RUNS]
    agg = tables.aggregate_runs(runs)
    assert [(a["method"], a["distance"], a["n_runs"]) for a in agg] == [
        ("none", "none", 2), ("hxe", "none", 2), ("l2", "l2", 1)]
    assert agg[1]["expected_cost_crm_mean"] == pytest.approx(0.9)
    summary = {"runs": runs, "verdicts": VERDICTS[:3],
               "context": {"data": "synthetic", "seeds": [0, 1]}}
    report.render_report(tmp_path, summary, {})
    md = (tmp_path / "report.md").read_text()
    tabs = _md_tables(md)
    assert tabs[0][1] == ["none", "hxe", "l2"]
    assert list(tabs[0][2])[:3] == ["runs", "fine_acc ↑", "fine_acc_crm ↑"]
    assert list(tabs[1][2])[-2:] == ["expected_cost ↓", "expected_cost_crm ↓"]
    grid = _md_cells(md)
    assert grid["expected_cost_crm"] == {"none": "1.100 ± 0.283", "hxe": "0.900 ± 0.000",
                                         "l2": "**0.800**"}
    assert "- Against none, hxe lowers expected cost by 0.030 ± 0.010 (better)" in md
    assert "hxe: mistake severity 3.10 → 2.60" in md  # ROI line by method name
    assert "- **Data**: synthetic" in md and "- **Seeds**: 0, 1 (every method" in md
    # the trade-off: argmax and CRM, captions say both and the seeds
    assert "hollow: conditional-risk (CRM) decision" in md and "mean over seeds 0, 1;" in md
    img = imread(tmp_path / "tradeoff.png")
    assert img.shape[0] > 300 and img[..., :3].std() > 0.05


def test_method_chunks_keep_tables_narrow():
    agg = [{"method": f"m{i}", "fine_acc_mean": 0.5} for i in range(11)]
    assert tables.method_chunks(agg) == [list(range(8)), [8, 9, 10]]
    md = report.markdown_tables(agg)
    assert [m for _, m, _ in _md_tables(md)] == [[f"m{i}" for i in range(8)],
                                                  ["m8", "m9", "m10"]]


def test_verdict_section_estimates_seeds_for_the_cheapest_candidate(tmp_path, monkeypatch):
    """Two seeds, l2 cheapest but within noise of none (differences −0.04, −0.02: mean 0.03,
    sd 0.01414): 3 seeds give t(0.975, 2)·sd/√3 = 0.035 ≥ 0.03, 4 give 0.0225 < 0.03 → 4. Once
    separated (a third seed, difference −0.03: better), the sentence is gone."""
    from otcpcc.study.verdict import verdicts

    monkeypatch.setattr(report, "render_figures", lambda *a, **k: [])  # figures: tested above
    cost = {"none": [1.0, 1.1, 1.05], "l2": [0.96, 1.08, 1.02], "hxe": [1.05, 1.1, 1.06]}
    runs = [{"method": m, "distance": m, "seed": s, "expected_cost_argmax": c[s], "fine_acc": 0.8}
            for m, c in cost.items() for s in range(3)]
    two = [r for r in runs if r["seed"] < 2]
    report.render_report(tmp_path, {"runs": two, "verdicts": verdicts(two)}, {})
    md = (tmp_path / "report.md").read_text()
    assert ("- l2, the candidate with the lowest mean cost of the decisions (argmax), is 0.030 lower per seed than "
            "flat CE (none) (sd 0.014 over 2 paired seeds): at that effect size and noise, about 4 "
            "seeds would make the 95% interval exclude 0 (`--seeds 4`)") in md
    assert "- Against none, l2 lowers cost of the decisions (argmax) by 0.030 ± 0.127" in md
    report.render_report(tmp_path, {"runs": runs, "verdicts": verdicts(runs)}, {})
    md = (tmp_path / "report.md").read_text()
    assert "lowers cost of the decisions (argmax) by 0.030 ± 0.025 (better)" in md
    assert "would make the 95% interval exclude 0" not in md


def test_report_tables_leave_out_bookkeeping_keys():
    """A new user saw a meaningless "step 0.000 ± 0.000" row in every compare report's Other table
    (eval.json's ``step`` of a mid-epoch checkpoint); a real extra metric stays."""
    from otcpcc.study.tables import table_groups

    agg = [{"method": "none", "fine_acc_mean": 0.5, "step_mean": 0.0, "epoch_mean": 3.0,
            "train_time_s_mean": 1.0}]
    shown = [name for _, names in table_groups(agg) for name in names]
    assert "fine_acc" in shown and "train_time_s" in shown
    assert "step" not in shown and "epoch" not in shown


def test_markdown_tables_escape_a_pipe_in_method_and_level_names():
    """Breaker finding: a level named '<b>mid</b>|x' (its mAP row) or a method name with '|'
    gave report.md rows an extra column (report.html escaped it)."""
    from otcpcc.study.report import markdown_tables
    from otcpcc.study.tables import aggregate_runs

    agg = aggregate_runs([{"method": "a|b", "seed": s, "fine_acc": 0.5 + s / 10, "map_<b>mid</b>|x": 0.3}
                          for s in range(2)])
    rows = [line for line in markdown_tables(agg).splitlines() if line.startswith("|")]
    assert "| map_<b>mid</b>\\|x ↑ |" in markdown_tables(agg)
    assert rows and all(line.replace("\\|", "").count("|") == 3 for line in rows), rows
