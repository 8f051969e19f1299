"""iNaturalist 2021 subpopulation split (``subpop=True``): OT-CPCC's 60/40 rule per coarse taxon.

Oracle: the rule as written in OT-CPCC's ``dataset/inat/data.py`` (``make_subpopsplit_dataset``),
recomputed here from the categories themselves: fine classes (taxonomic class) numbered by first
appearance in category-id order, grouped by phylum; per phylum of ``n`` classes the first
``int(0.4 * n)`` are target, the rest source; phyla with ``n <= 2`` take no part.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fakes import inat_category, write_inat2021
from otcpcc.cli import main
from otcpcc.data.inat import load_inat2021, subpop_split
from otcpcc.evaluation.evaluate import load_run
from otcpcc.evaluation.inference import predict

# (kingdom, phylum, [classes]); two classes get a second species
TAXA = [
    ("Animalia", "Chordata", ["Aves", "Mammalia", "Reptilia", "Amphibia", "Actinopterygii"]),
    ("Animalia", "Arthropoda", ["Insecta", "Arachnida", "Malacostraca", "Chilopoda"]),
    ("Animalia", "Mollusca", ["Gastropoda", "Bivalvia", "Cephalopoda"]),
    ("Plantae", "Tracheophyta", ["Magnoliopsida", "Liliopsida", "Pinopsida", "Polypodiopsida",
                                 "Lycopodiopsida", "Gnetopsida", "Cycadopsida"]),
    ("Fungi", "Basidiomycota", ["Agaricomycetes", "Tremellomycetes"]),
    ("Plantae", "Bryophyta", ["Bryopsida"]),
]
TWO_SPECIES = {"Aves", "Insecta"}
OPTS = {"fine": "class", "coarse": "phylum", "subpop": True, "image_size": 16}


def _categories() -> list[dict]:
    rows = [(k, p, c, s) for k, p, classes in TAXA for c in classes
            for s in (("a", "b") if c in TWO_SPECIES else ("a",))]
    order = np.random.default_rng(3).permutation(len(rows))  # interleave phyla in id order
    return [inat_category(cid, k, p, c, f"O{c}", f"F{c}", f"G{c}{s}", s)
            for cid, (k, p, c, s) in enumerate(rows[i] for i in order)]


CATS = _categories()


def _oracle() -> tuple[list[str], list[str], list[str]]:
    """(source, target, dropped) class names, each by first appearance in category-id order."""
    fine: list[str] = []
    phylum: dict[str, str] = {}
    for c in sorted(CATS, key=lambda c: c["id"]):
        if c["class"] not in phylum:
            fine.append(c["class"])
            phylum[c["class"]] = c["phylum"]
    count = {p: sum(phylum[f] == p for f in fine) for p in set(phylum.values())}
    source, target, dropped, seen = [], [], [], {p: 0 for p in count}
    for f in fine:
        p = phylum[f]
        if count[p] <= 2:
            dropped.append(f)
            continue
        seen[p] += 1
        (target if seen[p] <= int(0.4 * count[p]) else source).append(f)
    return source, target, dropped


@pytest.fixture(scope="module")
def inat_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inat")
    write_inat2021(root, CATS, train_per_class=2, val_per_class=1)
    return root


def test_rounding_matches_the_reference_and_small_groups_drop():
    for n in range(1, 100_001):
        assert (2 * n) // 5 == int(0.4 * n)
    groups = ["a", "b", "a", "c", "a", "b", "a", "a", "c", "c", "b", "b", "d"]
    source, target, dropped = subpop_split(groups)
    # a: 5 classes [0, 2, 4, 6, 7] -> 2 target; b: 4 [1, 5, 10, 11] -> 1; c: 3 -> 1; d: 1 dropped
    assert target == [0, 1, 2, 3]
    assert source == [4, 5, 6, 7, 8, 9, 10, 11]
    assert dropped == [12]
    assert subpop_split(["x", "x"]) == ([], [], [0, 1])


def test_inat2021_subpop_split_sizes_labels_and_determinism(inat_dir):
    b = load_inat2021(inat_dir, **OPTS)
    src, tgt, dropped = _oracle()
    assert (len(src), len(tgt), len(dropped)) == (13, 6, 3)
    leaves = list(b.tree.leaves)
    assert leaves == src + tgt  # source first, then target, each by first appearance
    assert b.meta["source_classes"] == src and b.meta["target_classes"] == tgt
    assert b.meta["num_source_classes"] == 13 and b.meta["subpop_level"] == "phylum"
    assert sorted(b.meta["dropped_classes"]) == sorted(dropped)
    # per phylum: floor(0.4 n) target, the rest source; targets share their phylum with sources
    phylum_of = {c["class"]: c["phylum"] for c in CATS}
    for _, p, classes in TAXA:
        n_t = sum(phylum_of[c] == p for c in tgt)
        n_s = sum(phylum_of[c] == p for c in src)
        if len(classes) <= 2:
            assert n_t == n_s == 0
        else:
            assert (n_t, n_s) == (int(0.4 * len(classes)), len(classes) - int(0.4 * len(classes)))
    level = b.tree.levels[0]
    assert level.name == "phylum" and [lv.name for lv in b.tree.levels] == ["phylum"]
    for i, leaf in enumerate(leaves):
        assert level.names[level.ids[i]] == f"phylum:{phylum_of[leaf]}"

    splits = {"train": b.train, "test": b.test, **b.extra}
    assert set(b.extra) == {"target_train", "target_test"}
    cat_of_dir = {c["image_dir_name"]: c for c in CATS}
    paths = {}
    for name, ds in splits.items():
        for path, y in ds.samples:
            assert 0 <= y < len(leaves)
            assert leaves[y] == cat_of_dir[Path(path).parent.name]["class"]  # label = leaf id
            assert (y < 13) == (name in ("train", "test"))
        paths[name] = {str(p) for p, _ in ds.samples}
    per = {c: 1 + (c in TWO_SPECIES) for c in src + tgt}
    assert len(b.train) == 2 * sum(per[c] for c in src) == b.meta["num_train"]
    assert len(b.test) == sum(per[c] for c in src) == b.meta["num_test"]
    assert len(b.extra["target_train"]) == 2 * sum(per[c] for c in tgt)
    assert len(b.extra["target_test"]) == sum(per[c] for c in tgt) == b.meta["num_target_test"]
    assert not paths["train"] & paths["target_train"] and not paths["test"] & paths["target_test"]
    assert set(b.meta["category_to_label"]) == {c["id"] for c in CATS
                                                if c["class"] not in dropped}
    x, y = b.extra["target_test"][0]
    assert x.shape == (3, 16, 16) and y >= 13

    # deterministic, independent of seed
    again = load_inat2021(inat_dir, seed=7, **OPTS)
    assert list(again.tree.leaves) == leaves
    for name, ds in {"train": again.train, "test": again.test, **again.extra}.items():
        assert ds.samples == splits[name].samples
    # without subpop: every class, the original order, no extra splits
    full = load_inat2021(inat_dir, fine="class", coarse="phylum", image_size=16)
    assert full.tree.num_classes == 22 and not full.extra
    assert len(full.train) == 2 * len(CATS)


def test_inat2021_subpop_options(inat_dir):
    # species under genus: every genus here has <= 2 species, so nothing is left
    with pytest.raises(ValueError, match="3 or more species"):
        load_inat2021(inat_dir, subpop=True)
    # grouping by a higher level than the parent
    k = load_inat2021(inat_dir, fine="class", coarse="kingdom", subpop=True,
                      subpop_level="kingdom", image_size=16)
    # Animalia 12 classes -> 4 target; Plantae 8 -> 3; Fungi 2 dropped
    assert len(k.meta["target_classes"]) == 7 and len(k.meta["source_classes"]) == 13
    assert [lv.name for lv in k.tree.levels] == ["phylum", "kingdom"]
    with pytest.raises(ValueError, match="subpop_level must be"):
        load_inat2021(inat_dir, fine="class", coarse="phylum", subpop=True, subpop_level="order")
    with pytest.raises(ValueError, match="only used with subpop"):
        load_inat2021(inat_dir, subpop_level="genus")
    with pytest.raises(ValueError, match="needs a coarse level above"):
        load_inat2021(inat_dir, fine="class", coarse="class", subpop=True)
    with pytest.raises(ValueError, match="subpop must be true or false"):
        load_inat2021(inat_dir, subpop="yes")


@pytest.mark.slow
def test_inat2021_subpop_train_and_evaluate_reports_target(inat_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--data", "inat2021", "--data-dir", str(inat_dir),
                 "--data-opt", "fine=class", "--data-opt", "coarse=phylum",
                 "--data-opt", "subpop=true", "--data-opt", "image_size=16",
                 "--arch", "resnet18", "--epochs", "1", "-b", "30", "--distance", "l2",
                 "--device", "cpu", "--no-progress", "--out", str(out)])
    assert code == 0
    assert main(["evaluate", str(out)]) == 0
    assert "target.zero_shot_phylum_acc" in capsys.readouterr().out
    res = json.loads((out / "eval.json").read_text())
    src, tgt, _ = _oracle()
    per = {c: 1 + (c in TWO_SPECIES) for c in src + tgt}  # val images per class
    assert res["num_classes"] == 19 and res["n"] == sum(per[c] for c in src)
    target = res["target"]
    assert target["n"] == sum(per[c] for c in tgt) and target["num_target_classes"] == 6
    assert len(target["one_shot_samples"]) == 6
    for key in ("zero_shot_phylum_acc", "one_shot_fine_acc", "map_phylum"):
        assert 0.0 <= target[key] <= 1.0, key
    # oracle: zero-shot phylum accuracy from the model's outputs, phyla read from the categories
    run = load_run(out)
    phylum_of = {c["class"]: c["phylum"] for c in CATS}
    phyla = sorted({phylum_of[c] for c in src})
    leaf_phylum = np.array([phyla.index(phylum_of[c]) for c in run.tree.leaves])
    pred = predict(run.model, run.bundle.extra["target_test"], run.env, run.cfg)
    probs = torch.softmax(pred["logits"].double(), dim=1).numpy()[:, :len(src)]
    coarse = np.stack([probs[:, leaf_phylum[:len(src)] == p].sum(axis=1)
                       for p in range(len(phyla))], axis=1)
    assert target["zero_shot_phylum_acc"] == pytest.approx(
        np.mean(coarse.argmax(axis=1) == leaf_phylum[pred["labels"].numpy()]))
