"""iNaturalist 2021 from its COCO-style JSON annotations, with the taxonomy as the label tree.

Layout (``data_dir``)::

    train_mini.json  (or train.json, option train_split="train")
    val.json
    train_mini/<image_dir_name>/<uuid>.jpg ...   (paths = each image's "file_name", relative to
    val/<image_dir_name>/<uuid>.jpg ...           data_dir, or to option image_root)

JSON: ``images`` [{id, file_name, ...}], ``annotations`` [{image_id, category_id}], ``categories``
[{id, name, kingdom, phylum, class, order, family, genus, specific_epithet, ...}].

Taxonomy levels, coarse to fine: kingdom, phylum, class, order, family, genus, species (species =
the category itself: its ``name``, else ``"genus specific_epithet"``). ``fine`` picks the class
level (default ``"species"``); ``coarse`` the coarsest level kept in the tree (default
``"kingdom"``); the tree is fine -> every level between -> coarse -> root. Taxon names can
repeat across branches (homonyms, e.g. a plant and an animal genus), so nodes are identified by
their full path; a node is named ``"<level>:<name>"``, and where two nodes of one level share
a name the parent's name is appended (``"genus:Morus|family:Moraceae"``). Leaves are named by
the plain taxon name (same disambiguation when needed). Fine classes are ordered by their
smallest category id.

Options: ``fine``, ``coarse``, ``train_split`` ("train_mini" | "train"), ``image_root``,
``image_size`` (224), ``augment`` (True), ``skip_bad_images`` (False; else a bad image raises
``ValueError`` naming it when read), ``subpop`` (False), ``subpop_level`` (the level just above
``fine``). Items: ``(float [3, S, S], leaf id)``.

Subpopulation split (``subpop=True``), the rule of OT-CPCC's ``dataset/inat/data.py``
(``make_subpopsplit_dataset``; reproduced, not copied): fine classes are grouped by their taxon at
``subpop_level`` (OT-CPCC: fine = class, grouped by phylum, the level above). Within a group of
``n`` fine classes, taken by increasing fine id (smallest category id), the first
``floor(0.4 n)`` are *target* and the other ``n - floor(0.4 n)`` *source* (``floor(0.4 n)`` equals
the reference's ``int(0.4 * n)`` for every ``n``). Groups with ``n <= 2`` would leave a side
empty; the reference leaves them out of both training splits, and so does this loader, which
drops them from the tree and every split (listed in ``meta["dropped_classes"]``; the reference
still puts their val images in its source test split). Leaves: source classes first, then target
classes, each block by increasing fine id, so the source splits use labels ``0..K_s-1`` (the
reference's relabelling of each subset) and every split's label is a leaf id of the same tree.
``train``/``test`` hold the source classes of train_mini/val; ``extra["target_train"]`` and
``extra["target_test"]`` the target classes. The split depends on the taxonomy only, not on
``seed``.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..textfile import read_text
from ..tree import LabelTree
from .bundle import DataBundle
from .folder import (
    ImageFileDataset,
    image_bundle,
    image_transforms,
    pop_image_options,
    reject_unknown_options,
    verify_images,
)

__all__ = ["TAXONOMY_LEVELS", "load_inat2021", "subpop_split"]

TAXONOMY_LEVELS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(
            f"{path} not found; iNaturalist 2021 needs train_mini.json (or train.json) and "
            "val.json in data_dir"
        )
    text = read_text(path, "COCO-style iNaturalist 2021 annotations (JSON)")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested deeper than Python's parser allows; COCO-style "
                         "annotations are 3 levels deep") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: missing list {key!r} (COCO-style iNaturalist annotations)")
    return data


def _id(value: Any, what: str, path: Path, names: bool = False) -> int | str:
    """``value`` as an id: an integer (or, with ``names``, a string); one-line error otherwise."""
    if (isinstance(value, int) and not isinstance(value, bool)) or (names and isinstance(value, str)):
        return value
    kind = "an integer or a string" if names else "an integer"
    raise ValueError(f"{path}: {what} {value!r} is a {type(value).__name__}; it must be {kind}")


def _taxon_path(cat: dict[str, Any], path: Path) -> tuple[str, ...]:
    out = []
    for level in TAXONOMY_LEVELS[:-1]:
        v = cat.get(level)
        if not isinstance(v, str) or not v:
            raise ValueError(
                f"{path}: category {cat.get('id')!r} lacks taxonomy field {level!r}; every "
                f"category needs {', '.join(TAXONOMY_LEVELS[:-1])}"
            )
        out.append(v)
    species = cat.get("name")
    if not isinstance(species, str) or not species:
        epithet = cat.get("specific_epithet")
        if not isinstance(epithet, str) or not epithet:
            raise ValueError(f"{path}: category {cat.get('id')!r} has no name or specific_epithet")
        species = f"{out[-1]} {epithet}"
    out.append(species)
    return tuple(out)


def subpop_split(groups: Sequence[Hashable]) -> tuple[list[int], list[int], list[int]]:
    """OT-CPCC's 60/40 iNaturalist split: ``(source, target, dropped)`` fine class indices.

    ``groups[i]`` is the coarse group of fine class ``i`` (fine classes in label order). Per group
    of ``n`` classes (increasing index): the first ``floor(0.4 n)`` are target, the rest source;
    groups with ``n <= 2`` are dropped. Each returned list is sorted.
    """
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    source: list[int] = []
    target: list[int] = []
    dropped: list[int] = []
    for ids in members.values():
        n = len(ids)
        if n <= 2:
            dropped.extend(ids)
            continue
        k = (2 * n) // 5  # == int(0.4 * n), the reference's rounding
        target.extend(ids[:k])
        source.extend(ids[k:])
    return sorted(source), sorted(target), sorted(dropped)


def _samples(
    data: dict[str, Any], path: Path, cat_to_label: dict[int, int], image_root: Path,
    ignore: set[int] | frozenset[int] = frozenset(),
) -> list[tuple[Path, int]]:
    files = {}
    for img in data["images"]:
        try:
            image_id, name = img["id"], img["file_name"]
        except (KeyError, TypeError):
            raise ValueError(f"{path}: image entry {img!r:.200} lacks id or file_name") from None
        if not isinstance(name, str) or not name:
            raise ValueError(f"{path}: image {image_id!r:.80} has file_name {name!r:.80}; "
                             "it must be a non-empty path string")
        files[_id(image_id, "image id", path, names=True)] = name
    out = []
    for ann in data["annotations"]:
        try:
            image_id, cat = ann["image_id"], ann["category_id"]
        except (KeyError, TypeError):
            raise ValueError(f"{path}: annotation {ann!r:.200} lacks image_id or category_id") from None
        image_id = _id(image_id, "annotation image_id", path, names=True)
        cat = _id(cat, "annotation category_id", path)
        if image_id not in files:
            raise ValueError(f"{path}: annotation refers to unknown image id {image_id!r}")
        if cat in ignore:
            continue
        if cat not in cat_to_label:
            raise ValueError(f"{path}: annotation refers to unknown category id {cat!r}")
        out.append((image_root / files[image_id], cat_to_label[cat]))
    return out


def _unique_node_names(
    keys: list[tuple[str, ...]], level: str, parent_names: dict[tuple[str, ...], str] | None,
    prefix: bool,
) -> dict[tuple[str, ...], str]:
    """Name each node (a path tuple) of one level; disambiguate equal names with the parent."""
    by_name: dict[str, list[tuple[str, ...]]] = {}
    for k in keys:
        by_name.setdefault(k[-1], []).append(k)
    out = {}
    for name, ks in by_name.items():
        base = f"{level}:{name}" if prefix else name
        if len(ks) == 1:
            out[ks[0]] = base
        else:
            for k in ks:
                par = parent_names[k[:-1]] if parent_names else "|".join(k[:-1])
                out[k] = f"{base}|{par}"
    return out


def load_inat2021(
    data_dir: str | Path | None = None,
    seed: int = 0,
    fine: str = "species",
    coarse: str = "kingdom",
    **options: Any,
) -> DataBundle:
    """iNaturalist 2021 with fine classes at taxonomy level ``fine`` and a tree up to ``coarse``.

    ``meta``: ``fine_level``, ``level_names`` (tree levels finest first, e.g. ``["genus",
    "family", ..., "kingdom"]``), ``classes`` (leaf names), ``category_to_label`` ({category id:
    leaf id}), ``train_split``, ``num_train``, ``num_test``, ``data_dir``, ``seed``; with
    ``skip_bad_images`` ``skipped_images`` ({split: count}) and ``skipped_files``. With
    ``subpop=True`` (see the module docstring) also ``subpop_level``, ``source_classes`` /
    ``target_classes`` (leaf names, in leaf order), ``num_source_classes``, ``dropped_classes``
    (fine taxon names of the groups with <= 2 classes), ``num_target_train``,
    ``num_target_test``; ``category_to_label`` then omits the dropped categories.
    """
    train_split = options.pop("train_split", "train_mini")
    image_root_opt = options.pop("image_root", None)
    subpop = options.pop("subpop", False)
    subpop_level = options.pop("subpop_level", None)
    image_opts = pop_image_options(options)
    reject_unknown_options(
        "inat2021", options, ["fine", "coarse", "train_split", "image_root", "subpop",
                              "subpop_level"]
    )
    if not isinstance(subpop, bool):
        raise ValueError(f"inat2021: subpop must be true or false, got {subpop!r}")
    if fine not in TAXONOMY_LEVELS or coarse not in TAXONOMY_LEVELS:
        raise ValueError(
            f"fine={fine!r} and coarse={coarse!r} must be taxonomy levels {list(TAXONOMY_LEVELS)}"
        )
    fi, ci = TAXONOMY_LEVELS.index(fine), TAXONOMY_LEVELS.index(coarse)
    if ci > fi:
        raise ValueError(f"coarse level {coarse!r} must be above fine level {fine!r}")
    if subpop:
        if ci == fi:
            raise ValueError(
                f"subpop needs a coarse level above fine level {fine!r}; got coarse={coarse!r}"
            )
        if subpop_level is None:
            subpop_level = TAXONOMY_LEVELS[fi - 1]
        if subpop_level not in TAXONOMY_LEVELS[ci:fi]:
            raise ValueError(
                f"subpop_level must be a tree level between coarse and fine "
                f"{list(TAXONOMY_LEVELS[ci:fi])}, got {subpop_level!r}"
            )
    elif subpop_level is not None:
        raise ValueError("subpop_level is only used with subpop=true")
    if train_split not in ("train_mini", "train"):
        raise ValueError(f"train_split must be 'train_mini' or 'train', got {train_split!r}")
    if data_dir is None:
        raise ValueError("inat2021 needs --data-dir (data_dir): the folder with train_mini.json and val.json")
    root = Path(data_dir)
    image_root = Path(image_root_opt) if image_root_opt is not None else root
    train_path, val_path = root / f"{train_split}.json", root / "val.json"
    train_json, val_json = _read_json(train_path), _read_json(val_path)

    paths: dict[int, tuple[str, ...]] = {}
    for data, path in ((train_json, train_path), (val_json, val_path)):
        for cat in data["categories"]:
            if not isinstance(cat, dict) or "id" not in cat:
                raise ValueError(f"{path}: category entry {cat!r:.200} has no id")
            _id(cat["id"], "category id", path)
            tp = _taxon_path(cat, path)
            if paths.setdefault(cat["id"], tp) != tp:
                raise ValueError(
                    f"category {cat['id']!r} differs between {train_path.name} and "
                    f"{val_path.name}: {paths[cat['id']]} vs {tp}"
                )
    # fine classes: distinct taxon paths truncated at the fine level, by smallest category id
    fine_keys: list[tuple[str, ...]] = []
    cat_to_label: dict[int, int] = {}
    key_index: dict[tuple[str, ...], int] = {}
    for cid in sorted(paths):
        key = paths[cid][: fi + 1]
        if key not in key_index:
            key_index[key] = len(fine_keys)
            fine_keys.append(key)
        cat_to_label[cid] = key_index[key]

    dropped_cats: set[int] = set()
    split_meta: dict[str, Any] = {}
    num_source = len(fine_keys)
    if subpop:
        sj = TAXONOMY_LEVELS.index(subpop_level)
        source, target, dropped = subpop_split([k[: sj + 1] for k in fine_keys])
        if not source:
            raise ValueError(
                f"subpop: no {subpop_level} has 3 or more {fine} classes, so the 60/40 split "
                "is empty"
            )
        order = source + target
        new_label = {old: new for new, old in enumerate(order)}
        dropped_set = set(dropped)
        dropped_cats = {cid for cid, old in cat_to_label.items() if old in dropped_set}
        cat_to_label = {
            cid: new_label[old] for cid, old in cat_to_label.items() if old not in dropped_set
        }
        split_meta = {"subpop_level": subpop_level,
                      "dropped_classes": [fine_keys[i][-1] for i in dropped]}
        fine_keys = [fine_keys[i] for i in order]
        num_source = len(source)

    # coarse levels, finest first: fi-1 down to ci
    level_idx = list(range(fi - 1, ci - 1, -1))
    level_names = [TAXONOMY_LEVELS[j] for j in level_idx]
    names_above: dict[tuple[str, ...], str] | None = None
    node_names_by_level: list[dict[tuple[str, ...], str]] = []
    for j in reversed(level_idx):  # coarse to fine so parents are named first
        keys = list(dict.fromkeys(k[: j + 1] for k in fine_keys))
        named = _unique_node_names(keys, TAXONOMY_LEVELS[j], names_above, prefix=True)
        node_names_by_level.append(named)
        names_above = named
    node_names_by_level.reverse()  # finest first, aligned with level_idx
    leaf_names = _unique_node_names(
        fine_keys, fine, node_names_by_level[0] if level_idx else None, prefix=False
    )
    used = set(leaf_names.values())
    for d in node_names_by_level:
        used |= set(d.values())
    if "root" in used:
        raise ValueError("a taxon is named 'root', which is reserved for the tree's root")

    levels, node_names = [], []
    for j, named in zip(level_idx, node_names_by_level, strict=True):
        keys = list(dict.fromkeys(k[: j + 1] for k in fine_keys))
        pos = {k: i for i, k in enumerate(keys)}
        levels.append(np.array([pos[k[: j + 1]] for k in fine_keys], dtype=np.int64))
        node_names.append([named[k] for k in keys])
    classes = [leaf_names[k] for k in fine_keys]
    tree = LabelTree.from_levels(
        levels, leaf_names=classes, level_names=level_names, node_names=node_names
    )

    train_samples = _samples(train_json, train_path, cat_to_label, image_root, dropped_cats)
    test_samples = _samples(val_json, val_path, cat_to_label, image_root, dropped_cats)
    meta: dict[str, Any] = {
        "fine_level": fine,
        "level_names": level_names,
        "classes": classes,
        "category_to_label": cat_to_label,
        "train_split": train_split,
        "data_dir": str(root),
        "seed": seed,
    }
    if not subpop:
        return image_bundle("inat2021", train_samples, test_samples, tree, image_opts, meta)

    meta.update(split_meta)
    meta["source_classes"] = classes[:num_source]
    meta["target_classes"] = classes[num_source:]
    meta["num_source_classes"] = num_source
    target_train = [s for s in train_samples if s[1] >= num_source]
    target_test = [s for s in test_samples if s[1] >= num_source]
    bundle = image_bundle(
        "inat2021",
        [s for s in train_samples if s[1] < num_source],
        [s for s in test_samples if s[1] < num_source],
        tree, image_opts, meta,
    )
    train_tf, test_tf = image_transforms(image_opts)
    for key, samples, tf in (("target_train", target_train, train_tf),
                             ("target_test", target_test, test_tf)):
        if image_opts["skip_bad_images"]:
            samples, bad = verify_images(samples)
            meta["skipped_images"][key] = len(bad)
            meta["skipped_files"].extend(bad)
        meta[f"num_{key}"] = len(samples)
        bundle.extra[key] = ImageFileDataset(samples, tf)
    return bundle
