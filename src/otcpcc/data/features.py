"""Precomputed feature vectors from an ``.npz`` file (e.g. embeddings of a frozen backbone).

``data_dir`` names the ``.npz`` file, or a folder holding ``features.npz`` or exactly one
``.npz``. The file is read with ``allow_pickle=False``. Arrays:

- ``features`` float [N, d] and ``labels`` int [N], with optionally ``split`` [N] (``"train"`` /
  ``"test"`` strings, or 0 = train / 1 = test); or ``train_features``, ``train_labels``,
  ``test_features``, ``test_labels``. Without either split, a stratified split with
  ``test_fraction`` (option, default 0.2) drawn from ``seed``.
- optional ``class_names`` str [K]: the name of label k.
- optional tree: ``tree_parents`` (a JSON string ``{"child": "parent", ...}``; labels index its
  leaves in the map's order, or ``class_names`` if given), or ``levels`` int [L, K] (bottom-up
  ancestor ids, as ``LabelTree.from_levels``; optional ``level_names`` str [L]); the option
  ``tree=PATH`` (or a ``LabelTree``) overrides both; without ``class_names`` its leaves must be
  named by the label ids ``0..K-1`` (label k is leaf ``"k"``; named leaves are refused: matching
  integer labels to names by file order would be a silent guess). No tree: flat (every class
  under the root).

Labels must lie in ``0..K-1``; non-finite features are an error naming how many and the file.
Items: ``(float tensor [d], int64 tensor)``.

Standardisation (option ``standardize``, default ``True``): every split is mapped to
``(x - mean) / std`` with the per-dimension mean and standard deviation (ddof 0) of the *train*
split (a dimension with std ≤ 1e-6 · max(1, |mean|) keeps std 1). Embeddings of norm ~50 would
otherwise make SGD at the default lr diverge. The statistics are a pure function of the file,
the split and ``seed``, so evaluation (which reloads the data the same way) applies exactly the
same transform; they are kept in ``meta["standardize"]`` (``{"mean": [d], "std": [d]}``), which
the run records in ``metrics.json``. ``standardize=False`` keeps the raw values.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..tree import LabelTree
from .bundle import DataBundle
from .folder import flat_tree, resolve_tree
from .tensors import check_bool, check_fraction, check_seed, stratified_split, tensor_dataset

__all__ = ["load_features", "standardization", "standardize_features"]

_KNOWN = ["standardize", "test_fraction", "tree"]
_FLOAT32_MAX = float(np.finfo(np.float32).max)  # about 3.4e38
# what --data features takes, for the message on a file that is not an .npz
_NPZ_FORMAT = ("--data features takes an .npz file holding the arrays 'features' [N, d] and "
               "'labels' [N] (integer class ids; optional 'class_names' [K], 'split' [N], "
               "'tree_parents' or 'levels'), or 'train_features', 'train_labels', "
               "'test_features', 'test_labels'; make one with numpy.savez('emb.npz', "
               "features=X, labels=y, class_names=names)")
# a dimension whose train std is at most this fraction of max(1, |mean|) is constant: std 1
_CONSTANT_REL = 1e-6


def standardization(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension ``(mean, std)`` [d] float32 of ``x_train`` [n, d] (float64 sums, ddof 0).

    A dimension with ``std <= 1e-6 * max(1, |mean|)`` (constant on the train split) gets std 1,
    so it is centred but never blown up. O(n·d).
    """
    x = np.asarray(x_train, dtype=np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std = np.where(std <= _CONSTANT_REL * np.maximum(1.0, np.abs(mean)), 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32)


def standardize_features(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` as float32 [n, d] (the transform every split gets)."""
    return ((np.asarray(x, dtype=np.float64) - mean) / std).astype(np.float32)


def _find_file(data_dir: str | Path | None) -> Path:
    if data_dir is None:
        raise ValueError("features needs --data-dir (data_dir): an .npz file (or a folder holding one)")
    p = Path(data_dir)
    if p.is_file():
        return p
    if p.is_dir():
        if (p / "features.npz").is_file():
            return p / "features.npz"
        found = sorted(p.glob("*.npz"))
        if len(found) == 1:
            return found[0]
        raise ValueError(
            f"{p} holds {len(found)} .npz files; name the file or call it features.npz"
        )
    raise ValueError(f"{p} not found; features needs an .npz file with features and labels")


def _check_sizes(path: Path) -> None:
    """Refuse a file that is not a zip archive (an .npz is one), naming the format; and a member
    whose .npy header claims more bytes than the member holds (numpy would allocate the claimed
    array before reading it): allocations stay bounded by the file."""
    try:
        is_zip = zipfile.is_zipfile(path)
    except OSError as exc:
        raise ValueError(f"{path}: not readable ({exc.strerror or exc})") from None
    if not is_zip:
        what = ("not an .npz file (its content is not a zip archive)" if path.suffix.lower() == ".npz"
                else f"not an .npz file (a {path.suffix or 'suffix-less'} file)")
        raise ValueError(f"{path}: {what}; {_NPZ_FORMAT}")
    try:
        with zipfile.ZipFile(path) as zf:
            sizes = []
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    fmt = np.lib.format
                    version = fmt.read_magic(f)
                    read = (fmt.read_array_header_1_0 if version == (1, 0)
                            else fmt.read_array_header_2_0)
                    shape, _, dtype = read(f)
                    claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
                    sizes.append((info, shape, claimed, info.file_size - f.tell()))
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from None
    for info, shape, claimed, room in sizes:
        if claimed > room:
                raise ValueError(
                    f"{path}: {info.filename[:-4]!r} header claims shape {shape} ({claimed:,} "
                    f"bytes) but the file holds {max(room, 0):,}; the file is corrupt or forged"
                )


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    _check_sizes(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as exc:
        raise ValueError(f"{path}: unreadable without pickle ({exc}); store plain arrays") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from None


def _features(arr: np.ndarray, key: str, path: Path) -> np.ndarray:
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{path}: {key!r} must be a non-empty 2-D array [N, d] (d >= 1 feature "
                         f"columns), got {arr.shape}")
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{path}: {key!r} must be numeric, got dtype {arr.dtype}")
    finite = np.isfinite(arr)
    bad = int((~finite).sum())
    if bad:
        rows = int((~finite).any(axis=1).sum())
        raise ValueError(
            f"{path}: {key!r} has {bad} non-finite values (NaN/inf) in {rows} rows; "
            "clean or drop those rows"
        )
    # float64 (or int64) values beyond float32's range would become inf in the cast below
    big = np.abs(arr) > _FLOAT32_MAX if arr.dtype.itemsize > 4 else None
    if big is not None and big.any():
        raise ValueError(
            f"{path}: {key!r} has {int(big.sum())} values in {int(big.any(axis=1).sum())} rows "
            f"beyond float32's range (|x| <= 3.4e38; largest |x| here {float(np.abs(arr).max()):.3g}), "
            "and features are used as float32; rescale them (e.g. divide by their largest "
            "absolute value)")
    return arr.astype(np.float32, copy=False)


def _labels(arr: np.ndarray, n: int, key: str, path: Path) -> np.ndarray:
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{path}: {key!r} must be [N={n}] labels, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{path}: {key!r} must hold integer class ids, got dtype {arr.dtype}")
    if arr.size and arr.dtype.kind in "uf" and int(arr.max()) > np.iinfo(np.int64).max:  # would wrap
        raise ValueError(f"{path}: {key!r} holds class id {arr.max()}, beyond int64; number the "
                         "classes 0..K-1 (np.unique(labels, return_inverse=True))")
    return arr.astype(np.int64)


def _strings(arr: np.ndarray, key: str, path: Path, unique: bool = False) -> list[str]:
    if arr.dtype.kind not in "US":
        raise ValueError(f"{path}: {key!r} must be a string array, got dtype {arr.dtype}")
    try:
        out = [x.decode() if isinstance(x, bytes) else str(x) for x in arr.reshape(-1).tolist()]
    except UnicodeDecodeError:
        raise ValueError(f"{path}: {key!r} holds bytes that are not UTF-8 text") from None
    first: dict[str, int] = {}
    for i, x in enumerate(out if unique else []):
        if first.setdefault(x, i) != i:
            raise ValueError(f"{path}: {key!r} lists {x!r} twice (entries {first[x]} and {i}); "
                             "class names must be unique")
    return out


def _tree_from_file(
    z: dict[str, np.ndarray], path: Path, class_names: list[str] | None
) -> tuple[LabelTree | None, str]:
    if "tree_parents" in z:
        raw = z["tree_parents"]
        text = raw.item() if raw.ndim == 0 else None
        if not isinstance(text, (str, bytes)):
            raise ValueError(f"{path}: 'tree_parents' must be one JSON string (a 0-d str array)")
        try:
            parents = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{path}: 'tree_parents' is not valid JSON ({exc})") from None
        except RecursionError:
            raise ValueError(f"{path}: 'tree_parents' JSON is nested too deeply; it must be a "
                             'flat object {"child": "parent", ...}') from None
        if not isinstance(parents, dict):
            raise ValueError(f"{path}: 'tree_parents' must be a JSON object child -> parent")
        return LabelTree.from_parents(parents), "tree_parents"
    if "levels" in z:
        lv = z["levels"]
        if lv.ndim != 2:
            raise ValueError(f"{path}: 'levels' must be an int array [L, K], got shape {lv.shape}")
        names = _strings(z["level_names"], "level_names", path) if "level_names" in z else None
        try:
            tree = LabelTree.from_levels(list(lv), leaf_names=class_names, level_names=names)
        except ValueError as exc:
            raise ValueError(f"{path}: 'levels': {exc}") from None
        return tree, "levels"
    return None, "flat"


def load_features(data_dir: str | Path | None = None, seed: int = 0, **options: Any) -> DataBundle:
    """Load feature vectors, labels, split and tree from an ``.npz`` (see module docstring).

    ``meta``: ``file``, ``classes`` (leaf names), ``feature_dim``, ``tree_source`` ("tree_parents",
    "levels", a path, "LabelTree" or "flat"), ``split_source`` ("split", "arrays" or
    "stratified"), ``num_train``, ``num_test``, ``seed``, ``standardize`` (``{"mean": [d],
    "std": [d]}`` of the train split, or ``None`` with ``standardize=False``).
    """
    tree_opt = options.pop("tree", None)
    test_fraction = options.pop("test_fraction", 0.2)
    standardize = check_bool("features: standardize", options.pop("standardize", True))
    if options:
        raise ValueError(
            f"features: unknown option(s) {', '.join(sorted(options))}; known: {', '.join(_KNOWN)}"
        )
    seed = check_seed(seed)
    path = _find_file(data_dir)
    z = _load_npz(path)

    if "features" in z:
        for k in ("train_features", "test_features"):
            if k in z:
                raise ValueError(f"{path}: holds both 'features' and {k!r}; keep one layout")
        x = _features(z["features"], "features", path)
        if "labels" not in z:
            raise ValueError(f"{path}: has 'features' but no 'labels'")
        y = _labels(z["labels"], x.shape[0], "labels", path)
        if "split" in z:
            s = z["split"]
            if s.shape != (x.shape[0],):
                raise ValueError(f"{path}: 'split' must have shape [{x.shape[0]}], got {s.shape}")
            if s.dtype.kind in "US":
                vals = np.array(_strings(s, "split", path))
                odd = sorted(set(vals.tolist()) - {"train", "test"})
                if odd:
                    raise ValueError(f"{path}: 'split' values must be 'train'/'test', got {odd}")
                is_test = vals == "test"
            elif s.dtype.kind in "iub":
                odd = sorted(set(s.astype(np.int64).tolist()) - {0, 1})
                if odd:
                    raise ValueError(f"{path}: 'split' must be 0 (train) / 1 (test), got {odd}")
                is_test = s.astype(bool)
            else:
                raise ValueError(f"{path}: 'split' must be strings or 0/1, got {s.dtype}")
            tr, te = np.flatnonzero(~is_test), np.flatnonzero(is_test)
            split_source = "split"
        else:
            tr, te = stratified_split(y, check_fraction("test_fraction", test_fraction), seed)
            split_source = "stratified"
        x_tr, y_tr, x_te, y_te = x[tr], y[tr], x[te], y[te]
    else:
        need = ["train_features", "train_labels", "test_features", "test_labels"]
        missing = [k for k in need if k not in z]
        if missing:
            raise ValueError(
                f"{path}: needs 'features' + 'labels' or all of {need}; missing {missing} "
                f"(has {sorted(z)})"
            )
        x_tr = _features(z["train_features"], "train_features", path)
        x_te = _features(z["test_features"], "test_features", path)
        if x_tr.shape[1] != x_te.shape[1]:
            raise ValueError(
                f"{path}: train features have d={x_tr.shape[1]} but test d={x_te.shape[1]}"
            )
        y_tr = _labels(z["train_labels"], x_tr.shape[0], "train_labels", path)
        y_te = _labels(z["test_labels"], x_te.shape[0], "test_labels", path)
        split_source = "arrays"
    if len(y_tr) == 0 or len(y_te) == 0:
        raise ValueError(f"{path}: the train and test splits must both be non-empty")

    class_names = (_strings(z["class_names"], "class_names", path, unique=True)
                   if "class_names" in z else None)
    top = int(max(y_tr.max(), y_te.max()))
    if class_names is not None and top >= len(class_names):
        raise ValueError(f"{path}: labels go up to {top} but class_names holds {len(class_names)} "
                         f"names (label k is named class_names[k]); give one name per class, "
                         f"{top + 1} or more")
    if tree_opt is not None:
        tree, source = resolve_tree(tree_opt, class_names, str(path))
        if class_names is None:  # integer labels: match them to leaves named by their ids only
            ids = [str(i) for i in range(tree.num_classes)]
            if sorted(tree.leaves) != sorted(ids):
                shown = ", ".join(repr(n) for n in tree.leaves[:3])
                raise ValueError(
                    f"{path} has no class_names, so its integer labels cannot be matched to the "
                    f"named leaves of the tree ({source}: {shown}, ...); add class_names (the name "
                    "of label k at position k) to the .npz, or name the tree's leaves 0..K-1")
            tree, _ = resolve_tree(tree, ids, str(path))
    else:
        tree, source = _tree_from_file(z, path, class_names)
        if tree is not None and class_names is not None and tree.leaves != class_names:
            tree, _ = resolve_tree(tree, class_names, str(path))
        if tree is None:
            if class_names is None:
                k = top + 1
                if k > len(y_tr) + len(y_te):  # a flat tree holds K leaves: bound K by the data
                    raise ValueError(
                        f"{path}: label {k - 1} implies {k} classes for {len(y_tr) + len(y_te)} "
                        "samples; number the classes 0..K-1 (np.unique(labels, "
                        "return_inverse=True)) or give class_names"
                    )
                class_names = [str(i) for i in range(k)]
            tree = flat_tree(class_names)
    k = tree.num_classes
    for lab, key in ((y_tr, "train labels"), (y_te, "test labels")):
        if lab.min() < 0 or lab.max() >= k:
            raise ValueError(
                f"{path}: {key} must lie in 0..{k - 1} (the tree's {k} leaves), got "
                f"{lab.min()}..{lab.max()}"
            )
    stats = None
    if standardize:
        mean, std = standardization(x_tr)
        x_tr, x_te = standardize_features(x_tr, mean, std), standardize_features(x_te, mean, std)
        stats = {"mean": mean.tolist(), "std": std.tolist()}
    meta = {
        "file": str(path),
        "classes": list(tree.leaves),
        "feature_dim": int(x_tr.shape[1]),
        "tree_source": source,
        "split_source": split_source,
        "num_train": len(y_tr),
        "num_test": len(y_te),
        "seed": seed,
        "standardize": stats,
    }
    untrained = sorted(set(range(k)) - set(np.unique(y_tr).tolist()))
    if untrained:  # said by train (a note, and in metrics.json): their test accuracy will be 0
        meta["classes_without_train_samples"] = [tree.leaves[c] for c in untrained]
    return DataBundle(
        name="features",
        train=tensor_dataset(x_tr, y_tr),
        test=tensor_dataset(x_te, y_te),
        tree=tree,
        input_shape=(int(x_tr.shape[1]),),
        meta=meta,
    )
