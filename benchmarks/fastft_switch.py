"""Measure fastft(order="batch")'s two evaluation paths against each other, in one process.

For each (B, K, d, weighting): CPCCLoss(tree, "fastft") forward + backward ("train") and TestCPCC
``cpcc(...)`` ("test"), once with the stored NW plans (``fastft.PATH = "plans"``) and once with the
quantile bands (``"bands"``), median of a few calls; the ratio plans / bands is what to compare.
Also the operators (a proxy for GPU kernel launches; bands counted in their GPU layout) and host
syncs per train step. JSON lines on stdout.

    PYTHONPATH=src python benchmarks/fastft_switch.py --threads 2 > out.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from otcpcc import CPCCLoss
from otcpcc.bench.problem import make_problem
from otcpcc.bench.syncs import count_syncs
from otcpcc.objectives.cpcc import cpcc

fastft_mod = sys.modules["otcpcc.distances.fastft"]
bands_mod = sys.modules["otcpcc.distances.bands"]


def _min_alternating(fns: dict, budget_s: float = 2.0, max_repeats: int = 15) -> dict:
    """Fastest of up to ``max_repeats`` calls of each callable, the callables alternating (so that
    load from other processes hits all alike); the minimum is the least disturbed call."""
    for fn in fns.values():
        fn()  # warm up
    times = {name: [] for name in fns}
    t_start = time.perf_counter()
    for _ in range(max_repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        if time.perf_counter() - t_start > budget_s:
            break
    return {name: min(t) for name, t in times.items()}


def _with_path(path: str, fn):
    def run():
        fastft_mod.PATH = path
        try:
            return fn()
        finally:
            fastft_mod.PATH = None
    return run


def measure(b: int, k: int, d: int, weights: str, count: bool, skip_plans: bool) -> dict:
    f, y, tree = make_problem(b, k, min(20, k - 1), d, seed=0)
    x = f.detach().requires_grad_()
    crit = CPCCLoss(tree, "fastft", weights=weights)

    def train():
        x.grad = None
        crit(x, y).backward()

    def test():
        return cpcc(x.detach(), y, tree, "fastft", weights=weights)

    row = {"B": b, "K": k, "d": d, "weights": weights, "threads": torch.get_num_threads()}
    paths = ("bands",) if skip_plans else ("bands", "plans")
    for mode, fn in (("train", train), ("test", test)):
        found = _min_alternating({p: _with_path(p, fn) for p in paths})
        row.update({f"{mode}_{p}": t for p, t in found.items()})
    if count:
        for p in paths:
            bands_mod.GPU_LAYOUT = True  # the layout a GPU runs
            c = count_syncs(_with_path(p, train))
            bands_mod.GPU_LAYOUT = None
            row[f"ops_{p}"], row[f"syncs_{p}"] = c.ops, c.total
    if not skip_plans:
        row["train_ratio"] = row["train_plans"] / row["train_bands"]
        row["test_ratio"] = row["test_plans"] / row["test_bands"]
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="256,1024,4096,16384")
    p.add_argument("--classes", default="10,100,1000")
    p.add_argument("--dims", default="512,64")
    p.add_argument("--weights", default="uniform,near")
    p.add_argument("--count", action="store_true", help="also count ops and syncs (B <= 4096)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    for d in map(int, a.dims.split(",")):
        for b in map(int, a.batches.split(",")):
            for k in map(int, a.classes.split(",")):
                if b < 2 * k:
                    continue  # fewer than 2 samples per class on average
                for w in a.weights.split(","):
                    big = b * k >= 16384 * 1000  # stored plans: ~16M entries, minutes and GBs
                    row = measure(b, k, d, w, a.count and b <= 4096, big and d > 64)
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
