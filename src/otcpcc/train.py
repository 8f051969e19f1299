"""The training loop: cross-entropy plus lambda * (1 - CPCC) on the model's features.

Read :func:`train` top to bottom; it is the whole story:

1. settle the run directory (``config.json`` + ``tree.json``; an existing run is never silently
   overwritten: ``force`` starts over, ``resume`` continues from ``last.pt``);
2. seed every generator, load the data (``otcpcc.data.get_dataset``) and build the model
   (``otcpcc.models.build_model``);
3. loss = CE(logits, y) + lam * CPCCLoss(tree, distance)(features, y) (``distance="none"``: CE);
4. SGD or AdamW, learning rate a pure function of the epoch (cosine, step or constant, with an
   optional linear warm-up), so resuming needs no scheduler object;
5. per epoch: one pass over a DistributedSampler order seeded with ``seed * 1000`` and
   ``set_epoch(epoch)`` (also in a single process), test accuracy, one row of ``log.csv``
   (and TensorBoard when installed), an atomic checkpoint ``last.pt``;
6. at the end ``metrics.json``: final accuracies, TestCPCC under the run's distance, epoch
   times, samples/s and ``world_size``.

Exact resume. The data order of epoch ``e`` depends only on ``(seed, e)``, the DataLoader draws
from its own generator (never the global one), and the checkpoint holds the torch / numpy /
Python RNG states, so on the CPU ``--resume`` reproduces the uninterrupted run bit for bit. Ctrl-C
(SIGINT) sets a flag; the current optimisation step finishes, a checkpoint with the position
inside the epoch is written and :class:`TrainingInterrupted` (a ``KeyboardInterrupt``) is raised.
A second Ctrl-C aborts at once (the previous checkpoint stays valid).

Distributed (``torchrun --nproc_per_node N -m otcpcc train ...``). With ``WORLD_SIZE > 1`` in the
environment the process group is initialised (nccl on CUDA, gloo on CPU), the model is wrapped in
DistributedDataParallel (optionally with SyncBatchNorm), each rank reads its DistributedSampler
shard with ``batch_size`` samples per step, and CPCC is computed on the features and labels
gathered from all ranks (``CPCCLoss(gather=True)``), so the regulariser sees the global batch of
``N * batch_size``. Rank 0 alone writes files; evaluation gathers outputs from all ranks.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from .checkpoint import (
    CHECKPOINT,
    RUN_FILES,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
    write_csv,
    write_json,
)
from .config import ConfigError, TrainConfig

LOG_COLUMNS = (
    "epoch", "loss", "ce", "cpcc", "train_acc", "test_acc", "lr", "epoch_time", "samples_per_s",
)
# loaders whose tree is a user file (passed as their ``tree`` option)
TREE_FROM_USER = ("folder", "features")
# distances whose exact solvers grow quadratically with the class size: TestCPCC subsamples
EXPENSIVE_DISTANCES = {"emd": 100, "sinkhorn": 100}


class RunDirError(ValueError):
    """A run directory that cannot be used as asked (exists, missing, incompatible)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; ``run_dir/last.pt`` holds the state to ``--resume`` from."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(str(run_dir))
        self.run_dir = Path(run_dir)


# ============================================================================ the loop
def train(cfg: TrainConfig | dict[str, Any], out: str | os.PathLike, *, resume: bool = False,
          force: bool = False, progress: bool = True) -> Path:
    """Train one model as configured; return the run directory ``out``.

    Files in ``out``: ``config.json`` (resolved values, versions, git commit), ``tree.json``,
    ``log.csv`` (one row per epoch: ``LOG_COLUMNS``), ``last.pt`` (checkpoint), ``metrics.json``
    and, when tensorboard is installed, ``tb/``.

    Raises:
        ConfigError / RunDirError (ValueError): bad settings; ``out`` already holds a run and
            neither ``force`` nor ``resume`` is given; ``resume`` without a run or onto a
            different configuration.
        TrainingInterrupted: on Ctrl-C, after saving a checkpoint.
    """
    cfg = cfg if isinstance(cfg, TrainConfig) else TrainConfig.from_dict(cfg)
    cfg.validate()
    out = Path(out)
    if resume and force:
        raise RunDirError(
            "pass either --resume (continue the run) or --force (start over), not both"
        )
    env = init_distributed(cfg)
    try:
        return _train(cfg, out, env, resume=resume, force=force, progress=progress)
    finally:
        env.close()


def _train(cfg: TrainConfig, out: Path, env: DistEnv, *, resume: bool, force: bool,
           progress: bool) -> Path:
    say = _printer(progress and env.is_main)

    # 1. Run directory: refuse to clobber before spending time on data.
    env.on_main(lambda: check_run_dir(out, resume=resume, force=force))

    # 2. Seed, data, model.
    seed_everything(cfg.seed)
    bundle = load_data(cfg)
    cfg = cfg.replace(arch=resolve_arch(cfg.arch, bundle.input_shape))
    env.on_main(lambda: prepare_run_dir(out, cfg, env, resume=resume, force=force,
                                        tree=bundle.tree))
    device = env.device
    amp = cfg.amp and device.type == "cuda"
    if cfg.amp and not amp:
        say("otcpcc: note: --amp only acts on CUDA; training in float32 on the CPU")

    # (a resumed run takes its weights from last.pt, not from --weights)
    model = make_model(cfg.replace(weights=None) if resume else cfg, bundle).to(device)
    if env.world_size > 1:
        if cfg.sync_bn:  # SyncBatchNorm on CUDA, a gloo-capable twin on the CPU
            from .syncbn import convert_sync_batchnorm

            model = convert_sync_batchnorm(model, device)
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    core = unwrap(model)

    # 3. Loss: CE + lam * (1 - CPCC) on the features, CPCC over the global batch.
    criterion = make_criterion(cfg, bundle.tree, gather=env.world_size > 1)

    # 4. Optimiser; the learning rate is set from lr_at(cfg, epoch) at every epoch start.
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("no trainable parameters left; loosen --freeze / --train-only")
    optimizer = make_optimizer(cfg, params)

    # Data order: a DistributedSampler (one replica in a single process) reseeded per epoch.
    sampler = ResumableSampler(DistributedSampler(
        bundle.train, num_replicas=env.world_size, rank=env.rank, shuffle=True,
        seed=cfg.seed * 1000, drop_last=False))
    loader = DataLoader(
        bundle.train, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
        pin_memory=device.type == "cuda", generator=torch.Generator(),
        drop_last=len(sampler) % cfg.batch_size == 1)  # a batch of one breaks BatchNorm
    steps_per_epoch = len(loader)

    # 5. Resume: weights, optimiser, history, position and RNG states from last.pt.
    start_epoch, start_step, partial, history = 0, 0, None, []
    if resume:
        state = load_checkpoint(out / CHECKPOINT, map_location="cpu")
        _check_checkpoint(state, cfg, env, out)
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, start_step = int(state["epoch"]), int(state["step"])
        partial, history = state.get("partial"), list(state["history"])
        history = [row for row in history if row["epoch"] <= start_epoch]
        rng = state["rng"]
        set_rng_state(rng[env.rank] if env.rank < len(rng) else rng[0])
        where = f"epoch {start_epoch + 1}, step {start_step}" if start_step else \
            f"the end of epoch {start_epoch}"
        say(f"otcpcc: resuming {out} from {where}")
    tb = open_tensorboard(out, history) if env.is_main else None

    # 6. Epochs.
    try:
        with StopRequest() as stop:
            for epoch in range(start_epoch, cfg.epochs):
                lr = lr_at(cfg, epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                skip = start_step if epoch == start_epoch else 0
                sampler.set_epoch(epoch, skip_samples=skip * cfg.batch_size)
                loader.generator.manual_seed(cfg.seed * 1000 + epoch)
                acc = EpochTotals.from_state(partial if epoch == start_epoch else None)

                model.train()
                bar = _progress_bar(progress and env.is_main, steps_per_epoch, skip,
                                    f"epoch {epoch + 1}/{cfg.epochs}")
                step = skip
                t0 = time.perf_counter()
                for x, y in loader:
                    stats = train_step(model, criterion, optimizer, x, y, cfg, device, amp)
                    acc.add(stats)
                    step += 1
                    bar.update(1)
                    bar.set_postfix(acc.postfix(time.perf_counter() - t0), refresh=False)
                    if env.any(stop.requested) and step < steps_per_epoch:
                        acc.seconds += time.perf_counter() - t0
                        state = _state(core, optimizer, cfg, env, epoch, step, acc, history)
                        if env.is_main:
                            save_checkpoint(out, state)
                        bar.close()
                        raise TrainingInterrupted(out)
                bar.close()
                acc.seconds += time.perf_counter() - t0

                row = acc.finish(env, epoch=epoch + 1, lr=lr)
                if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                    row["test_acc"] = accuracy(model, bundle.test, env, cfg, amp)
                history.append(row)
                state = _state(core, optimizer, cfg, env, epoch + 1, 0, None, history)
                if env.is_main:
                    save_checkpoint(out, state)
                    write_csv(out / "log.csv", history, LOG_COLUMNS)
                    log_tensorboard(tb, row)
                say(format_row(row, cfg.epochs))
                if env.any(stop.requested) and epoch + 1 < cfg.epochs:
                    raise TrainingInterrupted(out)
    finally:
        if tb is not None:
            tb.close()

    # 7. Final metrics (TestCPCC over the whole test split, gathered from all ranks).
    metrics = final_metrics(model, bundle, cfg, env, history, amp)
    if env.is_main:
        write_json(out / "metrics.json", metrics)
        say(f"otcpcc: test accuracy {metrics['test_acc']:.4f}, "
            f"TestCPCC({metrics['test_cpcc_distance']}) {metrics['test_cpcc']:.4f}; wrote {out}")
    env.barrier()  # no rank leaves (and tears the process group down) before rank 0 is done
    return out


@dataclass
class StepStats:
    loss: float
    ce: float
    cpcc: float  # batch CPCC (nan when not computed)
    correct: int
    n: int


def train_step(model: nn.Module, criterion: nn.Module | None, optimizer: torch.optim.Optimizer,
               x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, device: torch.device,
               amp: bool) -> StepStats:
    """One optimisation step on a batch: loss = CE + lam * (1 - CPCC)."""
    x = x.to(device, non_blocking=True)
    y = y.to(device, non_blocking=True).long()
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
        features, logits = model(x)
    ce = F.cross_entropy(logits.float(), y)
    loss, cpcc_value = ce, float("nan")
    if criterion is not None:
        if cfg.lam > 0:
            reg = criterion(features.float(), y)  # 1 - CPCC of the (global) batch
            loss = ce + cfg.lam * reg
        else:  # lam = 0: monitor CPCC without training on it
            with torch.no_grad():
                reg = criterion(features.float().detach(), y)
        cpcc_value = 1.0 - float(reg.detach())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    correct = int((logits.detach().argmax(dim=1) == y).sum())
    return StepStats(float(loss.detach()), float(ce.detach()), cpcc_value, correct, int(y.numel()))


@dataclass
class EpochTotals:
    """Running sums over one epoch (saved in mid-epoch checkpoints)."""

    loss: float = 0.0
    ce: float = 0.0
    cpcc: float = 0.0
    cpcc_steps: int = 0
    correct: int = 0
    n: int = 0
    steps: int = 0
    seconds: float = 0.0

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> EpochTotals:
        return cls(**state) if state else cls()

    def add(self, s: StepStats) -> None:
        self.loss += s.loss * s.n
        self.ce += s.ce * s.n
        if not math.isnan(s.cpcc):
            self.cpcc += s.cpcc
            self.cpcc_steps += 1
        self.correct += s.correct
        self.n += s.n
        self.steps += 1

    def postfix(self, seconds: float) -> dict[str, str]:
        n = max(self.n, 1)
        out = {"loss": f"{self.loss / n:.3f}", "ce": f"{self.ce / n:.3f}"}
        if self.cpcc_steps:
            out["cpcc"] = f"{self.cpcc / self.cpcc_steps:.3f}"
        out["acc"] = f"{self.correct / n:.3f}"
        out["samples/s"] = f"{self.n / max(self.seconds + seconds, 1e-9):.0f}"
        return out

    def finish(self, env: DistEnv, *, epoch: int, lr: float) -> dict[str, Any]:
        """The epoch's log row, with sums reduced over ranks (per-rank rates added up)."""
        sums = env.sum([self.loss, self.ce, self.correct, self.n])
        loss, ce, correct, n = sums
        n = max(n, 1.0)
        return {
            "epoch": epoch,
            "loss": loss / n,
            "ce": ce / n,
            "cpcc": self.cpcc / self.cpcc_steps if self.cpcc_steps else float("nan"),
            "train_acc": correct / n,
            "test_acc": float("nan"),
            "lr": lr,
            "epoch_time": self.seconds,
            "samples_per_s": n / max(self.seconds, 1e-9),
        }


def _state(core: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig, env: DistEnv,
           epoch: int, step: int, totals: EpochTotals | None,
           history: list[dict[str, Any]]) -> dict[str, Any]:
    """A checkpoint: plain tensors, numbers and containers only (``weights_only=True`` loads it).

    ``epoch`` counts completed epochs; ``step`` > 0 marks a mid-epoch checkpoint, whose running
    sums are in ``partial``. ``rng`` holds one entry per rank.
    """
    return {
        "model": core.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "step": step,
        "partial": None if totals is None else dict(totals.__dict__),
        "history": [dict(r) for r in history],
        "rng": env.gather_objects(get_rng_state()),
        "config": cfg.to_dict(),
        "world_size": env.world_size,
    }


def _check_checkpoint(state: dict[str, Any], cfg: TrainConfig, env: DistEnv, out: Path) -> None:
    saved = TrainConfig.from_dict(state["config"], source=str(out / CHECKPOINT))
    diff = saved.differences(cfg)
    if int(state.get("world_size", 1)) != env.world_size:
        diff.append(f"world_size ({state.get('world_size', 1)} -> {env.world_size})")
    if diff:
        raise RunDirError(
            f"cannot resume {out}: the checkpoint was trained with different {', '.join(diff)}; "
            "resume with the original settings or start a new run with another --out"
        )
    if int(state["epoch"]) > cfg.epochs:
        raise RunDirError(
            f"cannot resume {out}: it already trained {state['epoch']} epochs, more than "
            f"--epochs {cfg.epochs}; pass --epochs {state['epoch']} or more"
        )


# ============================================================================ building blocks
def seed_everything(seed: int) -> None:
    """Seed Python ``random``, numpy's global generator and torch (CPU and CUDA)."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (libraries may draw from the global state)
    torch.manual_seed(seed)


def load_data(cfg: TrainConfig):
    """``get_dataset`` with the config's options; ``cfg.tree`` replaces the dataset's tree."""
    from .data import get_dataset

    options = dict(cfg.data_options)
    if cfg.tree and cfg.data in TREE_FROM_USER:  # these loaders build their tree from the file
        options.setdefault("tree", cfg.tree)
        return get_dataset(cfg.data, data_dir=cfg.data_dir, seed=cfg.data_seed, **options)
    bundle = get_dataset(cfg.data, data_dir=cfg.data_dir, seed=cfg.data_seed, **options)
    if cfg.tree:
        from .tree import LabelTree

        if not Path(cfg.tree).is_file():
            raise FileNotFoundError(f"tree file {cfg.tree!r} not found; check the --tree path")
        user_tree = LabelTree.from_file(cfg.tree)
        missing = [c for c in bundle.tree.leaves if c not in set(user_tree.leaves)]
        if missing:
            shown = ", ".join(repr(c) for c in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise ValueError(f"--tree {cfg.tree}: {len(missing)} class(es) of {cfg.data} are not leaves "
                             f"of this tree: {shown}; add them under their parents")
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
    from .models import build_model

    return build_model(resolve_arch(cfg.arch, bundle.input_shape), tuple(bundle.input_shape),
                       bundle.num_classes, weights=cfg.weights, freeze=cfg.freeze,
                       train_only=cfg.train_only, **cfg.model_options)


def make_criterion(cfg: TrainConfig, tree, gather: bool = False) -> nn.Module | None:
    """``CPCCLoss(tree, distance, gather, **distance_options)``, or ``None`` for plain CE."""
    if cfg.distance == "none":
        return None
    from .loss import CPCCLoss

    return CPCCLoss(tree, distance=cfg.distance, gather=gather, **cfg.distance_options)


def make_optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.wd)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.wd)


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate of 0-based ``epoch``.

    Warm-up ``w`` epochs: ``lr * (epoch + 1) / (w + 1)``. Then, with ``t = epoch - w`` and
    ``T = epochs - w``: cosine ``lr * (1 + cos(pi t / T)) / 2``; step ``lr * gamma ** (t //
    step_size)``; none ``lr``.
    """
    w = cfg.warmup_epochs
    if epoch < w:
        return cfg.lr * (epoch + 1) / (w + 1)
    t, total = epoch - w, max(cfg.epochs - w, 1)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t / total))
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** (t // cfg.step_size)
    return cfg.lr


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class ResumableSampler(Sampler[int]):
    """A :class:`DistributedSampler`'s order for one epoch, minus its first ``skip_samples``.

    The order of epoch ``e`` is a fixed function of ``(seed, e, rank, world size)``; skipping
    the samples already seen lets a mid-epoch checkpoint resume at the exact next batch.
    """

    def __init__(self, base: DistributedSampler) -> None:
        self.base = base
        self.skip = 0

    def set_epoch(self, epoch: int, skip_samples: int = 0) -> None:
        self.base.set_epoch(epoch)
        self.skip = skip_samples

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.base), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.base) - self.skip, 0)


class StopRequest:
    """Turn the first Ctrl-C into a flag checked between steps; a second one aborts at once."""

    # torchrun's agent relays the terminal's SIGINT to its workers, which already got it from
    # the terminal: a second signal this soon after the first is the same Ctrl-C
    RELAY_WINDOW_S = 2.0

    def __init__(self) -> None:
        self.requested = False
        self._at = 0.0
        self._old: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            if time.monotonic() - self._at < self.RELAY_WINDOW_S:
                return
            raise KeyboardInterrupt
        self.requested = True
        self._at = time.monotonic()
        print("\notcpcc: interrupted: finishing this step and saving a checkpoint "
              "(Ctrl-C again to abort)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


# ============================================================================ run directory
def check_run_dir(out: Path, *, resume: bool, force: bool) -> None:
    """Refuse early: an existing run without ``force``/``resume``, or ``resume`` without a run."""
    exists = (out / "config.json").is_file()
    if resume and not exists:
        raise RunDirError(
            f"nothing to resume in {out}: no config.json there; run without --resume "
            "or pass the directory of an earlier run"
        )
    if resume and not (out / CHECKPOINT).is_file():
        raise RunDirError(
            f"nothing to resume in {out}: no {CHECKPOINT} checkpoint; start over with --force"
        )
    if exists and not (resume or force):
        raise RunDirError(
            f"run directory {out} already holds a run (config.json); pass --force to overwrite "
            "it, --resume to continue it, or choose another --out"
        )
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a directory; choose another --out")


def prepare_run_dir(out: Path, cfg: TrainConfig, env: DistEnv, *, resume: bool, force: bool,
                    tree) -> None:
    """Create/clean ``out``; check a resumed configuration; write config.json and tree.json."""
    from .config import load_config_file

    if resume:
        raw = load_config_file(out / "config.json")
        saved = TrainConfig.from_dict(raw, source=str(out / "config.json"))
        changes = [f"{k} ({getattr(saved, k)!r} -> {getattr(cfg, k)!r})"
                   for k in saved.differences(cfg)]
        ran_on = int((raw.get("meta") or {}).get("world_size", env.world_size))
        if ran_on != env.world_size:  # (last.pt is checked too) refuse before rewriting files
            changes.append(f"world_size ({ran_on} -> {env.world_size})")
        if changes:
            details = ", ".join(changes)
            raise RunDirError(
                f"cannot resume {out} with a different configuration: {details}; "
                "resume with the original settings or start a new run with another --out"
            )
    elif force:
        for name in RUN_FILES:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    meta = {"resolved_device": str(env.device), "world_size": env.world_size,
            "num_classes": tree.num_classes}
    from .checkpoint import atomic_write_text

    atomic_write_text(out / "config.json", cfg.to_json(meta) + "\n")
    tree.to_file(out / "tree.json")


# ============================================================================ evaluation helpers
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
    from .loss import cpcc

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
    """``metrics.json``: final accuracies, TestCPCC under the run's distance, timing."""
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
    }


# ============================================================================ distributed
@dataclass
class DistEnv:
    """Where this process sits: rank, world size and device (world size 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0; every rank raises if it failed (no rank left waiting)."""
        if self.world_size == 1:
            return fn()
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except (ValueError, OSError) as e:
                error = e
        box = [None if error is None else f"{error}"]
        torch.distributed.broadcast_object_list(box, src=0)
        if error is not None:
            raise error
        if box[0] is not None:
            raise RunDirError(box[0])
        return result

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is set on any rank."""
        if self.world_size == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self._comm_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)

    def sum(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        torch.distributed.all_reduce(t)
        return t.tolist()

    def gather_objects(self, obj: Any, all_ranks: bool = False) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` (a one-element list in a single process)."""
        if self.world_size == 1:
            return [obj]
        parts: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(parts, obj)
        return parts

    def _comm_device(self) -> torch.device:
        backend = torch.distributed.get_backend()
        return self.device if backend == "nccl" else torch.device("cpu")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available; pass --device cpu")
    return torch.device(name)


def init_distributed(cfg: TrainConfig) -> DistEnv:
    """Join the torchrun process group when ``WORLD_SIZE > 1`` (nccl on CUDA, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv(device=resolve_device(cfg.device))
    dist = torch.distributed
    use_cuda = cfg.device != "cpu" and torch.cuda.is_available()
    if cfg.device.startswith("cuda") and not use_cuda:
        resolve_device(cfg.device)  # raises the one-line error
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device,
                   owns_group=owns)


# ============================================================================ logging
def _printer(enabled: bool) -> Callable[[str], None]:
    def say(msg: str) -> None:
        if enabled:
            print(msg, file=sys.stderr, flush=True)

    return say


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *a: Any, **k: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(enabled: bool, total: int, initial: int, desc: str) -> Any:
    """A tqdm bar on a terminal; nothing when ``progress=False`` or stderr is not a TTY."""
    if not enabled or not sys.stderr.isatty():
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)


def format_row(row: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['loss']:.4f}", f"ce {row['ce']:.4f}"]
    if not math.isnan(row["cpcc"]):
        parts.append(f"cpcc {row['cpcc']:.4f}")
    parts.append(f"train_acc {row['train_acc']:.4f}")
    if not math.isnan(row["test_acc"]):
        parts.append(f"test_acc {row['test_acc']:.4f}")
    parts += [f"lr {row['lr']:.3g}", f"{row['epoch_time']:.1f}s",
              f"{row['samples_per_s']:.0f} samples/s"]
    return "  ".join(parts)


def open_tensorboard(out: Path, history: list[dict[str, Any]]) -> Any:
    """A SummaryWriter on ``out/tb`` when tensorboard is installed, else ``None``."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tb"), purge_step=len(history) + 1 if history else None)


def log_tensorboard(tb: Any, row: dict[str, Any]) -> None:
    if tb is None:
        return
    for key in LOG_COLUMNS[1:]:
        v = row.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            tb.add_scalar(key, v, row["epoch"])
    tb.flush()
