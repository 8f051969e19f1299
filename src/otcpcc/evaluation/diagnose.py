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

from ..metrics.multimodality import MIN_TEST_SAMPLES
from ..runs.build import load_data
from ..runs.config import TrainConfig
from .evaluate import load_run, multimodality_summary
from .inference import predict, subsample_per_class
from .ot_effect import EMD_PER_CLASS, ot_effect

# Samples per class the diagnosis needs: the mode test splits no group smaller than this (so every
# class would count as one mode), and with a handful of samples the EMD between two classes is
# little more than the distance of their means (with one sample each it is exactly that: Spearman
# 1, gain 0, a foregone "l2").
MIN_PER_CLASS = MIN_TEST_SAMPLES


def _per_class_option(flag: str, value: int) -> None:
    if value < MIN_PER_CLASS:
        raise ValueError(f"{flag} {value} is below {MIN_PER_CLASS}, the samples per class the "
                         f"diagnosis needs (the mode test splits no class smaller than "
                         f"{MIN_PER_CLASS}; with fewer, EMD is about the class means); pass "
                         f"{flag} {MIN_PER_CLASS} or more (default 200)")


def _too_few(y: np.ndarray, names: list[str]) -> str | None:
    """The sentence that marks a diagnosis undetermined: classes below ``MIN_PER_CLASS``."""
    classes, counts = np.unique(y, return_counts=True)
    low = counts < MIN_PER_CLASS
    if not low.any():
        return None
    worst = int(np.argmin(counts))
    return (f"Undetermined: {int(low.sum())} of {classes.size} classes have fewer than "
            f"{MIN_PER_CLASS} samples (class {names[int(classes[worst])]!r}: {int(counts[worst])}), "
            f"below what the mode test and the EMD comparison need ({MIN_PER_CLASS} per class); "
            "the numbers are shown but decide nothing: use more data per class.")


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

    Needs ``MIN_PER_CLASS`` (20) samples per class: ``max_per_class`` or ``emd_per_class`` below
    it is refused (ValueError); data with a smaller class gives ``recommend = "undetermined"``
    (``undetermined``: the sentence why, also first in ``reasons``) instead of a verdict.
    """
    _per_class_option("--max-per-class", max_per_class)
    _per_class_option("emd_per_class", emd_per_class)
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
    undetermined = _too_few(y, names)
    why = reasons(summary, effect)
    return {"dataset": dataset, "source": source, "n": int(len(y)),
            "num_classes": int(len(np.unique(y))), **summary,
            "rank_agreement_l2_emd": effect["rank_agreement_l2_emd"],
            "cpcc_l2": effect["cpcc_l2"], "cpcc_emd": effect["cpcc_emd"],
            "cpcc_gain": effect["cpcc_gain"],
            "recommend": effect["recommend"] if undetermined is None else "undetermined",
            "undetermined": undetermined,
            "reasons": why if undetermined is None else [undetermined, *why], "ot_effect": effect}


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
