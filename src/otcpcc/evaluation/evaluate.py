"""The evaluation protocol on a finished run directory.

``evaluate_run(RUN)`` rebuilds the data and the model from ``RUN/config.json``, ``RUN/tree.json``
and ``RUN/last.pt`` (loaded with ``weights_only=True``), computes test features and softmax
probabilities (and train features for the retrieval prototypes), and writes ``RUN/eval.json``:

- ``fine_top1``, ``fine_top2`` (``fine_acc`` = ``fine_top1``) and ``{level}_acc`` for every coarser
  level of the tree (fine probabilities summed over each ancestor's leaves, then argmax);
- ``map_fine``, ``map_{level}``: retrieval mAP with class prototypes (mean train feature), cosine;
- ``mistake_severity`` (mean tree distance of top-1 mistakes), ``hier_dist@1``, ``hier_dist@5``,
  ``expected_cost`` (cost matrix from a CSV keyed by class names, default the tree distance;
  ``cost_matrix`` names it, ``cost_matrix_sha256`` fingerprints its values, None for the tree);
- the decision costs under that matrix: ``expected_cost_argmax`` (mean cost of the argmax), and
  for the conditional-risk decisions (``metrics.crm_predict``) ``fine_acc_crm``,
  ``mistake_severity_crm``, ``expected_cost_crm``;
- ``test_cpcc_l2``, ``test_cpcc_emd`` and ``test_cpcc_{own distance}`` (TestCPCC on the whole split;
  ``emd``/``sinkhorn`` on at most 100 samples per class, drawn with a fixed seed and recorded in
  ``cpcc_subsample``); ``test_cpcc`` is the run's own distance (``l2`` for plain CE); a run
  trained with ``--cpcc-target`` also gets ``test_cpcc_target_{l2,emd,own}`` against that matrix
  (the run directory's ``cpcc_target.csv``);
- ``multimodality``: calibrated split-test mode counts per class of the learned test features;
- ``target`` (datasets with ``target_train``/``target_test`` splits, e.g. BREEDS): zero-shot
  coarse accuracy on the target classes, one-shot linear probe, source -> target retrieval
  (see :func:`subpopulation_shift`).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..distributed.env import DistEnv, resolve_device
from ..runs.build import load_data, make_model
from ..runs.checkpoint import CHECKPOINT, load_checkpoint, write_json
from ..runs.config import ConfigError, TrainConfig, read_run_config
from ..runs.rundir import RunDirError
from ..runs.target import read_run_target
from .inference import predict, test_cpcc

YARDSTICKS = ("l2", "emd")  # TestCPCC distances reported for every model


@dataclass
class LoadedRun:
    """A run directory brought back to life: its config, tree, data and trained model."""

    run_dir: Path
    cfg: TrainConfig
    tree: Any
    bundle: Any
    model: torch.nn.Module
    epoch: int  # completed epochs in its last.pt
    env: DistEnv
    step: int = 0  # steps of epoch ``epoch + 1`` also in the weights (a mid-epoch checkpoint)


def load_run(run_dir: str | os.PathLike, *, device: str = "cpu",
             data_dir: str | None = None) -> LoadedRun:
    """Load ``run_dir`` written by ``otcpcc train``; one-line errors for missing/foreign dirs.

    ``data_dir`` overrides the recorded data location (the data moved since training).
    """
    from ..tree import LabelTree

    run = Path(run_dir)
    if not run.is_dir():
        raise RunDirError(f"run directory {str(run)!r} not found; pass a directory written by "
                          "otcpcc train --out")
    for name in ("config.json", "tree.json", CHECKPOINT):
        if not (run / name).is_file():
            raise RunDirError(f"{str(run)!r} is not a finished otcpcc run (no {name}); pass a "
                              "directory written by otcpcc train --out, or train it first")
    try:
        _, cfg = read_run_config(run / "config.json")
    except ConfigError as e:
        raise RunDirError(f"incompatible run directory {str(run)!r}: {e}; restore it, or train "
                          "the run again") from None
    if data_dir is not None:
        cfg = cfg.replace(data_dir=str(data_dir))
    tree = LabelTree.from_file(run / "tree.json")
    bundle = load_data(cfg)
    if list(bundle.tree.leaves) != list(tree.leaves):
        raise RunDirError(
            f"incompatible run directory {str(run)!r}: the dataset's classes no longer match its "
            f"tree.json ({bundle.tree.num_classes} vs {tree.num_classes} classes); point "
            "--data-dir at the data the run was trained on"
        )
    bundle.tree = tree
    _check_input_transform(run, bundle)
    env = DistEnv(device=resolve_device(device))
    model = make_model(cfg.replace(weights=None), bundle)
    state = load_checkpoint(run / CHECKPOINT, map_location="cpu")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        first = str(e).splitlines()[0][:160]
        raise RunDirError(f"incompatible run directory {str(run)!r}: {CHECKPOINT} does not fit "
                          f"the model of config.json ({first}); retrain the run") from None
    model.to(env.device).eval()
    return LoadedRun(run, cfg, tree, bundle, model, int(state["epoch"]), env,
                     int(state.get("step", 0)))


def _check_input_transform(run: Path, bundle: Any) -> None:
    """The input standardisation recomputed from the data must be the one the run trained with
    (``metrics.json``'s ``input_standardization``); a changed data file would silently shift it."""
    try:
        recorded = json.loads((run / "metrics.json").read_text()).get("input_standardization")
    except (OSError, ValueError, AttributeError):
        return  # an unfinished run: nothing recorded yet
    now = bundle.meta.get("standardize")
    same = recorded is None or (now is not None and all(
        np.shape(recorded[k]) == np.shape(now[k])
        and np.allclose(recorded[k], now[k], rtol=1e-5, atol=1e-6) for k in ("mean", "std")))
    if not same:
        raise RunDirError(
            f"incompatible run directory {str(run)!r}: the input standardisation of the data now "
            "differs from the one recorded in metrics.json (the data file changed); point "
            "--data-dir at the data the run was trained on")


def _split(bundle: Any, split: str) -> Any:
    if split == "test":
        return bundle.test
    if split == "train":
        return bundle.train
    if split in bundle.extra:
        return bundle.extra[split]
    choices = ", ".join(["test", "train", *bundle.extra])
    raise ValueError(
        f"unknown split {split!r} for dataset {bundle.name!r}; choose one of: {choices}")


def resolve_cost_matrix(cost_matrix: Any, tree: Any) -> tuple[np.ndarray | None, str]:
    from ..metrics import load_cost_matrix
    from ..metrics.mistakes import check_mistake_costs

    if cost_matrix is None:
        return None, "tree distance"
    if isinstance(cost_matrix, (str, os.PathLike)):
        path = Path(cost_matrix)
        if not path.exists():
            raise FileNotFoundError(f"cost matrix {str(path)!r} not found; check --cost-matrix")
        c = load_cost_matrix(path, list(tree.leaves))
        check_mistake_costs(c, str(path))
        return c, str(path)
    c = np.asarray(cost_matrix, dtype=np.float64)
    k = tree.num_classes
    if c.shape != (k, k):
        raise ValueError(f"cost matrix has shape {c.shape}, expected ({k}, {k}) for the "
                         f"{k} classes; give one row and one column per class")
    check_mistake_costs(c, "cost matrix")
    return c, "array"


def multimodality_summary(features: np.ndarray, labels: np.ndarray, names: list[str],
                          seed: int = 0, max_components: int = 5) -> dict[str, Any]:
    """``metrics.multimodality`` with class names; per-class counts as a list of records."""
    from ..metrics import multimodality

    res = multimodality(features, labels, max_components=max_components, seed=seed)
    return {
        "mean_components": res["mean_components"],
        "frac_multimodal": res["frac_multimodal"],
        "recommendation": res["recommendation"],
        "per_class": [{"class": names[c], "components": n,
                       "split_ratio": res["evidence"][c]["split_ratio"],
                       "threshold": res["evidence"][c]["threshold"]}
                      for c, n in res["per_class"].items()],
    }


def steps_into(epoch: int, step: int) -> str:
    """`` plus 81 steps of epoch 1`` for a checkpoint saved ``step`` steps into the epoch after
    ``epoch`` completed ones; empty at an epoch boundary (``step`` 0)."""
    return f" plus {step} step{'s' if step != 1 else ''} of epoch {epoch + 1}" if step else ""


def checkpoint_label(epoch: int, step: int) -> str:
    """What a checkpoint's weights are: ``epoch-3 checkpoint``, or ``checkpoint of epoch 0 plus 81
    steps of epoch 1`` for one saved mid-epoch (Ctrl-C, SIGTERM)."""
    return f"checkpoint of epoch {epoch}{steps_into(epoch, step)}" if step else \
        f"epoch-{epoch} checkpoint"


def unfinished(run: LoadedRun) -> str | None:
    """Why ``run`` is not a finished training run (its ``last.pt`` holds fewer epochs than its
    config asks, or it has no ``metrics.json``: still training, or interrupted), or ``None``."""
    if run.epoch < run.cfg.epochs:
        return (f"its {CHECKPOINT} holds epoch {run.epoch} of {run.cfg.epochs}"
                f"{steps_into(run.epoch, run.step)}")
    if not (run.run_dir / "metrics.json").is_file():
        return "it has no metrics.json yet"
    return None


def evaluate_run(run_dir: str | os.PathLike, *, cost_matrix: Any = None, split: str = "test",
                 device: str = "cpu", data_dir: str | None = None,
                 partial: bool = False) -> dict[str, Any]:
    """Evaluate a trained run; write and return ``run_dir/eval.json`` (``eval_{split}.json``).

    Args:
        run_dir: directory written by :func:`otcpcc.train.train`.
        cost_matrix: ``None`` (tree distance), a CSV path keyed by class names (see
            ``metrics.load_cost_matrix``), or a [K, K] array ``C[true, predicted]``.
        split: ``"test"`` (default), ``"train"`` or an extra split of the dataset
            (e.g. ``"target_test"``).
        device: where to run the model.
        data_dir: the data's location when it moved since training.
        partial: evaluate a run that has not finished training (:func:`unfinished`: still
            training or interrupted) at the state its ``last.pt`` holds (``epoch`` completed
            epochs plus ``step`` steps of the next, both in the result); it then has
            ``partial: True``. Without it such a run raises :class:`RunDirError`.
    """
    from ..metrics import cost_matrix_sha256, evaluate_all

    run = load_run(run_dir, device=device, data_dir=data_dir)
    why = unfinished(run)
    if why and not partial:
        raise RunDirError(
            f"{str(run.run_dir)!r} has not finished training ({why}: still training, or "
            f"interrupted); finish it with otcpcc train --out {run.run_dir} --resume, or pass "
            f"--partial to evaluate its {checkpoint_label(run.epoch, run.step)} anyway")
    written = run.run_dir / ("eval.json" if split == "test" else f"eval_{split}.json")
    if written.is_dir():  # refused before the work, not when writing its result
        raise RunDirError(f"{written} is a folder, not otcpcc's evaluation file; "
                          "move or remove it, then evaluate again")
    cfg, tree, bundle = run.cfg, run.tree, run.bundle
    dataset = _split(bundle, split)
    c, cost_source = resolve_cost_matrix(cost_matrix, tree)
    target = read_run_target(run.run_dir, list(tree.leaves), cfg.cpcc_target)  # its --cpcc-target

    out = predict(run.model, dataset, run.env, cfg)
    train = out if split == "train" else predict(run.model, bundle.train, run.env, cfg)
    feats, labels = out["features"], out["labels"]
    probs = torch.softmax(out["logits"], dim=1).numpy().astype(np.float64)

    result: dict[str, Any] = {
        "split": split, "n": int(labels.numel()), "num_classes": tree.num_classes,
        "epoch": run.epoch, "step": run.step, "partial": bool(why), "method": cfg.method,
        "distance": cfg.distance, "lam": cfg.lam,
        "seed": cfg.seed,
        "cost_matrix": cost_source, "cost_matrix_sha256": cost_matrix_sha256(c),
    }
    metrics = evaluate_all(probs, labels.numpy(), feats.numpy(), train["features"].numpy(),
                           train["labels"].numpy(), tree, cost_matrix=c)
    result["fine_acc"] = metrics["fine_top1"]
    result.update(metrics)
    result["coarse_level"] = tree.levels[-1].name if tree.levels else None  # its map_ is coarse mAP

    own = cfg.distance if cfg.distance != "none" else "l2"
    subsample: dict[str, Any] = {}
    for name in dict.fromkeys((*YARDSTICKS, own)):
        options = cfg.distance_options if name == cfg.distance else {}
        value, info = test_cpcc(feats, labels, tree, name, options, seed=cfg.data_seed)
        result[f"test_cpcc_{name}"] = value
        if info is not None:
            subsample[name] = info
    if target is not None:
        for name in dict.fromkeys((*YARDSTICKS, own)):
            options = cfg.distance_options if name == cfg.distance else {}
            result[f"test_cpcc_target_{name}"] = test_cpcc(feats, labels, target, name, options,
                                                           seed=cfg.data_seed)[0]
    result["test_cpcc"] = result[f"test_cpcc_{own}"]
    # the own-distance TestCPCC under one name for every run, as summary.json and the compare
    # report call it (test_cpcc_<d> and test_cpcc stay: same value)
    result["test_cpcc_own"] = result["test_cpcc"]
    if target is not None:
        result["test_cpcc_target_own"] = result[f"test_cpcc_target_{own}"]
    result["test_cpcc_distance"] = own
    result["cpcc_subsample"] = subsample
    result["multimodality"] = multimodality_summary(
        feats.numpy(), labels.numpy(), list(tree.leaves), seed=cfg.data_seed)

    if split == "test" and {"target_train", "target_test"} <= set(bundle.extra):
        result["target"] = subpopulation_shift(run, train, seed=cfg.data_seed)

    write_json(written, result)
    return result


def dataset_labels(dataset: Any) -> np.ndarray:
    """Labels of a dataset without decoding its inputs when it exposes them (``samples``,
    ``targets``, ``TensorDataset``, ``Subset`` of those); otherwise by iterating."""
    from torch.utils.data import Subset, TensorDataset

    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].numpy().astype(np.int64)
    if hasattr(dataset, "samples"):
        return np.asarray([int(y) for _, y in dataset.samples], dtype=np.int64)
    if hasattr(dataset, "targets"):
        return np.asarray(dataset.targets, dtype=np.int64)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)


def subpopulation_shift(run: LoadedRun, source_train: dict[str, torch.Tensor],
                        seed: int = 0) -> dict[str, Any]:
    """BREEDS-style downstream tasks on target classes (new fine classes under the same coarse ones).

    - ``zero_shot_{level}_acc``: coarse accuracy on ``target_test`` by marginalisation: the fine
      softmax restricted to the source classes (the only ones trained), renormalised, summed over
      each ancestor's leaves, argmax, compared with the sample's ancestor.
    - ``one_shot_fine_acc``: a linear probe on the frozen encoder: one ``target_train`` sample per
      target class (a fixed-seed draw), L2-normalised features, multinomial logistic regression
      (scikit-learn, C = 1), accuracy on ``target_test`` among the target classes.
    - ``map_{level}``: source -> target retrieval (prototypes = mean source train feature per
      coarse node, queries = target test features, cosine, AP per node, mean).
    """
    from sklearn.linear_model import LogisticRegression
    from torch.utils.data import Subset

    from ..metrics import level_accuracies, retrieval_map

    tree, bundle = run.tree, run.bundle
    test = predict(run.model, bundle.extra["target_test"], run.env, run.cfg)
    y = test["labels"].numpy()
    source = np.unique(source_train["labels"].numpy())
    probs = torch.softmax(test["logits"].double(), dim=1).numpy()
    mask = np.zeros(tree.num_classes)
    mask[source] = 1.0
    probs = probs * mask
    probs /= np.maximum(probs.sum(axis=1, keepdims=True), 1e-300)
    out: dict[str, Any] = {"n": int(y.size), "num_target_classes": int(np.unique(y).size)}
    for key, value in level_accuracies(probs, y, tree).items():
        if not key.startswith("fine_"):
            out[f"zero_shot_{key}"] = value

    pool = bundle.extra["target_train"]
    labels = dataset_labels(pool)
    rng = np.random.default_rng(seed)
    shots = np.array([rng.choice(np.flatnonzero(labels == c)) for c in np.unique(labels)])
    support = predict(run.model, Subset(pool, shots.tolist()), run.env, run.cfg)

    def unit(x: torch.Tensor) -> np.ndarray:
        x = x.numpy().astype(np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    if np.unique(labels).size >= 2:
        probe = LogisticRegression(C=1.0, max_iter=2000)
        with warnings.catch_warnings():  # one shot: as many classes as samples, by design
            warnings.filterwarnings("ignore", message="The number of unique classes")
            probe.fit(unit(support["features"]), support["labels"].numpy())
        out["one_shot_fine_acc"] = float(np.mean(probe.predict(unit(test["features"])) == y))
    else:
        out["one_shot_fine_acc"] = float("nan")
    out["one_shot_samples"] = [int(i) for i in shots]
    maps = retrieval_map(source_train["features"].numpy(), source_train["labels"].numpy(),
                         test["features"].numpy(), y, tree)
    out.update({k: v for k, v in maps.items() if k != "map_fine"})
    return out
