"""What a run's configuration builds: seeded generators, the data bundle (with a user tree), the model.

Training and evaluation both build from a :class:`~otcpcc.runs.config.TrainConfig` through these.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import TrainConfig

# loaders whose tree is a user file (passed as their ``tree`` option)
TREE_FROM_USER = ("folder", "features")


def seed_everything(seed: int) -> None:
    """Seed Python ``random``, numpy's global generator and torch (CPU and CUDA)."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (libraries may draw from the global state)
    torch.manual_seed(seed)


def load_data(cfg: TrainConfig):
    """``get_dataset`` with the config's options; ``cfg.tree`` replaces the dataset's tree.

    An empty train or test split, or data of fewer than 2 classes, is refused (one line), before
    any training."""
    bundle = _load_data(cfg)
    if bundle.tree.num_classes < 2:
        where = f" in --data-dir {cfg.data_dir}" if cfg.data_dir else ""
        raise ValueError(f"{cfg.data}{where} has {bundle.tree.num_classes} class(es); a classifier (and "
                         "CPCC, which compares pairs of classes) needs at least 2: check its labels")
    for split in ("train", "test"):
        if len(getattr(bundle, split)) == 0:
            where = f" in --data-dir {cfg.data_dir}" if cfg.data_dir else ""
            raise ValueError(f"the {split} split of {cfg.data}{where} is empty (0 samples); "
                             f"point --data-dir at data with {split} samples or check --data-opt")
    return bundle


def _load_data(cfg: TrainConfig):
    from ..data import get_dataset

    options = dict(cfg.data_options)
    loader_reads_tree = cfg.data in TREE_FROM_USER  # these loaders build their tree from the file
    if cfg.tree and loader_reads_tree:
        options.setdefault("tree", cfg.tree)
    bundle = get_dataset(cfg.data, data_dir=cfg.data_dir, seed=cfg.data_seed, **options)
    if not cfg.tree or loader_reads_tree:
        return bundle
    from ..tree import LabelTree
    from ..tree.matching import unmatched_classes

    if not Path(cfg.tree).is_file():
        what = "is a directory" if Path(cfg.tree).is_dir() else "not found"
        raise FileNotFoundError(f"tree file {cfg.tree!r} {what}; pass the path of a tree file to --tree")
    user_tree = LabelTree.from_file(cfg.tree)
    problem = unmatched_classes(bundle.tree.leaves, user_tree.leaves, cfg.data, f"--tree {cfg.tree}",
                                "add them under their parents")
    if problem:
        raise ValueError(problem)
    bundle.tree = user_tree.restrict(list(bundle.tree.leaves))
    return bundle


def resolve_arch(arch: str, input_shape: tuple[int, ...]) -> str:
    """``"auto"``: ``mlp`` for vectors, ``cnn`` for images up to 64 px, ``resnet18`` above."""
    if arch != "auto":
        return arch
    if len(input_shape) == 1:
        return "mlp"
    return "cnn" if max(input_shape[1:]) <= 64 else "resnet18"


def make_model(cfg: TrainConfig, bundle) -> nn.Module:
    from ..models import build_model

    return build_model(resolve_arch(cfg.arch, bundle.input_shape), tuple(bundle.input_shape),
                       bundle.num_classes, weights=cfg.weights, freeze=cfg.freeze,
                       train_only=cfg.train_only, **cfg.model_options)


