"""The scale cases on CUDA (run by benchmarks/gpu.sh): each case's CUDA values against the CPU
result, then its median time over repeats beside one 16384x512 @ 512x16384 float32 GEMM on the
same device (the ratio is what compares across machines)."""

from __future__ import annotations

import statistics
import sys
import time

import torch

from otcpcc import CPCCLoss
from otcpcc.bench.scale import _problem
from otcpcc.objectives.cpcc import cpcc


def _median_ms(fn, repeats: int = 10, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> int:
    dev = torch.device("cuda")
    a, b = torch.randn(16384, 512, device=dev), torch.randn(512, 16384, device=dev)
    gemm = _median_ms(lambda: a @ b)
    print(f"GEMM 16384x512 @ 512x16384 float32 on {torch.cuda.get_device_name()}: {gemm:.2f} ms")
    print(f"{'case':<14} {'ms':>9} {'ratio':>7} {'rel diff vs CPU':>16} {'peak GB':>8}")
    rows = []
    for name, distance, n, k, train in (("fastft-train", "fastft", 16384, 1000, True),
                                         ("l2-train", "l2", 16384, 1000, True),
                                         ("swd-train", "swd", 16384, 1000, True),
                                         ("fastft-test", "fastft", 100_000, 1000, False),
                                         ("emd-test", "emd", 10_000, 100, False)):
        features, labels, tree = _problem(n, k, balanced=name == "emd-test")
        x, y = features.detach().to(dev), labels.to(dev)
        if train:
            opts = {"seed": 0} if distance == "swd" else {}
            crit = CPCCLoss(tree, distance, **opts)
            xg = x.clone().requires_grad_()

            def step(xg=xg, crit=crit, y=y):
                xg.grad = None
                crit(xg, y).backward()
            fn = step
            cpu_val = float(CPCCLoss(tree, distance, **opts)(features.detach(), labels))
            gpu_val = float(crit(x, y))
        else:
            def fn(x=x, y=y, tree=tree, distance=distance):
                return cpcc(x, y, tree, distance)
            cpu_val = float(cpcc(features.detach(), labels, tree, distance)) if n <= 20_000 else None
            gpu_val = float(fn())
        torch.cuda.reset_peak_memory_stats()
        ms = _median_ms(fn, repeats=5 if n > 20_000 else 10)
        peak = torch.cuda.max_memory_allocated() / 1e9
        diff = "-" if cpu_val is None else f"{abs(gpu_val - cpu_val) / max(abs(cpu_val), 1e-12):.1e}"
        print(f"{name:<14} {ms:9.2f} {ms / gemm:6.2f}x {diff:>16} {peak:8.2f}", flush=True)
        rows.append((name, ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
