"""Wall-clock timing of the benchmarks: one callable (:func:`time_fwd_bwd`) or several measured in
interleaved rounds (:func:`time_interleaved`).

Why rounds: on a shared or busy machine a slow spell of a few seconds (other processes, the first
seconds of a fresh process, a thread pool that has just started) would otherwise fall entirely on
whichever case happens to be timed then, typically the first one, and its median would be that
spell's. Round-robin timing spreads such a spell over every case (one or two rounds each), and the
per-case median over the rounds discards it. Every case is warmed up with its own callable, the
very one that is then timed, before the first timed call of any case.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fwd_bwd(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    repeats: int,
    warmup: int = 0,
    budget_s: float = math.inf,
) -> tuple[float, float, torch.Tensor]:
    """Median wall time (ms) of ``fn(features, labels).backward()`` over ``repeats`` calls after
    ``warmup`` untimed ones; also the last loss value and the last feature gradient. Timed calls
    stop early (at least one is made) once together they took more than ``budget_s`` seconds."""
    times: list[float] = []
    loss = None
    for r in range(warmup + repeats):
        if times and sum(times) > budget_s:
            break
        features.grad = None
        sync(features.device)
        t0 = time.perf_counter()
        loss = fn(features, labels)
        loss.backward()
        sync(features.device)
        if r >= warmup:
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times), float(loss.detach()), features.grad.detach().clone()


def duration(seconds: float) -> str:
    """A wall time for a log line: ``"3.2 ms"`` under a second, ``"1.45 s"`` under a minute, else
    ``"2.5 min"``."""
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def time_interleaved(
    calls: Sequence[Callable[[], object]],
    *,
    repeats: int,
    warmup: int,
    device: torch.device,
    budget_s: float = math.inf,
    min_rounds: int = 1,
    on_warm: Callable[[float, int], None] = lambda seconds, rounds: None,
) -> list[list[float]]:
    """Wall times (ms) of each of ``calls``, measured in rounds.

    First ``max(warmup, 1)`` untimed rounds (each call once per round, in order), then ``n`` timed
    rounds, ``n = min(repeats, max(min_rounds, floor(budget_s / t)))`` with ``t`` the last
    warm-up round's seconds (``min_rounds``, the fewest rounds worth having, may overrun the
    budget); ``on_warm(t, n)`` is told both before the timed rounds start (to announce their
    length). Returns one list of ``n`` times per call; take the median.
    Cost: ``(max(warmup, 1) + n) * sum(call times)``."""
    rounds_s = 0.0
    for _ in range(max(warmup, 1)):
        t_round = time.perf_counter()
        for call in calls:
            call()
        sync(device)
        rounds_s = time.perf_counter() - t_round
    n = repeats
    if budget_s < rounds_s * repeats:  # (an infinite budget never cuts)
        n = min(repeats, max(min_rounds, 1, math.floor(budget_s / rounds_s)))
    on_warm(rounds_s, n)
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(n):
        for i, call in enumerate(calls):
            sync(device)
            t0 = time.perf_counter()
            call()
            sync(device)
            times[i].append(1e3 * (time.perf_counter() - t0))
    return times
