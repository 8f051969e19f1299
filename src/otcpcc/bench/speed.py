"""Speed benchmark: ``CPCCLoss`` against the per-pair reference loop (``otcpcc bench``).

For each distance and batch size B: random features [B, d] (seeded, requires grad), labels over
K classes with every class present, and a two-level tree (K fine classes under ``coarse``
groups, ``LabelTree.from_levels``). The timed unit is one forward + backward of the loss
(``torch.cuda.synchronize`` around it on CUDA); the figure is the median over repeats.

The baseline is :mod:`otcpcc.bench.reference`, installed with the package (the straightforward
Python loop over class pairs with POT per pair; ``--reference FILE`` times another one). It is
skipped automatically where one call is estimated to take longer than ``--reference-budget``
seconds; the estimate times the baseline on a few of the batch's classes and scales by the
number of pairs.

Columns: distance, B, ours ms, reference ms, speed-up (reference / ours), |value difference|
between the two losses, and the largest absolute difference between their feature gradients.

``--train-step`` also times a ResNet-18 (CIFAR input 3x32x32) training step at each batch size
(bf16 autocast on CUDA) with and without the FastFT-CPCC term and reports the FastFT call as a
fraction of the step. ``--big`` is the large case: K = 1000 classes, B = 16384, FastFT only.
``--approx`` runs the accuracy study instead (:mod:`otcpcc.bench.approx`).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F

from ..flags import OneLineParser, int_at_least, positive_float
from .checks import refusal
from .problem import make_problem

DISTANCES = ("l2", "emd", "sinkhorn", "swd", "fastft")
_REFERENCE_MODULE = "otcpcc_benchmarks_reference"


# --------------------------------------------------------------------------- reference lookup
def load_reference(path: str | os.PathLike | None = None) -> ModuleType:
    """The baseline: :mod:`otcpcc.bench.reference` (installed with the package), or the
    ``reference.py`` at ``path`` (a file, or a folder holding one) when given."""
    if path is None:
        from . import reference

        return reference
    p = Path(path)
    p = p / "reference.py" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"--reference {path}: no reference.py there; drop --reference to use the "
                                "baseline installed with otcpcc")
    spec = importlib.util.spec_from_file_location(_REFERENCE_MODULE, p)
    if spec is None or spec.loader is None or p.suffix != ".py":
        raise FileNotFoundError(f"--reference {path}: not a Python file (expected reference.py); drop "
                                "--reference to use the baseline installed with otcpcc")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_REFERENCE_MODULE] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 (a user's file: any error is reported in one line)
        del sys.modules[_REFERENCE_MODULE]
        first = str(e).splitlines()[0] if str(e) else ""
        raise FileNotFoundError(f"--reference {path}: importing it failed ({type(e).__name__}: {first}); "
                                "fix the file or drop --reference") from None
    if not hasattr(module, "reference_cpcc_loss"):
        raise FileNotFoundError(f"--reference {path}: it defines no reference_cpcc_loss(); pass a copy of "
                                "otcpcc/bench/reference.py")
    return module


# --------------------------------------------------------------------------- problem setup
def _sync(device: torch.device) -> None:
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
        _sync(features.device)
        t0 = time.perf_counter()
        loss = fn(features, labels)
        loss.backward()
        _sync(features.device)
        if r >= warmup:
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times), float(loss.detach()), features.grad.detach().clone()


def estimate_reference_seconds(
    reference: ModuleType,
    features: torch.Tensor,
    labels: torch.Tensor,
    tree_dist: np.ndarray,
    distance: str,
    options: dict,
    probe_classes: Sequence[int] = (4, 12),
) -> float:
    """Estimated seconds for one baseline call (forward + backward).

    Times the baseline on the samples of a few classes (their own class sizes, batch order
    kept) at two probe sizes, fits time = fixed + per_pair * pairs, and evaluates it at the
    batch's pair count (the per-call fixed cost is not multiplied up). One untimed call on the
    smallest probe comes first, so that one-time costs (imports, first-use initialisation of the
    baseline's solvers) are not taken for per-pair cost: the estimate then depends on the batch
    size only through the pair count and class sizes, whichever batch comes first."""
    present = torch.unique(labels)
    k = len(present)
    points = []
    sizes = sorted({min(c, k) for c in probe_classes})
    for i, c in enumerate([sizes[0], *sizes]):
        probe = present[torch.linspace(0, k - 1, c).round().long()]
        keep = torch.isin(labels, probe)
        x = features.detach()[keep].clone().requires_grad_(True)
        if i == 0:  # warm-up, untimed
            reference.reference_cpcc_loss(x, labels[keep], tree_dist, distance, **options).backward()
            continue
        _sync(features.device)
        t0 = time.perf_counter()
        reference.reference_cpcc_loss(x, labels[keep], tree_dist, distance, **options).backward()
        _sync(features.device)
        points.append((c * (c - 1) // 2, time.perf_counter() - t0))
    pairs = k * (k - 1) // 2
    (p1, t1), (p2, t2) = points[0], points[-1]
    if p2 == p1 or t2 <= t1:  # one probe only, or timing noise: scale the larger probe
        return t2 * pairs / max(p2, 1)
    per_pair = (t2 - t1) / (p2 - p1)
    return max(t2 + per_pair * (pairs - p2), 0.0)


# --------------------------------------------------------------------------- benchmark runs
def _reference_loss(reference, tree_dist, distance, options, features, labels):
    return reference.reference_cpcc_loss(features, labels, tree_dist, distance, **options)


def bench_distances(
    *,
    distances: Sequence[str],
    batch_sizes: Sequence[int],
    classes: int,
    coarse: int,
    dim: int,
    repeats: int,
    warmup: int,
    reference: ModuleType | None,
    reference_repeats: int,
    reference_budget: float,
    device: torch.device,
    dtype: torch.dtype,
    seed: int,
    n_projections: int,
    weights: str = "uniform",
    missing_note: str = "no baseline",
    log: Callable[[str], None] = lambda s: None,
) -> list[dict]:
    """One row per (distance, batch size); see the module docstring for the columns."""
    from otcpcc import CPCCLoss

    rows = []
    for batch in batch_sizes:
        features, labels, tree = make_problem(batch, classes, coarse, dim, seed=seed,
                                              device=device, dtype=dtype)
        tree_dist = tree.distance_matrix()
        g = torch.Generator().manual_seed(seed + 1)
        theta = torch.randn(dim, n_projections, generator=g, dtype=torch.float64)
        theta = (theta / theta.norm(dim=0, keepdim=True)).to(device=device, dtype=dtype)
        for distance in distances:
            options = {}
            if distance == "swd":
                options["projections"] = theta
            if weights != "uniform" and distance in ("emd", "fastft", "fft"):
                options["weights"] = weights
            crit = CPCCLoss(tree, distance, **options)
            ours_ms, ours_value, ours_grad = time_fwd_bwd(
                crit, features, labels, repeats=repeats, warmup=warmup)
            row = {
                "distance": distance, "batch": batch, "classes": classes, "dim": dim,
                "ours_ms": ours_ms, "ours_value": ours_value,
                "reference_ms": None, "reference_value": None, "speedup": None,
                "value_abs_diff": None, "grad_max_abs_diff": None, "reference_note": "",
            }
            if reference is None:
                row["reference_note"] = missing_note
            else:
                estimate = estimate_reference_seconds(
                    reference, features, labels, tree_dist, distance, options)
                if estimate * reference_repeats > reference_budget:
                    row["reference_note"] = (
                        f"skipped: est. {estimate:.0f} s/call > budget {reference_budget:.0f} s")
                else:
                    ref_fn = functools.partial(_reference_loss, reference, tree_dist, distance,
                                               options)
                    ref_ms, ref_value, ref_grad = time_fwd_bwd(
                        ref_fn, features, labels, repeats=reference_repeats,
                        budget_s=reference_budget)
                    row.update(
                        reference_ms=ref_ms, reference_value=ref_value,
                        speedup=ref_ms / ours_ms if ours_ms > 0 else float("inf"),
                        value_abs_diff=abs(ours_value - ref_value),
                        grad_max_abs_diff=float((ours_grad.double() - ref_grad.double())
                                                .abs().max()),
                    )
            log(format_row(row))
            rows.append(row)
    return rows


def bench_train_step(
    *,
    batch_sizes: Sequence[int],
    classes: int,
    coarse: int,
    repeats: int,
    warmup: int,
    device: torch.device,
    seed: int,
    lam: float = 1.0,
) -> list[dict]:
    """ResNet-18 (3x32x32 input) SGD step with cross-entropy, with and without
    ``lam * CPCCLoss(tree, "fastft")``; bf16 autocast on CUDA, fp32 on CPU."""
    return [_train_step_one(batch, classes, coarse, repeats, warmup, device, seed, lam)
            for batch in batch_sizes]


def _train_step_one(batch, classes, coarse, repeats, warmup, device, seed, lam) -> dict:
    from otcpcc import CPCCLoss
    from otcpcc.models import build_model

    torch.manual_seed(seed)
    model = build_model("resnet18", (3, 32, 32), classes).to(device)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    _, labels, tree = make_problem(batch, classes, coarse, 1, seed=seed, device=device)
    x = torch.randn(batch, 3, 32, 32, device=device)
    crit = CPCCLoss(tree, "fastft")
    use_amp = device.type == "cuda"

    def step(with_cpcc: bool) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            feats, logits = model(x)
            loss = F.cross_entropy(logits, labels)
        if with_cpcc:
            loss = loss + lam * crit(feats.float(), labels)
        loss.backward()
        opt.step()

    timings = {}
    for with_cpcc in (False, True):
        times = []
        for r in range(warmup + repeats):
            _sync(device)
            t0 = time.perf_counter()
            step(with_cpcc)
            _sync(device)
            if r >= warmup:
                times.append(time.perf_counter() - t0)
        timings[with_cpcc] = 1e3 * statistics.median(times)
    feats = torch.randn(batch, model.feature_dim, device=device, requires_grad=True)
    fastft_ms, _, _ = time_fwd_bwd(crit, feats, labels, repeats=repeats, warmup=warmup)
    return {
        "batch": batch, "classes": classes, "feature_dim": int(model.feature_dim),
        "amp": "bf16" if use_amp else "fp32",
        "step_ms": timings[False], "step_with_fastft_ms": timings[True],
        "fastft_ms": fastft_ms, "fastft_fraction_of_step": fastft_ms / timings[False],
        "step_overhead": (timings[True] - timings[False]) / timings[False],
    }


# --------------------------------------------------------------------------- output
_HEADER = (f"{'distance':<9} {'B':>6} {'ours ms':>10} {'reference ms':>13} {'speed-up':>9} "
           f"{'|value diff|':>12} {'grad max diff':>13}  note")


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_row(row: dict) -> str:
    """One table line for a :func:`bench_distances` row."""
    return (f"{row['distance']:<9} {row['batch']:>6} {_fmt(row['ours_ms'], '10.2f')} "
            f"{_fmt(row['reference_ms'], '13.1f'):>13} {_fmt(row['speedup'], '8.1f'):>8}x "
            f"{_fmt(row['value_abs_diff'], '12.2e'):>12} "
            f"{_fmt(row['grad_max_abs_diff'], '13.2e'):>13}  {row['reference_note']}")


def format_table(rows: Sequence[dict]) -> str:
    """The whole distance table (header + one line per row)."""
    return "\n".join([_HEADER, *(format_row(r) for r in rows)])


def format_train_table(results: Sequence[dict]) -> str:
    """The ResNet-18 train-step table."""
    lines = [f"{'B':>6} {'amp':>5} {'step ms':>10} {'step+fastft ms':>15} {'fastft ms':>10} "
             f"{'fastft/step':>12}"]
    for r in results:
        lines.append(f"{r['batch']:>6} {r['amp']:>5} {r['step_ms']:10.2f} "
                     f"{r['step_with_fastft_ms']:15.2f} {r['fastft_ms']:10.2f} "
                     f"{100 * r['fastft_fraction_of_step']:11.2f}%")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI
def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _distance_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in values if v not in (*DISTANCES, "sk", "fft")]
    if not values or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown distance(s) {unknown or text!r}; choose from {','.join(DISTANCES)}")
    return values


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``otcpcc bench``."""
    p = OneLineParser(
        prog="otcpcc bench",
        description="Time CPCCLoss (forward + backward) against the per-pair reference loop.")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--batch-sizes", type=_int_list, default=[256, 1024, 4096],
                   help="comma-separated batch sizes (default 256,1024,4096)")
    p.add_argument("--classes", type=int_at_least(3), default=100, help="fine classes K (default 100)")
    p.add_argument("--coarse", type=int_at_least(2), default=20,
                   help="coarse groups, 2 <= coarse < classes (default 20)")
    p.add_argument("--dim", type=int_at_least(1), default=512, help="feature dimension (default 512)")
    p.add_argument("--distances", type=_distance_list, default=list(DISTANCES),
                   help=f"comma-separated (default {','.join(DISTANCES)})")
    # defaults = the flags of README's table: a few untimed calls absorb first-use costs, and
    # the median of 31 calls is stable on a busy machine
    p.add_argument("--repeats", type=int_at_least(1), default=31,
                   help="timed calls of ours, the median is reported (default 31)")
    p.add_argument("--warmup", type=int_at_least(0), default=3,
                   help="untimed calls of ours first (default 3)")
    p.add_argument("--reference-repeats", type=int_at_least(1), default=3,
                   help="timed calls of the baseline (default 3)")
    p.add_argument("--reference-budget", type=positive_float, default=60.0,
                   help="seconds allowed for the baseline's timed calls at one (distance, batch "
                        "size): skipped where they are estimated above it, cut short where they "
                        "run over it (default 60)")
    p.add_argument("--no-reference", action="store_true", help="time otcpcc only")
    p.add_argument("--reference", default=None, metavar="PATH",
                   help="another reference.py (or its folder) to time; default: otcpcc.bench.reference")
    p.add_argument("--n-projections", type=int_at_least(1), default=10, help="swd directions L")
    p.add_argument("--weights", default="uniform", choices=["uniform", "near", "far"],
                   help="sample weights of emd and fastft (default uniform)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-step", action="store_true",
                   help="also time a ResNet-18 train step and FastFT's share of it")
    p.add_argument("--big", action="store_true",
                   help="large case: K=1000, B=16384, fastft only (refuses --classes, "
                        "--batch-sizes, --distances)")
    p.add_argument("--approx", action="store_true",
                   help="accuracy of fastft (batch/sorted), swd, sinkhorn, l2 against exact EMD "
                        "instead of speed (see otcpcc bench --approx --help)")
    p.add_argument("--scale", action="store_true",
                   help="scale cases (16k batches over 1000 classes, 100k test sets) as ratios "
                        "to one GEMM, each in a fresh process (otcpcc.bench.scale); takes no "
                        "other flag but --json (see otcpcc bench --scale --help)")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                   help="write results as JSON to PATH ('-' or no PATH: print to stdout)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``otcpcc bench``; returns the process exit status."""
    if "--approx" in (sys.argv[1:] if argv is None else argv):  # accuracy study: bench/approx.py
        from .approx import main as approx_main

        return approx_main(argv)
    given = list(sys.argv[1:] if argv is None else argv)
    if "--scale" in given and {"-h", "--help"} & set(given):  # the help of --scale's own cases
        from .scale import scale_parser

        scale_parser().print_help()
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    why = refusal(parser, args, given)
    if why:  # before the run, not after it
        print(f"otcpcc: error: {why}", file=sys.stderr)
        return 2
    if args.scale:
        from .scale import main_scale

        return main_scale(args.json)
    if args.big:
        args.classes, args.batch_sizes, args.distances = 1000, [16384], ["fastft"]
        args.coarse = min(args.coarse, args.classes - 1)
    if args.coarse >= args.classes:  # before the table starts
        print(f"otcpcc: error: --coarse {args.coarse} must be below --classes {args.classes} (each coarse "
              "group holds at least one class); lower --coarse", file=sys.stderr)
        return 2
    try:
        device = torch.device(args.device)
    except RuntimeError:
        print(f"otcpcc: error: unknown --device {args.device!r}; use cpu or cuda", file=sys.stderr)
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        print("otcpcc: error: --device cuda but CUDA is not available; use --device cpu",
              file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    to_stdout_json = args.json == "-"
    say = (lambda s: print(s, file=sys.stderr)) if to_stdout_json else print

    reference = None
    if not args.no_reference:
        try:
            reference = load_reference(args.reference)
        except FileNotFoundError as err:
            print(f"otcpcc: error: {err}", file=sys.stderr)
            return 2

    say(f"device={device} dtype={args.dtype} K={args.classes} coarse={args.coarse} "
        f"d={args.dim} repeats={args.repeats} torch={torch.__version__} "
        f"threads={torch.get_num_threads()}")
    say(_HEADER)
    try:
        rows = bench_distances(
            distances=args.distances, batch_sizes=args.batch_sizes, classes=args.classes,
            coarse=args.coarse, dim=args.dim, repeats=args.repeats, warmup=args.warmup,
            reference=reference, reference_repeats=args.reference_repeats,
            reference_budget=args.reference_budget, device=device, dtype=dtype,
            seed=args.seed, n_projections=args.n_projections, weights=args.weights,
            missing_note="--no-reference",
            log=say)
    except ValueError as err:
        print(f"otcpcc: error: {err}", file=sys.stderr)
        return 2

    train = None
    if args.train_step:
        try:
            train = bench_train_step(
                batch_sizes=args.batch_sizes, classes=args.classes, coarse=args.coarse,
                repeats=args.repeats, warmup=args.warmup, device=device, seed=args.seed)
            say("")
            say("ResNet-18 train step (CE only vs CE + FastFT-CPCC):")
            say(format_train_table(train))
        except (ImportError, AttributeError, NotImplementedError) as err:
            say(f"otcpcc bench: --train-step unavailable ({type(err).__name__}: {err})")

    if args.json is not None:
        payload = {
            "config": {k: v for k, v in vars(args).items() if k not in ("json", "reference")},
            "device": str(device),
            "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                            else "cpu"),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "rows": rows,
            "train_step": train,
        }
        text = json.dumps(payload, indent=2)
        if to_stdout_json:
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


__all__ = [
    "DISTANCES", "bench_distances", "bench_train_step", "build_parser", "format_table",
    "load_reference", "main", "make_problem", "time_fwd_bwd",
]

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
