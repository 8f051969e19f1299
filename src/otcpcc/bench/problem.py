"""The benchmarks' random problem: features, labels with every class present, a two-level tree."""

from __future__ import annotations

import numpy as np
import torch


def make_problem(
    batch: int,
    classes: int,
    coarse: int,
    dim: int,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
):
    """Random features [B, d] (leaf, requires grad), labels [B] with all K classes present,
    and the two-level tree: fine class i under coarse group ``i * coarse // K``.

    Returns (features, labels, tree).
    """
    from otcpcc import LabelTree
    from otcpcc.distances.memory import available_bytes

    if batch < classes:
        raise ValueError(
            f"batch size {batch} < {classes} classes; every class must be present: "
            "use a larger --batch-sizes or fewer --classes"
        )
    if not 2 <= coarse < classes:
        raise ValueError(
            f"--coarse {coarse} must satisfy 2 <= coarse < classes ({classes}) so that tree "
            "distances vary"
        )
    need = batch * (4 * dim * torch.finfo(dtype).bits // 8 + 4 * 8)  # features, grad, copies; labels
    have = available_bytes(device)
    if need > have:  # refused before allocating (a host OOM kills the process without a word)
        raise ValueError(f"batch size {batch} with --dim {dim} needs about {need / 1e9:.1f} GB for its "
                         f"features and labels alone, more than the {have / 1e9:.1f} GB available on "
                         f"{torch.device(device).type}; lower --batch-sizes or --dim")
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.arange(classes), torch.randint(0, classes, (batch - classes,),
                                                             generator=g)])
    labels = labels[torch.randperm(batch, generator=g)]
    features = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    features = features.to(device=device, dtype=dtype).requires_grad_(True)
    tree = LabelTree.from_levels([np.arange(classes) * coarse // classes])
    return features, labels.to(device), tree
