"""Tests for otcpcc.metrics against hand-worked examples and brute-force / scikit-learn oracles."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from otcpcc.metrics import (
    evaluate_all,
    expected_cost,
    hier_dist_at_k,
    level_accuracies,
    load_cost_matrix,
    mistake_severity,
    multimodality,
    retrieval_map,
)
from otcpcc.tree import LabelTree


def tree4() -> LabelTree:
    """4 leaves, 2 coarse nodes {0,1} {2,3}; unit edges: D = 2 within a node, 4 across."""
    return LabelTree.from_levels([[0, 0, 1, 1]], level_names=["coarse"])


def tree6() -> LabelTree:
    """6 leaves, mid {01}{23}{45}, coarse {0123}{45}."""
    return LabelTree.from_levels(
        [[0, 0, 1, 1, 2, 2], [0, 0, 0, 0, 1, 1]], level_names=["mid", "coarse"]
    )


# Hand-worked example on tree4 (rows sum to 1):
#   s0, y=0: [.50 .30 .10 .10] top1 0 (hit)  top2 {0,1} hit   coarse [.80 .20] -> 0 == anc(0)=0 hit
#   s1, y=1: [.40 .35 .25 .00] top1 0 (miss) top2 {0,1} hit   coarse [.75 .25] -> 0 == anc(1)=0 hit
#   s2, y=2: [.45 .00 .30 .25] top1 0 (miss) top2 {0,2} hit   coarse [.45 .55] -> 1 == anc(2)=1 hit
#   s3, y=3: [.10 .60 .20 .10] top1 1 (miss) top2 {1,2} miss  coarse [.70 .30] -> 0 != anc(3)=1
# fine_top1 = 1/4, fine_top2 = 3/4, coarse_acc = 3/4 (s2: the coarse argmax of summed probs is
# right although the ancestor of the fine argmax is wrong).
HAND_P = np.array(
    [
        [0.50, 0.30, 0.10, 0.10],
        [0.40, 0.35, 0.25, 0.00],
        [0.45, 0.00, 0.30, 0.25],
        [0.10, 0.60, 0.20, 0.10],
    ]
)
HAND_Y = np.array([0, 1, 2, 3])
D4 = np.array([[0, 2, 4, 4], [2, 0, 4, 4], [4, 4, 0, 2], [4, 4, 2, 0]], dtype=float)


def _one_line(excinfo) -> None:
    assert "\n" not in str(excinfo.value)


# ------------------------------------------------------------------ level accuracies
def test_tree_fixture_distances():
    np.testing.assert_allclose(tree4().distance_matrix(), D4)


def test_level_accuracies_hand_worked():
    out = level_accuracies(HAND_P, HAND_Y, tree4())
    assert set(out) == {"fine_top1", "fine_top2", "coarse_acc"}
    assert out["fine_top1"] == pytest.approx(0.25)
    assert out["fine_top2"] == pytest.approx(0.75)
    assert out["coarse_acc"] == pytest.approx(0.75)


def _brute_level_acc(p, y, levels):
    n, k = p.shape
    out = {"fine_top1": 0.0, "fine_top2": 0.0}
    for name in levels:
        out[f"{name}_acc"] = 0.0
    for i in range(n):
        ranked = sorted(range(k), key=lambda j: (-p[i, j], j))
        out["fine_top1"] += ranked[0] == y[i]
        out["fine_top2"] += y[i] in ranked[:2]
        for name, ids in levels.items():
            sums: dict[int, float] = {}
            for j in range(k):
                sums[ids[j]] = sums.get(ids[j], 0.0) + p[i, j]
            best = max(sorted(sums), key=lambda c: sums[c])
            out[f"{name}_acc"] += best == ids[y[i]]
    return {key: v / n for key, v in out.items()}


def test_level_accuracies_vs_brute_force():
    rng = np.random.default_rng(0)
    tree = tree6()
    p = rng.dirichlet(np.full(6, 0.5), size=300)
    y = rng.integers(0, 6, size=300)
    expect = _brute_level_acc(p, y, {"mid": [0, 0, 1, 1, 2, 2], "coarse": [0, 0, 0, 0, 1, 1]})
    got = level_accuracies(p, y, tree)
    assert set(got) == set(expect)
    for key in expect:
        assert got[key] == pytest.approx(expect[key], abs=1e-12), key
    # torch tensors give the same numbers
    got_t = level_accuracies(torch.tensor(p, dtype=torch.float32), torch.tensor(y), tree)
    assert got_t == pytest.approx(got)


def test_level_accuracies_rejects_bad_input():
    tree = tree4()
    with pytest.raises(ValueError, match="K=4") as e:
        level_accuracies(HAND_P[:, :3], HAND_Y, tree)
    _one_line(e)
    with pytest.raises(ValueError, match="logits"):
        level_accuracies(np.log(HAND_P + 0.01), HAND_Y, tree)
    with pytest.raises(ValueError, match="softmax"):
        level_accuracies(HAND_P * 2, HAND_Y, tree)
    with pytest.raises(ValueError, match="class id 4") as e:
        level_accuracies(HAND_P, np.array([0, 1, 2, 4]), tree)
    _one_line(e)
    with pytest.raises(ValueError, match="3 entries"):
        level_accuracies(HAND_P, HAND_Y[:3], tree)


# ------------------------------------------------------------------ retrieval
def test_retrieval_map_hand_worked():
    # Prototypes: class 0 -> (1, 0), class 1 -> (0, 1) (means of the train features).
    tree = LabelTree.from_levels([[0, 0]], level_names=["top"])
    train = np.array([[1.0, 0.1], [1.0, -0.1], [0.1, 1.0], [-0.1, 1.0]])
    train_y = np.array([0, 0, 1, 1])
    # cos with (1,0): a .995(+) b .0995 c .894 d .196(+) -> ranking a+ c- d+ b-: AP = (1 + 2/3)/2
    # cos with (0,1): a .0995 b .995(+) c .447(+) d .981 -> ranking b+ d- c+ a-: AP = (1 + 2/3)/2
    test = np.array([[1.0, 0.1], [0.1, 1.0], [1.0, 0.5], [0.2, 1.0]])
    test_y = np.array([0, 1, 1, 0])
    out = retrieval_map(train, train_y, test, test_y, tree)
    assert out["map_fine"] == pytest.approx(5 / 6)
    # one coarse node holding both classes: every test sample is relevant -> AP = 1
    assert out["map_top"] == pytest.approx(1.0)
    # scaling the features does not change cosine scores
    out2 = retrieval_map(3 * train, train_y, 0.5 * test, test_y, tree)
    assert out2 == pytest.approx(out)


def _brute_ap(rel, score):
    order = sorted(range(len(score)), key=lambda i: -score[i])
    hits, total = 0, 0.0
    for rank, i in enumerate(order, start=1):
        if rel[i]:
            hits += 1
            total += hits / rank
    return total / hits


def _brute_map(xtr, ytr, xte, yte):
    classes = sorted(set(ytr.tolist()))
    aps = []
    for c in classes:
        members = [xtr[i] for i in range(len(ytr)) if ytr[i] == c]
        proto = sum(members) / len(members)
        rel = [yte[i] == c for i in range(len(yte))]
        if not any(rel):
            continue
        score = [float(np.dot(x, proto) / (np.linalg.norm(x) * np.linalg.norm(proto))) for x in xte]
        aps.append(_brute_ap(rel, score))
    return sum(aps) / len(aps)


def test_retrieval_map_vs_brute_force():
    rng = np.random.default_rng(1)
    tree = tree6()
    centers = rng.normal(size=(6, 5)) * 1.5
    ytr = rng.integers(0, 6, size=120)
    yte = rng.integers(0, 5, size=60)  # class 5 absent from test: its AP is skipped
    xtr = centers[ytr] + rng.normal(size=(120, 5))
    xte = centers[yte] + rng.normal(size=(60, 5))
    got = retrieval_map(xtr, ytr, xte, yte, tree)
    assert set(got) == {"map_fine", "map_mid", "map_coarse"}
    assert got["map_fine"] == pytest.approx(_brute_map(xtr, ytr, xte, yte), abs=1e-12)
    for name, ids in (("mid", [0, 0, 1, 1, 2, 2]), ("coarse", [0, 0, 0, 0, 1, 1])):
        ids = np.array(ids)
        expect = _brute_map(xtr, ids[ytr], xte, ids[yte])
        assert got[f"map_{name}"] == pytest.approx(expect, abs=1e-12), name
    assert 0.3 < got["map_fine"] < 1.0  # informative features, not perfect


def test_retrieval_map_rejects_mismatched_dims():
    tree = tree4()
    with pytest.raises(ValueError, match="same encoder") as e:
        retrieval_map(np.zeros((4, 3)), HAND_Y, np.zeros((4, 2)), HAND_Y, tree)
    _one_line(e)


# ------------------------------------------------------------------ mistakes and costs
def test_mistake_severity_hand_worked():
    # mistakes (pred, label): (2,0) -> 4, (1,0) -> 2, (3,2) -> 2; mean 8/3; the hit is ignored
    assert mistake_severity([0, 2, 1, 3], [0, 0, 0, 2], D4) == pytest.approx(8 / 3)
    assert math.isnan(mistake_severity([1, 2], [1, 2], D4))
    with pytest.raises(ValueError, match="class id 7"):
        mistake_severity([7, 0], [0, 0], D4)


def test_hier_dist_at_k_hand_worked():
    # top-1 preds [0,0,0,1] vs labels [0,1,2,3]: D = 0, 2, 4, 4           -> mean 2.5
    # top-2: s0 {0,1}: (0+2)/2=1; s1 {0,1}: (2+0)/2=1; s2 {0,2}: (4+0)/2=2; s3 {1,2}: (4+2)/2=3
    #        -> mean 7/4
    assert hier_dist_at_k(HAND_P, HAND_Y, D4, 1) == pytest.approx(2.5)
    assert hier_dist_at_k(HAND_P, HAND_Y, D4, 2) == pytest.approx(1.75)
    # top-4 = all classes: mean of D over each label's row = (10/4) for every label
    assert hier_dist_at_k(HAND_P, HAND_Y, D4, 4) == pytest.approx(2.5)
    # hd@1 = error rate * mistake severity when D has a zero diagonal: 3/4 * 10/3
    sev = mistake_severity(HAND_P.argmax(1), HAND_Y, D4)
    assert sev == pytest.approx(10 / 3)
    # ties broken by the lower class id: uniform scores predict class 0
    assert hier_dist_at_k(np.full((1, 4), 0.25), [3], D4, 1) == pytest.approx(4.0)
    # many ties (long rows, where numpy's default sort is not stable): one top score at 20,
    # then ties in id order 0, 1, ...; with D = |i - j| and label 39: (19 + 39 + 38) / 3 = 32
    scores = np.full((1, 40), 0.1)
    scores[0, 20] = 0.2
    idx = np.arange(40)
    assert hier_dist_at_k(scores, [39], np.abs(idx[:, None] - idx[None]), 3) == pytest.approx(32)
    for bad in (0, 5, 1.5):
        with pytest.raises(ValueError, match="1..4") as e:
            hier_dist_at_k(HAND_P, HAND_Y, D4, bad)
        _one_line(e)


def test_hier_dist_at_k_vs_brute_force():
    rng = np.random.default_rng(2)
    k_cls = 7
    pts = rng.normal(size=(k_cls, 3))
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    logits = rng.normal(size=(50, k_cls))
    y = rng.integers(0, k_cls, size=50)
    for k in (1, 3, 7):
        total = 0.0
        for i in range(50):
            top = sorted(range(k_cls), key=lambda j: -logits[i, j])[:k]
            total += sum(d[j, y[i]] for j in top) / k
        got = hier_dist_at_k(torch.tensor(logits), torch.tensor(y), d, k)
        assert got == pytest.approx(total / 50, abs=1e-12), k


def test_expected_cost_hand_worked_and_brute_force():
    # rows of D4 weighted by the probs: s0 .3*2+.1*4+.1*4 = 1.4; s1 .4*2+.25*4 = 1.8;
    # s2 .45*4+.25*2 = 2.3; s3 .1*4+.6*4+.2*2 = 3.2 -> mean 8.7/4 = 2.175
    assert expected_cost(HAND_P, HAND_Y, D4) == pytest.approx(2.175)
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(5), size=40)
    y = rng.integers(0, 5, size=40)
    c = rng.uniform(0, 3, size=(5, 5))  # asymmetric: rows = truth, columns = prediction
    brute = sum(sum(p[i, j] * c[y[i], j] for j in range(5)) for i in range(40)) / 40
    assert expected_cost(p, y, c) == pytest.approx(brute, abs=1e-12)
    # one-hot probabilities reduce to the mean cost of the hard predictions
    hard = np.eye(5)[p.argmax(1)]
    assert expected_cost(hard, y, c) == pytest.approx(c[y, p.argmax(1)].mean())
    with pytest.raises(ValueError, match="square"):
        expected_cost(p, y, c[:4])


# ------------------------------------------------------------------ multi-modality
def _blobs(modes: int, rng, n_per_class=200, classes=3, d=20):
    feats, labels = [], []
    for c in range(classes):
        base = rng.normal(size=d) * 5
        if modes == 1:
            x = base + rng.normal(size=(n_per_class, d))
        else:
            direction = rng.normal(size=d)
            direction *= 8 / np.linalg.norm(direction)
            sign = np.where(rng.random(n_per_class) < 0.5, -1.0, 1.0)
            x = base + sign[:, None] * direction + rng.normal(size=(n_per_class, d))
        feats.append(x)
        labels.append(np.full(n_per_class, c))
    return np.concatenate(feats), np.concatenate(labels)


def test_multimodality_counts_separated_modes():
    x, y = _blobs(2, np.random.default_rng(4))
    out = multimodality(x, y, max_components=4)
    assert out["per_class"] == {0: 2, 1: 2, 2: 2}
    assert out["mean_components"] == pytest.approx(2.0)
    assert out["frac_multimodal"] == pytest.approx(1.0)
    ev = out["evidence"][0]
    assert ev["split_ratio"] < ev["threshold"] and sum(ev["sizes"]) == ev["n"]
    assert "\n" not in out["recommendation"]


def test_multimodality_unimodal_says_one():
    x, y = _blobs(1, np.random.default_rng(5))
    out = multimodality(torch.tensor(x, dtype=torch.float32), torch.tensor(y), max_components=4)
    assert out["per_class"] == {0: 1, 1: 1, 2: 1}
    assert out["mean_components"] == pytest.approx(1.0)
    assert out["frac_multimodal"] == 0.0
    assert all(e["split_ratio"] >= e["threshold"] for e in out["evidence"].values())


def test_multimodality_small_classes_and_subsampling():
    rng = np.random.default_rng(6)
    x, y = _blobs(2, rng, n_per_class=300, classes=2, d=6)
    # classes under MIN_TEST_SAMPLES (20) are not split: they count as one mode
    x = np.concatenate([x, rng.normal(size=(3, 6)) * 50, rng.normal(size=(1, 6))])
    y = np.concatenate([y, [2, 2, 2], [3]])
    out = multimodality(x, y, max_components=3, max_per_class=100, seed=1)
    assert out["per_class"] == {0: 2, 1: 2, 2: 1, 3: 1}
    assert out["evidence"][0]["n"] == 100 and out["evidence"][2]["split_ratio"] is None
    assert out["frac_multimodal"] == pytest.approx(0.5)
    assert multimodality(x, y, max_components=3, max_per_class=100, seed=1) == out
    with pytest.raises(ValueError, match="max_components"):
        multimodality(x, y, max_components=0)


# ------------------------------------------------------------------ evaluate_all
def _random_eval_inputs(k, seed):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, 4)) * 2
    y = rng.integers(0, k, size=80)
    ytr = rng.integers(0, k, size=100)
    xte = centers[y] + rng.normal(size=(80, 4))
    xtr = centers[ytr] + rng.normal(size=(100, 4))
    p = rng.dirichlet(np.ones(k), size=80)
    return p, y, xte, xtr, ytr


def test_evaluate_all_matches_individual_metrics():
    tree = tree6()
    p, y, xte, xtr, ytr = _random_eval_inputs(6, 7)
    out = evaluate_all(p, y, xte, xtr, ytr, tree)
    d = tree.distance_matrix()
    expect = dict(level_accuracies(p, y, tree))
    expect.update(retrieval_map(xtr, ytr, xte, y, tree))
    expect["mistake_severity"] = mistake_severity(p.argmax(1), y, d)
    expect["hier_dist@1"] = hier_dist_at_k(p, y, d, 1)
    expect["hier_dist@5"] = hier_dist_at_k(p, y, d, 5)
    expect["expected_cost"] = expected_cost(p, y, d)
    expect["expected_cost_argmax"] = float(np.mean(d[y, p.argmax(1)]))
    crm = np.array([min(range(6), key=lambda j, r=r: (sum(r[i] * d[i, j] for i in range(6)), j))
                    for r in p])  # brute-force conditional-risk decisions
    expect["fine_acc_crm"] = float(np.mean(crm == y))
    expect["mistake_severity_crm"] = mistake_severity(crm, y, d)
    expect["expected_cost_crm"] = float(np.mean(d[y, crm]))
    assert out == pytest.approx(expect, nan_ok=True)
    assert set(out) == {
        "expected_cost_argmax", "fine_acc_crm", "mistake_severity_crm", "expected_cost_crm",
        "fine_top1",
        "fine_top2",
        "mid_acc",
        "coarse_acc",
        "map_fine",
        "map_mid",
        "map_coarse",
        "mistake_severity",
        "hier_dist@1",
        "hier_dist@5",
        "expected_cost",
    }
    c = np.ones((6, 6)) - np.eye(6)  # 0/1 cost: expected cost = 1 - mean prob of the truth
    out_c = evaluate_all(p, y, xte, xtr, ytr, tree, cost_matrix=c)
    assert out_c["expected_cost"] == pytest.approx(1 - p[np.arange(80), y].mean())


def test_evaluate_all_small_tree_and_errors():
    tree = tree4()
    p, y, xte, xtr, ytr = _random_eval_inputs(4, 8)
    out = evaluate_all(p, y, xte, xtr, ytr, tree)
    assert "hier_dist@5" not in out and "hier_dist@1" in out  # K = 4 < 5
    with pytest.raises(ValueError, match="K=4") as e:
        evaluate_all(p, y, xte, xtr, ytr, tree, cost_matrix=np.ones((5, 5)))
    _one_line(e)
    with pytest.raises(ValueError, match=">= 0"):
        evaluate_all(p, y, xte, xtr, ytr, tree, cost_matrix=-np.ones((4, 4)))
    with pytest.raises(ValueError, match="79 rows"):
        evaluate_all(p, y, xte[:79], xtr, ytr, tree)
    with pytest.raises(ValueError, match="class id"):
        evaluate_all(p, y, xte, xtr, np.full(100, 9), tree)


# ------------------------------------------------------------------ cost matrix files
NAMES = ["cat", "dog", "trout", "shark"]


def _write(path, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def _matrix_rows(c, row_order, col_order, corner="true\\pred"):
    rows = [([corner] if corner is not None else []) + [NAMES[j] for j in col_order]]
    for i in row_order:
        rows.append([NAMES[i]] + [repr(float(c[i, j])) for j in col_order])
    return rows


def test_load_cost_matrix_round_trip(tmp_path):
    rng = np.random.default_rng(9)
    c = rng.uniform(0, 5, size=(4, 4))
    path = tmp_path / "cost.csv"
    _write(path, _matrix_rows(c, [2, 0, 3, 1], [3, 1, 0, 2]))
    np.testing.assert_array_equal(load_cost_matrix(path, NAMES), c)
    # reordering to another class order permutes rows and columns alike
    perm = [3, 2, 1, 0]
    np.testing.assert_array_equal(
        load_cost_matrix(str(path), [NAMES[i] for i in perm]), c[np.ix_(perm, perm)]
    )
    # a header without the corner cell is accepted too
    _write(path, _matrix_rows(c, [1, 2, 3, 0], [0, 1, 2, 3], corner=None))
    np.testing.assert_array_equal(load_cost_matrix(path, NAMES), c)


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda rows: [r[:-1] for r in rows], "'shark' has no column"),
        (lambda rows: rows[:-1], "'shark' has no row"),
        (
            lambda rows: (
                [rows[0] + ["eel"]]
                + [r + ["1"] for r in rows[1:]]
                + [["eel", "1", "1", "1", "1", "1"]]
            ),
            "'eel' is not one of",
        ),
        (
            lambda rows: rows[:2] + [[rows[2][0], "abc"] + rows[2][2:]] + rows[3:],
            "'dog', predicted 'cat' is 'abc'",
        ),
        (lambda rows: rows[:2] + [[rows[2][0], "-1"] + rows[2][2:]] + rows[3:], ">= 0"),
        (lambda rows: rows[:2] + [[rows[2][0], "nan"] + rows[2][2:]] + rows[3:], "finite"),
        (lambda rows: rows + [rows[1]], "'cat' appears in two rows"),
        (lambda rows: rows[:1] + [rows[1][:-1]] + rows[2:], "row 2"),
        (lambda rows: rows[:1], "header row"),
    ],
)
def test_load_cost_matrix_errors(tmp_path, edit, pattern):
    c = np.arange(16, dtype=float).reshape(4, 4)
    path = tmp_path / "cost.csv"
    _write(path, edit(_matrix_rows(c, [0, 1, 2, 3], [0, 1, 2, 3])))
    with pytest.raises(ValueError, match=pattern) as e:
        load_cost_matrix(path, NAMES)
    _one_line(e)
