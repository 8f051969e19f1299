"""Scale benchmark (``otcpcc bench --scale``): large batches, many classes, big test sets.

Cases (random 512-d Gaussian features, seeded; labels as :func:`otcpcc.bench.problem.make_problem`:
every class present, the rest uniform at random, so class sizes are unequal):

=================  =========================================================================
``fastft-train``   ``CPCCLoss(tree, "fastft")`` forward + backward, K = 1000, B = 16384
``fastft-test``    TestCPCC ``cpcc(..., "fastft")``, 100,000 points, 1000 classes
``emd-test``       TestCPCC ``cpcc(..., "emd")``, 10,000 points, 100 classes of 100 (balanced,
                   the shape of the CIFAR-100 test set)
``emd-test-rand``  the same with random (unequal) class sizes
``l2-train``       ``CPCCLoss(tree, "l2")`` forward + backward, K = 1000, B = 16384
=================  =========================================================================

Each case runs in a fresh subprocess (``python -m otcpcc.bench.scale --case NAME``) so that its
peak memory is its own: the peak resident set size (``ru_maxrss``) is read after the case and
before the baseline. The baseline, measured in the same process right after, is one
16384×512 @ 512×16384 float32 GEMM (the figure is the median of ``repeats`` calls, as is the
case's); the ratio case / GEMM is what to compare across machines and loads, not the seconds.
One-time imports (POT for ``emd``) happen before the timing.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

CASES = ("fastft-train", "fastft-test", "emd-test", "emd-test-rand", "l2-train")
GOALS: dict[str, float | None] = {  # the scale issue's goals; None: timed for reference, no goal
    "fastft-train": 2.0, "fastft-test": 5.0, "emd-test": 3.0, "emd-test-rand": None, "l2-train": None}
GEMM = (16384, 512)


def _problem(n: int, k: int, *, balanced: bool = False, seed: int = 0):
    from .problem import make_problem

    features, labels, tree = make_problem(n, k, min(20, k - 1), 512, seed=seed)
    if balanced:
        labels = torch.arange(n) % k
    return features, labels, tree


def _case(name: str) -> Callable[[], None]:
    """A zero-argument callable that runs one unit of ``name`` (setup done outside it)."""
    from otcpcc import CPCCLoss
    from otcpcc.objectives.cpcc import cpcc

    if name in ("fastft-train", "l2-train"):
        features, labels, tree = _problem(16384, 1000)
        crit = CPCCLoss(tree, name.split("-")[0])

        def train() -> None:
            features.grad = None
            crit(features, labels).backward()
        return train
    if name == "fastft-test":
        features, labels, tree = _problem(100_000, 1000)
        return lambda: cpcc(features.detach(), labels, tree, "fastft")
    if name in ("emd-test", "emd-test-rand"):
        from otcpcc.distances.emd import _network_simplex

        _network_simplex()  # import POT outside the timing (seconds on a loaded machine)
        features, labels, tree = _problem(10_000, 100, balanced=name == "emd-test")
        return lambda: cpcc(features.detach(), labels, tree, "emd")
    raise ValueError(f"unknown scale case {name!r}; choose from {', '.join(CASES)}")


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def run_case(name: str, repeats: int = 1) -> dict:
    """Run one case in this process: its median seconds, the peak RSS after it, then the GEMM."""
    fn = _case(name)
    rss_setup = _peak_rss_bytes()
    seconds = _median_seconds(fn, repeats)
    rss = _peak_rss_bytes()
    n, d = GEMM
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, d, generator=g), torch.randn(d, n, generator=g)
    gemm = _median_seconds(lambda: a @ b, repeats)
    return {"case": name, "seconds": seconds, "gemm_seconds": gemm, "ratio": seconds / gemm,
            "goal_ratio": GOALS[name], "peak_rss_bytes": rss, "setup_rss_bytes": rss_setup,
            "threads": torch.get_num_threads(), "repeats": repeats}


def run_all(cases: Sequence[str] = CASES, repeats: int = 1,
            log: Callable[[str], None] = print) -> list[dict]:
    """Every case in its own fresh subprocess (so each peak memory is the case's own)."""
    rows = []
    log(format_header())
    for name in cases:
        cmd = [sys.executable, "-m", "otcpcc.bench.scale", "--case", name, "--repeats", str(repeats)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"scale case {name} failed: {done.stderr.strip()[-2000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        log(format_row(row))
        rows.append(row)
    return rows


def format_header() -> str:
    return (f"{'case':<14} {'seconds':>9} {'GEMM s':>8} {'ratio':>7} {'goal':>6} "
            f"{'peak GB':>8}")


def format_row(row: dict) -> str:
    goal = row["goal_ratio"]
    ok = "" if goal is None else "ok" if row["ratio"] <= goal else "over"
    shown = "-" if goal is None else f"{goal:.1f}x"
    return (f"{row['case']:<14} {row['seconds']:9.2f} {row['gemm_seconds']:8.2f} "
            f"{row['ratio']:6.2f}x {shown:>6} {row['peak_rss_bytes'] / 1e9:8.2f}  {ok}").rstrip()


def main_scale(json_path: str | None = None, repeats: int = 1,
               cases: Sequence[str] = CASES) -> int:
    """``otcpcc bench --scale [--json PATH]``: the table (and JSON); returns the exit status."""
    to_stdout_json = json_path == "-"
    say = (lambda s: print(s, file=sys.stderr)) if to_stdout_json else print
    say(f"scale cases, each in a fresh process; baseline: {GEMM[0]}x{GEMM[1]} @ "
        f"{GEMM[1]}x{GEMM[0]} float32 GEMM in the same process; torch={torch.__version__} "
        f"threads={torch.get_num_threads()}")
    rows = run_all(cases, repeats, say)
    if json_path is not None:
        text = json.dumps({"baseline": f"{GEMM[0]}x{GEMM[1]} @ {GEMM[1]}x{GEMM[0]} GEMM",
                           "numpy": np.__version__, "torch": torch.__version__, "rows": rows},
                          indent=2)
        if to_stdout_json:
            print(text)
        else:
            from .checks import write_json_flag

            return write_json_flag(json_path, text + "\n")
    return 0


def scale_parser() -> argparse.ArgumentParser:
    """The help of ``otcpcc bench --scale``: its cases and goals (module docstring) and its one
    flag, ``--json`` (the parsing itself is ``otcpcc bench``'s)."""
    from ..flags import OneLineParser

    goals = "\n".join(f"  {name:<14} " + ("no goal (timed for reference)" if GOALS[name] is None
                                          else f"ok at or under {GOALS[name]:g}x the GEMM")
                      for name in CASES)
    text = re.sub(r":func:`([^`]+)`", r"\1", __doc__.split("\n\n", 1)[1])
    p = OneLineParser(prog="otcpcc bench --scale", formatter_class=argparse.RawDescriptionHelpFormatter,
                      description=text + "\nGoals (ratio case / GEMM):\n" + goals,
                      epilog="Takes no other flag: the cases are fixed (drop --scale to time the "
                             "distances with --batch-sizes, --classes, ...).")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                   help="write results as JSON to PATH ('-' or no PATH: print to stdout)")
    return p


def _child(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m otcpcc.bench.scale")
    p.add_argument("--case", choices=CASES, default=None, help="run one case (JSON line out)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.case is None:
        return main_scale(args.json, args.repeats)
    print(json.dumps(run_case(args.case, args.repeats)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_child(sys.argv[1:]))
