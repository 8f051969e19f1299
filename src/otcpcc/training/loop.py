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

Steps 1-5 build one frozen :class:`Run` (model, losses, optimiser, loader, where to start, ...);
``_epochs(run)`` and ``train_one_epoch(run, epoch, totals, ...)`` read everything from it.

Exact resume. The data order of epoch ``e`` depends only on ``(seed, e)``, the DataLoader draws
from its own generator (never the global one), and the checkpoint holds the torch / numpy /
Python RNG states, so on the CPU ``--resume`` reproduces the uninterrupted run bit for bit. Ctrl-C
(SIGINT) or SIGTERM sets a flag; the current optimisation step finishes, a checkpoint with the
position inside the epoch is written and :class:`TrainingInterrupted` (a ``KeyboardInterrupt``) is
raised. A second one aborts at once (the previous checkpoint stays valid). Outside the epochs a
SIGTERM raises like Ctrl-C (``runs.signals``): the lock is released and a run stopped before its
first checkpoint leaves no files.

Distributed (``python -m torch.distributed.run --nproc_per_node N -m otcpcc train ...``). With
``WORLD_SIZE > 1`` in the environment the process group is initialised (nccl on CUDA, gloo on
CPU), the model is wrapped in DistributedDataParallel (optionally with SyncBatchNorm), each rank
reads its DistributedSampler shard with ``batch_size`` samples per step, and CPCC is computed on the features and labels
gathered from all ranks (``CPCCLoss(gather=True)``), so the regulariser sees the global batch of
``N * batch_size``. Rank 0 alone writes files; evaluation gathers outputs from all ranks.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..distributed.env import DistEnv, init_distributed, unwrap
from ..evaluation.inference import final_metrics, predict
from ..runs.build import load_data, make_model, resolve_arch, seed_everything
from ..runs.checkpoint import (
    CHECKPOINT,
    get_rng_state,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    set_rng_state,
    write_csv,
    write_json,
)
from ..runs.config import ConfigError, TrainConfig
from ..runs.lock import RunLock
from ..runs.log import LOG_COLUMNS, format_row, log_tensorboard, open_tensorboard, printer, progress_bar
from ..runs.rundir import (
    RunDirError,
    check_resume_config,
    check_run_dir,
    discard_run_files,
    discard_stale_evaluations,
    prepare_run_dir,
)
from ..runs.signals import sigterm_raises
from ..runs.target import load_run_target, save_run_target
from .control import NonFiniteLoss, StopRequest, TrainingInterrupted, start_epoch, train_loader
from .health import collapse_reason
from .optim import extension_note, lr_at, make_criterion, make_optimizer, make_task_loss
from .step import EpochTotals, train_step


def train(cfg: TrainConfig | dict[str, Any], out: str | os.PathLike, *, resume: bool = False,
          force: bool = False, progress: bool = True) -> Path:
    """Train one model as configured; return the run directory ``out``.

    Files in ``out``: ``config.json`` (resolved values, versions, git commit), ``tree.json``,
    ``log.csv`` (``LOG_COLUMNS``: its header from the start, then one row per completed epoch),
    ``last.pt`` (checkpoint), ``metrics.json`` and, when tensorboard is installed, ``tb/``.

    Raises:
        ConfigError / RunDirError (ValueError): bad settings; ``out`` already holds a run and
            neither ``force`` nor ``resume`` is given; ``resume`` without a run or onto a
            different configuration.
        TrainingInterrupted: on Ctrl-C or SIGTERM, after saving a checkpoint.
        KeyboardInterrupt / runs.signals.Terminated: Ctrl-C / SIGTERM outside the epochs (no
            checkpoint yet: the run's files are removed).
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
    # One writer per run directory: a second `otcpcc train --out` on it is refused.
    lock = RunLock(out)
    with sigterm_raises():  # SIGTERM unwinds like Ctrl-C: the lock goes, unfinished files too
        env.on_main(lock.acquire)
        try:
            return _train_locked(cfg, out, env, resume=resume, force=force, progress=progress)
        finally:
            if env.is_main:
                lock.release()


def _train_locked(cfg: TrainConfig, out: Path, env: DistEnv, *, resume: bool, force: bool,
                  progress: bool) -> Path:
    progress = progress and env.is_main  # rank 0 alone prints
    say = printer(progress)

    # 1. Run directory: refuse to clobber before spending time on data.
    env.on_main(lambda: check_run_dir(out, resume=resume, force=force))
    if resume:  # half-written files of a killed process go, whether this resume is refused or not
        env.on_main(lambda: remove_stale_temporaries(out))

    # 2. Seed, data, model; everything is built and checked before a file is written.
    seed_everything(cfg.seed)
    bundle = load_data(cfg)
    cfg = cfg.replace(arch=resolve_arch(cfg.arch, bundle.input_shape))
    names = list(bundle.tree.leaves)
    target = load_run_target(cfg, names, out if resume else None,  # notes on stderr, rank 0
                             None if env.is_main else (lambda m: None))
    device = env.device
    amp = cfg.amp and device.type == "cuda"
    if cfg.amp and not amp:
        say("otcpcc: note: --amp only acts on CUDA; training in float32 on the CPU")
    if cfg.cuda_graph and cfg.distance != "none" and cfg.lam and device.type != "cuda":  # a CPCC term
        say("otcpcc: note: --cuda-graph only replays graphs on CUDA; on the CPU the fixed-shape "
            "loss runs eagerly (same values, usually slower)")
    meta = _data_meta(bundle)
    if meta.get("classes_without_train_samples"):
        say(untrained_note(meta["classes_without_train_samples"]))
    if meta.get("skipped_images"):
        skipped = meta["skipped_images"]
        say(f"otcpcc: --skip-bad-images: skipped {sum(skipped.values())} undecodable image(s) "
            f"({', '.join(f'{k} {v}' for k, v in skipped.items())})")

    # (a resumed run takes its weights from last.pt, not from --weights)
    model = wrap_for_ddp(make_model(cfg.replace(weights=None) if resume else cfg, bundle).to(device), cfg, env)

    # 3. Loss: task loss (CE, HXE or soft labels) on the logits + lam * (1 - CPCC) on the features,
    #    CPCC over the global batch (against the tree, or the --cpcc-target matrix).
    criterion = make_criterion(cfg, bundle.tree if target is None else target,
                               gather=env.world_size > 1)
    task_loss = make_task_loss(cfg, bundle.tree).to(device)  # CE, HXE or soft labels

    # 4. Optimiser; the learning rate is set from lr_at(cfg, epoch) at every epoch start.
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("no trainable parameters left; loosen --freeze / --train-only")
    optimizer = make_optimizer(cfg, params)

    # Data order: a DistributedSampler (one replica in a single process) reseeded per epoch; each
    # sample's augmentation draws from a generator seeded by (seed, epoch, rank, position).
    loader = train_loader(bundle.train, cfg, env)

    # 5. Resume: weights, optimiser, history, position and RNG states from last.pt.
    start = Start()
    if resume:
        env.on_main(lambda: check_resume_config(out, cfg, env))  # names each changed setting
        start = restore(out, unwrap(model), optimizer, cfg, env)
        where = f"epoch {start.epoch + 1}, step {start.step}" if start.step else \
            f"the end of epoch {start.epoch}"
        say(f"otcpcc: resuming {out} from {where}")
        note = extension_note(cfg, start.trained_for, start.epoch)
        if note:
            say(f"otcpcc: note: {note}")

    # Only now, with every setting checked, the run directory is written.
    last_pt = LastCheckpoint(out, env, holds_run=resume)
    try:  # from the first file written: a Ctrl-C / SIGTERM / error before last.pt leaves none
        env.on_main(lambda: prepare_run_dir(out, cfg, env, resume=resume, force=force,
                                            tree=bundle.tree, meta=meta))
        # log.csv from the start (its header; resumed: the rows of the epochs last.pt holds)
        env.on_main(lambda: write_csv(out / "log.csv", list(start.history), LOG_COLUMNS))
        if target is not None:
            env.on_main(lambda: save_run_target(out, target, names))
        run = Run(cfg=cfg, env=env, out=out, bundle=bundle, model=model, task_loss=task_loss,
                  criterion=criterion, optimizer=optimizer, loader=loader,
                  steps_per_epoch=len(loader), amp=amp, start=start, last_pt=last_pt, say=say,
                  progress=progress)
        history, collapsed = _epochs(run)
    except BaseException as e:
        saved = last_pt.holds_run  # else a failure leaves no run behind
        if not saved and env.is_main:
            discard_run_files(out)  # nothing was trained: the retry needs no --force
        if isinstance(e, NonFiniteLoss):
            kept = (f"{out / CHECKPOINT} keeps the last finite state" if saved else
                    f"no epoch had finished, so nothing was kept in {out}")
            raise NonFiniteLoss(f"{e}; training stopped and {kept}; {divergence_fix(cfg)}") from None
        raise

    # 7. Final metrics (TestCPCC over the whole test split, gathered from all ranks).
    metrics = final_metrics(model, bundle, cfg, env, history, amp)
    metrics.update(meta)
    metrics["collapsed"] = collapsed
    if env.is_main:
        for name in discard_stale_evaluations(out, cfg.epochs):  # e.g. an evaluate --partial one
            say(f"otcpcc: note: removed {out / name}, an evaluation of an earlier state of this "
                f"run; evaluate the finished run with otcpcc evaluate {out}")
        write_json(out / "metrics.json", metrics)
        say(f"otcpcc: test accuracy {metrics['test_acc']:.4f}, "
            f"TestCPCC({metrics['test_cpcc_distance']}) {metrics['test_cpcc']:.4f}; wrote {out}")
    env.barrier()  # no rank leaves (and tears the process group down) before rank 0 is done
    return out


# above this the CPCC term lam * (1 - CPCC) (at most 2 * lam) dwarfs any task loss (~log K):
# a run that diverges with such a weight diverges because of it, not of its learning rate
LARGE_LAM = 1e3


def divergence_fix(cfg: TrainConfig) -> str:
    """What to change when a run's loss or outputs became NaN/inf: the CPCC weight when it is
    above :data:`LARGE_LAM`, else the learning rate or the weight (or the data)."""
    if cfg.distance != "none" and cfg.lam > LARGE_LAM:
        return (f"the CPCC weight --lam {cfg.lam:g} makes the loss (task loss + lam * (1 - CPCC)) "
                "and its updates overflow: lower --lam (default 1)")
    graph = (" (with --cuda-graph a bad label or feature also gives NaN: rerun without it to "
             "name the cause)") if cfg.cuda_graph and cfg.distance != "none" else ""
    return f"lower --lr (now {cfg.lr:g}) or --lam, or check the data for NaN/inf{graph}"


def _data_meta(bundle: Any) -> dict[str, Any]:
    """What the data loader dropped (``--skip-bad-images``) and the classes it found no training
    sample of (a features .npz), for config.json and metrics.json."""
    skipped = bundle.meta.get("skipped_images")
    meta: dict[str, Any] = {"skipped_images": dict(skipped)} if skipped else {}
    if bundle.meta.get("classes_without_train_samples"):
        meta["classes_without_train_samples"] = list(bundle.meta["classes_without_train_samples"])
    return meta


def untrained_note(names: list[str]) -> str:
    """One line naming the classes with no training sample (the first 10, then how many more)."""
    shown = ", ".join(repr(n) for n in names[:10]) + (f" and {len(names) - 10} more"
                                                      if len(names) > 10 else "")
    return (f"otcpcc: note: {len(names)} class(es) have no training samples: {shown}; the model "
            "cannot learn them (their test accuracy will be 0); put some of their samples in the "
            "train split")


@dataclass(frozen=True)
class Start:
    """Where the epochs begin: a new run at epoch 0, step 0; a resumed one where ``last.pt`` left off."""

    epoch: int = 0  # completed epochs
    step: int = 0  # steps of the next epoch already taken (a mid-epoch checkpoint)
    partial: dict[str, Any] | None = None  # their running sums (EpochTotals fields)
    history: tuple[dict[str, Any], ...] = ()  # log.csv rows of the completed epochs
    trained_for: int = 0  # the --epochs the checkpoint was trained for (0: a new run)


class LastCheckpoint:
    """Writes ``out/last.pt`` (rank 0 alone) and remembers whether it holds this run yet: a run
    that fails before its first checkpoint leaves no files behind."""

    def __init__(self, out: Path, env: DistEnv, *, holds_run: bool) -> None:
        self.out, self.env, self.holds_run = out, env, holds_run

    def save(self, state: dict[str, Any]) -> None:
        if self.env.is_main:
            save_checkpoint(self.out, state)
        self.holds_run = True


@dataclass(frozen=True)
class Run:
    """Everything the epochs of one run use, built once by :func:`_train_locked`."""

    cfg: TrainConfig  # resolved (arch settled)
    env: DistEnv  # rank, world size, device and the collectives
    out: Path  # the run directory
    bundle: Any  # the data: train / test splits, tree, num_classes
    model: nn.Module  # DistributedDataParallel under torchrun
    task_loss: nn.Module  # on the logits: CE, HXE or soft labels
    criterion: nn.Module | None  # 1 - CPCC of the features (None: --distance none)
    optimizer: torch.optim.Optimizer
    loader: DataLoader  # control.train_loader, positioned by control.start_epoch
    steps_per_epoch: int  # len(loader) over a whole epoch
    amp: bool  # bf16 autocast (CUDA only)
    start: Start
    last_pt: LastCheckpoint
    say: Callable[[str], None]  # one line on stderr (rank 0, unless --no-progress)
    progress: bool  # a progress bar per epoch (rank 0, unless --no-progress)

    def checkpoint(self, epoch: int, step: int, totals: EpochTotals | None,
                   history: list[dict[str, Any]]) -> None:
        """Save ``last.pt``: plain tensors, numbers and containers only (``weights_only=True``
        loads it).

        ``epoch`` counts completed epochs; ``step`` > 0 marks a mid-epoch checkpoint, whose
        running sums are in ``partial``. ``rng`` holds one entry per rank.
        """
        self.last_pt.save({
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": epoch,
            "step": step,
            "partial": None if totals is None else dict(totals.__dict__),
            "history": [dict(r) for r in history],
            "rng": self.env.gather_objects(get_rng_state()),
            "config": self.cfg.to_dict(),
            "world_size": self.env.world_size,
        })


def _epochs(run: Run) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """6. Epochs: lr from the schedule, one pass, test accuracy, log row, checkpoint, collapse check.
    Returns the log history and the first collapse (``{epoch, reason}``, see training/health.py) or None."""
    cfg, env, start = run.cfg, run.env, run.start
    history = list(start.history)
    collapsed: dict[str, Any] | None = None
    tb = open_tensorboard(run.out, history) if env.is_main else None
    try:
        with StopRequest() as stop:
            for epoch in range(start.epoch, cfg.epochs):
                lr = lr_at(cfg, epoch)
                for group in run.optimizer.param_groups:
                    group["lr"] = lr
                first = epoch == start.epoch  # a resumed run may start inside this epoch
                first_step = start.step if first else 0
                start_epoch(run.loader, epoch, first_step)
                totals = EpochTotals.from_state(start.partial if first else None)

                stopped_at = train_one_epoch(run, epoch, totals, first_step=first_step, stop=stop)
                if stopped_at is not None:  # Ctrl-C: save the position inside the epoch, stop
                    run.checkpoint(epoch, stopped_at, totals, history)
                    raise TrainingInterrupted(run.out, stop.signum)

                row = totals.finish(env, epoch=epoch + 1, lr=lr)
                test = None
                if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                    test = {k: v.numpy() for k, v in
                            predict(run.model, run.bundle.test, env, cfg, run.amp).items()}
                    if not (np.isfinite(test["logits"]).all() and np.isfinite(test["features"]).all()):
                        raise NonFiniteLoss(  # the epoch's last update overflowed the weights
                            f"the model's outputs became non-finite after epoch {epoch + 1}/"
                            f"{cfg.epochs}, step {first_step + totals.steps}")
                    row["test_acc"] = float((test["logits"].argmax(1) == test["labels"]).mean())
                history.append(row)
                run.checkpoint(epoch + 1, 0, None, history)
                if env.is_main:
                    write_csv(run.out / "log.csv", history, LOG_COLUMNS)
                    log_tensorboard(tb, row)
                run.say(format_row(row, cfg.epochs))
                why = collapse_reason(history, run.bundle.num_classes, test)
                if why and not collapsed:
                    collapsed = {"epoch": epoch + 1, "reason": why}
                    run.say(f"otcpcc: run collapsed at epoch {epoch + 1}: {why}; lower --lr")
                if env.any(stop.requested) and epoch + 1 < cfg.epochs:
                    raise TrainingInterrupted(run.out, stop.signum)
    finally:
        if tb is not None:
            tb.close()
    return history, collapsed


def train_one_epoch(run: Run, epoch: int, totals: EpochTotals, *, first_step: int,
                    stop: StopRequest) -> int | None:
    """One pass over ``run.loader`` (which already skips the ``first_step`` steps a mid-epoch
    checkpoint saw), adding every step's figures to ``totals``. After a Ctrl-C on any rank the
    current step finishes and the pass stops: returns the steps of the epoch done by then, or
    None after the whole epoch."""
    env, desc = run.env, f"epoch {epoch + 1}/{run.cfg.epochs}"
    run.model.train()
    bar = progress_bar(run.progress, run.steps_per_epoch, first_step, desc)
    step, stopped_at, t0 = first_step, None, time.perf_counter()
    try:
        for x, y in run.loader:
            stats = train_step(run.model, run.criterion, run.optimizer, x, y, run.cfg, env.device,
                               run.amp, run.task_loss)
            step += 1
            if env.any(not math.isfinite(stats.loss)):
                raise NonFiniteLoss(f"the loss became {stats.loss} at {desc}, step {step}")
            totals.add(stats)
            bar.update(1)
            bar.set_postfix(totals.postfix(time.perf_counter() - t0), refresh=False)
            if env.any(stop.requested) and step < run.steps_per_epoch:
                stopped_at = step
                break
    finally:
        bar.close()
    totals.seconds += time.perf_counter() - t0
    return stopped_at


def wrap_for_ddp(model: nn.Module, cfg: TrainConfig, env: DistEnv) -> nn.Module:
    """Under torchrun: DistributedDataParallel, with SyncBatchNorm when ``cfg.sync_bn``."""
    if env.world_size == 1:
        return model
    if cfg.sync_bn:  # SyncBatchNorm on CUDA, a gloo-capable twin on the CPU
        from ..distributed.syncbn import convert_sync_batchnorm

        model = convert_sync_batchnorm(model, env.device)
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[env.device.index] if env.device.type == "cuda" else None)


def restore(out: Path, core: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
            env: DistEnv) -> Start:
    """Load ``out/last.pt`` into the model and optimiser, set this rank's RNG states and return
    where the epochs resume (see :meth:`Run.checkpoint` for what it holds)."""
    state = load_checkpoint(out / CHECKPOINT, map_location="cpu")
    _check_checkpoint(state, cfg, env, out)
    core.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    epoch, step = int(state["epoch"]), int(state["step"])
    history = tuple(row for row in state["history"] if row["epoch"] <= epoch)
    rng = state["rng"]
    set_rng_state(rng[env.rank] if env.rank < len(rng) else rng[0])
    return Start(epoch, step, state.get("partial"), history, int(state["config"]["epochs"]))


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


