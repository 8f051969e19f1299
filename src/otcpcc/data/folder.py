"""Image folders (``ImageFolder`` layout) with a label tree from a file, and shared image helpers.

Layout::

    data_dir/train/<class>/<image>      (any of IMAGE_EXTENSIONS, case-insensitive)
    data_dir/val/<class>/<image>        (or data_dir/test/...)

Classes are the ``train`` subfolders in sorted order (hidden folders such as ``.cache`` are
ignored). The tree comes from ``tree=`` (a path any ``LabelTree.from_file`` reads, or a
``LabelTree``), else from ``data_dir/tree.{txt,tsv,edges,json,nwk,newick,tre}`` if present, else
a flat tree (every class a child of the root). Classes missing
from the tree are an error listing them; tree leaves with no data are dropped with
``tree.restrict(classes)``, so leaf id == index of the class in sorted order.

Transforms (ImageNet style, ``image_size`` S, default 224): train ``RandomResizedCrop(S)`` +
horizontal flip; test ``Resize(round(S * 256 / 224))`` + ``CenterCrop(S)``; both ``ToTensor`` and
ImageNet normalisation. ``augment=False`` uses the test transform for training too.

Undecodable images: by default images are decoded only when read, and a bad one raises
``ValueError`` naming the file. With ``skip_bad_images=True`` every image is decoded once at load
time (reduced-size JPEG decoding, threads) and undecodable ones are dropped; the counts per split
are in ``meta["skipped_images"]`` and the paths in ``meta["skipped_files"]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..tree import LabelTree
from ..tree.matching import unmatched_classes
from .bundle import DataBundle

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageFileDataset",
    "image_transforms",
    "load_folder",
    "flat_tree",
    "resolve_tree",
    "verify_images",
]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif"}
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TREE_FILE_NAMES = ("tree.txt", "tree.tsv", "tree.edges", "tree.json", "tree.nwk", "tree.newick",
                   "tree.tre")


def reject_unknown_options(loader: str, options: Mapping[str, Any], known: Sequence[str]) -> None:
    """Raise ``ValueError`` if ``options`` (what a loader left over) is not empty."""
    if options:
        raise ValueError(
            f"{loader}: unknown option(s) {', '.join(sorted(options))}; known options: "
            f"{', '.join(sorted(set(known) | {'image_size', 'augment', 'skip_bad_images'}))}"
        )


def pop_image_options(options: dict[str, Any], default_size: int = 224) -> dict[str, Any]:
    """Take ``image_size``, ``augment``, ``skip_bad_images`` out of ``options`` and check them."""
    size = options.pop("image_size", default_size)
    if not isinstance(size, int) or isinstance(size, bool) or size < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {size!r}")
    return {
        "image_size": size,
        "augment": bool(options.pop("augment", True)),
        "skip_bad_images": bool(options.pop("skip_bad_images", False)),
    }


def image_transforms(image_opts: Mapping[str, Any]) -> tuple[Callable, Callable]:
    """ImageNet-style (train, test) transforms from PIL image to normalised ``[3, S, S]`` tensor."""
    from torchvision import transforms as T

    size = int(image_opts["image_size"])
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    test = T.Compose(
        [T.Resize(round(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(), norm]
    )
    if not image_opts.get("augment", True):
        return test, test
    train = T.Compose(
        [T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm]
    )
    return train, test


def _open_rgb(path: Path) -> Any:
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return img.convert("RGB")


class ImageFileDataset(Dataset):
    """``(transform(RGB image at path), label)`` for a list of ``(path, label)`` samples."""

    def __init__(self, samples: Sequence[tuple[Path | str, int]], transform: Callable | None):
        self.samples = [(Path(p), int(y)) for p, y in samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [y for _, y in self.samples]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            img = _open_rgb(path)
        except Exception as exc:
            raise ValueError(
                f"cannot decode image {path} ({type(exc).__name__}: {exc}); remove it or load "
                "with --skip-bad-images (skip_bad_images=True)"
            ) from None
        x = self.transform(img) if self.transform is not None else img
        return x, label


def _decodes(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.draft("RGB", (64, 64))  # JPEG: decode at reduced scale, still reads every byte
            img.load()
        return True
    except Exception:
        return False


def verify_images(
    samples: Sequence[tuple[Path, int]], workers: int | None = None
) -> tuple[list[tuple[Path, int]], list[str]]:
    """Decode every image once; return ``(good samples, bad paths)``."""
    workers = workers or min(8, os.cpu_count() or 1)
    paths = [p for p, _ in samples]
    if workers > 1 and len(paths) > 64:
        with ThreadPoolExecutor(workers) as pool:
            ok = list(pool.map(_decodes, paths, chunksize=64))
    else:
        ok = [_decodes(p) for p in paths]
    good = [s for s, k in zip(samples, ok, strict=True) if k]
    bad = [str(p) for p, k in zip(paths, ok, strict=True) if not k]
    return good, bad


def flat_tree(classes: Sequence[str]) -> LabelTree:
    """Every class directly under one root, ``"root"`` (``"__root__"`` if a class is so named)."""
    root = "root" if "root" not in classes else "__root__"
    return LabelTree.from_parents({**{c: root for c in classes}, root: None})


def resolve_tree(
    tree: LabelTree | str | Path | None, classes: Sequence[str] | None, where: str,
    fix: str = "add them to the tree file",
) -> tuple[LabelTree, str]:
    """The tree for ``classes`` with leaf id == position in ``classes``; and where it came from.

    ``tree`` may be a ``LabelTree``, a path, or ``None`` (flat tree over ``classes``). Classes
    absent from the tree raise ``ValueError`` listing them, the unmatched leaves and ``fix``
    (:func:`otcpcc.tree.matching.unmatched_classes`); extra leaves are dropped (``restrict``).
    ``classes=None`` keeps the tree's own leaves and order.
    """
    if tree is None:
        if classes is None:
            raise ValueError(f"{where}: no tree and no class names; cannot build a tree")
        return flat_tree(classes), "flat"
    if isinstance(tree, (str, Path)):
        path = Path(tree)
        if not path.is_file():
            raise ValueError(f"tree file {path} {'is a directory' if path.is_dir() else 'not found'}; "
                             "pass the path of a tree file")
        source = str(path)
        tree = LabelTree.from_file(path)
    elif isinstance(tree, LabelTree):
        source = "LabelTree"
    else:
        raise ValueError(f"tree must be a LabelTree or a path, got {type(tree).__name__}")
    if classes is None:
        return tree, source
    problem = unmatched_classes(classes, tree.leaves, where, source, fix)
    if problem:
        raise ValueError(problem)
    if list(tree.leaves) != list(classes):
        tree = tree.restrict(list(classes))
    return tree, source


def _list_split(split_dir: Path) -> dict[str, list[Path]]:
    out = {}
    for d in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out[d.name] = sorted(
            p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
    return out


def image_bundle(
    name: str,
    train_samples: list[tuple[Path, int]],
    test_samples: list[tuple[Path, int]],
    tree: LabelTree,
    image_opts: Mapping[str, Any],
    meta: dict[str, Any],
) -> DataBundle:
    """The DataBundle of two (path, label) lists: drops undecodable images first when
    ``skip_bad_images`` is set (counted in ``meta``), then applies the split's transforms."""
    if image_opts["skip_bad_images"]:
        train_samples, bad_train = verify_images(train_samples)
        test_samples, bad_test = verify_images(test_samples)
        meta["skipped_images"] = {"train": len(bad_train), "test": len(bad_test)}
        meta["skipped_files"] = bad_train + bad_test
    meta["num_train"] = len(train_samples)
    meta["num_test"] = len(test_samples)
    train_tf, test_tf = image_transforms(image_opts)
    size = image_opts["image_size"]
    return DataBundle(
        name=name,
        train=ImageFileDataset(train_samples, train_tf),
        test=ImageFileDataset(test_samples, test_tf),
        tree=tree,
        input_shape=(3, size, size),
        meta=meta,
    )


def load_folder(
    data_dir: str | Path | None,
    seed: int = 0,
    tree: LabelTree | str | Path | None = None,
    **options: Any,
) -> DataBundle:
    """Load ``data_dir/{train,val|test}/<class>/*`` with a label tree (see module docstring).

    Options: ``image_size`` (224), ``augment`` (True), ``skip_bad_images`` (False).
    ``seed`` is recorded in ``meta`` (the split is given by the folders).
    Items: ``(float tensor [3, S, S], leaf id)``. ``meta``: ``classes``, ``class_to_idx``,
    ``tree_source``, ``num_train``, ``num_test``, ``data_dir``, and with ``skip_bad_images``
    ``skipped_images`` ({split: count}) and ``skipped_files``.
    """
    image_opts = pop_image_options(options)
    reject_unknown_options("folder", options, ["tree"])
    if data_dir is None:
        raise ValueError("folder needs --data-dir (data_dir): a folder with train/<class>/ and val/<class>/")
    root = Path(data_dir)
    train_dir = root / "train"
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise ValueError(
            f"{root} must contain train/<class>/ and val/<class>/ (or test/<class>/) image folders"
        )
    train_files = _list_split(train_dir)
    test_files = _list_split(test_dir)
    if not train_files:
        raise ValueError(f"{train_dir} has no class subfolders")
    empty = [c for c, f in train_files.items() if not f]
    if empty:
        raise ValueError(f"class folder(s) with no images in {train_dir}: {', '.join(empty)}")
    unknown = sorted(set(test_files) - set(train_files))
    if unknown:
        raise ValueError(
            f"{test_dir} has class folder(s) absent from {train_dir}: {', '.join(unknown)}"
        )
    classes = sorted(train_files)
    if tree is None:
        found = next((root / n for n in TREE_FILE_NAMES if (root / n).is_file()), None)
        tree = found
    label_tree, source = resolve_tree(tree, classes, str(root),
                                      "add them to the tree file or remove their folders")
    idx = {c: i for i, c in enumerate(classes)}
    train_samples = [(p, idx[c]) for c in classes for p in train_files[c]]
    test_samples = [(p, idx[c]) for c in sorted(test_files) for p in test_files[c]]
    meta: dict[str, Any] = {
        "classes": classes,
        "class_to_idx": idx,
        "tree_source": source,
        "data_dir": str(root),
        "seed": seed,
    }
    return image_bundle("folder", train_samples, test_samples, label_tree, image_opts, meta)
