"""``otcpcc diagnose``: are the classes multi-modal, so that optimal transport could matter?

``diagnose(data, run=None)`` counts the modes of every class on input features (flattened) or on a
run's learned features.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ..runs.build import load_data
from ..runs.config import TrainConfig
from .evaluate import load_run, multimodality_summary
from .inference import predict, subsample_per_class


def diagnose(data: str | None = None, *, run: str | os.PathLike | None = None,
             data_dir: str | None = None, data_options: dict[str, Any] | None = None,
             data_seed: int = 0, max_components: int = 5, device: str = "cpu",
             max_per_class: int = 200) -> dict[str, Any]:
    """Count the modes of every class: on input features of ``data`` (flattened, train split), or
    on the learned test features of ``run``. Returns the ``multimodality_summary`` plus
    ``"source"`` and ``"dataset"``.

    At most ``max_per_class`` samples per class are used (a fixed-seed draw).
    """
    if run is not None:
        loaded = load_run(run, device=device, data_dir=data_dir)
        if data is not None and data != loaded.cfg.data:
            raise ValueError(f"--data {data!r} differs from the run's dataset "
                             f"{loaded.cfg.data!r}; drop --data or pick the matching run")
        out = predict(loaded.model, loaded.bundle.test, loaded.env, loaded.cfg)
        x, y = out["features"].numpy(), out["labels"].numpy()
        names, dataset = list(loaded.tree.leaves), loaded.cfg.data
        source = f"learned test features of {run}"
    else:
        if data is None:
            raise ValueError("diagnose needs --data NAME or --run RUN")
        cfg = TrainConfig(data=data, data_dir=data_dir, data_options=dict(data_options or {}),
                          data_seed=data_seed)
        cfg.validate()
        bundle = load_data(cfg)
        ys = np.asarray([int(bundle.train[i][1]) for i in range(len(bundle.train))])
        keep = subsample_per_class(ys, max_per_class, seed=data_seed)
        x = np.stack([torch.as_tensor(bundle.train[int(i)][0]).reshape(-1).float().numpy()
                      for i in keep])
        y = ys[keep]
        names, dataset = list(bundle.tree.leaves), data
        source = "input features (train split, flattened)"
    summary = multimodality_summary(x, y, names, seed=data_seed, max_components=max_components)
    return {"dataset": dataset, "source": source, "n": int(len(y)), **summary}
