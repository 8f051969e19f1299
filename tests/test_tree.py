"""Tests for otcpcc.tree.LabelTree against hand-worked examples and networkx oracles."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otcpcc import LabelTree
from otcpcc.tree import Level, TreeError

DESIGN_EXAMPLE = {
    "cat": "mammal",
    "dog": "mammal",
    "mammal": "animal",
    "trout": "fish",
    "fish": "animal",
}


def structure(tree: LabelTree) -> tuple[list[str], dict[str, tuple[str | None, float]]]:
    """Leaf order plus every node's (parent, weight of the edge to it): a tree's full content."""
    return list(tree.leaves), {n: (tree.parent(n), tree.weight(n)) for n in tree.nodes}


def nx_graph(tree: LabelTree) -> nx.Graph:
    g = nx.Graph()
    g.add_nodes_from(tree.nodes)
    for n in tree.nodes:
        p = tree.parent(n)
        if p is not None:
            g.add_edge(p, n, weight=tree.weight(n))
    return g


def nx_distances(g: nx.Graph, leaves: list[str]) -> np.ndarray:
    k = len(leaves)
    out = np.zeros((k, k))
    for i, a in enumerate(leaves):
        lengths = nx.single_source_dijkstra_path_length(g, a, weight="weight")
        out[i] = [lengths[b] for b in leaves]
    return out


# ---------------------------------------------------------------------------- hand-worked
def test_design_example_distances_and_queries() -> None:
    t = LabelTree.from_parents(DESIGN_EXAMPLE)
    assert t.leaves == ["cat", "dog", "trout"]
    assert t.root == "animal"
    assert t.num_classes == len(t) == 3
    assert sorted(t.nodes) == sorted(["cat", "dog", "trout", "mammal", "fish", "animal"])
    d = t.distance_matrix()
    assert d.dtype == np.float64 and d.shape == (3, 3)
    np.testing.assert_array_equal(d, [[0, 2, 4], [2, 0, 4], [4, 4, 0]])
    assert t.index("trout") == 2
    assert t.parent("cat") == "mammal" and t.parent("animal") is None
    assert t.children("animal") == ["mammal", "fish"]
    assert t.children("cat") == []
    assert t.depth("animal") == 0 and t.depth("fish") == 1 and t.depth("dog") == 2
    assert t.ancestors("dog") == ["mammal", "animal"]
    assert t.ancestors("animal") == []
    assert t.leaves_under("mammal") == [0, 1]
    assert t.leaves_under("animal") == [0, 1, 2]
    assert t.leaves_under("trout") == [2]
    assert repr(t) == "LabelTree(root='animal', nodes=6, leaves=3, depth=2)"
    assert t.distance_matrix() is d  # cached
    assert not d.flags.writeable


def test_weighted_hand_example() -> None:
    # animal -(2)- mammal -(0.5)- cat ; mammal -(1.5)- dog ; animal -(3)- trout
    t = LabelTree.from_parents(
        {"cat": "mammal", "dog": "mammal", "mammal": "animal", "trout": "animal"},
        weights={"cat": 0.5, "dog": 1.5, "mammal": 2.0, "trout": 3.0},
    )
    np.testing.assert_allclose(t.distance_matrix(), [[0, 2.0, 5.5], [2.0, 0, 6.5], [5.5, 6.5, 0]])


def test_leaf_order_is_first_appearance() -> None:
    t = LabelTree.from_parents(
        {"trout": "fish", "cat": "mammal", "fish": "animal", "mammal": "animal", "dog": "mammal"}
    )
    assert t.leaves == ["trout", "cat", "dog"]
    e = LabelTree.from_edges([("animal", "fish"), ("fish", "trout"), ("animal", "m"), ("m", "dog"), ("m", "cat")])
    assert e.leaves == ["trout", "dog", "cat"]
    np.testing.assert_array_equal(e.distance_matrix(), [[0, 4, 4], [4, 0, 2], [4, 2, 0]])


def test_single_leaf_tree() -> None:
    t = LabelTree.from_parents({"only": None})
    assert t.leaves == ["only"] and t.root == "only" and t.levels == []
    np.testing.assert_array_equal(t.distance_matrix(), [[0.0]])


# ---------------------------------------------------------------------------- random trees
@st.composite
def random_trees(draw: st.DrawFn) -> tuple[dict[str, str | None], dict[str, float]]:
    """A random parent array (node i's parent < i), random weights, shuffled dict order."""
    n = draw(st.integers(2, 40))
    parents = [draw(st.integers(0, i - 1)) for i in range(1, n)]
    weights = draw(
        st.lists(
            st.one_of(st.just(1.0), st.floats(0.0, 10.0, allow_nan=False)),
            min_size=n - 1,
            max_size=n - 1,
        )
    )
    order = draw(st.permutations(range(n)))
    parent_of: dict[str, str | None] = {}
    w: dict[str, float] = {}
    for i in order:
        parent_of[f"n{i}"] = None if i == 0 else f"n{parents[i - 1]}"
        if i:
            w[f"n{i}"] = weights[i - 1]
    return parent_of, w


@settings(max_examples=60, deadline=None)
@given(random_trees())
def test_distance_matrix_matches_networkx(spec: tuple[dict, dict]) -> None:
    parent_of, w = spec
    t = LabelTree.from_parents(parent_of, w)
    g = nx.Graph()
    for c, p in parent_of.items():
        if p is not None:
            g.add_edge(p, c, weight=w[c])
    has_kids = {p for p in parent_of.values() if p is not None}
    expected_leaves = [c for c in parent_of if c not in has_kids]
    assert t.leaves == expected_leaves
    assert t.root == "n0"
    np.testing.assert_allclose(t.distance_matrix(), nx_distances(g, t.leaves), atol=1e-9)
    for n in parent_of:
        assert t.depth(n) == nx.shortest_path_length(g, "n0", n)
        assert set(t.ancestors(n)) == set(nx.shortest_path(g, "n0", n)[:-1])


@settings(max_examples=40, deadline=None)
@given(random_trees(), st.randoms(use_true_random=False))
def test_edges_parents_and_restrict_agree(spec: tuple[dict, dict], rnd) -> None:
    parent_of, w = spec
    t = LabelTree.from_parents(parent_of, w)
    edges = [(p, c, w[c]) for c, p in parent_of.items() if p is not None]
    e = LabelTree.from_edges(edges)
    assert sorted(e.leaves) == sorted(t.leaves)
    perm = [t.leaves.index(x) for x in e.leaves]
    np.testing.assert_allclose(e.distance_matrix(), t.distance_matrix()[np.ix_(perm, perm)])
    # restrict: random subset in random order keeps the distances and the ancestors
    keep = rnd.sample(t.leaves, rnd.randint(1, len(t.leaves)))
    r = t.restrict(keep)
    assert r.leaves == keep
    idx = [t.index(x) for x in keep]
    np.testing.assert_array_equal(r.distance_matrix(), t.distance_matrix()[np.ix_(idx, idx)])
    expected_nodes = set(keep).union(*(t.ancestors(x) for x in keep))
    assert set(r.nodes) == expected_nodes
    assert r.root == t.root
    for x in keep:
        assert r.ancestors(x) == t.ancestors(x)
    # levels against brute force: ancestor at depth d, or the leaf itself when shallower
    dmax = max(t.depth(x) for x in t.leaves)
    assert [lv.name for lv in t.levels] == [f"depth{d}" for d in range(dmax - 1, 0, -1)]
    for lv in t.levels:
        d = int(lv.name[5:])
        for i, leaf in enumerate(t.leaves):
            chain = [leaf, *t.ancestors(leaf)]
            want = next(a for a in chain if t.depth(a) <= d)
            assert lv.names[lv.ids[i]] == want
        assert sorted(set(lv.ids.tolist())) == list(range(len(lv.names)))


# ---------------------------------------------------------------------------- levels
def test_levels_general_unbalanced_tree() -> None:
    # root -> a -> b -> {x, y};  root -> z (leaf, depth 1);  a -> w (leaf, depth 2)
    t = LabelTree.from_edges([("root", "a"), ("a", "b"), ("b", "x"), ("b", "y"), ("root", "z"), ("a", "w")])
    assert t.leaves == ["x", "y", "z", "w"]
    lv = t.levels
    assert [x.name for x in lv] == ["depth2", "depth1"]
    assert isinstance(lv[0], Level) and lv[0].ids.dtype == np.int64
    assert lv[0].ids.tolist() == [0, 0, 1, 2] and lv[0].names == ["b", "z", "w"]
    assert lv[1].ids.tolist() == [0, 0, 1, 0] and lv[1].names == ["a", "z"]
    np.testing.assert_array_equal(
        t.distance_matrix(),
        [[0, 2, 4, 3], [2, 0, 4, 3], [4, 4, 0, 3], [3, 3, 3, 0]],
    )


def test_from_levels_cifar_like() -> None:
    rng = np.random.default_rng(0)
    fine_to_coarse = rng.permutation(100) // 5  # 20 superclasses of 5 classes each
    fine_names = [f"f{i}" for i in range(100)]
    coarse_names = [f"super{j}" for j in range(20)]
    t = LabelTree.from_levels(
        [fine_to_coarse], leaf_names=fine_names, level_names=["coarse"], node_names=[coarse_names]
    )
    assert t.leaves == fine_names
    assert t.root == "root"
    assert len(t.nodes) == 100 + 20 + 1
    same = fine_to_coarse[:, None] == fine_to_coarse[None, :]
    expected = np.where(same, 2.0, 4.0)
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_array_equal(t.distance_matrix(), expected)
    (lv,) = t.levels
    assert lv.name == "coarse" and lv.names == coarse_names
    np.testing.assert_array_equal(lv.ids, fine_to_coarse)
    assert t.parent("f7") == f"super{fine_to_coarse[7]}"
    assert t.leaves_under("super3") == np.flatnonzero(fine_to_coarse == 3).tolist()


def test_from_levels_three_levels_defaults_and_restrict() -> None:
    mid = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    top = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    t = LabelTree.from_levels([mid, top])
    assert t.leaves == [str(i) for i in range(8)]
    assert [lv.name for lv in t.levels] == ["level1", "level2"]
    assert t.levels[0].names == ["level1_0", "level1_1", "level1_2", "level1_3"]
    np.testing.assert_array_equal(t.levels[0].ids, mid)
    np.testing.assert_array_equal(t.levels[1].ids, top)
    d = t.distance_matrix()
    assert d[0, 1] == 2 and d[0, 2] == 4 and d[0, 4] == 6 and d[5, 7] == 4
    # restrict keeps the named levels and relabels the ids contiguously
    r = t.restrict(["6", "0", "1"])
    assert [lv.name for lv in r.levels] == ["level1", "level2"]
    assert r.levels[0].names == ["level1_0", "level1_3"]
    assert r.levels[0].ids.tolist() == [1, 0, 0]
    assert r.levels[1].ids.tolist() == [1, 0, 0]
    np.testing.assert_array_equal(r.distance_matrix(), [[0, 6, 6], [6, 0, 2], [6, 2, 0]])
    # accepts float arrays holding integers and torch-like array-likes
    f = LabelTree.from_levels([mid.astype(float), list(top)])
    np.testing.assert_array_equal(f.distance_matrix(), d)


def test_from_levels_flat() -> None:
    t = LabelTree.from_levels([], leaf_names=["a", "b", "c"])
    assert t.levels == [] and t.leaves == ["a", "b", "c"]
    np.testing.assert_array_equal(t.distance_matrix(), 2 * (1 - np.eye(3)))


# ---------------------------------------------------------------------------- files
def weighted_tree() -> LabelTree:
    return LabelTree.from_parents(
        {"cat": "mammal", "dog": "mammal", "mammal": "animal", "trout": "fish", "fish": "animal"},
        weights={"cat": 0.25, "dog": 1.0, "mammal": 2.5, "trout": 1e-3, "fish": 0.0},
    )


@pytest.mark.parametrize("suffix", [".txt", ".tsv", ".edges", ".json", ".nwk", ".newick", ".tre"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reorder", [False, True])
def test_file_round_trip(tmp_path: Path, suffix: str, weighted: bool, reorder: bool) -> None:
    t = weighted_tree() if weighted else LabelTree.from_parents(DESIGN_EXAMPLE)
    if reorder:  # leaf order that is still depth-first (Newick can hold it)
        t = t.restrict(["trout", "dog", "cat"])
    path = tmp_path / f"tree{suffix}"
    t.to_file(path)
    back = LabelTree.from_file(path)
    assert structure(back) == structure(t)
    np.testing.assert_array_equal(back.distance_matrix(), t.distance_matrix())


@pytest.mark.parametrize("fmt", ["edges", "json"])
@pytest.mark.parametrize("weighted", [False, True])
def test_round_trip_non_dfs_leaf_order(tmp_path: Path, fmt: str, weighted: bool) -> None:
    t = (weighted_tree() if weighted else LabelTree.from_parents(DESIGN_EXAMPLE)).restrict(["cat", "trout", "dog"])
    path = tmp_path / "tree.dat"
    t.to_file(path, format=fmt)
    back = LabelTree.from_file(path, format=fmt)
    assert structure(back) == structure(t)
    with pytest.raises(TreeError, match="depth-first"):
        t.to_file(tmp_path / "t.nwk")


def test_round_trip_random_trees_all_formats(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for trial in range(5):
        n = 60
        parents = [int(rng.integers(0, i)) for i in range(1, n)]
        parent_of = {f"n{i}": f"n{parents[i - 1]}" for i in range(1, n)}
        w = {c: float(rng.uniform(0, 3)) for c in parent_of}
        t = LabelTree.from_parents(parent_of, w)
        for suffix in [".txt", ".json"]:
            path = tmp_path / f"t{trial}{suffix}"
            t.to_file(path)
            assert structure(LabelTree.from_file(path)) == structure(t)
        # Newick holds only depth-first leaf orders: refuse others, round-trip a DFS order
        g = nx.DiGraph([(p, c) for c, p in parent_of.items()])
        dfs = [x for x in nx.dfs_preorder_nodes(g, "n0") if g.out_degree(x) == 0]
        if dfs != t.leaves:
            with pytest.raises(TreeError, match="depth-first"):
                t.to_file(tmp_path / "x.nwk")
        t = t.restrict(dfs)
        t.to_file(tmp_path / f"t{trial}.nwk")
        assert structure(LabelTree.from_file(tmp_path / f"t{trial}.nwk")) == structure(t)


def test_read_edges_file_comments_and_weights(tmp_path: Path) -> None:
    path = tmp_path / "h.txt"
    path.write_text(
        "# a comment\n\nanimal\tmammal 2\n  mammal cat   # trailing comment\nmammal dog 0.5\nanimal trout\n"
    )
    t = LabelTree.from_file(path)
    assert t.leaves == ["cat", "dog", "trout"]
    np.testing.assert_allclose(t.distance_matrix(), [[0, 1.5, 4], [1.5, 0, 3.5], [4, 3.5, 0]])


def test_read_json_variants(tmp_path: Path) -> None:
    want = LabelTree.from_parents(DESIGN_EXAMPLE)
    variants = [
        {"animal": {"mammal": {"cat": {}, "dog": {}}, "fish": {"trout": {}}}},
        {"animal": {"mammal": ["cat", "dog"], "fish": ["trout"]}},
        {"animal": {"mammal": {"cat": None, "dog": None}, "fish": [{"trout": None}]}},
        DESIGN_EXAMPLE,
        {**DESIGN_EXAMPLE, "animal": None},
    ]
    for k, obj in enumerate(variants):
        path = tmp_path / f"v{k}.json"
        path.write_text(json.dumps(obj))
        got = LabelTree.from_file(path)
        assert got.leaves == ["cat", "dog", "trout"], obj
        np.testing.assert_array_equal(got.distance_matrix(), want.distance_matrix())
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"parents": DESIGN_EXAMPLE, "weights": {"cat": 3}}))
    assert LabelTree.from_file(path).distance_matrix()[0, 1] == 4.0
    # a root named "parents" in the nested form is still read as nested
    path.write_text(json.dumps({"parents": {"mom": {}, "dad": None}}))
    got = LabelTree.from_file(path)
    assert got.root == "parents" and got.leaves == ["mom", "dad"]


def test_read_newick(tmp_path: Path) -> None:
    path = tmp_path / "t.nwk"
    path.write_text("((cat:0.5,'dog ''d''':1.5)mammal:2,(trout:1e0)[comment]:3, 'a (b)':1)animal:7;\n")
    t = LabelTree.from_file(path)
    assert t.leaves == ["cat", "dog 'd'", "trout", "a (b)"]
    assert t.root == "animal"
    assert t.parent("trout") == "_node1"  # unnamed internal node
    np.testing.assert_allclose(t.distance_matrix()[0], [0, 2.0, 0.5 + 2 + 3 + 1, 0.5 + 2 + 1])
    t.to_file(tmp_path / "back.newick")
    assert structure(LabelTree.from_file(tmp_path / "back.newick")) == structure(t)


# ---------------------------------------------------------------------------- BREEDS
def test_breeds_class_hierarchy() -> None:
    from fakes import real_breeds_dir

    BREEDS = real_breeds_dir()  # noqa: N806 (skips, saying why, without the published files)
    t = LabelTree.from_file(BREEDS / "class_hierarchy.txt")
    assert t.root == "n00001740"  # WordNet 'entity'
    assert len(t.nodes) == 1328 and t.num_classes == 890
    assert t.leaves[0] == "n03534580"
    assert t.parent("n01440764") == "n02514825"  # tench under its WordNet parent
    info = json.loads((BREEDS / "dataset_class_info.json").read_text())
    imagenet = {row[1] for row in info}
    assert set(t.leaves) <= imagenet
    depths = [t.depth(x) for x in t.leaves]
    assert min(depths) == 4 and max(depths) == 8
    start = time.perf_counter()
    d = t.distance_matrix()
    assert time.perf_counter() - start < 2.0
    assert d.shape == (890, 890)
    np.testing.assert_array_equal(d, d.T)
    # unit weights: D = depth(i) + depth(j) - 2 depth(lca); check rows against networkx
    g = nx_graph(t)
    rows = list(range(0, 890, 89))
    for i in rows:
        lengths = nx.single_source_shortest_path_length(g, t.leaves[i])
        np.testing.assert_array_equal(d[i], [lengths[b] for b in t.leaves])
    # the lenient mode reads it the same (it is already a tree)
    lenient = LabelTree.from_file(BREEDS / "class_hierarchy.txt", on_multiple_parents="first")
    assert lenient.leaves == t.leaves


def test_multiple_parents_lenient_mode() -> None:
    edges = [("r", "a"), ("r", "b"), ("a", "x"), ("b", "x"), ("b", "y"), ("r", "c"), ("c", "x")]
    with pytest.raises(TreeError, match=r"'x' has two parents, 'a' and 'b'"):
        LabelTree.from_edges(edges)
    t = LabelTree.from_edges(edges, on_multiple_parents="first")
    assert t.parent("x") == "a"
    # c only had the dropped edge to x: it is removed rather than becoming a spurious leaf
    assert t.leaves == ["x", "y"] and "c" not in t.nodes


def test_large_tree_is_fast() -> None:
    k = 2000
    levels, ids = [], np.arange(k)
    for n in [1000, 500, 250, 120, 60, 30, 15, 8, 4, 2]:
        ids = (ids * n) // (ids.max() + 1)
        levels.append(ids)
    t = LabelTree.from_levels(levels)
    start = time.perf_counter()
    d = t.distance_matrix()
    assert time.perf_counter() - start < 3.0
    # levels nest, so lca height = first level where the ids agree (+1)
    i, j = np.random.default_rng(0).integers(0, k, size=(2, 300))
    agree = np.array([[lv[i] == lv[j]] for lv in levels])[:, 0]  # [L, 300]
    first = np.where(agree.any(0), agree.argmax(0) + 1, len(levels) + 1)
    np.testing.assert_array_equal(d[i, j], np.where(i == j, 0, 2 * first))


# ---------------------------------------------------------------------------- errors
def test_error_cycle() -> None:
    with pytest.raises(TreeError, match=r"cycle.*'a' -> 'b' -> 'a'"):
        LabelTree.from_parents({"x": "a", "a": "b", "b": "a"})
    with pytest.raises(TreeError, match=r"cycle.*'s' -> 's'"):
        LabelTree.from_edges([("r", "x"), ("s", "s")])


def test_error_two_parents_in_file(tmp_path: Path) -> None:
    path = tmp_path / "dag.txt"
    path.write_text("r a\nr b\na x\nb x\n")
    with pytest.raises(TreeError, match=r"'x' has two parents.*dag.txt:4"):
        LabelTree.from_file(path)


def test_error_several_roots(tmp_path: Path) -> None:
    with pytest.raises(TreeError, match=r"several roots: 'animal', 'plant'"):
        LabelTree.from_parents({"cat": "animal", "rose": "plant"})
    path = tmp_path / "t.json"
    path.write_text('{"a": {"x": {}}, "b": {}}')
    with pytest.raises(TreeError, match=r"several roots: 'a', 'b'"):
        LabelTree.from_file(path)


def test_error_duplicate_names(tmp_path: Path) -> None:
    with pytest.raises(TreeError, match=r"duplicate leaf names: 'cat'"):
        LabelTree.from_levels([[0, 0, 1]], leaf_names=["cat", "dog", "cat"])
    with pytest.raises(TreeError, match=r"duplicate node names: 'fish'"):
        LabelTree.from_levels([[0, 0, 1]], leaf_names=["cat", "dog", "fish"], node_names=[["mammal", "fish"]])
    # a class called "root" is fine: the added root takes the next free name
    t = LabelTree.from_levels([[0, 1]], leaf_names=["root", "x"], node_names=[["_root", "y"]])
    assert t.root == "__root" and t.ancestors("root") == ["_root", "__root"]
    newick = tmp_path / "t.nwk"
    newick.write_text("((a,b)c,a)r;")
    with pytest.raises(TreeError, match=r"duplicate node names: 'a'"):
        LabelTree.from_file(newick)
    t = LabelTree.from_parents(DESIGN_EXAMPLE)
    with pytest.raises(TreeError, match=r"duplicate leaf names 'cat'"):
        t.restrict(["cat", "dog", "cat"])


def test_error_empty_tree(tmp_path: Path) -> None:
    with pytest.raises(TreeError, match="empty tree"):
        LabelTree.from_parents({})
    with pytest.raises(TreeError, match="empty tree"):
        LabelTree.from_edges([])
    with pytest.raises(TreeError, match="empty tree"):
        LabelTree.from_levels([])
    with pytest.raises(TreeError, match="empty tree"):
        LabelTree.from_levels([np.zeros(0, dtype=int)])
    path = tmp_path / "e.txt"
    path.write_text("# nothing\n\n")
    with pytest.raises(TreeError, match="empty tree"):
        LabelTree.from_file(path)
    with pytest.raises(TreeError, match="empty tree"):
        LabelTree.from_parents(DESIGN_EXAMPLE).restrict([])


def test_error_unknown_leaf() -> None:
    t = LabelTree.from_parents(DESIGN_EXAMPLE)
    with pytest.raises(TreeError, match="unknown leaf 'horse'"):
        t.index("horse")
    with pytest.raises(TreeError, match="'mammal' is an internal node"):
        t.index("mammal")
    with pytest.raises(TreeError, match="unknown leaf 'horse'"):
        t.restrict(["cat", "horse"])
    with pytest.raises(TreeError, match="unknown node 'horse'"):
        t.parent("horse")
    with pytest.raises(TreeError, match="unknown node 'horse'"):
        t.leaves_under("horse")


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "heavy"])
def test_error_bad_weights(bad: object) -> None:
    with pytest.raises(TreeError, match=r"weight .* of edge 'mammal' -> 'cat'"):
        LabelTree.from_parents(DESIGN_EXAMPLE, weights={"cat": bad})
    with pytest.raises(TreeError, match=r"edge 'mammal' -> 'cat'"):
        LabelTree.from_edges([("animal", "mammal"), ("mammal", "cat", bad)])


def test_error_weights_for_unknown_or_root() -> None:
    with pytest.raises(TreeError, match="unknown nodes 'horse'"):
        LabelTree.from_parents(DESIGN_EXAMPLE, weights={"horse": 1.0})
    with pytest.raises(TreeError, match="root 'animal'"):
        LabelTree.from_parents(DESIGN_EXAMPLE, weights={"animal": 1.0})


def test_error_levels_do_not_nest() -> None:
    mid = [0, 0, 1, 1]
    top = [0, 1, 1, 1]  # fine classes 0 and 1 share mid node 0 but not the top node
    with pytest.raises(TreeError, match=r"do not nest: level1 node 0 \(fine classes 0 and 1\)"):
        LabelTree.from_levels([mid, top])
    with pytest.raises(TreeError, match=r"'level1' ids .* unused"):
        LabelTree.from_levels([[0, 2, 2]])
    with pytest.raises(TreeError, match="different lengths"):
        LabelTree.from_levels([[0, 0, 1], [0, 0]])
    with pytest.raises(TreeError, match="integer ids"):
        LabelTree.from_levels([[0.5, 1.0]])
    with pytest.raises(TreeError, match="negative ids"):
        LabelTree.from_levels([[0, -1]])


@pytest.mark.parametrize("line", ["lonely", "a b c d", "a b heavy"], ids=["one-field", "four-fields", "bad-weight"])
def test_error_malformed_line(tmp_path: Path, line: str) -> None:
    path = tmp_path / "h.txt"
    path.write_text(f"r a\n# comment\n{line}\n")
    with pytest.raises(TreeError, match=r"h\.txt:3: expected 'parent child \[weight\]'"):
        LabelTree.from_file(path)


def test_error_formats(tmp_path: Path) -> None:
    t = LabelTree.from_parents(DESIGN_EXAMPLE)
    with pytest.raises(TreeError, match=r"unknown tree format 'xml'"):
        t.to_file(tmp_path / "t.txt", format="xml")
    with pytest.raises(TreeError, match=r"cannot tell which tree format to write to .*t\.yaml"):
        t.to_file(tmp_path / "t.yaml")
    # another suffix (or none) is read by its contents: { JSON, ( Newick, else edges
    for name, fmt in (("hierarchy", "edges"), ("t.yaml", "json"), ("tree.csv", "newick")):
        t.to_file(tmp_path / "written", format=fmt)
        (tmp_path / name).write_text("# a comment\n\n" * (fmt == "edges") + (tmp_path / "written").read_text())
        back = LabelTree.from_file(tmp_path / name)
        assert back.leaves == t.leaves and back.distance_matrix().tolist() == t.distance_matrix().tolist(), name
    (tmp_path / "tree.csv").write_text("# a spreadsheet's edge list\nr, a b,2\nr,c\n")  # commas in a .csv
    t2 = LabelTree.from_file(tmp_path / "tree.csv")
    assert t2.leaves == ["a b", "c"] and t2.distance_matrix().tolist() == [[0, 3], [3, 0]]
    # a spreadsheet's export: header row, quoted names (a comma inside one), weights
    (tmp_path / "tree.csv").write_text('Parent,Child,Weight\n"r","a, b",2\nr,"c",1\n')
    t3 = LabelTree.from_file(tmp_path / "tree.csv")
    assert t3.leaves == ["a, b", "c"] and t3.distance_matrix().tolist() == [[0, 3], [3, 0]]
    (tmp_path / "tree.csv").write_text("r,a,x\n")
    with pytest.raises(TreeError, match=r"tree\.csv:1: expected 'parent,child\[,weight\]' with a numeric weight"):
        LabelTree.from_file(tmp_path / "tree.csv")
    (tmp_path / "tree.csv").write_text("r,,a\n")
    with pytest.raises(TreeError, match=r"tree\.csv:1: expected 'parent,child\[,weight\]' \(comma separated"):
        LabelTree.from_file(tmp_path / "tree.csv")
    (tmp_path / "tree.txt").write_text("r,a\n")
    with pytest.raises(TreeError, match=r"tree\.txt:1: expected 'parent child \[weight\]'"):
        LabelTree.from_file(tmp_path / "tree.txt")
    assert LabelTree.from_file(tmp_path / "t.yaml", format="json").leaves == t.leaves
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(TreeError, match=r"bad\.json:1: invalid JSON"):
        LabelTree.from_file(tmp_path / "bad.json")
    (tmp_path / "bad.nwk").write_text("((a,b)c;")
    with pytest.raises(TreeError, match="unbalanced"):
        LabelTree.from_file(tmp_path / "bad.nwk")
    spaced = LabelTree.from_parents({"a b": "r"})
    with pytest.raises(TreeError, match="'a b' contain whitespace"):
        spaced.to_file(tmp_path / "s.txt")


def test_error_bad_option() -> None:
    with pytest.raises(TreeError, match="on_multiple_parents='last'"):
        LabelTree.from_edges([("a", "b")], on_multiple_parents="last")


def test_json_round_trip_keeps_named_levels(tmp_path: Path) -> None:
    mid = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    top = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    t = LabelTree.from_levels(
        [mid, top],
        leaf_names=list("abcdefgh"),
        level_names=["mid", "coarse"],
        node_names=[["m0", "m1", "m2", "m3"], ["c0", "c1"]],
    )
    for tree in (t, t.restrict(["h", "a", "c"])):
        tree.to_file(tmp_path / "tree.json")
        back = LabelTree.from_file(tmp_path / "tree.json")
        assert structure(back) == structure(tree)
        assert [(lv.name, lv.ids.tolist(), lv.names) for lv in back.levels] == [
            (lv.name, lv.ids.tolist(), lv.names) for lv in tree.levels
        ]
    r = t.restrict(["h", "a", "c"]).levels
    assert r[0].names == ["m0", "m1", "m3"] and r[0].ids.tolist() == [2, 0, 1]
    assert r[1].names == ["c0", "c1"] and r[1].ids.tolist() == [1, 0, 0]
    # edge files cannot hold level names: read back, the levels are by depth
    t.to_file(tmp_path / "tree.txt")
    back = LabelTree.from_file(tmp_path / "tree.txt")
    assert [lv.name for lv in back.levels] == ["depth2", "depth1"]
    assert back.levels[0].names == ["m0", "m1", "m2", "m3"]
    np.testing.assert_array_equal(back.levels[1].ids, top)


@pytest.mark.parametrize(
    ("levels", "match"),
    [
        ([{"name": "mid", "nodes": ["mammal", "ghost"]}], r"level 'mid' lists unknown nodes 'ghost'"),
        ([{"name": "mid", "nodes": ["mammal", "trout"]}], r"lists the root or leaves 'trout'"),
        ([{"name": "mid", "nodes": ["mammal"]}], r"leaf 'trout' has no ancestor in level 'mid'"),
        (
            [{"name": "mid", "nodes": ["mammal", "fish"]}, {"name": "mid", "nodes": ["mammal", "fish"]}],
            r"duplicate level name 'mid'",
        ),
        (
            [{"name": "a", "nodes": ["mammal", "fish", "vertebrate"]}],
            r"holds both 'mammal' and its ancestor 'vertebrate'",
        ),
        (
            [{"name": "a", "nodes": ["vertebrate"]}, {"name": "b", "nodes": ["mammal", "fish"]}],
            r"finest first: 'b' node 'mammal' is not above 'vertebrate'",
        ),
        ([{"name": "a", "nodes": "mammal"}], r'"levels" must be a list'),
    ],
)
def test_error_json_levels(tmp_path: Path, levels: list, match: str) -> None:
    parents = {**DESIGN_EXAMPLE, "mammal": "vertebrate", "fish": "vertebrate", "vertebrate": "animal"}
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"parents": parents, "levels": levels}))
    with pytest.raises(TreeError, match=match):
        LabelTree.from_file(path)


def test_level_names_and_lists_that_would_corrupt_the_evaluation_are_refused(tmp_path):
    """Breaker findings: a level named "fine" overwrote fine_acc/map_fine in eval.json; a blank
    JSON level name made keys "_acc"; a node in two levels, an empty "levels" list and
    from_levels(None) gave unclear messages or none."""
    with pytest.raises(TreeError, match="level name 'fine' is reserved"):
        LabelTree.from_levels([[0, 0, 1, 1]], level_names=["fine"])
    with pytest.raises(TreeError, match="levels must be a list of 1-D arrays"):
        LabelTree.from_levels(None)
    parents = {"a": "A", "b": "A", "c": "B", "d": "B", "A": "r2", "B": "r2", "r2": "r", "r": None}
    for levels, needle in (
        ([{"name": " ", "nodes": ["A", "B"]}], "level 1 has an empty name"),
        ([{"name": "fine", "nodes": ["A", "B"]}], "is reserved"),
        ([{"name": "mid", "nodes": ["A", "B"]}, {"name": "mid2", "nodes": ["A", "B"]}],
         "node 'A' is listed in levels 'mid' and 'mid2'"),
        ([], '"levels" is empty'),
    ):
        path = tmp_path / "t.json"
        path.write_text(json.dumps({"parents": parents, "levels": levels}))
        with pytest.raises(TreeError, match=re.escape(needle)):
            LabelTree.from_file(path)
    path.write_text(json.dumps({"parents": parents, "levels": [{"name": "mid", "nodes": ["A", "B"]},
                                                              {"name": "coarse", "nodes": ["r2"]}]}))
    assert [lv.name for lv in LabelTree.from_file(path).levels] == ["mid", "coarse"]


@pytest.mark.parametrize("kwargs, needle", [
    ({"level_names": "coarse"}, "level_names must be a list of names, got the string 'coarse'"),
    ({"node_names": [None]}, "node_names[0] must be a list of 2 names"),
    ({"node_names": ["AB"]}, "node_names[0] must be a list of 2 names"),
    ({"level_names": ["a\nb"]}, "holds a control character"),
])
def test_from_levels_name_lists_are_checked_not_split_into_characters(kwargs, needle):
    with pytest.raises(TreeError, match=re.escape(needle)):
        LabelTree.from_levels([[0, 0, 1, 1]], **kwargs)
    with pytest.raises(TreeError, match="nests lists"):
        LabelTree.from_levels([[0, [0, 1], 1, 1]])


def test_parents_json_with_an_unknown_key_names_it(tmp_path: Path) -> None:
    """Breaker finding: {"parents": ..., "levels": ..., "extra": 3} was read as a nested tree
    and refused with "the value under '0' is 'a'"; the unknown key is named now."""
    base = {"parents": {"a": "s", "b": "s", "c": "u", "d": "u", "s": "r", "u": "r"},
            "levels": [{"name": "mid", "nodes": ["s", "u"]}]}
    path = tmp_path / "t.json"
    for extra in ({"extra": 3}, {"comment": ["x"]}, {"name": "s"}, {"note": {}}, {"x": None}):
        path.write_text(json.dumps({**base, **extra}))
        with pytest.raises(TreeError, match=f"unknown key {next(iter(extra))!r} beside \"parents\""):
            LabelTree.from_file(path)
    path.write_text(json.dumps(base))
    assert LabelTree.from_file(path).leaves == ["a", "b", "c", "d"]
    path.write_text(json.dumps({"parents": {"x": {}}, "other": {"y": {}}}))  # nested, two roots
    with pytest.raises(TreeError, match="root"):
        LabelTree.from_file(path)
