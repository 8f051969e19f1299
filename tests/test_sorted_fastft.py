"""FastFT order="sorted" against a brute-force sorted NW walk and POT's exact EMD, and its
invariance to the order of the batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oracles import oracle_distances, plan_gradient, softmax_weights
from otcpcc import class_distances


def batch(seed=0, n=45, d=4, k=5):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n // k)
    rng.shuffle(y)
    x = rng.normal(size=(len(y), d)) + 2 * rng.normal(size=(k, d))[y]
    return x, y


def sorted_ft(x, y, **opts):
    return class_distances(torch.as_tensor(x), torch.as_tensor(y), "fastft", order="sorted",
                           **opts)[1]


@pytest.mark.parametrize("seed", [0, 1])
def test_sorted_matches_brute_force_walk(seed):
    x, y = batch(seed, n=23, d=3, k=4)  # unequal class sizes
    y[:3] = 0
    np.testing.assert_allclose(sorted_ft(x, y).numpy(),
                               oracle_distances("fastft_sorted", x, y), rtol=1e-9)


@pytest.mark.parametrize("kind,sign", [("near", -1.0), ("far", 1.0)])
def test_sorted_with_sample_weights_matches_brute_force(kind, sign):
    x, y = batch(2, n=30, d=3, k=4)
    w = softmax_weights(x, y, sign)
    np.testing.assert_allclose(sorted_ft(x, y, weights=kind).numpy(),
                               oracle_distances("fastft_sorted", x, y, weights=w), rtol=1e-9)


def test_coinciding_means_use_the_pooled_principal_direction():
    # both classes centred at the origin: A spread along e1, B along e1 + e2 (means coincide)
    A = np.array([[-3.0, 0.1], [-1.0, -0.1], [1.0, 0.2], [3.0, -0.2]])
    B = np.array([[-2.0, -2.1], [2.0, 2.1], [0.5, 0.5], [-0.5, -0.5]])
    A -= A.mean(0)
    B -= B.mean(0)
    x, y = np.vstack([A, B]), np.repeat([0, 1], 4)
    got = sorted_ft(x, y).numpy()
    np.testing.assert_allclose(got, oracle_distances("fastft_sorted", x, y), rtol=1e-9)
    assert got[0] >= oracle_distances("emd", x, y)[0] - 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weights", ["uniform", "near"])
def test_sorted_is_invariant_to_batch_order(dtype, weights):
    x, y = batch(3, n=200, d=16, k=8)
    xt, yt = torch.tensor(x, dtype=dtype), torch.tensor(y)
    ref = class_distances(xt, yt, "fastft", order="sorted", weights=weights)[1]
    rng = np.random.default_rng(0)
    for _ in range(3):
        p = torch.as_tensor(rng.permutation(len(y)))
        got = class_distances(xt[p], yt[p], "fastft", order="sorted", weights=weights)[1]
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)
    # the published order="batch" is not: reversing one class's samples changes its values
    rev = np.arange(len(y))
    c0 = np.flatnonzero(y == 0)
    rev[c0] = c0[::-1]
    a = class_distances(xt, yt, "fastft")[1]
    b = class_distances(xt[rev], yt[rev], "fastft")[1]
    assert not torch.allclose(a, b)


def test_sorted_is_invariant_with_ties_on_a_lattice():
    # integer-valued features with duplicates and projections that tie along the mean lines
    rng = np.random.default_rng(4)
    y = np.repeat(np.arange(4), 12)
    x = rng.integers(0, 3, size=(48, 3)).astype(np.float64) + 2 * y[:, None]
    ref = sorted_ft(x, y)
    for s in range(4):
        p = np.random.default_rng(s).permutation(48)
        torch.testing.assert_close(sorted_ft(x[p], y[p]), ref, rtol=1e-6, atol=0)


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 8), min_size=2, max_size=5), seed=st.integers(0, 10**6),
       d=st.integers(1, 6), log_scale=st.floats(-4, 4))
def test_sorted_is_never_below_exact_emd(sizes, seed, d, log_scale):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(sizes)), sizes)
    rng.shuffle(y)
    x = rng.normal(size=(len(y), d)) * 10.0**log_scale
    ft = sorted_ft(x, y).numpy()
    em = oracle_distances("emd", x, y)  # POT ot.emd on the Euclidean cost
    assert np.all(ft >= em - 1e-9 * 10.0**log_scale)
    np.testing.assert_allclose(ft, oracle_distances("fastft_sorted", x, y), rtol=1e-7)


def test_sorted_gradient_is_the_constant_plan_formula():
    x, y = batch(5, n=40)
    xt = torch.tensor(x, requires_grad=True)
    rho = sorted_ft(xt, torch.tensor(y))
    coef = np.random.default_rng(0).normal(size=rho.shape[0])
    (rho * torch.tensor(coef)).sum().backward()
    np.testing.assert_allclose(xt.grad.numpy(), plan_gradient("fastft_sorted", x, y, coef),
                               rtol=1e-6, atol=1e-8)


def test_unknown_order_is_a_one_line_error():
    x, y = batch()
    with pytest.raises(ValueError, match="unknown fastft order 'random'; use one of batch, sorted"):
        class_distances(torch.tensor(x), torch.tensor(y), "fastft", order="random")
    with pytest.raises(ValueError, match="distance 'emd' has no option 'order'"):
        class_distances(torch.tensor(x), torch.tensor(y), "emd", order="sorted")
