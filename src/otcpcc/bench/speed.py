"""Speed benchmark: ``CPCCLoss`` against the per-pair reference loop (``otcpcc bench``).

For each distance and batch size B: random features [B, d] (seeded, requires grad), labels over
K classes with every class present, and a two-level tree (K fine classes under ``coarse``
groups, ``LabelTree.from_levels``). The timed unit is one forward + backward of the loss
(``torch.cuda.synchronize`` around it on CUDA); every cell is timed in interleaved rounds after
warm-up rounds (:mod:`otcpcc.bench.timing`), and the figure is its median over the rounds.

The baseline is :mod:`otcpcc.bench.reference`, installed with the package (the straightforward
Python loop over class pairs with POT per pair; ``--reference FILE`` times another one). It is
skipped automatically where one call is estimated to take longer than ``--reference-budget``
seconds; the estimate times the baseline on a few of the batch's classes and scales by the
number of pairs.

Columns: distance, B, ours ms, reference ms, speed-up (reference / ours), |value difference|
between the two losses, and the largest absolute difference between their feature gradients.

``--train-step`` also times a training step (CE; ResNet-18 bf16 on CUDA, a small CNN on a CPU,
input 3x32x32) at each batch size with and without each distance's CPCC term and prints what the
term adds to the step in percent (:mod:`otcpcc.bench.train_step`).
``--big`` is the large case: K = 1000 classes, B = 16384, FastFT only.
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

from ..flags import OneLineParser, count_list, int_at_least, positive_float
from .checks import refusal, write_json_flag
from .problem import make_problem
from .rows import GRAPH, make_loss, with_graph_rows
from .timing import duration, time_fwd_bwd, time_interleaved
from .timing import sync as _sync

DISTANCES = ("l2", "emd", "sinkhorn", "swd", "fastft")
_REFERENCE_MODULE = "otcpcc_benchmarks_reference"
PROBE_REPEATS = 3  # timings of each probe of estimate_reference_seconds (the fastest is kept)


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


# --------------------------------------------------------------------------- reference estimate
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
    size only through the pair count and class sizes, whichever batch comes first. Each probe
    is timed ``PROBE_REPEATS`` times and the fastest kept (a load spike on one probe, scaled up
    ~75x in pairs, skipped whole cells)."""
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
        best = math.inf
        for _ in range(PROBE_REPEATS):  # the fastest: a moment of load must not skip the cell
            _sync(features.device)
            t0 = time.perf_counter()
            reference.reference_cpcc_loss(x, labels[keep], tree_dist, distance, **options).backward()
            _sync(features.device)
            best = min(best, time.perf_counter() - t0)
        points.append((c * (c - 1) // 2, best))
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
    """One row per (batch size, distance); see the module docstring for the columns.

    Ours is timed first for every cell together, in interleaved rounds
    (:func:`~otcpcc.bench.timing.time_interleaved`: ``warmup`` untimed rounds, at least one, then
    ``repeats`` timed ones), so that no cell, the first one least of all, is timed before every
    cell has been warmed up with the very loss object that is then timed. The baseline is then
    timed cell by cell (its calls take up to seconds), after one untimed call at full size."""
    cells = []  # (batch, row name, options, crit, features, labels, tree_dist)
    for batch in batch_sizes:
        features, labels, tree = make_problem(batch, classes, coarse, dim, seed=seed,
                                              device=device, dtype=dtype)
        tree_dist = tree.distance_matrix()
        g = torch.Generator().manual_seed(seed + 1)
        theta = torch.randn(dim, n_projections, generator=g, dtype=torch.float64)
        theta = (theta / theta.norm(dim=0, keepdim=True)).to(device=device, dtype=dtype)
        for distance in distances:
            options = {}
            base = distance.removesuffix(GRAPH)
            if base == "swd":
                options["projections"] = theta
            if weights != "uniform" and base in ("emd", "fastft", "fft"):
                options["weights"] = weights
            cells.append((batch, distance, options, make_loss(tree, distance, **options),
                          features, labels, tree_dist))

    def fwd_bwd(crit, features, labels):
        def call():
            features.grad = None
            crit(features, labels).backward()
        return call

    log(f"timing otcpcc: {len(cells)} cells in interleaved rounds ({max(warmup, 1)} warm-up, "
        f"{repeats} timed) ...")
    times = time_interleaved(
        [fwd_bwd(c[3], c[4], c[5]) for c in cells], repeats=repeats, warmup=warmup, device=device,
        on_warm=lambda s, n: log(f"  one round takes {duration(s)}: about {duration(s * n)} for {n}"))
    log(_HEADER)

    rows = []
    for (batch, distance, options, crit, features, labels, tree_dist), ms in zip(cells, times, strict=True):
        features.grad = None  # value and gradient of ours, untimed
        loss = crit(features, labels)
        loss.backward()
        ours_ms, ours_value, ours_grad = statistics.median(ms), float(loss.detach()), features.grad
        row = {
            "distance": distance, "batch": batch, "classes": classes, "dim": dim,
            "ours_ms": ours_ms, "ours_value": ours_value,
            "reference_ms": None, "reference_value": None, "speedup": None,
            "value_abs_diff": None, "grad_max_abs_diff": None, "reference_note": "",
        }
        if reference is None:
            row["reference_note"] = missing_note
        else:
            base = distance.removesuffix(GRAPH)
            estimate = estimate_reference_seconds(
                reference, features, labels, tree_dist, base, options)
            if estimate * reference_repeats > reference_budget:
                row["reference_note"] = (
                    f"skipped: est. {estimate:.0f} s/call x {reference_repeats} calls > budget "
                    f"{reference_budget:.0f} s")
            else:
                ref_fn = functools.partial(_reference_loss, reference, tree_dist, base, options)
                ours_grad = ours_grad.detach().clone()
                ref_ms, ref_value, ref_grad = time_fwd_bwd(
                    ref_fn, features, labels, repeats=reference_repeats, warmup=1,
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


# --------------------------------------------------------------------------- output
_HEADER = (f"{'distance':<12} {'B':>6} {'ours ms':>10} {'reference ms':>13} {'speed-up':>9} "
           f"{'|value diff|':>12} {'grad max diff':>13}  note")


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _speedup(value: float | None) -> str:
    """``12.3x``, or ``-`` (as the other empty cells) where no baseline was timed
    (``--no-reference``, skipped by the budget)."""
    return "-" if value is None else f"{value:.1f}x"


def format_row(row: dict) -> str:
    """One table line for a :func:`bench_distances` row."""
    return (f"{row['distance']:<12} {row['batch']:>6} {_fmt(row['ours_ms'], '10.2f')} "
            f"{_fmt(row['reference_ms'], '13.1f'):>13} {_speedup(row['speedup']):>9} "
            f"{_fmt(row['value_abs_diff'], '12.2e'):>12} "
            f"{_fmt(row['grad_max_abs_diff'], '13.2e'):>13}  {row['reference_note']}")


def format_table(rows: Sequence[dict]) -> str:
    """The whole distance table (header + one line per row)."""
    return "\n".join([_HEADER, *(format_row(r) for r in rows)])


# --------------------------------------------------------------------------- CLI
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
    p.add_argument("--batch-sizes", type=count_list, default=[256, 1024, 4096],
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
                   help="untimed rounds of ours (every cell once per round) before the timed "
                        "ones, at least 1 (default 3)")
    p.add_argument("--reference-repeats", type=int_at_least(1), default=3,
                   help="timed calls of the baseline (default 3)")
    p.add_argument("--reference-budget", type=positive_float, default=60.0,
                   help="seconds allowed for the baseline's timed calls at one (distance, batch "
                        "size): skipped where they are estimated above it, cut short where they "
                        "run over it (default 60)")
    p.add_argument("--no-reference", action="store_true", help="time otcpcc only")
    p.add_argument("--reference", default=None, metavar="PATH",
                   help="another reference.py (or its folder) to time; default: otcpcc.bench.reference")
    p.add_argument("--cuda-graph", action="store_true",
                   help="also time l2, swd and fastft (uniform weights) with CPCCLoss(cuda_graph=True), "
                        "as rows 'l2+graph', 'swd+graph', 'fastft+graph' (fixed shapes, no host "
                        "sync; one CUDA graph replay per call on cuda)")
    p.add_argument("--n-projections", type=int_at_least(1), default=10, help="swd directions L")
    p.add_argument("--weights", default="uniform", choices=["uniform", "near", "far"],
                   help="sample weights of emd and fastft (default uniform)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-step", action="store_true",
                   help="also time one training step (CE) with and without each distance's "
                        "CPCC term and print what CPCC adds, in percent")
    p.add_argument("--train-arch", default=None, metavar="ARCH",
                   help="model of --train-step (default resnet18 on cuda, the small cnn on a CPU, "
                        "where a ResNet-18 step at B = 256 takes seconds)")
    p.add_argument("--train-budget", type=positive_float, default=40.0, metavar="SECONDS",
                   help="seconds of timed steps per batch size for --train-step, after one "
                        "warm-up round (default 40); at most --repeats rounds, at least 6 (the "
                        "fewest with a 95%% interval) if --repeats allows")
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
    if args.cuda_graph:
        args.distances = with_graph_rows(args.distances, args.weights)
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
    except (MemoryError, RuntimeError) as err:  # torch.OutOfMemoryError is a RuntimeError
        if not isinstance(err, MemoryError) and "alloc" not in str(err) and "out of memory" not in str(err):
            raise
        swd = f", --n-projections {args.n_projections}" if any("swd" in d for d in args.distances) else ""
        print(f"otcpcc: error: out of memory on {device} for --batch-sizes {max(args.batch_sizes)}, "
              f"--dim {args.dim}, --classes {args.classes}{swd}; lower them", file=sys.stderr)
        return 2

    train = None
    if args.train_step:
        from .train_step import bench_train_step

        say("")
        try:
            train = bench_train_step(
                batch_sizes=args.batch_sizes, distances=args.distances, classes=args.classes,
                coarse=args.coarse, repeats=args.repeats,
                warmup=args.warmup if device.type == "cuda" else 1, device=device,
                seed=args.seed, arch=args.train_arch, budget_s=args.train_budget, log=say)
        except (ImportError, AttributeError, NotImplementedError) as err:
            say(f"otcpcc bench: --train-step unavailable ({type(err).__name__}: {err})")
        except ValueError as err:
            print(f"otcpcc: error: {err}", file=sys.stderr)
            return 2

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
            return write_json_flag(args.json, text + "\n")
    return 0


__all__ = [
    "DISTANCES", "bench_distances", "build_parser", "format_table", "load_reference", "main",
    "make_problem", "time_fwd_bwd",
]

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
