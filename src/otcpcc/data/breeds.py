"""BREEDS subpopulation-shift benchmarks (Santurkar et al., 2021) from ImageNet folders.

The four settings are rebuilt from the BREEDS hierarchy files (``class_hierarchy.txt``,
``dataset_class_info.json``, ``node_names.txt``) exactly as the ``robustness`` library's
``breeds_helpers`` selects them, so the same ImageNet classes land in the same source/target
halves:

=============  =====  ===============================  ==========  ======================
setting        level  ancestor                         subclasses  superclasses x subcls
=============  =====  ===============================  ==========  ======================
living17       5      n00004258 (living thing)         4           17 x 4 = 68
nonliving26    5      n00021939 (non-living thing)     4           26 x 4 = 104
entity13       3      (whole hierarchy)                20          13 x 20 = 260
entity30       4      (whole hierarchy)                8           30 x 8 = 240
=============  =====  ===============================  ==========  ======================

Selection (reproduced, not copied):

1. The hierarchy graph keeps only edges into ImageNet classes or their ancestors. A node's level is
   its longest path from the root ``n00001740``.
2. Candidate superclasses: nodes at ``level`` that descend from ``ancestor`` (the ancestor
   included), sorted by wnid; keep those reaching at least ``subclasses`` ImageNet classes.
3. One ``numpy.random.RandomState(2)`` is shared by all superclasses, visited in sorted order. For
   each superclass, descend while it has a single child; list the ImageNet classes below each child
   (children in sorted order), sort that list, draw ``subclasses`` of them without replacement
   (``rng.choice``); the first half of the draw is the *source*, the second half the *target*
   split ("rand" split of BREEDS).

Labels: the tree's leaves are all selected ImageNet classes (wnids), source classes first
(superclass by superclass, in draw order) then target classes, so the source splits use labels
``0..K_s-1`` and every split's label is a leaf id of the same tree. ``train``/``test`` are the
source classes of ``train/``/``val/``; ``extra["target_train"]``/``extra["target_test"]`` the
target classes.

Tree (``levels=``): ``"breeds"`` (default) subclass -> superclass -> root; ``"paper"`` the four
levels of the CPCC reference code (Zeng et al., 2023): subclass -> its parent in the hierarchy
("mid") -> superclass ("coarse") -> the superclass's parent ("coarsest") -> root; where a parent is
the superclass itself the mid node is a copy named ``<wnid>/mid``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..textfile import read_text
from ..tree import LabelTree
from .bundle import DataBundle
from .folder import (
    IMAGE_EXTENSIONS,
    ImageFileDataset,
    image_transforms,
    pop_image_options,
    reject_unknown_options,
    verify_images,
)

__all__ = [
    "BREEDS_SETTINGS",
    "BreedsHierarchy",
    "breeds_split",
    "load_entity13",
    "load_entity30",
    "load_living17",
    "load_nonliving26",
]

ROOT_WNID = "n00001740"
HIERARCHY_FILES = ("class_hierarchy.txt", "dataset_class_info.json", "node_names.txt")
HIERARCHY_ENV = "OTCPCC_BREEDS_DIR"
SPLIT_SEED = 2

# name -> (level, ancestor, subclasses per superclass, expected number of superclasses)
BREEDS_SETTINGS: dict[str, tuple[int, str | None, int, int]] = {
    "living17": (5, "n00004258", 4, 17),
    "nonliving26": (5, "n00021939", 4, 26),
    "entity13": (3, None, 20, 13),
    "entity30": (4, None, 8, 30),
}


class BreedsHierarchy:
    """The BREEDS (modified WordNet) hierarchy over the ImageNet classes.

    ``children[p]`` lists the children of ``p`` restricted to ImageNet classes and their ancestors;
    ``level[n]`` is the longest path length from the root; ``leaves`` are the ImageNet wnids.
    """

    def __init__(self, hierarchy_dir: str | Path) -> None:
        hierarchy_dir = Path(hierarchy_dir)
        missing = [f for f in HIERARCHY_FILES if not (hierarchy_dir / f).is_file()]
        if missing:
            raise ValueError(
                f"BREEDS hierarchy directory {hierarchy_dir} lacks {', '.join(missing)}; it must "
                f"hold {', '.join(HIERARCHY_FILES)} (from the BREEDS-Benchmarks repository)"
            )
        self.dir = hierarchy_dir
        info_path = hierarchy_dir / "dataset_class_info.json"
        info_text = read_text(info_path, "BREEDS' JSON list of [index, wnid, name] rows")
        try:
            info = json.loads(info_text)
            self.leaves: list[str] = [str(row[1]) for row in info]
            self.leaf_names: dict[str, str] = {str(row[1]): str(row[2]) for row in info}
            self.leaf_index: dict[str, int] = {str(row[1]): int(row[0]) for row in info}
        except (ValueError, TypeError, IndexError, KeyError, RecursionError) as exc:
            raise ValueError(
                f"{info_path}: expected a JSON list of [index, wnid, name] rows "
                f"({str(exc)[:120] or type(exc).__name__})"
            ) from None
        leaf_set = set(self.leaves)

        parents_of: dict[str, list[str]] = {}
        edge_path = hierarchy_dir / "class_hierarchy.txt"
        edge_text = read_text(edge_path, "BREEDS' 'parent child' lines of WordNet ids")
        for lineno, line in enumerate(edge_text.splitlines(), 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            if len(parts) != 2:
                raise ValueError(
                    f"{edge_path}:{lineno}: expected 'parent child', got {line.strip()!r}"
                )
            parents_of.setdefault(parts[1], []).append(parts[0])

        self.node_names: dict[str, str] = {}
        names_path = hierarchy_dir / "node_names.txt"
        for line in read_text(names_path, "BREEDS' 'wnid<TAB>name' lines").splitlines():
            parts = line.split("\t")
            if len(parts) >= 2:
                self.node_names[parts[0]] = parts[1]

        # keep only edges into ImageNet classes and their ancestors (walk up from the leaves)
        children: dict[str, list[str]] = {}
        seen: set[str] = set()
        frontier = [n for n in self.leaves if n in parents_of]
        while frontier:
            nxt = []
            for node in frontier:
                if node in seen:
                    continue
                seen.add(node)
                for p in parents_of.get(node, ()):
                    kids = children.setdefault(p, [])
                    if node not in kids:
                        kids.append(node)
                    nxt.append(p)
            frontier = nxt
        self.children = {p: sorted(c) for p, c in children.items()}
        self.parents = {
            c: sorted(p for p in ps if p in self.children) for c, ps in parents_of.items()
        }
        self._leaf_set = leaf_set
        self.level = self._longest_levels(ROOT_WNID)
        self._reach: dict[str, frozenset[str]] = {}

    def _longest_levels(self, root: str) -> dict[str, int]:
        if root not in self.children:
            raise ValueError(f"{self.dir}: root {root} has no ImageNet descendants")
        # longest path from the root: relax in topological order (DFS post-order, reversed)
        order: list[str] = []
        state: dict[str, int] = {}
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            node, i = stack.pop()
            if i == 0:
                if state.get(node) == 2:
                    continue
                if state.get(node) == 1:
                    raise ValueError(f"{self.dir}: the class hierarchy has a cycle through {node}")
                state[node] = 1
            kids = self.children.get(node, [])
            if i < len(kids):
                stack.append((node, i + 1))
                if state.get(kids[i]) != 2:
                    stack.append((kids[i], 0))
            else:
                state[node] = 2
                order.append(node)
        level = {root: 0}
        for node in reversed(order):
            for c in self.children.get(node, []):
                level[c] = max(level.get(c, 0), level[node] + 1)
        return level

    def name(self, wnid: str) -> str:
        """Human-readable name (node_names.txt, else the ImageNet class name, else the wnid)."""
        return self.node_names.get(wnid) or self.leaf_names.get(wnid, wnid)

    def leaves_below(self, node: str) -> frozenset[str]:
        """ImageNet classes reachable from ``node`` (not descending past an ImageNet class)."""
        if node not in self._reach:
            found: set[str] = set()
            todo = [node]
            seen: set[str] = set()
            while todo:
                w = todo.pop()
                for c in self.children.get(w, ()):
                    if c in self._leaf_set:
                        found.add(c)
                    elif c not in seen:
                        seen.add(c)
                        todo.append(c)
            if node in self._leaf_set:
                found.add(node)
            self._reach[node] = frozenset(found)
        return self._reach[node]

    def descendants(self, node: str) -> set[str]:
        """``node`` and every node below it."""
        out = {node}
        todo = [node]
        while todo:
            for c in self.children.get(todo.pop(), ()):
                if c not in out:
                    out.add(c)
                    todo.append(c)
        return out


def breeds_split(
    hierarchy: BreedsHierarchy,
    level: int,
    ancestor: str | None,
    subclasses: int,
    seed: int = SPLIT_SEED,
) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """BREEDS' balanced "rand" split: ``(superclasses, source[s], target[s])`` as wnids.

    See the module docstring for the procedure; ``seed`` is the ``RandomState`` seed (2 in BREEDS).
    """
    if subclasses % 2:
        raise ValueError(f"subclasses per superclass must be even (two halves), got {subclasses}")
    valid = hierarchy.descendants(ancestor) if ancestor is not None else None
    if ancestor is not None and ancestor not in hierarchy.children:
        raise ValueError(f"ancestor {ancestor} is not an inner node of the BREEDS hierarchy")
    nodes = sorted(
        n for n, lv in hierarchy.level.items() if lv == level and (valid is None or n in valid)
    )
    supers = [n for n in nodes if len(hierarchy.leaves_below(n)) >= subclasses]
    rng = np.random.RandomState(seed)
    half = subclasses // 2
    source: list[list[str]] = []
    target: list[list[str]] = []
    for sc in supers:
        node, kids = sc, hierarchy.children.get(sc, [])
        while len(kids) == 1:
            node = kids[0]
            kids = hierarchy.children.get(node, [])
        pool: list[str] = []
        for k in kids:
            pool.extend(sorted(hierarchy.leaves_below(k)))
        drawn = [str(w) for w in rng.choice(sorted(pool), subclasses, replace=False)]
        if len(set(drawn)) != subclasses:  # only possible if the hierarchy were not a tree
            raise ValueError(f"superclass {sc}: the draw repeated a class; hierarchy is not a tree")
        source.append(drawn[:half])
        target.append(drawn[half:])
    return supers, source, target


def _hierarchy_dir(data_dir: Path | None, hierarchy_dir: str | Path | None) -> Path:
    candidates: list[Path] = []
    if hierarchy_dir is not None:
        candidates.append(Path(hierarchy_dir))
    else:
        if os.environ.get(HIERARCHY_ENV):
            candidates.append(Path(os.environ[HIERARCHY_ENV]))
        if data_dir is not None:
            candidates.append(data_dir / "breeds")
    for c in candidates:
        if all((c / f).is_file() for f in HIERARCHY_FILES):
            return c
    tried = ", ".join(str(c) for c in candidates) or "(none)"
    raise ValueError(
        f"BREEDS hierarchy files ({', '.join(HIERARCHY_FILES)}) not found; tried {tried}. Pass "
        f"--hierarchy-dir DIR (hierarchy_dir=), set ${HIERARCHY_ENV}, or put them in "
        "<--data-dir>/breeds"
    )


def _class_files(split_dir: Path, wnids: Sequence[str]) -> dict[str, list[Path]]:
    missing = [w for w in wnids if not (split_dir / w).is_dir()]
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise ValueError(
            f"{split_dir} lacks {len(missing)} ImageNet class folder(s) this BREEDS setting needs: "
            f"{shown}; expected ImageNet layout <data_dir>/{{train,val}}/<wnid>/*.JPEG"
        )
    out = {}
    for w in wnids:
        files = sorted(
            p for p in (split_dir / w).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise ValueError(f"{split_dir / w} has no images")
        out[w] = files
    return out


def _paper_levels(
    h: BreedsHierarchy, leaves: list[str], super_of: dict[str, str]
) -> tuple[list[list[int]], list[list[str]], list[str]]:
    def single_parent(n: str) -> str:
        ps = h.parents.get(n, [])
        if len(ps) != 1:
            raise ValueError(f"BREEDS node {n} has {len(ps)} parents; 'paper' levels need a tree")
        return ps[0]

    mids, coarse, coarsest = [], [], []
    for leaf in leaves:
        sc = super_of[leaf]
        p = single_parent(leaf)
        mids.append(p if p != sc else f"{sc}/mid")
        coarse.append(sc)
        coarsest.append(single_parent(sc))
    levels, names = [], []
    for col in (mids, coarse, coarsest):
        uniq = list(dict.fromkeys(col))
        levels.append([uniq.index(v) for v in col])
        names.append(uniq)
    return levels, names, ["mid", "coarse", "coarsest"]


def load_breeds(
    setting: str,
    data_dir: str | Path | None,
    seed: int = 0,
    hierarchy_dir: str | Path | None = None,
    **options: Any,
) -> DataBundle:
    """Load a BREEDS setting (``living17``, ``nonliving26``, ``entity13``, ``entity30``).

    ``data_dir``: ImageNet root with ``train/<wnid>/`` and ``val/<wnid>/`` (or ``test/``).
    ``hierarchy_dir``: folder with the BREEDS hierarchy files; default ``$OTCPCC_BREEDS_DIR`` or
    ``<data_dir>/breeds``. Options: ``levels`` ("breeds" | "paper"), ``image_size`` (224),
    ``augment`` (True), ``skip_bad_images`` (False). ``seed`` does not change the class split
    (BREEDS fixes it); it is recorded in ``meta``.
    Images: ``(float tensor [3, S, S], leaf id)``.

    ``meta``: ``setting``, ``split`` ("rand"), ``split_seed`` (2), ``seed``, ``superclasses``
    (wnids), ``superclass_names``, ``source_classes`` / ``target_classes`` (wnids, in leaf order),
    ``num_source_classes``, ``class_names`` ({wnid: name}), ``source_by_superclass`` /
    ``target_by_superclass``, ``hierarchy_dir``, ``levels``, ``data_dir``; with
    ``skip_bad_images`` also ``skipped_images`` ({split: count}) and ``skipped_files``.
    Tree level names: ``["superclass"]`` or, for ``levels="paper"``, ``["mid", "coarse",
    "coarsest"]``.
    """
    if setting not in BREEDS_SETTINGS:
        raise ValueError(f"unknown BREEDS setting {setting!r}; use {sorted(BREEDS_SETTINGS)}")
    levels_opt = options.pop("levels", "breeds")
    image_opts = pop_image_options(options)
    reject_unknown_options(f"breeds-{setting}", options, ["levels", "hierarchy_dir"])
    if levels_opt == "default":
        levels_opt = "breeds"
    if levels_opt not in ("breeds", "paper"):
        raise ValueError(f"levels must be 'breeds' (or 'default') or 'paper', got {levels_opt!r}")
    if data_dir is None:
        raise ValueError(
            f"breeds-{setting} needs --data-dir (data_dir): an ImageNet folder with train/<wnid>/, val/<wnid>/"
        )
    root = Path(data_dir)
    hier = BreedsHierarchy(_hierarchy_dir(root, hierarchy_dir))
    level, ancestor, n_sub, expected = BREEDS_SETTINGS[setting]
    supers, source, target = breeds_split(hier, level, ancestor, n_sub)
    if len(supers) != expected:  # e.g. a class_hierarchy.txt cut short: a smaller data set, silently
        raise ValueError(
            f"breeds-{setting}: the hierarchy files in {hier.dir} give {len(supers)} superclasses, "
            f"BREEDS' {setting} has {expected}; class_hierarchy.txt may be truncated or edited: "
            "download the BREEDS hierarchy files again")

    train_dir = root / "train"
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise ValueError(
            f"{root} must hold train/ and val/ (or test/) ImageNet folders with <wnid>/ subfolders"
        )

    src = [w for group in source for w in group]
    tgt = [w for group in target for w in group]
    leaves = src + tgt
    super_of = {}
    for sc, s_grp, t_grp in zip(supers, source, target, strict=True):
        for w in s_grp + t_grp:
            super_of[w] = sc
    if levels_opt == "breeds":
        lv = [[supers.index(super_of[w]) for w in leaves]]
        node_names = [list(supers)]
        level_names = ["superclass"]
    else:
        lv, node_names, level_names = _paper_levels(hier, leaves, super_of)
    tree = LabelTree.from_levels(
        [np.asarray(a, dtype=np.int64) for a in lv],
        leaf_names=leaves,
        level_names=level_names,
        node_names=node_names,
    )
    label = {w: i for i, w in enumerate(leaves)}

    train_tf, test_tf = image_transforms(image_opts)
    meta: dict[str, Any] = {
        "setting": setting,
        "split": "rand",
        "split_seed": SPLIT_SEED,
        "seed": seed,
        "superclasses": list(supers),
        "superclass_names": [hier.name(s) for s in supers],
        "source_classes": src,
        "target_classes": tgt,
        "num_source_classes": len(src),
        "class_names": {w: hier.name(w) for w in leaves},
        "source_by_superclass": {s: list(g) for s, g in zip(supers, source, strict=True)},
        "target_by_superclass": {s: list(g) for s, g in zip(supers, target, strict=True)},
        "hierarchy_dir": str(hier.dir),
        "levels": levels_opt,
        "data_dir": str(root),
    }

    def make(split_dir: Path, wnids: list[str], tf: Any, key: str) -> ImageFileDataset:
        files = _class_files(split_dir, wnids)
        samples = [(p, label[w]) for w in wnids for p in files[w]]
        if image_opts["skip_bad_images"]:
            samples, bad = verify_images(samples)
            meta.setdefault("skipped_images", {})[key] = len(bad)
            meta.setdefault("skipped_files", []).extend(bad)
        return ImageFileDataset(samples, tf)

    train = make(train_dir, src, train_tf, "train")
    test = make(test_dir, src, test_tf, "test")
    extra = {
        "target_train": make(train_dir, tgt, train_tf, "target_train"),
        "target_test": make(test_dir, tgt, test_tf, "target_test"),
    }
    size = image_opts["image_size"]
    return DataBundle(
        name=f"breeds-{setting}",
        train=train,
        test=test,
        tree=tree,
        input_shape=(3, size, size),
        extra=extra,
        meta=meta,
    )


def load_living17(data_dir: str | Path | None = None, seed: int = 0, hierarchy_dir: str | Path | None = None, **options: Any) -> DataBundle:  # noqa: E501
    """BREEDS LIVING-17: 17 superclasses x (2 source + 2 target) ImageNet classes."""
    return load_breeds("living17", data_dir, seed, hierarchy_dir, **options)


def load_nonliving26(data_dir: str | Path | None = None, seed: int = 0, hierarchy_dir: str | Path | None = None, **options: Any) -> DataBundle:  # noqa: E501
    """BREEDS NONLIVING-26: 26 superclasses x (2 source + 2 target) ImageNet classes."""
    return load_breeds("nonliving26", data_dir, seed, hierarchy_dir, **options)


def load_entity13(data_dir: str | Path | None = None, seed: int = 0, hierarchy_dir: str | Path | None = None, **options: Any) -> DataBundle:  # noqa: E501
    """BREEDS ENTITY-13: 13 superclasses x (10 source + 10 target) ImageNet classes."""
    return load_breeds("entity13", data_dir, seed, hierarchy_dir, **options)


def load_entity30(data_dir: str | Path | None = None, seed: int = 0, hierarchy_dir: str | Path | None = None, **options: Any) -> DataBundle:  # noqa: E501
    """BREEDS ENTITY-30: 30 superclasses x (4 source + 4 target) ImageNet classes."""
    return load_breeds("entity30", data_dir, seed, hierarchy_dir, **options)
