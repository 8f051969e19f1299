"""Inference on a whole split (gathered over ranks) and TestCPCC of its features.

``predict`` returns features, logits and labels in dataset order; ``test_cpcc`` is the CPCC of
the whole split's features against the tree (``emd``/``sinkhorn`` on a seeded subsample of at
most 100 samples per class, ``swd`` with seeded directions); ``final_metrics`` is a run's
``metrics.json``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..distributed.env import DistEnv, unwrap
from ..runs.config import TrainConfig

# distances whose exact solvers grow quadratically with the class size: TestCPCC subsamples
EXPENSIVE_DISTANCES = {"emd": 100, "sinkhorn": 100}


def _eval_loader(dataset: Dataset, cfg: TrainConfig, device: torch.device) -> DataLoader:
    return DataLoader(dataset, batch_size=max(cfg.batch_size, 256), shuffle=False,
                      num_workers=cfg.workers, pin_memory=device.type == "cuda",
                      generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, env: DistEnv, cfg: TrainConfig, amp: bool = False,
            *, features: bool = True) -> dict[str, torch.Tensor]:
    """Features, logits and labels of a whole split, in dataset order, gathered over ranks.

    Each rank takes samples ``rank, rank + W, ...``; the results are gathered and put back in
    order. Returns CPU float32 ``features`` [N, d] (when asked), ``logits`` [N, K] and long
    ``labels`` [N].
    """
    device = env.device
    n = len(dataset)
    idx = list(range(env.rank, n, env.world_size))
    shard = dataset if env.world_size == 1 else Subset(dataset, idx)
    was_training = model.training
    model.eval()
    net = unwrap(model)  # no DDP hooks for inference
    feats, logits, labels = [], [], []
    for x, y in _eval_loader(shard, cfg, device):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            f, z = net(x.to(device, non_blocking=True))
        if features:
            feats.append(f.float().cpu())
        logits.append(z.float().cpu())
        labels.append(torch.as_tensor(y).long().cpu())
    model.train(was_training)
    out = {"logits": torch.cat(logits) if logits else torch.zeros(0),
           "labels": torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)}
    if features:
        out["features"] = torch.cat(feats) if feats else torch.zeros(0)
    if env.world_size > 1:
        parts = env.gather_objects((idx, out), all_ranks=True)
        order = torch.tensor([i for p in parts for i in p[0]]).argsort()
        out = {k: torch.cat([p[1][k] for p in parts])[order] for k in out}
    return out


def accuracy(model: nn.Module, dataset: Dataset, env: DistEnv, cfg: TrainConfig,
             amp: bool = False) -> float:
    """Top-1 accuracy on ``dataset`` (all ranks together)."""
    res = predict(model, dataset, env, cfg, amp, features=False)
    n = res["labels"].numel()
    return float((res["logits"].argmax(1) == res["labels"]).sum()) / n if n else float("nan")


def subsample_per_class(labels: np.ndarray, max_per_class: int, seed: int = 0) -> np.ndarray:
    """Sorted indices keeping at most ``max_per_class`` samples of each class (seeded draw)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        if where.size > max_per_class:
            where = np.sort(rng.choice(where, max_per_class, replace=False))
        keep.append(where)
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def test_cpcc(features: torch.Tensor, labels: torch.Tensor, tree, distance: str,
              options: dict[str, Any] | None = None, seed: int = 0) -> tuple[float, dict | None]:
    """TestCPCC of ``features`` under ``distance``; ``emd``/``sinkhorn`` use at most 100 samples
    per class and ``swd`` fixed directions, both drawn from ``seed``. Returns
    ``(value, subsample_info or None)``."""
    from ..objectives import cpcc

    info = None
    cap = EXPENSIVE_DISTANCES.get(distance)
    if cap is not None:
        counts = torch.bincount(labels)
        if int(counts.max()) > cap:
            keep = torch.from_numpy(subsample_per_class(labels.numpy(), cap, seed))
            info = {"max_per_class": cap, "n": int(keep.numel()), "of": int(labels.numel()),
                    "seed": seed}
            features, labels = features[keep], labels[keep]
    options = dict(options or {})
    if distance == "swd" and "seed" not in options and "projections" not in options:
        options["seed"] = seed  # fixed directions: the same run always gets the same TestCPCC
    value = cpcc(features, labels, tree, distance=distance, **options)
    return float(value), info


def final_metrics(model: nn.Module, bundle, cfg: TrainConfig, env: DistEnv,
                  history: list[dict[str, Any]], amp: bool) -> dict[str, Any]:
    """``metrics.json``: final accuracies, TestCPCC under the run's distance, timing, and
    ``input_standardization`` (``{"mean": [d], "std": [d]}``) when the loader standardised."""
    res = predict(model, bundle.test, env, cfg, amp)
    labels = res["labels"]
    test_acc = float((res["logits"].argmax(1) == labels).float().mean()) if labels.numel() else \
        float("nan")
    distance = cfg.distance if cfg.distance != "none" else "l2"
    options = cfg.distance_options if cfg.distance != "none" else {}
    value, info = (float("nan"), None)
    if env.is_main:
        value, info = test_cpcc(res["features"], labels, bundle.tree, distance, options,
                                seed=cfg.data_seed)
    times = [float(r["epoch_time"]) for r in history]
    seen = sum(float(r["samples_per_s"]) * float(r["epoch_time"]) for r in history)
    core = unwrap(model)
    last = history[-1] if history else {}
    return {
        "epochs": len(history),
        "train_acc": last.get("train_acc"),
        "train_loss": last.get("loss"),
        "test_acc": test_acc,
        "test_cpcc": value,
        "test_cpcc_distance": distance,
        "test_cpcc_subsample": info,
        "epoch_times": times,
        "train_time_s": float(sum(times)),
        "samples_per_s": seen / sum(times) if times and sum(times) > 0 else None,
        "world_size": env.world_size,
        "device": str(env.device),
        "amp": amp,
        "distance": cfg.distance,
        "lam": cfg.lam,
        "seed": cfg.seed,
        "arch": cfg.arch,
        "num_classes": bundle.num_classes,
        "num_train": len(bundle.train),
        "num_test": len(bundle.test),
        "feature_dim": int(getattr(core, "feature_dim", res["features"].shape[1])),
        "parameters": int(sum(p.numel() for p in core.parameters())),
        "trainable_parameters": int(sum(p.numel() for p in core.parameters() if p.requires_grad)),
        # the input transform the loader applied (features: train-split mean/std), if any
        **({"input_standardization": std} if (std := getattr(bundle, "meta", {}).get("standardize"))
           else {}),
    }


