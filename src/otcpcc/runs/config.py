"""Training configuration: one dataclass holding every knob, loaded from flags and/or a file.

Precedence (lowest first): the defaults below, then a ``preset`` (``--preset paper``: the published
per-dataset hyperparameters, :data:`PRESETS`), then a ``--config`` file (YAML or JSON), then the
flags given on the command line. :meth:`TrainConfig.validate` checks every value and raises
:class:`ConfigError` (a ``ValueError``) with a one-line message naming the problem and the fix.

A run directory's ``config.json`` holds the resolved values at the top level plus a ``"meta"``
entry (package versions, git commit, resolved device, world size); it can be fed back to
``--config`` to repeat the run.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..flags import MAX_COUNT
from ..textfile import read_text


class ConfigError(ValueError):
    """A configuration value or file that cannot be used (message: problem and fix, one line)."""


# Canonical distance names and their aliases; "none" is plain cross-entropy.
DISTANCE_ALIASES: dict[str, str] = {
    "none": "none",
    "ce": "none",
    "flat": "none",
    "l2": "l2",
    "emd": "emd",
    "sinkhorn": "sinkhorn",
    "sk": "sinkhorn",
    "swd": "swd",
    "fastft": "fastft",
    "fft": "fastft",
}
# Task losses on the logits (``--method``): cross-entropy, hierarchical cross-entropy, soft labels.
METHODS = ("ce", "hxe", "soft")
OPTIMIZERS = ("sgd", "adamw")
MAX_SEED = 2**32 - 1  # --seed / --data-seed: what numpy's generators accept
STUDY_FLAGS = {"lams": "sweep's --lams", "batch_sizes": "sweep's --batch-sizes",
               "methods": "compare's and pilot's --methods", "seeds": "compare's and pilot's --seeds"}
MAX_WORKERS = 256  # DataLoader worker processes (a machine-independent bound: configs travel)
SCHEDULES = ("cosine", "step", "none")
SPLITS = ("train", "test")

# ------------------------------------------------------------------------------ presets
# ``--preset paper``: the pre-training hyperparameters of the reference code of
#   [CPCC]    Zeng, Tachet des Combes, Zhao, "Learning structured representations by embedding class
#             hierarchy", ICLR 2023: github.com/hanzhaoml/HierarchyCPCC (commit 67d9ff9), and
#   [OT-CPCC] Zeng, Du, Yamada, Zhao, "Learning structured representations by embedding class
#             hierarchy with fast optimal transport", ICLR 2025: github.com/uiuctml/OTCPCC
#             (commit 62c3e75).
# Both build ``SGD(model.parameters(), **pre.json["optimizer"])`` and
# ``StepLR(optimizer, **pre.json["scheduler"])`` (param.py), stepped once per epoch; a key that a
# pre.json leaves out takes torch's default (SGD momentum 0, StepLR gamma 0.1). Batch size 1024 and
# lambda 1 are the defaults of OT-CPCC's pretrain.py (``--batch_size 1024``, ``--lamb 1``); its
# ``--arch`` default is res18. The preset sets no ``distance``: the default ``fastft`` is OT-CPCC;
# pass ``--distance l2`` (CPCC) or ``--distance none`` (the flat cross-entropy baseline).
PRESET_NAMES = ("paper",)
_PAPER_COMMON: dict[str, Any] = {
    "batch_size": 1024,  # [OT-CPCC] pretrain.py --batch_size default 1024
    "lam": 1.0,  # [CPCC] main.py / [OT-CPCC] pretrain.py --lamb default 1
    "optimizer": "sgd",  # [both] param.py: torch.optim.SGD
    "schedule": "step",  # [both] param.py: torch.optim.lr_scheduler.StepLR, stepped per epoch
    "warmup_epochs": 0,  # [both] no warm-up
    "arch": "resnet18",  # [OT-CPCC] pretrain.py --arch default res18 (CIFAR 3x3 stem on 32 px)
}
# ``--preset paper`` values per dataset name (the only preset so far).
PRESETS: dict[str, dict[str, Any]] = {
    # [OT-CPCC] dataset/cifar10/pre.json
    "cifar10": {"epochs": 100, "lr": 0.01, "momentum": 0.9, "wd": 5e-4,
                "step_size": 60, "gamma": 0.1},
    # [CPCC] cifar/pre.json (CIFAR-100; OT-CPCC's dataset/cifar100/pre.json was not
    # available to us). subpop: pre-training on the source classes of the 60/40
    # subpopulation split, as OT-CPCC's make_dataloader(..., "ss") does.
    "cifar100": {"epochs": 200, "lr": 0.1, "momentum": 0.9, "wd": 5e-4,
                 "step_size": 60, "gamma": 0.2, "data_options": {"subpop": True}},
    # NOT FROM THE PAPER: living17's pre.json was not available to us; these copy
    # nonliving26 (the other 4-subclass BREEDS setting, similar size).
    "breeds-living17": {"epochs": 450, "lr": 0.01, "momentum": 0.0, "wd": 1e-4,
                        "step_size": 150, "gamma": 0.1},
    # [CPCC] breeds/nonliving26/pre.json: epochs 450, lr 0.01, weight_decay 1e-4,
    # step_size 150; momentum 0 and gamma 0.1 are torch's defaults (not in the file).
    "breeds-nonliving26": {"epochs": 450, "lr": 0.01, "momentum": 0.0, "wd": 1e-4,
                           "step_size": 150, "gamma": 0.1},
    # [CPCC] breeds/entity13/pre.json: epochs 300, lr 0.01, weight_decay 1e-4, step_size 100;
    # momentum and gamma are not in the file, so SGD's momentum 0 and StepLR's gamma 0.1 apply.
    "breeds-entity13": {"epochs": 300, "lr": 0.01, "momentum": 0.0, "wd": 1e-4,
                        "step_size": 100, "gamma": 0.1},
    # NOT FROM THE PAPER: entity30's pre.json was not available to us; these copy
    # entity13 (the other whole-hierarchy BREEDS setting, similar size).
    "breeds-entity30": {"epochs": 300, "lr": 0.01, "momentum": 0.0, "wd": 1e-4,
                        "step_size": 100, "gamma": 0.1},
    # [OT-CPCC] dataset/inat/pre.json; dataset/inat/model.py fine-tunes an
    # ImageNet-pretrained ResNet-18 with only layer4 (and the head) trainable: pass the
    # weights file with --weights. dataset/inat/data.py: fine = taxonomic class,
    # coarse = phylum; make_dataloader always applies its 60/40 subpopulation split
    # (pre-training on the source classes), hence subpop.
    "inat2021": {"epochs": 120, "lr": 0.1, "momentum": 0.9, "wd": 5e-4,
                 "step_size": 60, "gamma": 0.2, "train_only": ["layer4"],
                 "data_options": {"fine": "class", "coarse": "phylum", "subpop": True}},
}
OPTION_KEYS = ("data_options", "model_options", "distance_options")


def preset_values(preset: str, data: str) -> dict[str, Any]:
    """The config values ``preset`` sets for dataset ``data`` (a fresh dict).

    Raises :class:`ConfigError` for an unknown preset or a dataset the preset does not cover.
    """
    if preset not in PRESET_NAMES:
        raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESET_NAMES)}")
    if data not in PRESETS:
        raise ConfigError(
            f"--preset {preset} has no published values for dataset {data!r}; it covers "
            f"{', '.join(PRESETS)}: pass one of them with --data, or drop --preset"
        )
    values = {**_PAPER_COMMON, **PRESETS[data]}
    return {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
            for k, v in values.items()}


def merge_config(lower: dict[str, Any], upper: dict[str, Any]) -> dict[str, Any]:
    """``upper`` over ``lower``; the ``*_options`` mappings merge key by key."""
    out = {**lower, **upper}
    for key in OPTION_KEYS:
        if isinstance(lower.get(key), dict) and isinstance(upper.get(key), dict):
            out[key] = {**lower[key], **upper[key]}
    return out


# Keys allowed to differ when resuming a run: they do not change what is being trained
# (``epochs`` may grow to extend a finished run).
RESUME_FREE_KEYS = frozenset({"epochs", "device", "workers", "eval_every", "data_dir", "cuda_graph"})


def canonical_distance(name: str) -> str:
    """Map a distance name or alias (case-insensitive) to its canonical name."""
    key = str(name).lower()
    if key not in DISTANCE_ALIASES:
        raise ConfigError(
            f"unknown distance {name!r}; choose one of: "
            f"{', '.join(sorted(set(DISTANCE_ALIASES)))}"
        )
    return DISTANCE_ALIASES[key]


@dataclass
class TrainConfig:
    """Every setting of a training run.

    Data: ``data`` (a name from ``otcpcc.data.DATASETS``), ``data_dir``, ``data_options`` (passed
    to the loader, e.g. ``{"train_per_class": 50}``), ``data_seed`` (the dataset's own seed:
    splits and synthetic draws; fixed while ``seed`` varies, so seeds measure training noise),
    ``tree`` (a tree file that replaces the dataset's own tree; any format
    ``LabelTree.from_file`` reads). ``preset`` (``"paper"``): fills every key not given
    explicitly from :data:`PRESETS` for ``data`` (see :meth:`from_dict`).
    Model: ``arch`` (``"auto"`` = ``mlp`` for vectors, ``cnn`` for small images, ``resnet18``
    otherwise), ``model_options`` (extra keyword arguments of ``build_model``), ``weights`` (local
    pretrained file), ``freeze`` (parameter-name patterns to freeze), ``train_only`` (the only
    patterns left trainable, plus the classifier), ``sync_bn`` (SyncBatchNorm under DDP).
    Optimisation: ``epochs``, ``batch_size`` (per process), ``lr``, ``momentum``, ``wd``,
    ``optimizer`` (sgd | adamw), ``schedule`` (cosine | step | none; ``step_size``/``gamma`` for
    step), ``warmup_epochs`` (linear warm-up, counted inside ``epochs``).
    Task loss: ``method`` (ce | hxe | soft): cross-entropy, hierarchical cross-entropy with decay
    ``alpha`` (``otcpcc.HXELoss``), or soft-label cross-entropy with sharpness ``beta``
    (``otcpcc.SoftLabelLoss``).
    Regulariser: loss = task loss + ``lam`` * (1 - CPCC) with class distance ``distance`` (default
    ``fastft`` with ``lam`` 1; none | l2 | emd | sinkhorn | swd | fastft, aliases sk, fft) and
    ``distance_options`` (e.g. ``reg``, ``n_projections``, ``weights``, ``order``); ``cpcc_target``
    (a cost-matrix CSV keyed by class names: CPCC then correlates feature distances with
    (C + Cᵀ)/2 instead of tree distances; copied into the run directory); ``cuda_graph``
    (``CPCCLoss(cuda_graph=True)``: fixed shapes, no host sync, a CUDA graph per batch shape;
    l2, swd, and fastft with uniform weights in batch order).
    Runtime: ``device`` (auto | cpu | cuda | cuda:N), ``seed``, ``workers``, ``amp`` (bf16
    autocast, CUDA only), ``eval_every`` (test accuracy every N epochs; the last epoch always).
    """

    # published hyperparameters as the base (``--preset paper``)
    preset: str | None = None
    # data
    data: str = "synthetic"
    data_dir: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    data_seed: int = 0
    tree: str | None = None
    # model
    arch: str = "auto"
    model_options: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    freeze: list[str] = field(default_factory=list)
    train_only: list[str] = field(default_factory=list)
    sync_bn: bool = False
    # optimisation
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    wd: float = 5e-4
    optimizer: str = "sgd"
    schedule: str = "cosine"
    step_size: int = 30
    gamma: float = 0.1
    warmup_epochs: int = 0
    # task loss
    method: str = "ce"
    alpha: float = 0.1
    beta: float = 10.0
    # regulariser
    distance: str = "fastft"  # the method (OT-CPCC); "none" = plain cross-entropy
    lam: float = 1.0
    distance_options: dict[str, Any] = field(default_factory=dict)
    cpcc_target: str | None = None
    cuda_graph: bool = False
    # runtime
    device: str = "auto"
    seed: int = 0
    workers: int = 0
    amp: bool = False
    eval_every: int = 1

    # ------------------------------------------------------------------ construction
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> TrainConfig:
        """Build from a mapping; unknown keys raise :class:`ConfigError` naming the key.

        With ``preset`` set, the preset's values for ``data`` fill every key the mapping does not
        give (``*_options`` merge key by key), so the order is defaults < preset < ``values``.
        """
        values = {k: v for k, v in dict(values).items() if k != "meta"}
        names = cls.field_names()
        for key in values:
            if key in STUDY_FLAGS:  # a study's own flag written into a config file
                raise ConfigError(f"{key!r} in {source} is not a config key: {STUDY_FLAGS[key]} is given on "
                                  "the command line only; remove it from the file")
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(names)}"
                raise ConfigError(f"unknown key {key!r} in {source}; {hint}")
        if values.get("preset") is not None:
            data = values.get("data", cls.data)
            values = merge_config(preset_values(str(values["preset"]), str(data)), values)
        cfg = cls(**values)
        cfg.validate()
        return cfg

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TrainConfig:
        """Load a YAML (``.yaml``/``.yml``) or JSON file holding a mapping of config keys."""
        return cls.from_dict(load_config_file(path), source=str(path))

    @classmethod
    def from_args(cls, args: Any) -> TrainConfig:
        """Build from an argparse namespace: defaults < preset < ``args.config`` file < flags.

        Only attributes that are config keys and not ``None`` count as given, so the parser's
        defaults must be ``None`` (or ``argparse.SUPPRESS``) for flags that override the file.
        """
        given = vars(args) if not isinstance(args, dict) else dict(args)
        base: dict[str, Any] = {}
        if given.get("config"):
            base = {k: v for k, v in load_config_file(given["config"]).items() if k != "meta"}
        names = set(cls.field_names())
        for key, value in given.items():
            if key not in names or value is None:
                continue
            if key in OPTION_KEYS:
                merged = dict(base.get(key) or {})
                merged.update(value)
                value = merged
            base[key] = value
        # checked once, merged: flags fix a file's values (a file's `distance: emd` + `cuda_graph:
        # true` with --no-cuda-graph); keys only a file can hold are named against it
        return cls.from_dict(base, source=str(given["config"]) if given.get("config") else "flags")

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some fields changed."""
        return TrainConfig.from_dict({**self.to_dict(), **changes}, source="replace()")

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Check every value; raise :class:`ConfigError` naming the first bad one and the fix."""
        from ..data import DATASETS  # local: keep `import otcpcc.config` light

        def bad(msg: str) -> ConfigError:
            return ConfigError(msg)

        for name in ("data", "device", "distance", "optimizer", "schedule", "arch"):
            if not isinstance(getattr(self, name), str):
                raise bad(f"{name} must be a string, got {getattr(self, name)!r:.60}; "
                          f"pass --{name} NAME")
        for name in ("data_dir", "tree", "weights", "preset"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                setattr(self, name, os.fspath(value))
            elif value is not None and not isinstance(value, str):
                flag = "--" + name.replace("_", "-")
                raise bad(f"{name} must be a path (a string) or null, got {value!r:.60}; "
                          f"pass {flag} PATH")
        if self.data not in DATASETS:
            close = difflib.get_close_matches(str(self.data), list(DATASETS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise bad(
                f"unknown dataset {self.data!r}{hint}; choose one of: {', '.join(sorted(DATASETS))}"
            )
        if self.data_dir is not None and self.data in ("synthetic", "digits"):  # it would be ignored
            what = "generated from --data-seed" if self.data == "synthetic" else "bundled with scikit-learn"
            raise bad(f"--data-dir does not apply to {self.data} ({what}); drop --data-dir")
        self.distance = canonical_distance(self.distance)
        self.method = str(self.method).lower()
        if self.method not in METHODS:
            raise bad(f"unknown method {self.method!r}; choose one of: {', '.join(METHODS)} "
                      "(a CPCC distance goes to --distance)")
        self.optimizer = str(self.optimizer).lower()
        if self.optimizer not in OPTIMIZERS:
            raise bad(
                f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}"
            )
        self.schedule = str(self.schedule).lower()
        if self.schedule not in SCHEDULES:
            raise bad(f"unknown schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        for name in ("epochs", "batch_size", "step_size", "eval_every"):
            value = getattr(self, name)
            flag = "--" + name.replace("_", "-")
            text = value.strip() if isinstance(value, str) else ""
            as_int = int(value) if isinstance(value, float) and value.is_integer() else \
                int(text) if text.isascii() and text.isdigit() else None
            if as_int is not None and 1 <= as_int <= MAX_COUNT:  # a fix that works, named
                how = f"as {as_int}" if isinstance(value, float) else "without quotes"
                kind = "float" if isinstance(value, float) else "string"
                raise bad(f"{name} must be a positive integer, got {value!r} (a {kind}); write it {how}")
            if as_int is not None and as_int > MAX_COUNT:
                value = as_int
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(
                    f"{name} must be a positive integer, got {value!r}; pass {flag} 1 or more"
                )
            if value > MAX_COUNT:
                raise bad(f"{name} {value} is too large; pass {flag} between 1 and {MAX_COUNT}")
        for name in ("workers", "warmup_epochs", "seed", "data_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                flag = "--" + name.replace("_", "-")
                raise bad(f"{name} must be an integer >= 0, got {value!r}; pass {flag} 0 or more")
        if self.workers > MAX_WORKERS:  # each is a process importing torch: -j 100000 forks until OOM
            raise bad(f"workers {self.workers} is above {MAX_WORKERS} data-loading processes; pass "
                      f"-j/--workers between 0 and {MAX_WORKERS} (about the number of CPU cores)")
        for name in ("seed", "data_seed"):  # numpy seeds take 32 bits; the data order seed*1000+epoch
            value = getattr(self, name)
            if value > MAX_SEED:
                raise bad(f"{name} {value} is too large; pass --{name.replace('_', '-')} "
                          f"between 0 and {MAX_SEED}")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise bad(
                f"warmup_epochs ({self.warmup_epochs}) must be below epochs ({self.epochs}); "
                "lower --warmup-epochs"
            )
        for name in ("lr", "momentum", "wd", "gamma", "lam", "alpha", "beta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise bad(f"{name} must be a finite number, got {value!r}; "
                          f"pass --{name} with a finite value")
            setattr(self, name, float(value))
        if not self.lr > 0:
            raise bad(f"learning rate must be > 0, got {self.lr}; pass --lr with a positive value")
        if not 0 <= self.momentum < 1:
            raise bad(f"momentum must be in [0, 1), got {self.momentum}; pass e.g. --momentum 0.9")
        if self.wd < 0:
            raise bad(f"weight decay must be >= 0, got {self.wd}; pass --wd 0 or more")
        if not self.gamma > 0:
            raise bad(f"gamma must be > 0, got {self.gamma}; pass e.g. --gamma 0.1")
        if self.lam < 0 or self.lam != self.lam:
            raise bad(
                f"lambda must be >= 0, got {self.lam}; pass --lam 0 or more "
                "(0 or --distance none trains plain cross-entropy)"
            )
        if self.alpha < 0:
            raise bad(f"alpha must be >= 0, got {self.alpha}; pass e.g. --alpha 0.1 "
                      "(0 makes hxe plain cross-entropy)")
        if not self.beta > 0:
            raise bad(f"beta must be > 0, got {self.beta}; pass e.g. --beta 10")
        dev = str(self.device).lower()
        if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise bad(f"unknown device {self.device!r}; choose auto, cpu, cuda or cuda:N")
        self.device = dev
        for name in ("data_options", "model_options", "distance_options"):
            if not isinstance(getattr(self, name), dict):
                raise bad(f"{name} must be a mapping of option names to values")
        if self.distance != "none":
            from ..distances import check_options

            try:
                check_options(self.distance, self.distance_options)
            except ValueError as e:
                raise bad(f"{e}; fix --dist-opt/--reg/--n-projections") from None
        if self.cpcc_target is not None and not isinstance(self.cpcc_target, str):
            raise bad(f"cpcc_target must be a CSV path, got {self.cpcc_target!r}")
        for name in ("freeze", "train_only"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = [p for p in value.split(",") if p]
            if not isinstance(value, (list, tuple)):
                raise bad(f"{name} must be a list of parameter-name patterns")
            setattr(self, name, [str(p) for p in value])
        for name in ("amp", "sync_bn", "cuda_graph"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                quoted = " (write it without quotes)" if str(value).lower() in ("true", "false") else ""
                raise bad(f"{name} must be true or false, got {value!r}{quoted}")
        if self.cuda_graph and self.distance != "none":
            from ..distances import resolve
            from ..objectives.graphed import check_fixed

            try:
                check_fixed(resolve(self.distance), self.distance_options)
            except ValueError as e:
                raise bad(f"cuda_graph (--cuda-graph): {e}") from None
        if not isinstance(self.arch, str) or not self.arch:
            raise bad(f"arch must be a model name, got {self.arch!r}")
        if self.preset is not None and self.preset not in PRESET_NAMES:
            raise bad(f"unknown preset {self.preset!r}; choose one of: {', '.join(PRESET_NAMES)}")

    # ------------------------------------------------------------------ output
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, meta: dict[str, Any] | None = None) -> str:
        """The JSON written to ``run_dir/config.json``: the values plus a ``meta`` block."""
        out = self.to_dict()
        from .environment import environment_info

        out["meta"] = {**environment_info(), **(meta or {})}
        return json.dumps(out, indent=2, sort_keys=False, default=str)

    def differences(self, other: TrainConfig,
                    ignore: frozenset[str] = RESUME_FREE_KEYS) -> list[str]:
        """Names of the keys whose values differ (except those in ``ignore``)."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in ignore and a[k] != b[k]]

    def changes(self, other: TrainConfig, ignore: frozenset[str] = RESUME_FREE_KEYS) -> list[str]:
        """:meth:`differences` as ``"key (mine -> other's)"``, for messages naming each change."""
        return [f"{k} ({getattr(self, k)!r} -> {getattr(other, k)!r})"
                for k in self.differences(other, ignore)]


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` hook: a JSON object as a dict, refusing a repeated key (the last one won)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} is given twice; keep one")
        out[key] = value
    return out


def read_run_config(path: str | os.PathLike) -> tuple[dict[str, Any], TrainConfig]:
    """A run directory's ``config.json``: (its mapping, the :class:`TrainConfig` it holds). A
    ConfigError naming the file says what is wrong where it is missing, unreadable or holds an
    invalid setting (no fix: train --resume, evaluate and a study each know their own)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p} is missing or not a file: the run's settings are unknown")
    try:
        raw = load_config_file(p)
        return raw, TrainConfig.from_dict(raw, source=str(p))
    except (ValueError, OSError) as e:
        raise ConfigError(f"{p} is damaged ({str(e).split('; ')[0]})") from None


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML or JSON mapping; bad files raise one-line errors naming the file."""
    p = Path(path)
    if p.exists() and not p.is_file():
        what = "a directory" if p.is_dir() else "not a regular file"
        raise ConfigError(f"config file {str(p)!r} is {what}; pass the path of a YAML or JSON file")
    if not p.is_file():
        raise FileNotFoundError(f"config file {str(p)!r} not found; check the --config path")
    try:
        text = read_text(p, "a YAML or JSON config file (a mapping of config keys to values)")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    from ..yaml_values import load_yaml

    suffix = p.suffix.lower()
    fmt = {".yaml": "YAML", ".yml": "YAML", ".json": "JSON"}.get(suffix)
    if fmt is None:  # another suffix (.txt, .cfg, none): JSON where it looks like it, else YAML
        fmt = "JSON" if text.lstrip()[:1] in ("{", "[") else "YAML"
    try:
        values = load_yaml(text) if fmt == "YAML" else json.loads(text, object_pairs_hook=_unique_keys)
    except Exception as e:  # yaml.YAMLError / json.JSONDecodeError
        mark = getattr(e, "problem_mark", None)
        first = (f"{e.problem} (line {mark.line + 1}, column {mark.column + 1})"  # type: ignore[attr-defined]
                 if mark is not None and getattr(e, "problem", None) else
                 str(e).splitlines()[0] if str(e) else type(e).__name__)
        what = f" as {fmt}" if suffix not in (".yaml", ".yml", ".json") else ""
        raise ConfigError(f"cannot parse config file {str(p)!r}{what}: {first}; fix its syntax") from e
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of keys to values")
    return values
