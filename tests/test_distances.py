"""Class-to-class distances against independent oracles (POT, brute force, class means)."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oracles import oracle_distances, plan_gradient, softmax_weights
from otcpcc import class_distances
from otcpcc.distances import random_projections

cost_module = sys.modules["otcpcc.distances.cost"]
NAMES = ["l2", "emd", "sinkhorn", "swd", "fastft"]
TOL = {"sinkhorn": 1e-4}


def batch(seed=0, n=60, d=6):
    """Unequal class sizes, a one-sample class (9), labels unsorted, ids 4 and 7 absent."""
    rng = np.random.default_rng(seed)
    y = rng.choice([0, 1, 2, 3, 5, 6, 8], size=n, p=[0.3, 0.2, 0.15, 0.15, 0.1, 0.05, 0.05])
    y[rng.integers(1, n)] = 9
    y[0] = 8
    x = rng.normal(size=(n, d)) + 3 * rng.normal(size=(10, d))[y]
    return x, y


def options(name, d, seed=0):
    if name == "swd":
        return {"projections": random_projections(d, 10, seed=seed, dtype=torch.float64)}
    return {}


def oracle(name, x, y, opts, **kw):
    proj = opts["projections"].numpy() if "projections" in opts else None
    return oracle_distances(name, x, y, projections=proj, **kw)


@pytest.mark.parametrize("name", NAMES)
def test_values_match_oracle(name):
    x, y = batch()
    opts = options(name, x.shape[1])
    classes, rho = class_distances(torch.tensor(x), torch.tensor(y), name, **opts)
    assert classes.tolist() == sorted(set(y.tolist()))
    assert rho.dtype == torch.float64
    np.testing.assert_allclose(rho.numpy(), oracle(name, x, y, opts), rtol=TOL.get(name, 1e-6))


@pytest.mark.parametrize("alias,name", [("sk", "sinkhorn"), ("fft", "fastft")])
def test_aliases(alias, name):
    x, y = batch(1)
    a = class_distances(torch.tensor(x), torch.tensor(y), alias)[1]
    b = class_distances(torch.tensor(x), torch.tensor(y), name)[1]
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["emd", "fastft"])
@pytest.mark.parametrize("kind,sign", [("near", -1.0), ("far", 1.0)])
def test_sample_weights_match_oracle(name, kind, sign):
    x, y = batch(2)
    w = softmax_weights(x, y, sign)
    rho = class_distances(torch.tensor(x), torch.tensor(y), name, weights=kind)[1]
    np.testing.assert_allclose(rho.numpy(), oracle_distances(name, x, y, weights=w), rtol=1e-6)


def test_sinkhorn_reg_option():
    x, y = batch(3)
    rho = class_distances(torch.tensor(x), torch.tensor(y), "sinkhorn", reg=3.0)[1]
    np.testing.assert_allclose(rho.numpy(), oracle_distances("sinkhorn", x, y, reg=3.0), rtol=1e-4)


def test_swd_seed_is_reproducible_and_matches_explicit_projections():
    x, y = batch(4)
    xt, yt = torch.tensor(x), torch.tensor(y)
    a = class_distances(xt, yt, "swd", seed=7, n_projections=5)[1]
    theta = random_projections(x.shape[1], 5, seed=7, dtype=torch.float64)
    b = class_distances(xt, yt, "swd", projections=theta)[1]
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["emd", "sinkhorn", "fastft"])
def test_gradient_is_constant_plan_formula(name):
    x, y = batch(5, n=40)
    xt = torch.tensor(x, requires_grad=True)
    _, rho = class_distances(xt, torch.tensor(y), name)
    coef = np.random.default_rng(0).normal(size=rho.shape[0])
    (rho * torch.tensor(coef)).sum().backward()
    expected = plan_gradient(name, x, y, coef)
    np.testing.assert_allclose(xt.grad.numpy(), expected, rtol=TOL.get(name, 1e-6), atol=1e-8)


@pytest.mark.parametrize("name", ["emd", "sinkhorn", "fastft"])
def test_gradient_with_coincident_points(name):
    x, y = batch(6, n=30)
    first = np.flatnonzero(y == y[0])[0]
    other = np.flatnonzero(y != y[0])[0]
    x[other] = x[first]  # the same point in two classes
    dup = np.flatnonzero(y == y[0])
    if len(dup) > 1:
        x[dup[1]] = x[dup[0]]  # and twice within one class
    xt = torch.tensor(x, requires_grad=True)
    rho = class_distances(xt, torch.tensor(y), name)[1]
    coef = np.ones(rho.shape[0])
    rho.sum().backward()
    assert torch.isfinite(xt.grad).all()
    got, expected = xt.grad.numpy().copy(), plan_gradient(name, x, y, coef)
    if name == "emd" and len(dup) > 1:
        # Two equal samples of one class make the optimal plan non-unique (mass may move freely
        # between them); every optimal plan gives the same gradient on all other samples and the
        # same sum over the two twins, so compare those.
        for g in (got, expected):
            g[dup[0]] += g[dup[1]]
            g[dup[1]] = 0
    np.testing.assert_allclose(got, expected, rtol=TOL.get(name, 1e-6), atol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_no_nan_when_all_samples_coincide(name):
    x = torch.ones(12, 4, requires_grad=True)
    y = torch.arange(12) % 3
    rho = class_distances(x, y, name, **options(name, 4))[1]
    rho.sum().backward()
    assert torch.equal(rho.detach(), torch.zeros(3))
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_l2_gradient_matches_means_formula():
    x, y = batch(7)
    xt = torch.tensor(x, requires_grad=True)
    classes, rho = class_distances(xt, torch.tensor(y), "l2")
    rho.sum().backward()
    means = {c: x[y == c].mean(0) for c in np.unique(y)}
    grad = np.zeros_like(x)
    for c1 in means:
        for c2 in means:
            if c1 != c2:
                diff = means[c1] - means[c2]
                grad[y == c1] += diff / np.linalg.norm(diff) / (y == c1).sum()
    np.testing.assert_allclose(xt.grad.numpy(), grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["l2", "emd", "sinkhorn", "fastft"])
def test_row_path_and_tiled_gram_path_equal_one_gram(name, monkeypatch):
    """Rows (forced), one Gram tile (default) and many small tiles give identical costs and grads."""
    x, y = batch(8, n=50)
    grads, vals = [], []
    for always, ratio, tile in ((10_000, 0, 1 << 24), (0, 0, 1 << 24), (10_000, 0, 7 * 50)):
        monkeypatch.setattr(cost_module, "GRAM_ALWAYS_N", always)
        monkeypatch.setattr(cost_module, "GRAM_RATIO", ratio)
        monkeypatch.setattr(cost_module, "TILE_ELEMENTS", tile)
        xt = torch.tensor(x, requires_grad=True)
        rho = class_distances(xt, torch.tensor(y), name)[1]
        (rho * torch.arange(rho.shape[0])).sum().backward()
        grads.append(xt.grad)
        vals.append(rho.detach())
    for v, g in zip(vals[1:], grads[1:], strict=True):
        torch.testing.assert_close(v, vals[0], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(g, grads[0], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["l2", "emd", "sinkhorn", "swd"])
def test_batch_permutation_invariance(name):
    x, y = batch(9)
    perm = np.random.default_rng(0).permutation(len(y))
    opts = options(name, x.shape[1])
    a = class_distances(torch.tensor(x), torch.tensor(y), name, **opts)[1]
    b = class_distances(torch.tensor(x[perm]), torch.tensor(y[perm]), name, **opts)[1]
    torch.testing.assert_close(a, b, rtol=1e-9 if name != "sinkhorn" else 1e-6, atol=1e-12)


def test_fastft_depends_only_on_order_within_class():
    x, y = batch(10)
    rng = np.random.default_rng(1)
    perm = rng.permutation(len(y))  # a random interleaving of the classes ...
    for c in np.unique(y):  # ... in which every class keeps its original internal order
        slots = np.flatnonzero(y[perm] == c)
        perm[slots] = np.flatnonzero(y == c)
    assert not np.array_equal(perm, np.arange(len(y)))
    a = class_distances(torch.tensor(x), torch.tensor(y), "fastft")[1]
    b = class_distances(torch.tensor(x[perm]), torch.tensor(y[perm]), "fastft")[1]
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # reversing the order within one class changes the value
    c0 = np.flatnonzero(y == 0)
    rev = np.arange(len(y))
    rev[c0] = c0[::-1]
    c = class_distances(torch.tensor(x[rev]), torch.tensor(y[rev]), "fastft")[1]
    assert not torch.allclose(a, c)


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 7), min_size=2, max_size=6), seed=st.integers(0, 10**6),
       log_scale=st.floats(-6, 6))
def test_fastft_ge_emd_ge_l2(sizes, seed, log_scale):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(sizes)), sizes)
    rng.shuffle(y)
    x = rng.normal(size=(len(y), 3)) * 10.0**log_scale
    xt, yt = torch.tensor(x), torch.tensor(y)
    ft, em, l2 = (class_distances(xt, yt, n)[1] for n in ("fastft", "emd", "l2"))
    tol = 1e-9 * 10.0**log_scale
    assert torch.all(ft >= em - tol)
    assert torch.all(em >= l2 - tol)
    np.testing.assert_allclose(em.numpy(), oracle_distances("emd", x, y), rtol=1e-6)
    np.testing.assert_allclose(ft.numpy(), oracle_distances("fastft", x, y), rtol=1e-6)


@settings(max_examples=15, deadline=None)
@given(sizes=st.lists(st.integers(1, 9), min_size=2, max_size=5), seed=st.integers(0, 10**6))
def test_swd_random_class_sizes(sizes, seed):
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    x = rng.normal(size=(len(y), 4))
    opts = options("swd", 4, seed)
    rho = class_distances(torch.tensor(x), torch.tensor(y), "swd", **opts)[1]
    np.testing.assert_allclose(rho.numpy(), oracle("swd", x, y, opts), rtol=1e-6)


@pytest.mark.parametrize("name", ["l2", "emd", "swd", "fastft"])
@pytest.mark.parametrize("scale", [1e-20, 1e20])
def test_homogeneous_in_feature_scale_float32(name, scale):
    x, y = batch(11)
    opts = options(name, x.shape[1])
    if opts:
        opts["projections"] = opts["projections"].float()
    base = class_distances(torch.tensor(x, dtype=torch.float32), torch.tensor(y), name, **opts)[1]
    xs = torch.tensor(x * scale, dtype=torch.float32)
    scaled = class_distances(xs, torch.tensor(y), name, **opts)[1]
    assert torch.isfinite(scaled).all()
    torch.testing.assert_close(scaled / scale, base, rtol=1e-4, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_autocast_costs_in_float32(name):
    x, y = batch(12)
    xt = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    opts = options(name, x.shape[1])
    if opts:
        opts["projections"] = opts["projections"].float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = torch.nn.functional.linear(xt, torch.eye(x.shape[1]))  # bf16 under autocast
        assert feats.dtype == torch.bfloat16
        rho = class_distances(feats, torch.tensor(y), name, **opts)[1]
    assert rho.dtype == torch.float32
    rho.sum().backward()
    assert torch.isfinite(xt.grad).all()
    # the values are those of the bf16-rounded features, computed in float32
    rounded = xt.detach().to(torch.bfloat16).float()
    want = class_distances(rounded, torch.tensor(y), name, **opts)[1]
    torch.testing.assert_close(rho.detach(), want, rtol=1e-5, atol=1e-6)


def test_float32_matches_float64():
    x, y = batch(13)
    for name in NAMES:
        opts = options(name, x.shape[1])
        a = class_distances(torch.tensor(x), torch.tensor(y), name, **opts)[1]
        if opts:
            opts["projections"] = opts["projections"].float()
        b = class_distances(torch.tensor(x, dtype=torch.float32), torch.tensor(y), name, **opts)[1]
        assert b.dtype == torch.float32
        torch.testing.assert_close(b.double(), a, rtol=1e-4, atol=1e-5)


def test_many_points_bounded_memory():
    """N = 50,000 points, 100 classes: the row path, never an N x N matrix."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50_000, 16, generator=g, requires_grad=True)
    y = torch.randint(0, 100, (50_000,), generator=g)
    for name in ("fastft", "swd", "l2"):
        rho = class_distances(x, y, name, **({"seed": 0} if name == "swd" else {}))[1]
        assert rho.shape == (4950,)
        rho.sum().backward()
        assert torch.isfinite(x.grad).all()
        x.grad = None
    # spot check: one pair's fastft against the brute-force walk
    xs, ys = x.detach()[:3000].double(), y[:3000]
    keep = (ys == 0) | (ys == 1)
    rho = class_distances(xs[keep], ys[keep], "fastft")[1]
    ref = oracle_distances("fastft", xs[keep].numpy(), ys[keep].numpy())
    np.testing.assert_allclose(rho.numpy(), ref, rtol=1e-6)


@pytest.mark.parametrize(
    "features,labels,match",
    [
        (torch.randn(5), torch.zeros(5, dtype=torch.long), r"\[N, d\]"),
        (torch.randn(5, 2), torch.zeros(4, dtype=torch.long), "must match"),
        (torch.randn(5, 2), torch.zeros(5), "integer"),
        (torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), torch.tensor([0, 1]), "NaN or inf in 1 of 2"),
        (torch.zeros(3, 2, dtype=torch.long), torch.tensor([0, 1, 1]), "floating point"),
    ],
)
def test_bad_input_errors(features, labels, match):
    with pytest.raises(ValueError, match=match):
        class_distances(features, labels, "l2")


def test_unknown_distance_lists_names():
    with pytest.raises(ValueError, match="unknown distance 'wasser'.*fastft"):
        class_distances(torch.randn(4, 2), torch.tensor([0, 0, 1, 1]), "wasser")


def test_single_class_gives_empty():
    classes, rho = class_distances(torch.randn(4, 2), torch.zeros(4, dtype=torch.long), "emd")
    assert classes.tolist() == [0] and rho.numel() == 0


def test_sinkhorn_log_domain_matches_pot_log_solver(monkeypatch):
    """The log-domain path (forced; it serves costs spanning more than 300·reg) against POT's."""
    import ot

    monkeypatch.setattr(sys.modules["otcpcc.distances.sinkhorn"], "SCALING_MAX_RANGE", (0.0, 0.0))
    x, y = batch(14, n=40)
    reg = 0.03
    rho = class_distances(torch.tensor(x), torch.tensor(y), "sinkhorn", reg=reg, max_iter=5000)[1]
    expected = []
    for i, j in itertools.combinations(np.unique(y), 2):
        A, B = x[y == i], x[y == j]
        M = ot.dist(A, B, metric="euclidean")
        P = ot.sinkhorn(np.full(len(A), 1 / len(A)), np.full(len(B), 1 / len(B)), M, reg,
                        method="sinkhorn_log", numItermax=20000, stopThr=1e-10)
        expected.append((P * M).sum())
    np.testing.assert_allclose(rho.numpy(), expected, rtol=1e-4)


def test_sinkhorn_scaling_and_log_paths_agree(monkeypatch):
    x, y = batch(15)
    a = class_distances(torch.tensor(x), torch.tensor(y), "sinkhorn")[1]
    monkeypatch.setattr(sys.modules["otcpcc.distances.sinkhorn"], "SCALING_MAX_RANGE", (0.0, 0.0))
    b = class_distances(torch.tensor(x), torch.tensor(y), "sinkhorn")[1]
    torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_features_are_named_for_every_distance(name, bad):
    x, y = batch(16)
    x[3, 1] = bad
    with pytest.raises(ValueError, match="NaN or inf in 1 of 60 rows"):
        class_distances(torch.tensor(x), torch.tensor(y), name, **options(name, x.shape[1]))


DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA; the cpu case is its twin")])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_float32_on_device_matches_float64_oracle(name, device):
    x, y = batch(17)
    opts = options(name, x.shape[1])
    expected = oracle(name, x, y, opts)
    if opts:
        opts["projections"] = opts["projections"].float().to(device)
    xt = torch.tensor(x, dtype=torch.float32, device=device, requires_grad=True)
    rho = class_distances(xt, torch.tensor(y, device=device), name, **opts)[1]
    rho.sum().backward()
    assert rho.device.type == device and torch.isfinite(xt.grad).all()
    np.testing.assert_allclose(rho.detach().cpu().double().numpy(), expected, rtol=1e-4)


def test_emd_threaded_lp_equals_serial(monkeypatch):
    emd_module = sys.modules["otcpcc.distances.emd"]
    x, y = batch(18, n=80)
    serial = class_distances(torch.tensor(x), torch.tensor(y), "emd")[1]
    monkeypatch.setattr(emd_module, "LP_PARALLEL_MIN_CELLS", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        threaded = class_distances(torch.tensor(x), torch.tensor(y), "emd")[1]
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(threaded, serial, rtol=0, atol=0)
    np.testing.assert_allclose(threaded.numpy(), oracle_distances("emd", x, y), rtol=1e-6)


@pytest.mark.parametrize("weights,sign", [("uniform", None), ("near", -1.0), ("far", 1.0)])
def test_emd_two_sample_classes_match_pot(weights, sign):
    """Pairs with a two-sample class (solved as a knapsack, either side) against ot.emd2."""
    rng = np.random.default_rng(19)
    y = np.repeat(np.arange(6), [2, 2, 3, 5, 2, 7])
    rng.shuffle(y)
    x = rng.normal(size=(len(y), 4)) * 3
    w = None if sign is None else softmax_weights(x, y, sign)
    rho = class_distances(torch.tensor(x), torch.tensor(y), "emd", weights=weights)[1]
    np.testing.assert_allclose(rho.numpy(), oracle_distances("emd", x, y, weights=w), rtol=1e-9)
