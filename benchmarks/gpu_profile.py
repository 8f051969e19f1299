"""Where CPCCLoss spends its time on CUDA (run by hand on a lent GPU): per case, the wall time per
call, host-device syncs per call, kernel launches per call, and the top operators by CPU and by
CUDA time (torch.profiler).

Syncs are counted two ways: ``syncs`` is :func:`otcpcc.bench.syncs.count_syncs` (host reads of
tensor values: ``.item()``/``float()``/``bool()``, ``nonzero``/masks, ``.tolist()``, ...; the same
count tests/test_syncs.py guards on CPU), ``cudaStreamSynchronize`` the driver calls behind them
(one per read; a ``.tolist()`` is one), and ``sync_debug`` the warnings of
``torch.cuda.set_sync_debug_mode("warn")`` (CUDA's own list of synchronizing calls; where it differs
from ``syncs``, the difference names a sync the CPU count misses). ``--device cpu`` runs the same
cases on CPU (no CUDA columns), ``--quick`` skips the operator tables.
"""

from __future__ import annotations

import argparse
import importlib
import time
import warnings

import torch
import torch.profiler as tp

from otcpcc import CPCCLoss
from otcpcc.bench.problem import make_problem
from otcpcc.bench.syncs import count_syncs

fastft_module = importlib.import_module("otcpcc.distances.fastft")  # (the package exports the function)

# (distance, B, K, path: None = as fastft.use_stored_plans picks, "plans" / "bands" forced,
#  "graph" = CPCCLoss(cuda_graph=True))
CASES = (("l2", 1024, 100, None), ("l2", 1024, 100, "graph"), ("swd", 1024, 100, "graph"),
         ("fastft", 1024, 100, "graph"), ("fastft", 16384, 1000, "graph"), ("swd", 1024, 100, None),
         ("sinkhorn", 1024, 100, None),
         ("fastft", 1024, 100, "bands"), ("fastft", 1024, 100, "plans"), ("fastft", 256, 100, None),
         ("fastft", 4096, 1000, "bands"), ("fastft", 4096, 1000, "plans"), ("fastft", 16384, 1000, None),
         ("emd", 1024, 100, None))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="no operator tables")
    ap.add_argument("--only", default=None, help="run only the cases of this distance (e.g. emd)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    for distance, n, k, path in CASES:
        if args.only not in (None, distance):
            continue
        if not cuda and path == "graph" and n * k > 1024 * 100:  # minutes of N·K·d differences on a CPU
            print(f"\n=== {distance} (graph) B={n} K={k}: skipped on {dev.type} (CUDA only)")
            continue
        fastft_module.PATH = None if path == "graph" else path
        f, y, tree = make_problem(n, k, min(20, k - 1), 512, seed=0)
        x, y = f.detach().to(dev).requires_grad_(), y.to(dev)
        crit = CPCCLoss(tree, distance, cuda_graph=path == "graph")

        def step(x=x, y=y, crit=crit):
            x.grad = None
            crit(x, y).backward()

        def wait():
            if cuda:
                torch.cuda.synchronize()
        for _ in range(3):
            step()
        wait()
        t0 = time.perf_counter()
        for _ in range(5):
            step()
        wait()
        ms = (time.perf_counter() - t0) / 5 * 1e3
        syncs = count_syncs(step)
        activities = [tp.ProfilerActivity.CPU] + ([tp.ProfilerActivity.CUDA] if cuda else [])
        with tp.profile(activities=activities) as prof:
            step()
            wait()
        ev = prof.key_averages()
        stream_syncs = sum(e.count for e in ev if e.key == "cudaStreamSynchronize")
        debug = []
        if cuda:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    step()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            debug = [str(w.message).splitlines()[0][:90] for w in caught
                     if "synchroniz" in str(w.message)]
        launches = sum(e.count for e in ev if e.key in ("cudaLaunchKernel", "cuLaunchKernel",
                                                          "cudaLaunchKernelExC"))
        name = distance if path is None else f"{distance} ({path})"
        print(f"\n=== {name} B={n} K={k} on {dev.type}: {ms:.2f} ms/call; syncs {syncs.total} "
              f"({', '.join(f'{s} {c}' for s, c in sorted(syncs.by_source.items()))}); "
              f"ops {syncs.ops}" + (f"; cudaStreamSynchronize {stream_syncs}; sync_debug "
                                    f"{len(debug)}; kernel launches {launches}" if cuda else ""),
              flush=True)
        for line in sorted(set(debug)):
            print(f"  sync_debug: {line}")
        if args.quick:
            continue
        print(ev.table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=38))
        if cuda:
            print(ev.table(sort_by="self_device_time_total", row_limit=8, max_name_column_width=38))


if __name__ == "__main__":
    main()
