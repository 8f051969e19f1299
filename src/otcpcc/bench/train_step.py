"""``otcpcc bench --train-step``: what the CPCC term adds to one training step, in the same process.

For each batch size B: a model built by :func:`otcpcc.models.build_model` (``resnet18`` on CUDA,
the small ``cnn`` on a CPU, where a ResNet-18 step at B = 256 takes tens of seconds; ``--train-arch``
chooses), random inputs [B, 3, 32, 32], labels over K classes with every class present and the
two-level tree of :func:`otcpcc.bench.problem.make_problem`. One step is SGD (momentum 0.9) on
cross-entropy, or on cross-entropy + ``lam * CPCCLoss(tree, distance)(features, labels)``: zero
grad, forward, backward, optimiser step; bf16 autocast on CUDA (the CPCC term in fp32), fp32 on a
CPU. The variants (CE only, then CE + CPCC for each distance) are timed in interleaved rounds
(:func:`otcpcc.bench.timing.time_interleaved`), as many as fit ``budget_s`` after the warm-up,
at most ``repeats``; the answer per distance is ``median(step with CPCC) / median(CE step) - 1``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .problem import make_problem
from .timing import time_interleaved

DEFAULT_ARCH = {"cuda": "resnet18", "cpu": "cnn"}
INPUT_SHAPE = (3, 32, 32)


def default_arch(device: torch.device) -> str:
    """The model a step is timed with unless ``--train-arch`` says otherwise."""
    return DEFAULT_ARCH.get(device.type, "resnet18")


def device_words(device: torch.device) -> str:
    """The device as the output line names it: ``cuda (NVIDIA H200)``, ``cpu (2 threads)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({torch.get_num_threads()} threads)"


def bench_train_step(
    *,
    batch_sizes: Sequence[int],
    distances: Sequence[str],
    classes: int,
    coarse: int,
    repeats: int,
    warmup: int,
    device: torch.device,
    seed: int,
    arch: str | None = None,
    input_shape: tuple[int, ...] = INPUT_SHAPE,
    budget_s: float = 40.0,
    lam: float = 1.0,
    log: Callable[[str], None] = lambda s: None,
) -> list[dict]:
    """One result per (batch size, distance): the CE step's and the CE + CPCC step's median ms and
    ``overhead`` = their ratio - 1 (see the module docstring). ``budget_s`` bounds the timed rounds
    of one batch size (warm-up not counted); every round runs ``1 + len(distances)`` steps."""
    arch = arch or default_arch(device)
    return [r for batch in batch_sizes
            for r in _one_batch(batch, distances, classes, coarse, repeats, warmup, device, seed,
                                arch, tuple(input_shape), budget_s, lam, log)]


def _one_batch(batch, distances, classes, coarse, repeats, warmup, device, seed, arch,
               input_shape, budget_s, lam, log) -> list[dict]:
    from otcpcc import CPCCLoss
    from otcpcc.models import build_model

    torch.manual_seed(seed)
    model = build_model(arch, input_shape, classes).to(device)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    _, labels, tree = make_problem(batch, classes, coarse, 1, seed=seed, device=device)
    x = torch.randn(batch, *input_shape, device=device)
    use_amp = device.type == "cuda"
    crits = {d: CPCCLoss(tree, d) for d in distances}

    def step(distance: str | None) -> Callable[[], None]:
        def call() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                feats, logits = model(x)
                loss = F.cross_entropy(logits, labels)
            if distance is not None:
                loss = loss + lam * crits[distance](feats.float(), labels)
            loss.backward()
            opt.step()
        return call

    what = {
        "model": arch, "input_shape": list(input_shape), "feature_dim": int(model.feature_dim),
        "batch": batch, "classes": classes, "dtype": "bf16 autocast" if use_amp else "fp32",
        "device": device_words(device), "optimizer": "SGD", "lam": lam,
    }
    log(f"train step: {_step_words(what)}: warming up ({max(warmup, 1)} round(s) of "
        f"{1 + len(distances)} steps: CE only, " + ", ".join(f"CE + CPCC ({d})" for d in distances)
        + ") ...")
    times = time_interleaved(
        [step(None), *(step(d) for d in distances)], repeats=repeats, warmup=warmup,
        device=device, budget_s=budget_s,
        on_warm=lambda s, n: log(f"  one round takes {s:.1f} s: timing {n} round(s), "
                                 f"about {s * n:.0f} s"))
    plain = statistics.median(times[0])
    results = []
    for distance, ms in zip(distances, times[1:], strict=True):
        with_ms = statistics.median(ms)
        results.append({**what, "distance": distance, "rounds": len(ms), "step_ms": plain,
                        "step_with_cpcc_ms": with_ms, "overhead": with_ms / plain - 1.0})
        log(format_train_line(results[-1]))
    return results


def _step_words(r: dict) -> str:
    shape = "x".join(str(s) for s in r["input_shape"])
    return (f"{r['model']} (input {shape}, {r['feature_dim']}-d features, {r['classes']} classes), "
            f"batch {r['batch']}, {r['dtype']}, {r['optimizer']}, on {r['device']}")


def format_train_line(r: dict) -> str:
    """The answer for one (batch size, distance), e.g. ``CPCC (fastft) adds 12.3% to one training
    step of cnn at batch 256 on cpu (2 threads): 812.0 -> 912.0 ms (...)``."""
    return (f"CPCC ({r['distance']}) adds {100 * r['overhead']:.1f}% to one training step of "
            f"{r['model']} at batch {r['batch']} on {r['device']}: {r['step_ms']:.1f} -> "
            f"{r['step_with_cpcc_ms']:.1f} ms (input {'x'.join(str(s) for s in r['input_shape'])}, "
            f"{r['feature_dim']}-d features, {r['classes']} classes, {r['dtype']}, "
            f"{r['optimizer']}, lambda {r['lam']:g}; medians of {r['rounds']} interleaved rounds)")
