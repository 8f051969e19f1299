"""CIFAR-10 / CIFAR-100 from the official "python version" pickles, read with a safe unpickler.

Layouts (``data_dir`` may name the folder itself or its parent)::

    cifar-10-batches-py/   data_batch_1 .. data_batch_5, test_batch, batches.meta
    cifar-100-python/      train, test, meta

Batches are dicts with ``b"data"`` (uint8 [N, 3072], channel-major 3x32x32) and ``b"labels"``
(CIFAR-10) or ``b"fine_labels"`` / ``b"coarse_labels"`` (CIFAR-100); metas hold ``label_names``
or ``fine_label_names`` / ``coarse_label_names``. Keys may be ``bytes`` (python-2 pickles loaded
with ``encoding="bytes"``) or ``str``.

Trees (leaf i = fine class i, named as in the meta file):

- CIFAR-10: fine -> {animal: bird cat deer dog frog horse; vehicle: airplane automobile ship
  truck} -> root (by class name; other names need ``tree=PATH``).
- CIFAR-100, ``levels="default"``: fine -> coarse (the 20 superclasses) -> root. The fine -> coarse
  map is read from the (fine, coarse) label pairs of the train file; each fine class must occur with
  exactly one coarse class.
- CIFAR-100, ``levels="paper"``: the 4-level hierarchy of the CPCC reference code (Zeng et al.,
  ICLR 2023): fine (100) -> mid (40) -> coarse (20) -> coarsest (10) -> root. Within each
  superclass ``c`` (its 5 fine classes by increasing fine id), the first two form mid node
  ``c_b`` and the last three ``c_a``; superclasses ``2k`` and ``2k+1`` (coarse ids, alphabetical in
  the official files) form coarsest node ``k`` named ``"<c_2k>+<c_2k+1>"``.

Options: ``augment`` (True: train = random crop 32 with zero padding 4 + horizontal flip; test and
``augment=False``: none), ``levels`` (CIFAR-100), ``tree`` (a path or ``LabelTree`` replacing the
built-in tree; its leaves must include every class name), ``subpop`` (CIFAR-100, False: the
reference 60/40 subpopulation split: per superclass the two fine classes of smallest id are
*target*, the other three *source*; train/test then hold the source classes and
``extra["target_train"]``/``extra["target_test"]`` the target classes; labels stay the 100 leaf
ids).
Every image is normalised with the dataset's per-channel mean/std. Items: ``(float [3, 32, 32],
int)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..tree import LabelTree
from .bundle import DataBundle
from .folder import resolve_tree
from .safe_pickle import safe_load

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CifarArrayDataset",
    "load_cifar10",
    "load_cifar100",
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

CIFAR10_GROUPS = {
    "airplane": "vehicle",
    "automobile": "vehicle",
    "ship": "vehicle",
    "truck": "vehicle",
    "bird": "animal",
    "cat": "animal",
    "deer": "animal",
    "dog": "animal",
    "frog": "animal",
    "horse": "animal",
}

_C10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
_C100_FILES = ["train", "test", "meta"]


class CifarArrayDataset(Dataset):
    """In-memory CIFAR images: ``(normalised float [3, 32, 32], label)``.

    ``images`` uint8 [N, 3, 32, 32]. With ``augment``: zero-pad 4, random 32x32 crop, random
    horizontal flip (torch's global RNG, so DataLoader worker seeding applies), then
    ``(x / 255 - mean) / std``.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: bool,
    ) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = np.asarray(labels, dtype=np.int64)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.augment = augment

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index]
        if self.augment:
            padded = torch.zeros((3, 40, 40), dtype=x.dtype)
            padded[:, 4:36, 4:36] = x
            i, j = torch.randint(0, 9, (2,)).tolist()
            x = padded[:, i : i + 32, j : j + 32]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        x = (x.to(torch.float32) / 255.0 - self.mean) / self.std
        return x, int(self.labels[index])


def _str_keys(obj: Any, path: Path) -> dict[str, Any]:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _names(d: dict[str, Any], key: str, path: Path) -> list[str]:
    if key not in d:
        raise ValueError(f"{path}: missing key {key!r} (has {sorted(d)})")
    raw = d[key]
    if not isinstance(raw, (list, tuple)) or not all(isinstance(n, (str, bytes)) for n in raw):
        raise ValueError(f"{path}: {key!r} must be a list of names (strings), got {raw!r:.80}")
    names = []
    for i, n in enumerate(raw):
        try:
            names.append(n.decode("utf-8") if isinstance(n, bytes) else n)
        except UnicodeDecodeError:
            raise ValueError(f"{path}: {key}[{i}] = {n!r:.60} is not UTF-8 text") from None
    first: dict[str, int] = {}
    for i, n in enumerate(names):
        if first.setdefault(n, i) != i:
            raise ValueError(f"{path}: {key} lists {n!r} twice (entries {first[n]} and {i}); "
                             "class names must be unique")
    return names


def _batch(path: Path, label_keys: list[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    d = _str_keys(safe_load(path), path)
    for k in ["data", *label_keys]:
        if k not in d:
            raise ValueError(f"{path}: missing key {k!r} (has {sorted(d)}); not a CIFAR batch")
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise ValueError(f"{path}: 'data' must be a uint8 array [N, 3072], got shape {shape}")
    if data.dtype != np.uint8:
        raise ValueError(f"{path}: 'data' must be uint8, got {data.dtype}")
    labels = []
    for k in label_keys:
        y = np.asarray(d[k])
        if y.ndim != 1 or y.shape[0] != data.shape[0] or (y.size and y.dtype.kind not in "iu"):
            raise ValueError(
                f"{path}: {k!r} must be {data.shape[0]} integer labels, got {y.dtype} {y.shape}"
            )
        labels.append(y.astype(np.int64))
    return data.reshape(-1, 3, 32, 32), labels


def _resolve_dir(data_dir: str | Path | None, folder: str, files: list[str], name: str) -> Path:
    if data_dir is None:
        raise ValueError(f"{name} needs --data-dir (data_dir): the {folder}/ folder or its parent")
    root = Path(data_dir)
    for cand in (root, root / folder):
        if all((cand / f).is_file() for f in files):
            return cand
    best = root / folder if (root / folder).is_dir() else root
    missing = [f for f in files if not (best / f).is_file()]
    raise ValueError(
        f"{name}: {best} lacks {', '.join(missing)}; expected the python-version layout "
        f"{folder}/{{{','.join(files)}}} (--data-dir may name {folder}/ or its parent)"
    )


def _check_labels(y: np.ndarray, n: int, what: str, path: Path) -> None:
    if y.size and (y.min() < 0 or y.max() >= n):
        raise ValueError(f"{path}: {what} labels must lie in 0..{n - 1}, got {y.min()}..{y.max()}")


def _pop_common(options: dict[str, Any], allowed: list[str], name: str) -> dict[str, Any]:
    out = {
        "augment": bool(options.pop("augment", True)),
        "tree": options.pop("tree", None),
    }
    for k in allowed:
        if k in options:
            out[k] = options.pop(k)
    if options:
        known = sorted(["augment", "tree", *allowed])
        raise ValueError(
            f"{name}: unknown option(s) {', '.join(sorted(options))}; known: {', '.join(known)}"
        )
    return out


def _custom_tree(tree: Any, classes: list[str], where: str) -> LabelTree:
    label_tree, _ = resolve_tree(tree, classes, where)
    return label_tree


def load_cifar10(data_dir: str | Path | None = None, seed: int = 0, **options: Any) -> DataBundle:
    """CIFAR-10 (50,000 train / 10,000 test images, 10 classes, animal/vehicle tree).

    ``meta``: ``classes`` (10 names), ``coarse_names`` (["animal", "vehicle"]), ``mean``, ``std``,
    ``data_dir``, ``num_train``, ``num_test``, ``seed``. Tree level name: ``"coarse"``.
    """
    opts = _pop_common(options, [], "cifar10")
    root = _resolve_dir(data_dir, "cifar-10-batches-py", _C10_FILES, "cifar10")
    meta_path = root / "batches.meta"
    classes = _names(_str_keys(safe_load(meta_path), meta_path), "label_names", meta_path)
    xs, ys = [], []
    for f in _C10_FILES[:5]:
        x, (y,) = _batch(root / f, ["labels"])
        _check_labels(y, len(classes), "label", root / f)
        xs.append(x)
        ys.append(y)
    x_test, (y_test,) = _batch(root / "test_batch", ["labels"])
    _check_labels(y_test, len(classes), "label", root / "test_batch")

    if opts["tree"] is not None:
        tree = _custom_tree(opts["tree"], classes, str(root))
        coarse_names: list[str] = []
    else:
        unknown = [c for c in classes if c not in CIFAR10_GROUPS]
        if unknown:
            raise ValueError(
                f"{meta_path}: class names {unknown} are not the CIFAR-10 names; pass tree=PATH"
            )
        coarse_names = ["animal", "vehicle"]
        ids = np.array([coarse_names.index(CIFAR10_GROUPS[c]) for c in classes], dtype=np.int64)
        tree = LabelTree.from_levels(
            [ids], leaf_names=classes, level_names=["coarse"], node_names=[coarse_names]
        )
    train = CifarArrayDataset(
        np.concatenate(xs), np.concatenate(ys), CIFAR10_MEAN, CIFAR10_STD, opts["augment"]
    )
    test = CifarArrayDataset(x_test, y_test, CIFAR10_MEAN, CIFAR10_STD, False)
    meta = {
        "classes": classes,
        "coarse_names": coarse_names,
        "mean": CIFAR10_MEAN,
        "std": CIFAR10_STD,
        "data_dir": str(root),
        "num_train": len(train),
        "num_test": len(test),
        "seed": seed,
    }
    return DataBundle("cifar10", train, test, tree, (3, 32, 32), {}, meta)


def _paper_levels(fine_to_coarse: np.ndarray, coarse_names: list[str], path: Path) -> tuple:
    n_coarse = len(coarse_names)
    counts = np.bincount(fine_to_coarse, minlength=n_coarse)
    if np.any(counts != 5) or n_coarse % 2:
        raise ValueError(
            f"{path}: levels='paper' needs an even number of superclasses with 5 fine classes "
            f"each; got {n_coarse} superclasses with sizes {sorted(set(counts.tolist()))}"
        )
    mid = np.empty_like(fine_to_coarse)
    for c in range(n_coarse):
        members = np.flatnonzero(fine_to_coarse == c)  # increasing fine id
        mid[members[:2]] = 2 * c + 1
        mid[members[2:]] = 2 * c
    mid_names = [f"{coarse_names[j // 2]}_{'b' if j % 2 else 'a'}" for j in range(2 * n_coarse)]
    coarsest = fine_to_coarse // 2
    coarsest_names = [
        f"{coarse_names[2 * k]}+{coarse_names[2 * k + 1]}" for k in range(n_coarse // 2)
    ]
    return (
        [mid, fine_to_coarse, coarsest],
        ["mid", "coarse", "coarsest"],
        [mid_names, coarse_names, coarsest_names],
    )


def load_cifar100(data_dir: str | Path | None = None, seed: int = 0, **options: Any) -> DataBundle:
    """CIFAR-100 (50,000 / 10,000 images, 100 fine classes under 20 superclasses).

    ``meta``: ``classes`` (100 fine names), ``coarse_names`` (20), ``fine_to_coarse`` (list [100]),
    ``levels`` ("default" | "paper"), ``mean``, ``std``, ``data_dir``, ``num_train``, ``num_test``,
    ``seed``; with ``subpop=True`` also ``source_classes``/``target_classes`` (fine names).
    Tree level names: ``["coarse"]`` or, for ``levels="paper"``, ``["mid", "coarse", "coarsest"]``.
    """
    opts = _pop_common(options, ["levels", "subpop"], "cifar100")
    levels = opts.get("levels", "default")
    if levels not in ("default", "paper"):
        raise ValueError(f"cifar100: levels must be 'default' or 'paper', got {levels!r}")
    subpop = bool(opts.get("subpop", False))
    root = _resolve_dir(data_dir, "cifar-100-python", _C100_FILES, "cifar100")
    meta_path = root / "meta"
    md = _str_keys(safe_load(meta_path), meta_path)
    classes = _names(md, "fine_label_names", meta_path)
    coarse_names = _names(md, "coarse_label_names", meta_path)
    keys = ["fine_labels", "coarse_labels"]
    x_train, (yf, yc) = _batch(root / "train", keys)
    x_test, (tf_, tc) = _batch(root / "test", keys)
    for path, f, c in ((root / "train", yf, yc), (root / "test", tf_, tc)):
        _check_labels(f, len(classes), "fine", path)
        _check_labels(c, len(coarse_names), "coarse", path)

    # fine -> coarse from the train pairs; each fine class must have exactly one coarse class
    pairs = np.unique(np.stack([yf, yc], axis=1), axis=0)
    fine_to_coarse = np.full(len(classes), -1, dtype=np.int64)
    for f, c in pairs.tolist():
        if fine_to_coarse[f] not in (-1, c):
            others = sorted(pairs[pairs[:, 0] == f, 1].tolist())
            raise ValueError(
                f"{root / 'train'}: fine class {classes[f]!r} occurs with several coarse labels "
                f"{[coarse_names[o] for o in others]}; each fine class needs one superclass"
            )
        fine_to_coarse[f] = c
    absent = [classes[i] for i in np.flatnonzero(fine_to_coarse < 0)]
    if absent:
        raise ValueError(
            f"{root / 'train'}: fine classes {absent[:10]} never occur, so their superclass is "
            "unknown; the train file must hold every class"
        )
    bad_test = np.flatnonzero(fine_to_coarse[tf_] != tc)
    if bad_test.size:
        i = int(bad_test[0])
        raise ValueError(
            f"{root / 'test'}: image {i} has fine {classes[tf_[i]]!r} with coarse "
            f"{coarse_names[tc[i]]!r}, but the train file puts it under "
            f"{coarse_names[fine_to_coarse[tf_[i]]]!r}"
        )

    if opts["tree"] is not None:
        tree = _custom_tree(opts["tree"], classes, str(root))
    else:
        if levels == "paper":
            lv, lnames, nnames = _paper_levels(fine_to_coarse, coarse_names, root / "train")
        else:
            used = sorted(set(fine_to_coarse.tolist()))
            remap = {c: i for i, c in enumerate(used)}
            lv = [np.array([remap[c] for c in fine_to_coarse.tolist()], dtype=np.int64)]
            lnames, nnames = ["coarse"], [[coarse_names[c] for c in used]]
        tree = LabelTree.from_levels(lv, leaf_names=classes, level_names=lnames, node_names=nnames)

    meta: dict[str, Any] = {
        "classes": classes,
        "coarse_names": coarse_names,
        "fine_to_coarse": fine_to_coarse.tolist(),
        "levels": levels if opts["tree"] is None else "custom",
        "mean": CIFAR100_MEAN,
        "std": CIFAR100_STD,
        "data_dir": str(root),
        "seed": seed,
    }
    extra: dict[str, Dataset] = {}
    aug = opts["augment"]
    if subpop:
        target = np.zeros(len(classes), dtype=bool)
        for c in range(len(coarse_names)):
            target[np.flatnonzero(fine_to_coarse == c)[:2]] = True
        tr_t, te_t = target[yf], target[tf_]
        train = CifarArrayDataset(x_train[~tr_t], yf[~tr_t], CIFAR100_MEAN, CIFAR100_STD, aug)
        test = CifarArrayDataset(x_test[~te_t], tf_[~te_t], CIFAR100_MEAN, CIFAR100_STD, False)
        extra["target_train"] = CifarArrayDataset(
            x_train[tr_t], yf[tr_t], CIFAR100_MEAN, CIFAR100_STD, aug
        )
        extra["target_test"] = CifarArrayDataset(
            x_test[te_t], tf_[te_t], CIFAR100_MEAN, CIFAR100_STD, False
        )
        meta["source_classes"] = [c for c, t in zip(classes, target, strict=True) if not t]
        meta["target_classes"] = [c for c, t in zip(classes, target, strict=True) if t]
    else:
        train = CifarArrayDataset(x_train, yf, CIFAR100_MEAN, CIFAR100_STD, aug)
        test = CifarArrayDataset(x_test, tf_, CIFAR100_MEAN, CIFAR100_STD, False)
    meta["num_train"] = len(train)
    meta["num_test"] = len(test)
    return DataBundle("cifar100", train, test, tree, (3, 32, 32), extra, meta)
