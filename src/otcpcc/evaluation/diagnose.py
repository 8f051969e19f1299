"""``otcpcc diagnose``: does optimal transport matter on these features?

``diagnose(data, run=None)`` takes input features (flattened train split of ``data``, e.g.
``features`` = any model's embeddings from an .npz) or a run's learned test features, and reports
the calibrated mode count per class (:mod:`otcpcc.metrics.multimodality`) and the direct measure
of the OT effect (:mod:`otcpcc.evaluation.ot_effect`): ``mean_components``, ``frac_multimodal``,
``rank_agreement_l2_emd``, ``cpcc_l2``, ``cpcc_emd``, ``recommend`` ("ot" / "l2") and ``reasons``.
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
from .ot_effect import EMD_PER_CLASS, ot_effect


def diagnose(data: str | None = None, *, run: str | os.PathLike | None = None,
             data_dir: str | None = None, data_options: dict[str, Any] | None = None,
             data_seed: int = 0, max_components: int = 5, device: str = "cpu",
             max_per_class: int = 200, tree: str | None = None,
             emd_per_class: int = EMD_PER_CLASS, bundle: Any = None) -> dict[str, Any]:
    """Count the modes of every class: on input features of ``data`` (flattened, train split), or
    on the learned test features of ``run``; then measure the OT effect on the same features
    (``emd_per_class`` samples per class for the exact transport problems).

    Returns ``{"dataset", "source", "n", "mean_components", "frac_multimodal", "per_class",
    "rank_agreement_l2_emd", "cpcc_l2", "cpcc_emd", "cpcc_gain", "recommend", "reasons",
    "ot_effect" (the whole :func:`ot_effect` result)}``. At most ``max_per_class`` samples per
    class are used (a fixed-seed draw). ``tree``: a label-tree file replacing the data's tree.
    ``bundle``: the data already loaded with these settings (``runs.build.load_data``), used as
    given instead of loading it again.
    """
    if run is not None:
        # the run's features come from its own data, settings and tree: refused, not ignored
        # (--data-dir, where that data now is, and --data-seed, the subsample, still apply)
        given = [f for f, v in (("--data", data), ("--data-opt", data_options), ("--tree", tree))
                 if v]
        if given:
            raise ValueError(f"{' and '.join(given)} cannot be combined with --features-of "
                             f"{run}: its learned features come from the data, settings and "
                             f"tree it was trained on; drop {' and '.join(given)}, or diagnose "
                             "input features with --data alone")
        loaded = load_run(run, device=device, data_dir=data_dir)
        out = predict(loaded.model, loaded.bundle.test, loaded.env, loaded.cfg)
        x, y = out["features"].numpy(), out["labels"].numpy()
        names, dataset, label_tree = list(loaded.tree.leaves), loaded.cfg.data, loaded.tree
        keep = subsample_per_class(y, max_per_class, seed=data_seed)
        x, y = x[keep], y[keep]
        source = f"learned test features of {run}"
    else:
        if data is None:
            raise ValueError("diagnose needs --data NAME or --run RUN")
        cfg = TrainConfig(data=data, data_dir=data_dir, data_options=dict(data_options or {}),
                          data_seed=data_seed, tree=tree)
        cfg.validate()
        bundle = load_data(cfg) if bundle is None else bundle
        ys = np.asarray([int(bundle.train[i][1]) for i in range(len(bundle.train))])
        keep = subsample_per_class(ys, max_per_class, seed=data_seed)
        x = np.stack([torch.as_tensor(bundle.train[int(i)][0]).reshape(-1).float().numpy()
                      for i in keep])
        y = ys[keep]
        names, dataset, label_tree = list(bundle.tree.leaves), data, bundle.tree
        source = "input features (train split, flattened)"
    summary = multimodality_summary(x, y, names, seed=data_seed, max_components=max_components)
    effect = ot_effect(x, y, label_tree, names=names, max_per_class=emd_per_class,
                       seed=data_seed)
    return {"dataset": dataset, "source": source, "n": int(len(y)),
            "num_classes": int(len(np.unique(y))), **summary,
            "rank_agreement_l2_emd": effect["rank_agreement_l2_emd"],
            "cpcc_l2": effect["cpcc_l2"], "cpcc_emd": effect["cpcc_emd"],
            "cpcc_gain": effect["cpcc_gain"], "recommend": effect["recommend"],
            "reasons": reasons(summary, effect), "ot_effect": effect}


def reasons(summary: dict[str, Any], effect: dict[str, Any]) -> list[str]:
    """The diagnosis in sentences: modes, rank agreement, the decisive CPCC comparison."""
    frac, mean_c = summary["frac_multimodal"], summary["mean_components"]
    out = [f"{frac:.0%} of classes have more than one well-separated mode (mean {mean_c:.2f} "
           "modes per class, calibrated split test)."]
    agree = effect["rank_agreement_l2_emd"]
    if agree is not None:
        alike = "alike" if agree >= 0.9 else "differently"
        out.append(f"The l2 (class means) and EMD distances order the class pairs {alike}: "
                   f"Spearman {agree:.2f} over {effect['n_pairs']} pairs.")
    out.append(effect["rule"][0].upper() + effect["rule"][1:] + ".")
    if effect["recommend"] == "l2" and frac >= 0.5:
        out.append("The classes are multi-modal, but their modes do not carry hierarchy the "
                   "means miss, so OT distances would not change what CPCC sees.")
    if effect["recommend"] == "ot" and frac < 0.5:
        out.append("Few classes are multi-modal: the distributions differ in shape or spread "
                   "rather than in separate modes.")
    return out
