"""Where CPCCLoss spends its time on CUDA (run by hand on a lent GPU): per case, the wall time per
call, host-device syncs per call, kernel launches per call, and the top operators by CPU and by
CUDA time (torch.profiler)."""

from __future__ import annotations

import time

import torch
import torch.profiler as tp

from otcpcc import CPCCLoss
from otcpcc.bench.problem import make_problem


def main() -> None:
    dev = torch.device("cuda")
    for distance, n, k in (("l2", 1024, 100), ("fastft", 1024, 100), ("fastft", 16384, 1000)):
        f, y, tree = make_problem(n, k, min(20, k - 1), 512, seed=0)
        x, y = f.detach().to(dev).requires_grad_(), y.to(dev)
        crit = CPCCLoss(tree, distance)

        def step(x=x, y=y, crit=crit):
            x.grad = None
            crit(x, y).backward()
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(5):
            step()
        torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) / 5 * 1e3
        with tp.profile(activities=[tp.ProfilerActivity.CPU, tp.ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        ev = prof.key_averages()
        syncs = sum(e.count for e in ev if e.key in ("aten::_local_scalar_dense", "cudaStreamSynchronize",
                                                       "cudaMemcpyAsync"))
        launches = sum(e.count for e in ev if e.key in ("cudaLaunchKernel", "cuLaunchKernel",
                                                          "cudaLaunchKernelExC"))
        print(f"\n=== {distance} B={n} K={k}: {ms:.2f} ms/call; syncs+copies {syncs}; launches {launches}")
        print(ev.table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=38))
        print(ev.table(sort_by="self_device_time_total", row_limit=8, max_name_column_width=38))


if __name__ == "__main__":
    main()
