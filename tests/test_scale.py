"""The scale paths (quantile bands for fastft, chunked swd, row-blocked emd with the assignment
solver, memory-budgeted chunks) against the plan-by-plan paths and independent oracles, with
tiny memory budgets so that every chunk boundary is crossed."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from oracles import oracle_distances, plan_gradient, softmax_weights
from otcpcc import class_distances
from otcpcc.distances import group_by_class, random_projections
from otcpcc.distances.bands import nw_cost
from otcpcc.distances.cost import transport_cost
from otcpcc.distances.nwcorner import nw_plans_uniform, nw_plans_weighted, pair_chunks
from otcpcc.distances.weights import sample_weights

memory = sys.modules["otcpcc.distances.memory"]


def scale_batch(seed: int, n: int = 90, d: int = 5, equal: int | None = None):
    """Unequal class sizes with two one-sample classes (labels 3 and 9), unsorted; or ``equal``
    samples in each of n // equal classes."""
    rng = np.random.default_rng(seed)
    if equal:
        y = rng.permutation(np.arange(n) % (n // equal))
    else:
        y = rng.choice([0, 1, 2, 4, 5, 6, 8], size=n, p=[0.3, 0.2, 0.15, 0.15, 0.1, 0.05, 0.05])
        y[rng.choice(n, 2, replace=False)] = [3, 9]
    x = rng.normal(size=(n, d)) + 2 * rng.normal(size=(10, d))[y]
    return x, y


def _plan_path(x, groups, w):
    seg = nw_plans_uniform(groups) if w is None else nw_plans_weighted(groups, w)
    return transport_cost(x, seg.ia, seg.ib, seg.mass, seg.pair, groups.num_pairs)


def _value_and_grad(fn, x, coef):
    xt = x.clone().requires_grad_(True)
    rho = fn(xt)
    (rho * coef).sum().backward()
    return rho.detach(), xt.grad


bands_module = sys.modules["otcpcc.distances.bands"]


@pytest.mark.parametrize("layout", ["cpu", "gpu"])
@pytest.mark.parametrize("kind", ["uniform", "near", "far"])
@pytest.mark.parametrize("n_bands,budget", [(None, None), (1, None), (3, 2000), (7, 1), (40, 300)])
def test_band_cost_equals_plan_path(kind, n_bands, budget, layout, monkeypatch):
    """Values and constant-plan gradients of the banded NW costs equal the stored-plan path for
    any band count (1 band, bands finer than the classes) and row tiles down to one row, in the
    CPU layout and in the GPU layout (whole-band tiles, atomic sums, deferred checks) run here."""
    monkeypatch.setattr(memory, "BUDGET_BYTES", budget)
    monkeypatch.setattr(bands_module, "GPU_LAYOUT", layout == "gpu")
    x, y = scale_batch(1)
    g = group_by_class(torch.tensor(y))
    xg = torch.tensor(x)[g.order]
    w = sample_weights(xg, g, kind)
    coef = torch.tensor(np.random.default_rng(2).normal(size=g.num_pairs))
    want, want_grad = _value_and_grad(lambda t: _plan_path(t, g, w), xg, coef)
    got, got_grad = _value_and_grad(lambda t: nw_cost(t, g, w, n_bands=n_bands), xg, coef)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind,sign", [("uniform", None), ("near", -1.0), ("far", 1.0)])
def test_fastft_bands_match_brute_force_oracle(kind, sign, monkeypatch):
    """fastft (now banded) against the brute-force NW walk per pair, values and gradients, with
    many bands and one-row tiles, equal-size classes included."""
    monkeypatch.setattr(memory, "BUDGET_BYTES", 1)
    monkeypatch.setattr(bands_module, "MIN_BAND", 4)
    monkeypatch.setattr(sys.modules["otcpcc.distances.fastft"], "PATH", "bands")  # not the switch's
    for x, y in (scale_batch(3), scale_batch(4, n=60, equal=6)):
        w = None if sign is None else softmax_weights(x, y, sign)
        xt = torch.tensor(x, requires_grad=True)
        rho = class_distances(xt, torch.tensor(y), "fastft", weights=kind)[1]
        coef = np.random.default_rng(5).normal(size=rho.shape[0])
        (rho * torch.tensor(coef)).sum().backward()
        np.testing.assert_allclose(rho.detach().numpy(), oracle_distances("fastft", x, y, weights=w),
                                   rtol=1e-9)
        np.testing.assert_allclose(xt.grad.numpy(), plan_gradient("fastft", x, y, coef, weights=w),
                                   rtol=1e-8, atol=1e-10)


def test_band_cost_float32_within_1e6_of_float64():
    x, y = scale_batch(6, n=400, d=16)
    g = group_by_class(torch.tensor(y))
    xg = torch.tensor(x)[g.order]
    exact = nw_cost(xg, g, None, n_bands=5)
    got = nw_cost(xg.float(), g, None, n_bands=5)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), exact, rtol=1e-6, atol=0)


@pytest.mark.parametrize("max_entries", [1, 5, 9, 17, 60, 10**9])
def test_pair_chunks_cover_all_pairs_and_rebuild_the_plans(max_entries):
    y = torch.tensor([0] * 5 + [1] + [2] * 7 + [3] * 2 + [4] * 3 + [5])
    g = group_by_class(y)
    chunks = pair_chunks(g, max_entries)
    assert chunks[0].start == 0 and chunks[-1].stop == g.num_pairs
    assert all(a.stop == b.start for a, b in zip(chunks, chunks[1:], strict=False))
    parts = [nw_plans_uniform(g, pairs=c) for c in chunks]
    for c, p in zip(chunks, parts, strict=True):
        assert p.pair.numel() <= max_entries or c.stop - c.start == 1
    full = nw_plans_uniform(g)
    for field in range(4):
        assert torch.equal(torch.cat([p[field] for p in parts]), full[field])


@pytest.mark.parametrize("p", [1, 2, 3])
def test_swd_chunked_equals_unchunked_formula(p, monkeypatch):
    """swd in tiny chunks of pairs: same values and gradients as the one-shot autograd formula."""
    x, y = scale_batch(7, n=70)
    proj = random_projections(x.shape[1], 6, seed=1, dtype=torch.float64)

    def one_shot(t):
        g = group_by_class(torch.tensor(y))
        c = t.detach().abs().max()
        pr = (t[g.order] / c) @ proj
        cls = g.class_index()
        by_val = torch.argsort(pr.detach(), dim=0, stable=True)
        ranked = pr.gather(0, by_val.gather(0, torch.argsort(cls[by_val], dim=0, stable=True)))
        seg = nw_plans_uniform(g)
        gap = (ranked[seg.ia] - ranked[seg.ib]).abs().pow(p).mean(1)
        wp = torch.zeros(g.num_pairs, dtype=t.dtype).index_add(0, seg.pair, seg.mass * gap)
        return wp.pow(1.0 / p) * c

    coef = torch.tensor(np.random.default_rng(8).normal(size=36))
    want, want_grad = _value_and_grad(one_shot, torch.tensor(x), coef)
    monkeypatch.setattr(memory, "BUDGET_BYTES", 1)  # one pair per chunk
    got, got_grad = _value_and_grad(
        lambda t: class_distances(t, torch.tensor(y), "swd", projections=proj, p=p)[1],
        torch.tensor(x), coef)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-9, atol=1e-12)
    if p == 2:
        np.testing.assert_allclose(got.numpy(), oracle_distances("swd", x, y, projections=proj.numpy()),
                                   rtol=1e-9)


@pytest.mark.parametrize("budget", [1, 4000])  # one pair per chunk; a few pairs per chunk
@pytest.mark.parametrize("equal", [None, 7])
@pytest.mark.parametrize("kind,sign", [("uniform", None), ("near", -1.0)])
def test_emd_row_blocks_and_assignment_match_pot(equal, kind, sign, budget, monkeypatch):
    """emd with the cost matrices in column chunks, the assignment solver (uniform, n = m = 7)
    and the LP (unequal sizes or weights) against POT, values and gradients."""
    monkeypatch.setattr(memory, "BUDGET_BYTES", budget)
    x, y = scale_batch(9, n=70, equal=equal)
    w = None if sign is None else softmax_weights(x, y, sign)
    xt = torch.tensor(x, requires_grad=True)
    rho = class_distances(xt, torch.tensor(y), "emd", weights=kind)[1]
    coef = np.random.default_rng(10).normal(size=rho.shape[0])
    (rho * torch.tensor(coef)).sum().backward()
    np.testing.assert_allclose(rho.detach().numpy(), oracle_distances("emd", x, y, weights=w), rtol=1e-9)
    np.testing.assert_allclose(xt.grad.numpy(), plan_gradient("emd", x, y, coef, weights=w),
                               rtol=1e-8, atol=1e-10)


def test_chunk_budget_from_available_memory(monkeypatch):
    assert memory.available_bytes() > 0
    assert memory.MIN_BYTES <= memory.chunk_budget() <= memory.MAX_BYTES
    monkeypatch.setattr(memory, "BUDGET_BYTES", 100)
    assert memory.chunk_items(30) == 3 and memory.chunk_items(1000) == 1


def test_bench_scale_flag_writes_table_and_json(tmp_path, monkeypatch, capsys):
    """``otcpcc bench --scale --json PATH`` (cases stubbed: the real ones take minutes)."""
    from otcpcc.bench import scale, speed

    row = {"case": "fastft-train", "seconds": 3.0, "gemm_seconds": 2.0, "ratio": 1.5,
           "goal_ratio": 2.0, "peak_rss_bytes": 2e9, "setup_rss_bytes": 1e9, "threads": 2,
           "repeats": 1}
    monkeypatch.setattr(scale, "run_all", lambda cases, repeats, log: [log(scale.format_row(row)), row][1:])
    out = tmp_path / "scale.json"
    assert speed.main(["--scale", "--json", str(out)]) == 0
    assert "fastft-train" in capsys.readouterr().out and "1.50x" in scale.format_row(row)
    assert json.loads(out.read_text())["rows"] == [row]
