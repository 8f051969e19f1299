"""``otcpcc bench --train-step``: what the CPCC term adds to one training step, in the same process.

For each batch size B: a model built by :func:`otcpcc.models.build_model` (``resnet18`` on CUDA,
the small ``cnn`` on a CPU, where a ResNet-18 step at B = 256 takes seconds; ``--train-arch``
chooses), random inputs [B, 3, 32, 32], labels over K classes with every class present and the
two-level tree of :func:`otcpcc.bench.problem.make_problem`. One step is SGD (momentum 0.9) on
cross-entropy, or on cross-entropy + ``lam * CPCCLoss(tree, distance)(features, labels)``: zero
grad, forward, backward, optimiser step; bf16 autocast on CUDA (the CPCC term in fp32), fp32 on a
CPU. The variants (CE only, then CE + CPCC for each distance) are timed in interleaved rounds
(:func:`otcpcc.bench.timing.time_interleaved`), as many as fit ``budget_s`` after the warm-up,
at most ``repeats`` and at least 6 (the fewest with a 95% interval) unless ``repeats`` is lower.
Each round also times the CPCC term by itself, ``ALONE_CALLS`` times back to back (each call
timed): ``CPCCLoss(features, labels).backward()`` on fixed fp32 features of the step's shape
[B, feature_dim] (the model's own features of ``x``, detached).

The answer per distance (:func:`otcpcc.bench.paired.paired_overhead`): with ``d_r`` = round r's
(CE + CPCC step) - (CE step), ``overhead = median(d) / median(CE step)`` and a distribution-free
95% interval for it from the order statistics of ``d`` (binomial ranks, see
:mod:`otcpcc.bench.paired`); the call is "within noise" when the interval contains 0. The CPCC
term alone, ``cpcc_ms`` (the median of its ``ALONE_CALLS * rounds`` times) and
``cpcc_share_pct = 100 * cpcc_ms / median(CE step)``, is the robust answer to "is it nearly
free": on a busy machine the step difference is noisy at the level of several percent; the
isolated call is far less so (it still absorbs the machine's load: a process just off a long
step is preempted more, so under load it reads high, not low).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .paired import TOO_FEW, min_rounds, paired_overhead
from .problem import make_problem
from .timing import duration, time_interleaved

DEFAULT_ARCH = {"cuda": "resnet18", "cpu": "cnn"}
INPUT_SHAPE = (3, 32, 32)
ALONE_CALLS = 3  # CPCC calls alone per distance and round, each timed: more samples, cheap


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
    """One result per (batch size, distance): the CE step's and the CE + CPCC step's median ms
    (``step_ms``, ``step_with_cpcc_ms``), ``overhead`` = median paired difference / ``step_ms``,
    its 95% interval ``ci_low_pct, ci_high_pct`` (percent; ``None`` under 6 rounds), ``call``
    ("within noise", "measurable", "too few rounds"), and the CPCC term alone: ``cpcc_ms`` and
    ``cpcc_share_pct`` (see the module docstring). ``budget_s`` bounds the timed rounds of one
    batch size (warm-up not counted; at least 6 rounds if ``repeats`` allows); every round runs
    ``1 + len(distances)`` steps and ``ALONE_CALLS * len(distances)`` CPCC calls alone."""
    arch = arch or default_arch(device)
    return [r for batch in batch_sizes
            for r in _one_batch(batch, distances, classes, coarse, repeats, warmup, device, seed,
                                arch, tuple(input_shape), budget_s, lam, log)]


def _one_batch(batch, distances, classes, coarse, repeats, warmup, device, seed, arch,
               input_shape, budget_s, lam, log) -> list[dict]:
    from otcpcc.models import build_model

    from .rows import make_loss

    torch.manual_seed(seed)
    model = build_model(arch, input_shape, classes).to(device)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    _, labels, tree = make_problem(batch, classes, coarse, 1, seed=seed, device=device)
    x = torch.randn(batch, *input_shape, device=device)
    use_amp = device.type == "cuda"
    crits = {d: make_loss(tree, d) for d in distances}

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

    with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                         enabled=use_amp):
        alone_feats = model(x)[0].float().detach().clone().requires_grad_(True)

    def alone(distance: str) -> Callable[[], None]:
        def call() -> None:
            alone_feats.grad = None
            crits[distance](alone_feats, labels).backward()
        return call

    what = {
        "model": arch, "input_shape": list(input_shape), "feature_dim": int(model.feature_dim),
        "batch": batch, "classes": classes, "dtype": "bf16 autocast" if use_amp else "fp32",
        "device": device_words(device), "optimizer": "SGD", "lam": lam,
    }
    log(f"train step: {_step_words(what)}: warming up ({max(warmup, 1)} round(s) of "
        f"{1 + len(distances)} steps: CE only, " + ", ".join(f"CE + CPCC ({d})" for d in distances)
        + f"; then {ALONE_CALLS} CPCC call(s) alone per distance) ...")
    times = time_interleaved(
        [step(None), *(step(d) for d in distances),
         *(alone(d) for d in distances for _ in range(ALONE_CALLS))],
        repeats=repeats, warmup=warmup, device=device, budget_s=budget_s, min_rounds=min_rounds(),
        on_warm=lambda s, n: log(f"  one round takes {duration(s)}: timing {n} round(s), "
                                 f"about {duration(s * n)}"))
    plain = statistics.median(times[0])
    n_d = len(distances)
    results = []
    for i, (distance, ms) in enumerate(zip(distances, times[1:1 + n_d], strict=True)):
        paired = paired_overhead(times[0], ms)
        first = 1 + n_d + i * ALONE_CALLS
        cpcc_ms = statistics.median(t for ts in times[first:first + ALONE_CALLS] for t in ts)
        results.append({**what, "distance": distance, "rounds": len(ms), "step_ms": plain,
                        "step_with_cpcc_ms": statistics.median(ms),
                        "overhead": paired["overhead_pct"] / 100.0,
                        "ci_low_pct": paired["ci_low_pct"], "ci_high_pct": paired["ci_high_pct"],
                        "call": paired["call"], "cpcc_ms": cpcc_ms,
                        "cpcc_share_pct": 100.0 * cpcc_ms / plain})
        log(format_train_line(results[-1]))
    return results


def _step_words(r: dict) -> str:
    shape = "x".join(str(s) for s in r["input_shape"])
    return (f"{r['model']} (input {shape}, {r['feature_dim']}-d features, {r['classes']} classes), "
            f"batch {r['batch']}, {r['dtype']}, {r['optimizer']}, on {r['device']}")


def _pct(value: float) -> str:
    return f"{value:+.1f}%"


def format_train_line(r: dict) -> str:
    """The answer for one (batch size, distance), e.g. ``CPCC (fastft) on one training step of cnn
    at batch 256 on cpu (2 threads): within noise: +1.2% of the CE step (median paired difference, 95%
    CI -2.0% to +4.1%); the CPCC term alone: 10.2 ms = 1.3% of the step (medians: CE step 790.1 ms, with
    CPCC 801.3 ms; ...)``."""
    pct = _pct(100 * r["overhead"])
    if r["call"] == TOO_FEW:
        verdict = f"{TOO_FEW} for a 95% interval ({r['rounds']} < {min_rounds()}): {pct}"
    else:
        verdict = (f"{r['call']}: {pct} of the CE step (median paired difference, 95% CI "
                   f"{_pct(r['ci_low_pct'])} to {_pct(r['ci_high_pct'])})")
    return (f"CPCC ({r['distance']}) on one training step of {r['model']} at batch {r['batch']} "
            f"on {r['device']}: {verdict}; the CPCC term alone: {r['cpcc_ms']:.1f} ms = "
            f"{r['cpcc_share_pct']:.1f}% of the step (medians: CE step {r['step_ms']:.1f} ms, with CPCC "
            f"{r['step_with_cpcc_ms']:.1f} ms; input {'x'.join(str(s) for s in r['input_shape'])}, "
            f"{r['feature_dim']}-d features, {r['classes']} classes, {r['dtype']}, "
            f"{r['optimizer']}, lambda {r['lam']:g}; medians of {r['rounds']} interleaved rounds)")
