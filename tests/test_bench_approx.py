"""otcpcc bench --approx: its metrics against POT/SciPy on a tiny Gaussian mixture."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from oracles import oracle_distances
from otcpcc.bench.approx import compare, gaussian_mixture, verdict


def test_metrics_match_independent_oracles():
    x, y, tree = gaussian_mixture(3, seed=1, per_class=6)
    res = compare(x, y, tree, timing=False)
    emd = oracle_distances("emd", x, y)
    t = [tree.distance_matrix()[i, j] for i, j in itertools.combinations(range(12), 2)]
    for label, name in (("fastft-sorted", "fastft_sorted"), ("l2", "l2")):
        rho = oracle_distances(name, x, y)
        r = res[label]
        assert r["rel_err"] == pytest.approx(np.mean(np.abs(rho - emd) / emd), rel=1e-6)
        assert r["spearman"] == pytest.approx(spearmanr(rho, emd)[0], abs=1e-9)
        assert r["dcpcc"] == pytest.approx(pearsonr(t, rho)[0] - pearsonr(t, emd)[0], abs=1e-9)
    assert res["emd"]["cpcc"] == pytest.approx(pearsonr(t, emd)[0], abs=1e-9)


def test_verdict_needs_closer_and_at_most_1_5x_everywhere():
    good = {"fastft-sorted": {"rel_err": 0.1, "spearman": 0.9, "x_batch": 1.4},
            "fastft-batch": {"rel_err": 0.2, "spearman": 0.8, "x_batch": 1.0}}
    slow = {**good, "fastft-sorted": {**good["fastft-sorted"], "x_batch": 1.6}}
    assert verdict([("a", good)]) == ("fastft order=sorted is closer to EMD at <= 1.5x the time on every "
                                      "full set: it qualifies as the default")
    assert verdict([("a", good), ("b", slow)]) == ("fastft keeps order=batch as the default (b: sorted "
                                                   "takes 1.60x the batch order's time)")
