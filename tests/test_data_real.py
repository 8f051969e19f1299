"""Real-format loaders on tiny files written in each dataset's own layout.

CIFAR pickles are written with protocol 2 (and in python-2 style) with bytes keys; the ImageNet
layout uses real wnids chosen from the BREEDS hierarchy files in ../shared/data/breeds; iNaturalist
is a COCO-style JSON. Oracles: the published CIFAR-100 superclass table, a networkx re-derivation
of the BREEDS selection, brute-force crop search, hand-worked trees.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
from collections import Counter
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch

from fakes import (
    BREEDS_DIR,
    C10_NAMES,
    C100_F2C,
    C100_FINE,
    CIFAR100_TABLE,
)
from fakes import dump_pickle as _dump
from fakes import write_cifar10 as _write_cifar10
from fakes import write_cifar100 as _write_cifar100
from fakes import write_jpeg as _jpeg
from otcpcc.data import get_dataset
from otcpcc.data.breeds import BREEDS_SETTINGS, BreedsHierarchy, breeds_split, load_living17
from otcpcc.data.cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from otcpcc.data.features import load_features
from otcpcc.data.folder import load_folder
from otcpcc.data.inat import load_inat2021
from otcpcc.data.safe_pickle import UnsafePickleError, safe_load, safe_loads


def _normalised(row: np.ndarray, mean, std) -> torch.Tensor:
    img = torch.tensor(row.reshape(3, 32, 32), dtype=torch.float32) / 255
    return (img - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


# ----------------------------------------------------------------------------- safe pickle


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_safe_load_plain_data_and_numpy_both_pickle_styles(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 12)
    obj = {b"data": a, b"labels": [1, 2], "f": np.float32(2.5), "s": {1, 2}, "t": (None, True)}
    for py2 in (False, True):
        p = tmp_path / f"x{py2}.pkl"
        _dump(obj, p, py2)
        got = safe_load(p)
        key = (lambda k: k.encode()) if py2 else (lambda k: k)
        np.testing.assert_array_equal(got[b"data"], a)
        assert got[b"data"].dtype == np.uint8
        assert got[b"labels"] == [1, 2]
        assert got[key("f")] == np.float32(2.5)
        assert got[key("s")] == {1, 2}
        assert got[key("t")] == (None, True)


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "data_batch_1"
    p.write_bytes(pickle.dumps({b"data": _Evil(str(marker))}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"data_batch_1.*(posix|os|nt)\.system"):
        safe_load(p)
    assert not marker.exists()
    # the same file placed in a CIFAR folder: the loader refuses it too
    root = tmp_path / "c10"
    _write_cifar10(root)
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(p.read_bytes())
    with pytest.raises(UnsafePickleError, match="data_batch_3"):
        get_dataset("cifar10", data_dir=str(root))
    assert not marker.exists()
    # other dangerous shapes: builtins.eval, a direct numpy.ndarray(...) call, object arrays
    for bad in (
        pickle.dumps(_EvalReduce(), protocol=2),
        pickle.dumps(np.array([1, None], dtype=object), protocol=2),
    ):
        with pytest.raises(UnsafePickleError):
            safe_loads(bad, source="x.pkl")


class _EvalReduce:
    def __reduce__(self):
        return (eval, ("1+1",))


def test_truncated_pickle_names_the_file(tmp_path):
    root = tmp_path / "c10"
    _write_cifar10(root)
    tb = root / "cifar-10-batches-py" / "test_batch"
    tb.write_bytes(tb.read_bytes()[: 500])
    with pytest.raises(ValueError, match="test_batch.*(truncated|corrupt)"):
        get_dataset("cifar10", data_dir=str(root))
    with pytest.raises(ValueError, match="nothere.pkl"):
        safe_load(tmp_path / "nothere.pkl")


# ----------------------------------------------------------------------------- CIFAR


def test_cifar10_layout_labels_tree_and_transforms(tmp_path):
    written = _write_cifar10(tmp_path)
    # data_dir may be the parent or the folder itself
    for d in (tmp_path, tmp_path / "cifar-10-batches-py"):
        b = get_dataset("cifar10", data_dir=str(d), augment=False)
        assert len(b.train) == 20 and len(b.test) == 10
    assert b.tree.leaves == C10_NAMES
    assert b.input_shape == (3, 32, 32)
    (lvl,) = b.tree.levels
    animals = {"bird", "cat", "deer", "dog", "frog", "horse"}
    assert [lvl.names[i] for i in lvl.ids] == [
        "animal" if n in animals else "vehicle" for n in C10_NAMES
    ]
    ys = [b.train[i][1] for i in range(20)]
    assert ys == written["train_y"]
    x, y = b.test[3]
    assert y == 3 and x.dtype == torch.float32 and x.shape == (3, 32, 32)
    torch.testing.assert_close(x, _normalised(written["test_x"][3], CIFAR10_MEAN, CIFAR10_STD))
    torch.testing.assert_close(
        b.train[7][0], _normalised(written["train_x"][7], CIFAR10_MEAN, CIFAR10_STD)
    )
    # augmentation: every output is a 32x32 window of the zero-padded image, maybe flipped
    aug = get_dataset("cifar10", data_dir=str(tmp_path))
    raw = torch.tensor(written["train_x"][5].reshape(3, 32, 32), dtype=torch.float32)
    padded = torch.nn.functional.pad(raw, (4, 4, 4, 4))
    mean, std = torch.tensor(CIFAR10_MEAN).view(3, 1, 1), torch.tensor(CIFAR10_STD).view(3, 1, 1)
    torch.manual_seed(0)
    seen = set()
    for _ in range(12):
        got = aug.train[5][0] * std + mean
        hits = [
            (i, j, f)
            for i in range(9)
            for j in range(9)
            for f in (False, True)
            if torch.allclose(
                got * 255,
                (padded[:, i : i + 32, j : j + 32].flip(-1) if f else padded[:, i : i + 32, j : j + 32]),
                atol=1e-3,
            )
        ]
        assert hits, "augmented image is not a padded crop/flip of the original"
        seen.add(hits[0])
    assert len(seen) > 1  # it is random
    # test split is never augmented
    torch.testing.assert_close(aug.test[3][0], x)


def test_cifar100_tree_from_label_pairs_matches_published_table(tmp_path):
    w = _write_cifar100(tmp_path)
    b = get_dataset("cifar100", data_dir=str(tmp_path), augment=False)
    assert b.tree.leaves == C100_FINE and b.num_classes == 100
    assert len(b.train) == 200 and len(b.test) == 100
    (lvl,) = b.tree.levels
    assert lvl.name == "coarse"
    for coarse, fines in CIFAR100_TABLE.items():
        for f in fines:
            assert lvl.names[lvl.ids[C100_FINE.index(f)]] == coarse
    D = b.tree.distance_matrix()
    i, j, k = C100_FINE.index("beaver"), C100_FINE.index("whale"), C100_FINE.index("apple")
    assert D[i, j] == 2 and D[i, k] == 4 and D[i, i] == 0
    assert b.meta["fine_to_coarse"] == C100_F2C.tolist()
    assert [b.train[n][1] for n in (0, 1, 2, 199)] == [0, 0, 1, 99]
    torch.testing.assert_close(
        b.train[9][0], _normalised(w["train_x"][9], CIFAR100_MEAN, CIFAR100_STD)
    )


def test_cifar100_paper_levels_and_subpop_split(tmp_path):
    _write_cifar100(tmp_path, py2=True)
    b = get_dataset("cifar100", data_dir=str(tmp_path), levels="paper")
    mid, coarse, coarsest = b.tree.levels
    assert (mid.name, coarse.name, coarsest.name) == ("mid", "coarse", "coarsest")
    assert (len(mid.names), len(coarse.names), len(coarsest.names)) == (40, 20, 10)
    # aquatic mammals by fine id: beaver(4), dolphin(30) | otter(55), seal(72), whale(95)
    name = {f: mid.names[mid.ids[C100_FINE.index(f)]] for f in CIFAR100_TABLE["aquatic_mammals"]}
    assert name == {"beaver": "aquatic_mammals_b", "dolphin": "aquatic_mammals_b",
                    "otter": "aquatic_mammals_a", "seal": "aquatic_mammals_a",
                    "whale": "aquatic_mammals_a"}
    top = coarsest.names[coarsest.ids[C100_FINE.index("trout")]]
    assert top == "aquatic_mammals+fish"
    assert coarsest.names[coarsest.ids[C100_FINE.index("tractor")]] == "vehicles_1+vehicles_2"
    D = b.tree.distance_matrix()
    assert D[C100_FINE.index("beaver"), C100_FINE.index("dolphin")] == 2
    assert D[C100_FINE.index("beaver"), C100_FINE.index("whale")] == 4
    assert D[C100_FINE.index("beaver"), C100_FINE.index("trout")] == 6
    assert D[C100_FINE.index("beaver"), C100_FINE.index("apple")] == 8

    s = get_dataset("cifar100", data_dir=str(tmp_path), subpop=True)
    assert len(s.meta["source_classes"]) == 60 and len(s.meta["target_classes"]) == 40
    want_target = {fines[0] for fines in CIFAR100_TABLE.values()} | {
        fines[1] for fines in CIFAR100_TABLE.values()
    }
    assert set(s.meta["target_classes"]) == want_target  # table rows are sorted = id order
    assert len(s.train) == 120 and len(s.extra["target_train"]) == 80
    assert len(s.test) == 60 and len(s.extra["target_test"]) == 40
    tgt_labels = {s.extra["target_test"][i][1] for i in range(40)}
    assert {C100_FINE[t] for t in tgt_labels} == want_target


def test_cifar100_errors(tmp_path):
    bad = C100_F2C.copy()
    _write_cifar100(tmp_path / "a", f2c=bad)
    # a fine class appearing under two superclasses in the train file
    d = tmp_path / "a" / "cifar-100-python"
    data = safe_load(d / "train")
    data[b"coarse_labels"][1] = (data[b"coarse_labels"][1] + 1) % 20  # second image of "apple"
    (d / "train").write_bytes(pickle.dumps(data, protocol=2))
    with pytest.raises(ValueError, match="apple.*several coarse"):
        get_dataset("cifar100", data_dir=str(tmp_path / "a"))
    # missing file: named, with the expected layout
    _write_cifar100(tmp_path / "b")
    (tmp_path / "b" / "cifar-100-python" / "meta").unlink()
    with pytest.raises(ValueError, match=r"lacks meta.*cifar-100-python/\{train,test,meta\}"):
        get_dataset("cifar100", data_dir=str(tmp_path / "b"))
    with pytest.raises(ValueError, match="lacks data_batch_1"):
        get_dataset("cifar10", data_dir=str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="unknown option.*colour"):
        get_dataset("cifar10", data_dir=str(tmp_path), colour=True)


# ----------------------------------------------------------------------------- image folders


def test_folder_tree_restrict_missing_and_bad_images(tmp_path):
    classes = ["cat", "dog", "trout"]
    for k, c in enumerate(classes):
        for i in range(3):
            _jpeg(tmp_path / "train" / c / f"{i}.jpg", 40 * k + i)
        _jpeg(tmp_path / "val" / c / "0.JPEG", 40 * k)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    tree_file = tmp_path / "labels.txt"
    tree_file.write_text(
        "animal mammal\nanimal fish\nmammal dog\nmammal cat\nmammal cow\nfish trout\n"
    )
    b = load_folder(tmp_path, tree=str(tree_file), image_size=32)
    assert b.tree.leaves == classes  # restricted to the data, in sorted order; "cow" dropped
    D = b.tree.distance_matrix()
    np.testing.assert_array_equal(D, [[0, 2, 4], [2, 0, 4], [4, 4, 0]])
    assert len(b.train) == 9 and len(b.test) == 3
    x, y = b.train[4]
    assert x.shape == (3, 32, 32) and y == 1
    assert [b.test[i][1] for i in range(3)] == [0, 1, 2]
    assert b.input_shape == (3, 32, 32)
    # flat tree when no tree is given
    flat = load_folder(tmp_path, image_size=32)
    assert flat.meta["tree_source"] == "flat" and set(flat.tree.distance_matrix()[0, 1:]) == {2}
    # a class that is not in the tree
    _jpeg(tmp_path / "train" / "zebra" / "0.jpg", 9)
    with pytest.raises(ValueError, match="not leaves of the tree.*zebra"):
        load_folder(tmp_path, tree=str(tree_file))
    (tmp_path / "train" / "zebra" / "0.jpg").unlink()
    (tmp_path / "train" / "zebra").rmdir()
    # corrupt and truncated images: named when read, or skipped and counted
    (tmp_path / "train" / "dog" / "bad.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    good = (tmp_path / "train" / "trout" / "0.jpg").read_bytes()
    (tmp_path / "val" / "trout" / "cut.jpg").write_bytes(good[: len(good) // 2])
    b = load_folder(tmp_path, tree=str(tree_file), image_size=32)
    idx = [i for i, (p, _) in enumerate(b.train.samples) if p.name == "bad.jpg"][0]
    with pytest.raises(ValueError, match=r"bad\.jpg"):
        b.train[idx]
    s = load_folder(tmp_path, tree=str(tree_file), image_size=32, skip_bad_images=True)
    assert s.meta["skipped_images"] == {"train": 1, "test": 1}
    assert len(s.train) == 9 and len(s.test) == 3
    assert {Path(p).name for p in s.meta["skipped_files"]} == {"bad.jpg", "cut.jpg"}
    for i in range(len(s.test)):
        s.test[i]  # all remaining images decode


# ----------------------------------------------------------------------------- BREEDS


@functools.lru_cache(maxsize=1)
def _wordnet_graph():
    """The BREEDS graph restricted to ImageNet classes and their ancestors, with node levels."""
    info = json.loads((BREEDS_DIR / "dataset_class_info.json").read_text())
    leaves = {row[1] for row in info}
    full = nx.DiGraph()
    for line in (BREEDS_DIR / "class_hierarchy.txt").read_text().splitlines():
        if line.strip():
            p, c = line.split()
            full.add_edge(p, c)
    keep = set()
    for leaf in leaves & set(full.nodes):
        keep |= nx.ancestors(full, leaf) | {leaf}
    g = full.subgraph(keep).copy()
    level_of = {n: nx.dag_longest_path_length(g.subgraph(nx.ancestors(g, n) | {n}))
                for n in g.nodes}
    return g, leaves, level_of


def _robustness_style_split(level: int, ancestor: str | None, n_sub: int):
    """Independent re-derivation with networkx (BREEDS: longest-path levels, RandomState(2))."""
    g, leaves, level_of = _wordnet_graph()

    def below(n):
        out, todo = set(), [n]
        while todo:
            for c in g.successors(todo.pop()):
                (out.add(c) if c in leaves else todo.append(c))
        return out | ({n} & leaves)

    ok = nx.descendants(g, ancestor) | {ancestor} if ancestor else set(g.nodes)
    supers = sorted(n for n in g.nodes if level_of[n] == level and n in ok and len(below(n)) >= n_sub)
    rng = np.random.RandomState(2)
    result = []
    for s in supers:
        node = s
        while g.out_degree(node) == 1:
            node = next(iter(g.successors(node)))
        pool = sorted(x for c in sorted(g.successors(node)) for x in below(c))
        draw = list(rng.choice(pool, n_sub, replace=False))
        result.append((s, draw[: n_sub // 2], draw[n_sub // 2 :]))
    return result


@pytest.mark.parametrize("setting", ["living17", "nonliving26", "entity13", "entity30"])
def test_breeds_selection_sizes_and_split(setting):
    level, ancestor, n_sub, n_super = BREEDS_SETTINGS[setting]
    h = BreedsHierarchy(BREEDS_DIR)
    supers, src, tgt = breeds_split(h, level, ancestor, n_sub)
    assert len(supers) == n_super
    assert all(len(s) == n_sub // 2 and len(t) == n_sub // 2 for s, t in zip(src, tgt, strict=True))
    flat = [w for g in src + tgt for w in g]
    assert len(flat) == len(set(flat)) == n_super * n_sub
    for sc, s, t in zip(supers, src, tgt, strict=True):
        assert set(s + t) <= h.leaves_below(sc)
    expected = _robustness_style_split(level, ancestor, n_sub)
    assert [(s, list(a), list(b)) for s, a, b in zip(supers, src, tgt, strict=True)] == expected


def test_breeds_living17_superclasses_are_the_published_ones():
    h = BreedsHierarchy(BREEDS_DIR)
    supers, _, _ = breeds_split(h, 5, "n00004258", 4)
    names = sorted(h.name(s).split(",")[0] for s in supers)
    assert names == sorted(["salamander", "turtle", "lizard", "snake", "spider", "grouse",
                            "parrot", "crab", "dog", "wolf", "fox", "domestic cat", "bear",
                            "beetle", "butterfly", "ape", "monkey"])


def test_breeds_living17_loader_on_imagenet_layout(tmp_path, monkeypatch):
    h = BreedsHierarchy(BREEDS_DIR)
    supers, src, tgt = breeds_split(h, 5, "n00004258", 4)
    wnids = [w for g in src + tgt for w in g]
    for k, w in enumerate(wnids):
        _jpeg(tmp_path / "train" / w / f"{w}_1.JPEG", k, size=8)
        _jpeg(tmp_path / "train" / w / f"{w}_2.JPEG", k, size=8)
        _jpeg(tmp_path / "val" / w / f"ILSVRC2012_val_{k:08d}.JPEG", k, size=8)
    _jpeg(tmp_path / "train" / "n01440764" / "tench.JPEG", 0, size=8)  # not in living17
    b = load_living17(tmp_path, hierarchy_dir=BREEDS_DIR, image_size=32)
    assert b.name == "breeds-living17" and b.num_classes == 68
    assert b.meta["num_source_classes"] == 34
    assert len(b.train) == 68 and len(b.test) == 34
    assert len(b.extra["target_train"]) == 68 and len(b.extra["target_test"]) == 34
    assert sorted(Counter(y for _, y in b.train.samples)) == list(range(34))
    assert sorted({y for _, y in b.extra["target_test"].samples}) == list(range(34, 68))
    (lvl,) = b.tree.levels
    assert lvl.name == "superclass" and len(lvl.names) == 17
    for i, leaf in enumerate(b.tree.leaves):
        assert leaf in h.leaves_below(lvl.names[lvl.ids[i]])
    # every superclass has 2 source and 2 target leaves
    src_super = Counter(lvl.ids[:34].tolist())
    tgt_super = Counter(lvl.ids[34:].tolist())
    assert set(src_super.values()) == {2} and set(tgt_super.values()) == {2}
    assert b.meta["class_names"][b.tree.leaves[0]] == h.name(b.tree.leaves[0])
    x, y = b.extra["target_test"][0]
    assert x.shape == (3, 32, 32) and y == 34
    # paper levels: subclass -> parent -> superclass -> superclass parent
    p = load_living17(tmp_path, hierarchy_dir=BREEDS_DIR, image_size=32, levels="paper")
    assert [lv.name for lv in p.tree.levels] == ["mid", "coarse", "coarsest"]
    assert p.tree.levels[1].names == lvl.names
    # registry: hierarchy from $OTCPCC_BREEDS_DIR; missing hierarchy is a clear error
    monkeypatch.setenv("OTCPCC_BREEDS_DIR", str(BREEDS_DIR))
    r = get_dataset("breeds-living17", data_dir=str(tmp_path), image_size=32, augment=False)
    assert r.tree.leaves == b.tree.leaves and r.meta["hierarchy_dir"] == str(BREEDS_DIR)
    monkeypatch.delenv("OTCPCC_BREEDS_DIR")
    with pytest.raises(ValueError, match="hierarchy files.*not found"):
        get_dataset("breeds-living17", data_dir=str(tmp_path))
    (tmp_path / "val" / wnids[5] / f"ILSVRC2012_val_{5:08d}.JPEG").unlink()
    (tmp_path / "val" / wnids[5]).rmdir()
    with pytest.raises(ValueError, match=f"lacks 1 ImageNet class folder.*{wnids[5]}"):
        load_living17(tmp_path, hierarchy_dir=BREEDS_DIR)


# ----------------------------------------------------------------------------- iNaturalist


def _inat_category(cid, kingdom, phylum, cls, order, family, genus, epithet):
    return {"id": cid, "name": f"{genus} {epithet}", "common_name": "x",
            "supercategory": "x", "kingdom": kingdom, "phylum": phylum, "class": cls,
            "order": order, "family": family, "genus": genus, "specific_epithet": epithet,
            "image_dir_name": f"{cid:05d}_{genus}_{epithet}"}


def test_inat2021_taxonomy_tree_and_fine_levels(tmp_path):
    cats = [
        _inat_category(0, "Animalia", "Chordata", "Aves", "Suliformes", "Sulidae", "Morus",
                       "bassanus"),
        _inat_category(1, "Animalia", "Chordata", "Aves", "Suliformes", "Sulidae", "Morus",
                       "serrator"),
        _inat_category(2, "Animalia", "Chordata", "Aves", "Suliformes", "Sulidae", "Sula",
                       "sula"),
        _inat_category(3, "Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Moraceae",
                       "Morus", "alba"),
        _inat_category(4, "Animalia", "Chordata", "Mammalia", "Carnivora", "Canidae", "Canis",
                       "lupus"),
    ]
    for split, per in (("train_mini", 2), ("val", 1)):
        images, anns = [], []
        for c in cats:
            for i in range(per):
                iid = len(images) + (1000 if split == "val" else 0)
                fname = f"{split}/{c['image_dir_name']}/{i}.jpg"
                _jpeg(tmp_path / fname, 10 * c["id"] + i, size=8)
                images.append({"id": iid, "file_name": fname, "width": 8, "height": 8})
                anns.append({"id": iid, "image_id": iid, "category_id": c["id"]})
        (tmp_path / f"{split}.json").write_text(
            json.dumps({"info": {}, "images": images, "annotations": anns, "categories": cats,
                        "licenses": []})
        )
    b = load_inat2021(tmp_path, image_size=32)
    assert b.tree.leaves == ["Morus bassanus", "Morus serrator", "Sula sula", "Morus alba",
                             "Canis lupus"]
    assert [lv.name for lv in b.tree.levels] == ["genus", "family", "order", "class", "phylum",
                                                "kingdom"]
    genus = b.tree.levels[0]
    assert genus.names[genus.ids[0]] == "genus:Morus|family:Sulidae"  # homonym genus
    assert genus.names[genus.ids[3]] == "genus:Morus|family:Moraceae"
    D = b.tree.distance_matrix()
    assert D[0, 1] == 2 and D[0, 2] == 4 and D[0, 4] == 10 and D[0, 3] == 14
    assert len(b.train) == 10 and len(b.test) == 5
    assert [y for _, y in b.test.samples] == [0, 1, 2, 3, 4]
    x, y = b.train[5]
    assert x.shape == (3, 32, 32) and y == 2
    g = load_inat2021(tmp_path, fine="genus", coarse="family", image_size=32)
    assert g.tree.leaves == ["Morus|family:Sulidae", "Sula", "Morus|family:Moraceae", "Canis"]
    assert [lv.name for lv in g.tree.levels] == ["family"]
    assert [y for _, y in g.train.samples] == [0, 0, 0, 0, 1, 1, 2, 2, 3, 3]
    assert g.meta["category_to_label"] == {0: 0, 1: 0, 2: 1, 3: 2, 4: 3}
    with pytest.raises(ValueError, match="must be above"):
        load_inat2021(tmp_path, fine="family", coarse="genus")
    (tmp_path / "val.json").unlink()
    with pytest.raises(ValueError, match=r"val\.json not found"):
        load_inat2021(tmp_path)


# ----------------------------------------------------------------------------- features


def test_features_npz_layouts_trees_and_nonfinite(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5)).astype(np.float32)
    y = np.repeat(np.arange(3), 4)
    split = np.array(["train", "train", "train", "test"] * 3)
    parents = json.dumps({"cat": "mammal", "dog": "mammal", "trout": "animal",
                          "mammal": "animal"})
    np.savez(tmp_path / "f.npz", features=x, labels=y, split=split, tree_parents=parents)
    b = load_features(tmp_path / "f.npz", standardize=False)  # raw values (default: standardised)
    assert b.input_shape == (5,) and b.tree.leaves == ["cat", "dog", "trout"]
    assert len(b.train) == 9 and len(b.test) == 3
    xt, yt = b.test[1]
    torch.testing.assert_close(xt, torch.from_numpy(x[7]))
    assert int(yt) == 1
    np.testing.assert_array_equal(b.tree.distance_matrix(), [[0, 2, 3], [2, 0, 3], [3, 3, 0]])
    # train_/test_ arrays + levels + class names
    np.savez(tmp_path / "g.npz", train_features=x[:9], train_labels=y[:9], test_features=x[9:],
             test_labels=y[9:], levels=np.array([[0, 0, 1]]), class_names=np.array(["a", "b", "c"]),
             level_names=np.array(["coarse"]))
    g = load_features(tmp_path / "g.npz")
    assert g.tree.leaves == ["a", "b", "c"] and g.tree.levels[0].name == "coarse"
    assert g.meta["split_source"] == "arrays"
    # stratified split when no split is stored; deterministic in the seed
    np.savez(tmp_path / "h.npz", features=x, labels=y)
    h1, h2 = load_features(tmp_path / "h.npz", seed=3), load_features(tmp_path / "h.npz", seed=3)
    assert len(h1.test) == 3 and h1.meta["tree_source"] == "flat"
    assert torch.equal(h1.test.tensors[0], h2.test.tensors[0])
    # a tree file overrides; its extra leaves are dropped
    tf = tmp_path / "t.txt"
    tf.write_text("r x\nr y\nx a\nx b\ny c\ny d\n")
    t = load_features(tmp_path / "g.npz", tree=str(tf))
    assert t.tree.leaves == ["a", "b", "c"] and t.tree.distance_matrix()[0, 2] == 4
    # non-finite features
    bad = x.copy()
    bad[2, 1], bad[5, 0], bad[5, 3] = np.nan, np.inf, -np.inf
    np.savez(tmp_path / "bad.npz", features=bad, labels=y)
    with pytest.raises(ValueError, match=r"bad\.npz.*3 non-finite values.*2 rows"):
        load_features(tmp_path / "bad.npz")
    np.savez(tmp_path / "lab.npz", features=x, labels=y + 5, class_names=np.array(["a", "b", "c"]))
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2"):
        load_features(tmp_path / "lab.npz")
