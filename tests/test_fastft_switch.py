"""fastft(order="batch") has two evaluation paths, stored NW plans and quantile bands, chosen by a
size switch (:func:`otcpcc.distances.fastft.use_stored_plans`). Both are tested here whatever the
switch picks (``fastft.PATH`` forces one): against the brute-force NW walk per pair, against each
other, and on the near-zero / cancellation cases; and the switch's decisions themselves."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from oracles import oracle_distances, plan_gradient, softmax_weights
from otcpcc import CPCCLoss, LabelTree, class_distances
from otcpcc.bench.problem import make_problem
from otcpcc.bench.syncs import count_syncs
from otcpcc.distances import group_by_class

fastft_module = sys.modules["otcpcc.distances.fastft"]
memory = sys.modules["otcpcc.distances.memory"]
PATHS = ["plans", "bands"]


def _batch(seed: int, n: int = 70, d: int = 6, offset: float = 0.0):
    """Unequal classes, one one-sample class (label 4), unsorted."""
    rng = np.random.default_rng(seed)
    y = rng.choice([0, 1, 2, 3, 5], size=n, p=[0.35, 0.25, 0.2, 0.1, 0.1])
    y[rng.integers(n)] = 4
    return offset + rng.normal(size=(n, d)) + 2 * rng.normal(size=(6, d))[y], y


def _value_and_grad(x, y, dtype=torch.float64, **opts):
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    rho = class_distances(xt, torch.tensor(y), "fastft", **opts)[1]
    coef = torch.tensor(np.random.default_rng(7).normal(size=rho.shape[0]), dtype=dtype)
    (rho * coef).sum().backward()
    return rho.detach(), xt.grad, coef.double().numpy()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind,sign", [("uniform", None), ("near", -1.0), ("far", 1.0)])
def test_each_path_matches_the_brute_force_walk(path, kind, sign, monkeypatch):
    monkeypatch.setattr(fastft_module, "PATH", path)
    monkeypatch.setattr(sys.modules["otcpcc.distances.bands"], "MIN_BAND", 4)  # several bands
    x, y = _batch(0)
    w = None if sign is None else softmax_weights(x, y, sign)
    rho, grad, coef = _value_and_grad(x, y, weights=kind)
    np.testing.assert_allclose(rho.numpy(), oracle_distances("fastft", x, y, weights=w), rtol=1e-9)
    np.testing.assert_allclose(grad.numpy(), plan_gradient("fastft", x, y, coef, weights=w),
                               rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("kind", ["uniform", "far"])
def test_the_two_paths_agree(kind, monkeypatch):
    """The switch changes nothing but the time, on a batch of 600 in 12 classes with a common
    offset of 5: float64 values and gradients equal to 1e-10; float32 values to 1e-6 relative, and
    each path's float32 gradient within 2e-6 (relative norm) of float64 (measured: plans 1.3e-7,
    bands 1.0e-6: the bands' tiles sum in a different order)."""
    rng = np.random.default_rng(3)
    y = np.concatenate([np.arange(12), rng.integers(0, 12, size=588)])
    x = 5.0 + rng.normal(size=(600, 16)) + rng.normal(size=(12, 16))[y]
    got = {}
    for path in PATHS:
        monkeypatch.setattr(fastft_module, "PATH", path)
        got[path] = [_value_and_grad(x, y, dtype, weights=kind)[:2]
                     for dtype in (torch.float64, torch.float32)]
    (v64, g64), (v32, g32) = got["bands"]
    (p64, pg64), (p32, pg32) = got["plans"]
    torch.testing.assert_close(p64, v64, rtol=1e-10, atol=0)
    assert float((pg64 - g64).norm() / g64.norm()) < 1e-10
    torch.testing.assert_close(p32, v32, rtol=1e-6, atol=0)
    for g in (g32, pg32):
        assert float((g.double() - g64).norm() / g64.norm()) < 2e-6


@pytest.mark.parametrize("path", PATHS)
def test_each_path_is_exact_where_the_gram_identity_cancels(path, monkeypatch):
    """float32 classes at ±1000, 0.01 apart (centring cannot remove the offset): both paths
    recompute the near-zero Gram entries from differences and match float64 brute force."""
    monkeypatch.setattr(fastft_module, "PATH", path)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, size=90)
    y[:6] = np.arange(6)
    side = np.where(y < 3, 1.0, -1.0)[:, None]
    x = 1000.0 * side + 0.01 * (rng.normal(size=(90, 8)) + 2.0 * rng.normal(size=(6, 8))[y])
    x32 = torch.tensor(x, dtype=torch.float32)
    got = class_distances(x32, torch.tensor(y), "fastft")[1].double().numpy()
    np.testing.assert_allclose(got, oracle_distances("fastft", x32.double().numpy(), y), rtol=2e-2)


@pytest.mark.parametrize("path", PATHS)
def test_each_path_has_finite_scaled_gradients_for_tiny_features(path, monkeypatch):
    monkeypatch.setattr(fastft_module, "PATH", path)
    tree = LabelTree.from_parents({"a": "P", "b": "P", "c": "Q", "d": "Q", "P": "R", "Q": "R"})
    x0 = torch.tensor(np.random.default_rng(0).normal(size=(8, 5)))
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    ref = x0.clone().requires_grad_()
    CPCCLoss(tree, "fastft")(ref, y).backward()
    x = (x0 * 1e-20).float().requires_grad_()
    CPCCLoss(tree, "fastft")(x, y).backward()
    assert torch.isfinite(x.grad).all()
    assert float((x.grad.double() * 1e-20 - ref.grad).norm() / ref.grad.norm()) < 1e-5


def _groups(n: int, k: int):
    return group_by_class(torch.arange(n) % k)


@pytest.mark.parametrize("n,k,weighted,plans", [
    (256, 10, False, True), (1024, 10, False, True),  # one or two bands: they save nothing
    (1024, 100, False, False), (2048, 10, False, False),  # entries, resp. four bands of ~N/4
    (2048, 1000, False, False),  # 1.5M entries (measured 2.4-3.4x the bands)
    (4096, 10, False, False), (4096, 1000, False, False), (16384, 1000, False, False),
    (256, 10, True, False),  # per-sample weights: the merge sort costs more than the bands
])
def test_the_switch_follows_the_work_model(n, k, weighted, plans, monkeypatch):
    monkeypatch.setattr(memory, "BUDGET_BYTES", 1 << 30)
    assert fastft_module.use_stored_plans(_groups(n, k), weighted, "cpu") is plans


@pytest.mark.parametrize("n,k,weighted,plans", [
    (1024, 100, False, True), (4096, 1000, False, True),  # launch-bound: the fewer launches
    (8192, 100, False, False), (16384, 1000, False, False), (1024, 100, True, False),
])
def test_on_a_gpu_the_switch_takes_the_path_with_fewer_launches_up_to_4096(n, k, weighted, plans,
                                                                             monkeypatch):
    monkeypatch.setattr(memory, "BUDGET_BYTES", 1 << 30)  # (no CUDA query: runs on any machine)
    assert fastft_module.use_stored_plans(_groups(n, k), weighted, "cuda") is plans


def test_the_switch_keeps_memory_bounded(monkeypatch):
    """Stored plans only where S · PLAN_BYTES_PER_ENTRY fits the chunk budget: 1024 samples in
    10 classes hold ~9k entries (~1.2 MB), so a 1 MB budget takes the bands."""
    g = _groups(1024, 10)
    monkeypatch.setattr(memory, "BUDGET_BYTES", 1 << 30)
    assert fastft_module.use_stored_plans(g, False, "cpu")
    monkeypatch.setattr(memory, "BUDGET_BYTES", 1 << 20)
    assert not fastft_module.use_stored_plans(g, False, "cpu")


def test_a_small_batch_takes_the_stored_plans_with_two_host_syncs():
    """B = 256 in 20 classes: the stored-plan path (the class sizes and the final flags: 2 syncs;
    the bands add the band sizes and their cancellation checks)."""
    f, y, tree = make_problem(256, 20, 5, 32, seed=0)
    x = f.detach().requires_grad_()
    crit = CPCCLoss(tree, "fastft")

    def step():
        x.grad = None
        crit(x, y).backward()

    step()
    assert count_syncs(step).total <= 2
