"""Regenerate ``otcpcc.metrics.multimodality._NULL_Q01``: quantiles of the split ratio R on
isotropic Gaussian groups of n samples in d = 2048 dimensions (the worst case for R).

    PYTHONPATH=src python benchmarks/multimodality_null.py --draws 600
"""

import argparse
import math

import numpy as np

from otcpcc.metrics.multimodality import MAX_DIMS, principal_scores, split_statistic

p = argparse.ArgumentParser()
p.add_argument("--draws", type=int, default=600)
p.add_argument("--d", type=int, default=2048)
p.add_argument("--sizes", default="20,25,30,40,50,70,100")
args = p.parse_args()
rng = np.random.default_rng(1)
for n in (int(s) for s in args.sizes.split(",")):
    dims = max(1, min(MAX_DIMS, n // 10, args.d, n - 1))
    r = [split_statistic(principal_scores(rng.normal(size=(n, args.d)), dims),
                         max(5, math.ceil(0.05 * n)))[0] for _ in range(args.draws)]
    q = np.quantile(r, [0.005, 0.01, 0.05])
    print(f"n={n} dims={dims} q0.005={q[0]:.3f} q0.01={q[1]:.3f} q0.05={q[2]:.3f}", flush=True)
