"""Datasets by name: embedded ones that need no files, and real-format loaders reading the user's files.

``get_dataset(name, data_dir=None, seed=0, **options)`` returns a :class:`DataBundle`. Loaders are
imported lazily so that an embedded run never touches the image stack.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from .bundle import DataBundle

# name -> "module:function"; each function takes (data_dir, seed, **options) -> DataBundle
DATASETS: dict[str, str] = {
    "synthetic": "otcpcc.data.synthetic:load_synthetic",
    "digits": "otcpcc.data.digits:load_digits",
    "cifar10": "otcpcc.data.cifar:load_cifar10",
    "cifar100": "otcpcc.data.cifar:load_cifar100",
    "folder": "otcpcc.data.folder:load_folder",
    "breeds-living17": "otcpcc.data.breeds:load_living17",
    "breeds-nonliving26": "otcpcc.data.breeds:load_nonliving26",
    "breeds-entity13": "otcpcc.data.breeds:load_entity13",
    "breeds-entity30": "otcpcc.data.breeds:load_entity30",
    "inat2021": "otcpcc.data.inat:load_inat2021",
    "features": "otcpcc.data.features:load_features",
}


# embedded datasets: they take no files, data_dir is ignored
DATA_DIR_IGNORED = ("synthetic", "digits")


def get_dataset(name: str, data_dir: str | None = None, seed: int = 0, **options: Any) -> DataBundle:
    """Load dataset ``name`` (one of :data:`DATASETS`)."""
    if name not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}"
        )
    if data_dir is not None and name not in DATA_DIR_IGNORED and not Path(data_dir).exists():
        raise FileNotFoundError(f"--data-dir {data_dir} does not exist (data_dir of {name}); pass "
                                "the path of the dataset's files")
    module, func = DATASETS[name].split(":")
    return getattr(importlib.import_module(module), func)(data_dir=data_dir, seed=seed, **options)


__all__ = ["DATASETS", "DataBundle", "get_dataset"]
