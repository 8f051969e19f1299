"""Exact resume and Ctrl-C: the training DataLoader (a sampler that skips what a mid-epoch checkpoint
already saw, per-sample seeds for augmentation), a SIGINT/SIGTERM handler that turns the first
Ctrl-C or SIGTERM into a flag checked between steps, and the errors that stop a run."""

from __future__ import annotations

import itertools
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, TensorDataset

from ..distributed.env import DistEnv
from ..runs.config import TrainConfig
from ..runs.signals import STOP_SIGNALS, Terminated, signal_name


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM (``signum``) during training; ``run_dir/last.pt`` holds the state to
    ``--resume`` from."""

    def __init__(self, run_dir: Path, signum: int = signal.SIGINT) -> None:
        super().__init__(str(run_dir))
        self.run_dir = Path(run_dir)
        self.signum = int(signum)


class NonFiniteLoss(ValueError):
    """The training loss became NaN or infinite (message: where, and what was kept)."""


class ResumableSampler(Sampler[tuple[int, int]]):
    """A :class:`DistributedSampler`'s order for one epoch, minus its first ``skip_samples``.

    The order of epoch ``e`` is a fixed function of ``(seed, e, rank, world size)``; skipping
    the samples already seen lets a mid-epoch checkpoint resume at the exact next batch. Yields
    ``(index, sample_seed)``: ``sample_seed`` is a function of ``(seed, epoch, rank, position in
    the epoch)`` only (``rank`` is ``base``'s), for :class:`SeededSamples`.
    """

    def __init__(self, base: DistributedSampler, seed: int = 0) -> None:
        self.base = base
        self.skip = 0
        self.seed = seed
        self.rank = base.rank
        self.epoch = 0

    def set_epoch(self, epoch: int, skip_samples: int = 0) -> None:
        self.base.set_epoch(epoch)
        self.epoch = epoch
        self.skip = skip_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for position, index in enumerate(itertools.islice(iter(self.base), self.skip, None),
                                         start=self.skip):
            yield index, sample_seed(self.seed, self.epoch, self.rank, position)

    def __len__(self) -> int:
        return max(len(self.base) - self.skip, 0)


def train_loader(dataset: Dataset, cfg: TrainConfig, env: DistEnv) -> DataLoader:
    """This rank's training batches of ``dataset``: ``cfg.batch_size`` samples a step, in the order
    of a :class:`DistributedSampler` seeded with ``cfg.seed * 1000`` (one replica in a single
    process), each sample drawn under its own seed (:class:`SeededSamples`). Position it at an
    epoch (and a step inside it) with :func:`start_epoch` before each pass."""
    sampler = ResumableSampler(DistributedSampler(
        dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True,
        seed=cfg.seed * 1000, drop_last=False), seed=cfg.seed)
    return DataLoader(
        SeededSamples(dataset), batch_size=cfg.batch_size, sampler=sampler,
        num_workers=cfg.workers, pin_memory=env.device.type == "cuda", generator=torch.Generator(),
        drop_last=len(sampler) % cfg.batch_size == 1)  # a batch of one breaks BatchNorm


def start_epoch(loader: DataLoader, epoch: int, first_step: int = 0) -> None:
    """Point a :func:`train_loader` at step ``first_step`` of ``epoch``: the sampler's order of that
    epoch minus the ``first_step * batch_size`` samples already seen, and the loader's own
    generator reseeded with ``cfg.seed * 1000 + epoch``."""
    sampler: ResumableSampler = loader.sampler  # type: ignore[assignment]
    sampler.set_epoch(epoch, skip_samples=first_step * loader.batch_size)
    loader.generator.manual_seed(sampler.base.seed + epoch)


_M64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One step of the SplitMix64 mixer (Steele, Lea & Flood 2014): a bijection on 64 bits."""
    z = (x + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def sample_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    """A 63-bit seed from ``(seed, epoch, rank, position)``: SplitMix64 folded over the four
    numbers (about a microsecond: the sampler computes one per sample)."""
    h = 0
    for v in (seed, epoch, rank, position):
        h = _splitmix64(h ^ (v & _M64))
    return h >> 1


class SeededSamples(Dataset):
    """``dataset[index]`` drawn under the generators seeded with ``sample_seed``.

    Items are ``(index, sample_seed)`` pairs (from :class:`ResumableSampler`). Random
    augmentation inside ``dataset`` (torch's, Python's ``random`` or numpy's global generator)
    then depends only on ``(seed, epoch, rank, position)``: not on which DataLoader worker
    loads the sample nor on what that worker loaded before, so a run resumed in the middle of an
    epoch, with any number of workers, sees the same augmented samples as an uninterrupted one.
    The caller's generator states are restored afterwards (costs two state copies per sample).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        # a TensorDataset only indexes tensors: nothing to seed (and seeding costs ~0.1 ms a sample)
        self.draws_random = not isinstance(dataset, TensorDataset)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        if not self.draws_random:
            return self.dataset[index]
        py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed would also queue a CUDA reseed, which
            # records a stack trace per call (~0.4 ms); data loading draws on the CPU
            torch.default_generator.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)  # noqa: NPY002
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)  # noqa: NPY002


def stop_notice(signum: int) -> str:
    """What training says when the first stop signal ``signum`` arrives, naming the signal that
    came and the one that aborts (the same again: a second Ctrl-C, or a second SIGTERM)."""
    if signum == signal.SIGINT:
        return "interrupted: finishing this step and saving a checkpoint (Ctrl-C again to abort)"
    name = signal_name(signum)
    return (f"stopped by {name}: finishing this step and saving a checkpoint ({name} again, or "
            "Ctrl-C, to abort)")


class StopRequest:
    """Turn the first Ctrl-C or SIGTERM (``kill``, ``timeout``, a scheduler's stop, torchrun's
    agent) into a flag checked between steps (``signum`` says which came); a second one aborts at
    once (``KeyboardInterrupt``, or :class:`~otcpcc.runs.signals.Terminated` for SIGTERM)."""

    # torchrun's agent relays the terminal's SIGINT to its workers, which already got it from
    # the terminal: a second signal this soon after the first is the same Ctrl-C
    RELAY_WINDOW_S = 2.0

    def __init__(self) -> None:
        self.requested = False
        self.signum: int = signal.SIGINT
        self._at = 0.0
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            if time.monotonic() - self._at < self.RELAY_WINDOW_S:
                return
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        self.requested = True
        self.signum = signum
        self._at = time.monotonic()
        print(f"\notcpcc: {stop_notice(signum)}", file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                if signum == signal.SIGTERM and signal.getsignal(signum) == signal.SIG_IGN:
                    continue  # the caller chose to ignore it
                self._old[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, old in self._old.items():
            signal.signal(signum, old)
        self._old.clear()
