"""Tiny datasets written in each real dataset's own layout, shared by the data and workflow tests.

CIFAR pickles are written with protocol 2 (optionally python-2 style, as the original files) with
bytes keys; image folders hold small JPEGs; BREEDS hierarchy files are generated in the BREEDS
format (:func:`write_breeds_hierarchy`), so the suite needs nothing beside the clone. Checks
against the real hierarchy files (``$OTCPCC_BREEDS_DIR`` or ``../shared/data/breeds``) go through
:func:`real_breeds_dir`, which skips with the reason when they are absent.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

_REAL_BREEDS_CANDIDATES = [
    Path(p) for p in (os.environ.get("OTCPCC_BREEDS_DIR"),) if p
] + [Path(__file__).resolve().parents[2] / "shared" / "data" / "breeds"]


def real_breeds_dir() -> Path:
    """The real BREEDS hierarchy files, or a pytest skip saying where they were looked for."""
    import pytest

    from otcpcc.data.breeds import HIERARCHY_FILES

    for d in _REAL_BREEDS_CANDIDATES:
        if all((d / f).is_file() for f in HIERARCHY_FILES):
            return d
    pytest.skip("real BREEDS hierarchy files not found (set OTCPCC_BREEDS_DIR or place them in "
                f"{_REAL_BREEDS_CANDIDATES[-1]}): this check compares against the published files")


ROOT_WNID = "n00001740"
LIVING_WNID = "n00004258"


def write_breeds_hierarchy(path: Path) -> Path:
    """BREEDS-format hierarchy files with a living17-shaped selection; returns ``path``.

    Tree (levels = longest path from the root): entity -> living thing (1) -> organism (2) ->
    animal (3) -> chordate (4) -> 17 superclasses (5) -> 2 mid nodes each (6) -> 3 ImageNet
    classes each (7), so every superclass reaches 6 classes (>= 4). Superclass 0 goes through a
    single-child node (the selection must descend through it). Also: a level-5 node with only 3
    classes (excluded), and a non-living branch holding n01440764 (tench), outside living17.
    """
    path.mkdir(parents=True, exist_ok=True)
    edges: list[tuple[str, str]] = []
    names: dict[str, str] = {ROOT_WNID: "entity", LIVING_WNID: "living thing, animate thing"}
    leaves: list[str] = []
    counter = iter(range(10**6))

    def node(name: str, leaf: bool = False) -> str:
        wnid = f"n{(1 if leaf else 2) * 10**7 + next(counter):08d}"
        names[wnid] = name
        if leaf:
            leaves.append(wnid)
        return wnid

    chain = [ROOT_WNID, LIVING_WNID, node("organism"), node("animal"), node("chordate")]
    edges += list(zip(chain[:-1], chain[1:], strict=True))
    for s in range(17):
        sup = node(f"superclass{s}")
        edges.append((chain[-1], sup))
        top = sup
        if s == 0:
            top = node("superclass0 only child")
            edges.append((sup, top))
        for m in range(2):
            mid = node(f"mid{s}_{m}")
            edges.append((top, mid))
            for k in range(3):
                edges.append((mid, node(f"class{s}_{m}_{k}", leaf=True)))
    small = node("small superclass")
    edges.append((chain[-1], small))
    small_mid = node("small mid")
    edges.append((small, small_mid))
    edges += [(small_mid, node(f"small class{k}", leaf=True)) for k in range(3)]
    nonliving = node("non-living thing")
    edges.append((ROOT_WNID, nonliving))
    edges.append((nonliving, "n01440764"))
    names["n01440764"] = "tench, Tinca tinca"
    leaves.append("n01440764")
    (path / "class_hierarchy.txt").write_text("".join(f"{p} {c}\n" for p, c in edges))
    info = [[i, w, names[w].split(",")[0]] for i, w in enumerate(sorted(leaves))]
    (path / "dataset_class_info.json").write_text(json.dumps(info))
    (path / "node_names.txt").write_text("".join(f"{w}\t{n}\n" for w, n in names.items()))
    return path

# The published CIFAR-100 superclass table (https://www.cs.toronto.edu/~kriz/cifar.html)
CIFAR100_TABLE = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
C100_COARSE = sorted(CIFAR100_TABLE)
C100_FINE = sorted(n for names in CIFAR100_TABLE.values() for n in names)
C100_F2C = np.array(
    [next(C100_COARSE.index(c) for c, ns in CIFAR100_TABLE.items() if f in ns) for f in C100_FINE]
)
C10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]


class Py2Pickler(pickle._Pickler):
    """Writes str/bytes as python-2 ``str`` (BINSTRING), as the original CIFAR files do."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_str8(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = _save_str8
    dispatch[str] = _save_str8


def dump_pickle(obj, path: Path, py2: bool) -> None:
    if py2:
        buf = io.BytesIO()
        Py2Pickler(buf, protocol=2).dump(obj)
        path.write_bytes(buf.getvalue())
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))


def random_images(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random CIFAR rows: uint8 [n, 3072], channel-major 3x32x32."""
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_cifar10(root: Path, py2: bool = True) -> dict:
    """``root/cifar-10-batches-py``: 5 train batches of 4 images, a test batch of 10 (one per
    class), batches.meta. Returns the written arrays and labels."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = {"train_x": [], "train_y": []}
    for b in range(1, 6):
        x, y = random_images(rng, 4), [(b + i) % 10 for i in range(4)]
        dump_pickle({b"batch_label": b"training batch", b"labels": y, b"data": x,
                     b"filenames": [b"f.png"] * 4}, d / f"data_batch_{b}", py2)
        out["train_x"].append(x)
        out["train_y"] += y
    tx, ty = random_images(rng, 10), list(range(10))
    dump_pickle({b"labels": ty, b"data": tx}, d / "test_batch", py2)
    dump_pickle({b"label_names": [n.encode() for n in C10_NAMES], b"num_cases_per_batch": 4,
                 b"num_vis": 3072}, d / "batches.meta", py2)
    out["test_x"], out["test_y"] = tx, ty
    out["train_x"] = np.concatenate(out["train_x"])
    return out


def write_cifar100(root: Path, f2c: np.ndarray = C100_F2C, py2: bool = False,
                   train_per_class: int = 2, test_fine: Sequence[int] | None = None) -> dict:
    """``root/cifar-100-python/{train,test,meta}`` with the real fine -> coarse relation ``f2c``.

    Train: ``train_per_class`` images of every fine class (in class order); test: one image per
    fine id in ``test_fine`` (default all 100). Returns the written arrays and fine labels.
    """
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    fine_train = np.repeat(np.arange(100), train_per_class)
    fine_test = np.arange(100) if test_fine is None else np.asarray(test_fine, dtype=np.int64)
    xs = {"train": random_images(rng, fine_train.size), "test": random_images(rng, fine_test.size)}
    for name, fine in (("train", fine_train), ("test", fine_test)):
        dump_pickle({b"filenames": [b"x.png"] * len(fine), b"batch_label": name.encode(),
                     b"fine_labels": fine.tolist(), b"coarse_labels": f2c[fine].tolist(),
                     b"data": xs[name]}, d / name, py2)
    dump_pickle({b"fine_label_names": [n.encode() for n in C100_FINE],
                 b"coarse_label_names": [n.encode() for n in C100_COARSE]}, d / "meta", py2)
    return {"train_x": xs["train"], "train_y": fine_train, "test_x": xs["test"],
            "test_y": fine_test}


def write_jpeg(path: Path, value: int, size: int = 12) -> None:
    """A ``size`` x ``size`` RGB JPEG filled with ``value`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size, size, 3), value, dtype=np.uint8)
    Image.fromarray(arr).save(path, format="JPEG")


def write_noise_jpeg(path: Path, rng: np.random.Generator, size: int = 12) -> None:
    """A ``size`` x ``size`` RGB JPEG of uniform noise (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="JPEG")


def write_image_folder(root: Path, classes: Sequence[str], train_per_class: int = 2,
                       val_per_class: int = 1, size: int = 12, seed: int = 0) -> None:
    """ImageFolder / ImageNet layout: ``root/train/<class>/*.JPEG`` and ``root/val/<class>/...``,
    noise images (``seed``-ed) so that every class and every image differs."""
    rng = np.random.default_rng(seed)
    for c in classes:
        for i in range(train_per_class):
            write_noise_jpeg(root / "train" / c / f"{c}_{i}.JPEG", rng, size)
        for i in range(val_per_class):
            write_noise_jpeg(root / "val" / c / f"val_{c}_{i}.JPEG", rng, size)


def inat_category(cid: int, kingdom: str, phylum: str, cls: str, order: str, family: str,
                  genus: str, epithet: str) -> dict:
    """One iNaturalist 2021 ``categories`` entry (the competition's fields)."""
    return {"id": cid, "name": f"{genus} {epithet}", "common_name": "x",
            "supercategory": "x", "kingdom": kingdom, "phylum": phylum, "class": cls,
            "order": order, "family": family, "genus": genus, "specific_epithet": epithet,
            "image_dir_name": f"{cid:05d}_{genus}_{epithet}"}


def write_inat2021(root: Path, categories: Sequence[dict], train_per_class: int = 2,
                   val_per_class: int = 1, size: int = 8, seed: int = 0) -> None:
    """``root/{train_mini,val}.json`` (COCO-style) and noise JPEGs at each image's ``file_name``
    (``<split>/<image_dir_name>/<i>.jpg``); ``per_class`` images of every category."""
    rng = np.random.default_rng(seed)
    for split, per in (("train_mini", train_per_class), ("val", val_per_class)):
        images, anns = [], []
        for c in categories:
            for i in range(per):
                iid = len(images) + (10**6 if split == "val" else 0)
                fname = f"{split}/{c['image_dir_name']}/{i}.jpg"
                write_noise_jpeg(root / fname, rng, size)
                images.append({"id": iid, "file_name": fname, "width": size, "height": size})
                anns.append({"id": iid, "image_id": iid, "category_id": c["id"]})
        (root / f"{split}.json").write_text(json.dumps(
            {"info": {}, "images": images, "annotations": anns,
             "categories": list(categories), "licenses": []}))
