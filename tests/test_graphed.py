"""CPCCLoss(cuda_graph=True): fixed shapes over all K labels, no host sync, CUDA graph replay.

Oracles: a greedy north-west-corner walk in exact fractions (the plan grid), autograd through
``torch.linalg.vector_norm`` (the pair norms' gradient), ``scipy.stats.pearsonr`` on the masked
entries (the masked correlation), and the default CPCCLoss path (values and gradients). The CUDA
capture test is gpu-marked; its CPU twin runs the same computation eagerly."""

from __future__ import annotations

import json
import math
import warnings
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import pearsonr

from cli_errors import one_line_error
from otcpcc import CPCCLoss, LabelTree
from otcpcc.bench.problem import make_problem
from otcpcc.bench.syncs import count_syncs
from otcpcc.cli import main
from otcpcc.distances import class_distances
from otcpcc.distances.fixed import class_counts, fixed_fastft, fixed_l2, fixed_swd, nw_grid, pair_index, pair_norms
from otcpcc.distances.swd import random_projections
from otcpcc.objectives.correlation import correlation


def _tree(k: int) -> LabelTree:
    return LabelTree.from_levels([[i % max(2, k // 3) for i in range(k)]])


def _nw_walk(n: int, m: int) -> dict[tuple[int, int], Fraction]:
    """The greedy north-west-corner plan of uniform n and m samples, in exact fractions."""
    a, b = [Fraction(1, n)] * n, [Fraction(1, m)] * m
    i = j = 0
    plan: dict[tuple[int, int], Fraction] = {}
    while i < n and j < m:
        f = min(a[i], b[j])
        plan[i, j] = plan.get((i, j), 0) + f
        a[i] -= f
        b[j] -= f
        i, j = i + (a[i] == 0), j + (b[j] == 0)
    return plan


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=40))
def test_nw_grid_is_the_greedy_walk_of_every_pair(labels):
    k = 7
    y = torch.tensor(labels)
    counts = class_counts(y, k)
    order, grouped, partner, mass = nw_grid(y, counts)
    cls = y[order]
    assert torch.equal(grouped, cls)
    offsets = torch.cumsum(counts, 0) - counts
    for c in range(k):
        for o in range(c + 1, k):
            n, m = int(counts[c]), int(counts[o])
            got: dict[tuple[int, int], float] = {}
            for s in range(len(labels)):  # A's entries (class c) and B's (class o)
                if int(cls[s]) in (c, o):
                    other = o if int(cls[s]) == c else c
                    w = float(mass[s, other])
                    if w:
                        ra = s - int(offsets[int(cls[s])])
                        rb = int(partner[s, other]) - int(offsets[other])
                        key = (ra, rb) if int(cls[s]) == c else (rb, ra)
                        got[key] = got.get(key, 0.0) + w
            want = _nw_walk(n, m) if n and m else {}
            assert set(got) == set(want), (c, o, got, want)
            for key, w in want.items():
                assert got[key] == pytest.approx(float(w), rel=1e-15)
    assert torch.all(mass[torch.arange(len(labels)), cls] == 0)  # nothing to a sample's own class


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 9), st.integers(2, 50), st.integers(1, 200), st.integers(0, 10**6),
       st.sampled_from([1e-20, 1.0, 1e20]))
def test_fixed_distances_match_class_distances_on_present_pairs(k, n, chunk, seed, scale):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    y[:2] = torch.tensor([0, k - 1])  # at least two classes
    x = torch.randn(n, 5, generator=g, dtype=torch.float64) * scale
    x[n // 2] = x[0]  # a duplicate: zero distances
    counts, pairs = class_counts(y, k), pair_index(k, "cpu")
    present = (counts[pairs[0]] > 0) & (counts[pairs[1]] > 0)
    for name, fn in (("l2", fixed_l2), ("fastft", fixed_fastft)):
        rho = fn(x, y, counts, pairs, chunk)
        _, want = class_distances(x, y, name)
        torch.testing.assert_close(rho[present], want, rtol=1e-10, atol=1e-12 * scale)
    assert torch.all(fixed_fastft(x, y, counts, pairs, chunk)[~present] == 0)
    theta = random_projections(5, 3, seed=seed, dtype=torch.float64)
    for p in (1, 2, 3):
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        rho = fixed_swd(a, y, counts, pairs, theta, p, chunk)
        _, want = class_distances(b, y, "swd", projections=theta, p=p)
        torch.testing.assert_close(rho[present], want, rtol=1e-10, atol=1e-12 * scale)
        assert torch.all(rho[~present] == 0)
        w = torch.rand(want.shape[0], generator=g, dtype=torch.float64)
        (rho[present] * w).sum().backward()
        (want * w).sum().backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-10 * float(b.grad.abs().max()))


@pytest.mark.parametrize("chunk", [1, 7, 10_000])  # rows backward in chunks; dense [n, n]
def test_pair_norms_gradient_matches_autograd_with_coinciding_rows(chunk):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 4, generator=g, dtype=torch.float64)
    x[5] = x[2]
    ia = torch.randint(0, 9, (40,), generator=g)
    ib = torch.randint(0, 9, (40,), generator=g)
    ib[:3] = ia[:3]  # a row with itself
    ia[3], ib[3] = 2, 5  # two coinciding rows
    w = torch.rand(40, generator=g, dtype=torch.float64)
    a = x.clone().requires_grad_()
    (pair_norms(a, ia, ib, chunk) * w).sum().backward()
    b = x.clone().requires_grad_()
    (torch.linalg.vector_norm(b[ia] - b[ib], dim=1) * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(pair_norms(x, ia, ib, chunk), torch.linalg.vector_norm(x[ia] - x[ib], dim=1))


def test_masked_correlation_is_pearson_of_the_masked_entries():
    g = torch.Generator().manual_seed(2)
    t = torch.rand(30, generator=g, dtype=torch.float64)
    r = torch.rand(30, generator=g, dtype=torch.float64)
    mask = torch.rand(30, generator=g) > 0.4
    r_off = torch.where(mask, r, 1e30)  # what is off the mask does not matter
    corr, defined = correlation(t, r_off, mask=mask)
    assert bool(defined)
    assert float(corr) == pytest.approx(pearsonr(t[mask].numpy(), r[mask].numpy())[0], rel=1e-12)
    one = torch.zeros(30, dtype=torch.bool)
    one[4] = True  # a single pair: undefined, as the default path with one pair
    assert not bool(correlation(t, r, mask=one)[1])


def _pair(tree, distance, x, y, dtype=torch.float64):
    opts = {"projections": random_projections(x.shape[1], 4, seed=1)} if distance == "swd" else {}
    out = []
    for graph in (False, True):
        crit = CPCCLoss(tree, distance, cuda_graph=graph, **opts)
        f = x.to(dtype).clone().requires_grad_()
        loss = crit(f, y)
        (3.0 * loss).backward()
        out.append((loss.detach(), f.grad))
    return out


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["l2", "fastft", "swd"]), st.integers(3, 10), st.integers(3, 60),
       st.integers(0, 10**6), st.sampled_from([1e-30, 1e-3, 1.0, 1e30]),
       st.sampled_from([torch.float32, torch.float64]))
def test_graph_loss_and_gradient_match_the_default_path(distance, k, n, seed, scale, dtype):
    """Against the default path in float64: float64 to 1e-9; float32 to 1e-4 of the largest
    gradient entry (with 3 classes CPCC has 3 pairs and amplifies float32 rounding: the default
    path's own float32 error reaches ~1e-5 there)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    y[:3] = torch.tensor([0, 1, k - 1])
    x = torch.randn(n, 6, generator=g, dtype=torch.float64) * scale
    (want, want_grad), _ = _pair(_tree(k), distance, x, y)
    _, (got, got_grad) = _pair(_tree(k), distance, x, y, dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    torch.testing.assert_close(got_grad.double(), want_grad, rtol=tol, atol=tol * float(want_grad.abs().max()))
    assert torch.isfinite(got_grad).all()


def test_graph_loss_is_one_with_zero_gradient_for_one_class_and_value_without_grad():
    tree = _tree(6)
    x = torch.randn(8, 3, requires_grad=True)
    loss = CPCCLoss(tree, "fastft", cuda_graph=True)(x, torch.full((8,), 2))
    loss.backward()
    assert loss.item() == 1.0 and torch.all(x.grad == 0)
    y = torch.arange(8) % 6
    with torch.no_grad():
        plain = CPCCLoss(tree, "l2")(x, y)
        graph = CPCCLoss(tree, "l2", cuda_graph=True)(x, y)
    assert float(graph) == pytest.approx(float(plain), rel=1e-6)


def test_graph_loss_is_nan_for_bad_labels_and_non_finite_features():
    crit = CPCCLoss(_tree(6), "fastft", cuda_graph=True)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = torch.arange(8) % 6
    assert math.isnan(crit(x, y.clone().fill_(7)).item())
    bad = x.detach().clone()
    bad[1, 0] = math.nan
    assert math.isnan(crit(bad.requires_grad_(), y).item())
    big = x.detach().clone() * 1e37  # finite features whose distances overflow float32: samples
    big[0, 0], big[1, 0] = 3e38, -3e38  # 0 and 1 (classes 0 and 1, coupled) are 6e38 apart
    assert math.isnan(crit(big.requires_grad_(), y).item())
    assert math.isfinite(crit(x, y).item())


@pytest.mark.parametrize("args, message", [
    (("sinkhorn",), {}), (("emd",), {}), (("fastft",), {"weights": "near"}),
    (("fastft",), {"order": "sorted"}),
])
def test_cuda_graph_refuses_what_it_cannot_compute(args, message):
    with pytest.raises(ValueError, match="cuda_graph=True"):
        CPCCLoss(_tree(6), *args, cuda_graph=True, **message)
    with pytest.raises(TypeError, match="cuda_graph must be True or False"):
        CPCCLoss(_tree(6), "l2", cuda_graph="yes")


@pytest.mark.parametrize("distance, opts", [("l2", {}), ("fastft", {}), ("swd", {}), ("swd", {"seed": 3})])
def test_graph_step_makes_no_host_sync(distance, opts):
    f, y, tree = make_problem(128, 12, 4, 16, seed=0)
    crit = CPCCLoss(tree, distance, cuda_graph=True, **opts)
    x = f.detach().clone().requires_grad_()

    def step():
        x.grad = None
        crit(x, y).backward()

    step()
    assert count_syncs(step).total == 0


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs CUDA; the cpu case is its twin")])])
@pytest.mark.parametrize("distance", ["l2", "fastft", "swd"])
def test_replayed_batches_match_the_default_path_on_cpu(device, distance):
    """New data through the same (captured, on CUDA) shape, and a second shape, each against
    the default path on CPU in float64."""
    f, y, tree = make_problem(96, 10, 3, 16, seed=0)
    opts = {"projections": random_projections(16, 5, seed=2)} if distance == "swd" else {}
    crit = CPCCLoss(tree, distance, cuda_graph=True, **opts).to(device)
    g = torch.Generator().manual_seed(5)
    for n in (96, 96, 64, 96):
        x = torch.randn(n, 16, generator=g) * 3
        yy = y[torch.randperm(96, generator=g)[:n]]
        got = x.to(device).clone().requires_grad_()
        loss = crit(got, yy.to(device))
        loss.backward()
        want = x.detach().double().requires_grad_()
        ref = CPCCLoss(tree, distance, **opts)(want, yy)
        ref.backward()
        assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
        torch.testing.assert_close(got.grad.cpu().double(), want.grad, rtol=1e-4,
                                   atol=1e-4 * float(want.grad.abs().max()))


def test_train_cuda_graph_flag_gives_the_same_run_and_refuses_what_it_cannot(tmp_path, capsys):
    """``otcpcc train --cuda-graph`` on CPU trains the same model (the fixed-shape loss equals the
    default one to rounding); emd or fastft order=sorted are refused in one line, nothing written."""
    tiny = ["--epochs", "1", "--no-progress", "--data-opt", "train_per_class=12", "--data-opt",
            "test_per_class=6"]
    runs = {}
    for flag in ([], ["--cuda-graph"]):
        out = tmp_path / ("graph" if flag else "plain")
        assert main(["train", *tiny, "--distance", "fastft", *flag, "--out", str(out)]) == 0
        runs[bool(flag)] = json.loads((out / "metrics.json").read_text())
    assert json.loads((tmp_path / "graph" / "config.json").read_text())["cuda_graph"] is True
    for key in ("test_acc", "test_cpcc", "train_loss"):
        assert runs[True][key] == pytest.approx(runs[False][key], abs=1e-4), key
    capsys.readouterr()
    for extra in (["--distance", "emd"], ["--dist-opt", "order=sorted"]):
        code = main(["train", *tiny, "--cuda-graph", *extra, "--out", str(tmp_path / "bad")])
        one_line_error(capsys, code, "cuda_graph=True")
        assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("distance, opts", [("l2", {}), ("fastft", {}), ("swd", {}), ("swd", {"seed": 3})])
def test_graph_loss_and_gradient_run_on_the_meta_device(monkeypatch, distance, opts):
    """What a CUDA graph capture needs, checked on a CPU: the meta device holds shapes but no
    data, so any host read of a value (.item(), nonzero, .tolist()) or any tensor built on the host
    and mixed in fails there. The whole loss and its gradient run on it; the default path (which
    reads the class sizes) does not (the negative control)."""
    import contextlib

    monkeypatch.setattr(torch, "autocast", lambda *a, **k: contextlib.nullcontext())  # no meta autocast
    _, _, tree = make_problem(64, 10, 3, 8, seed=0)
    x = torch.empty(64, 8, device="meta", requires_grad=True)
    labels = torch.empty(64, dtype=torch.long, device="meta")
    loss = CPCCLoss(tree, distance, cuda_graph=True, **opts).to("meta")(x, labels)
    loss.backward()
    assert loss.shape == () and x.grad.shape == (64, 8)
    with pytest.raises((RuntimeError, NotImplementedError)):
        CPCCLoss(tree, distance, **opts).to("meta")(x, labels)


def test_graph_bad_labels_give_a_nan_gradient_too_and_second_derivatives_raise():
    """Breaker findings: an out-of-range label made the loss NaN but the gradient 0 (an optimiser
    step on CE alone would go ahead unseen); a gradient penalty silently missed CPCC's part."""
    crit = CPCCLoss(_tree(6), "fastft", cuda_graph=True)
    x = torch.randn(8, 3, requires_grad=True)
    y = torch.arange(8) % 6
    for bad in (-1, 6, 10**12):
        x.grad = None
        crit(x, y.clone().fill_(bad)).backward()
        assert torch.isnan(x.grad).all(), bad
    x.grad = None
    crit(x, y).backward()
    assert torch.isfinite(x.grad).all()
    penalty = (x**2).sum() * 1e-3 + crit(x, y)
    with pytest.raises(RuntimeError, match="no second derivatives"):
        torch.autograd.grad(penalty, x, create_graph=True)


def test_graph_refuses_huge_label_sets_and_copies_start_without_graphs():
    import copy
    import pickle

    with pytest.raises(ValueError, match=r"12,497,500 for K = 5000 \(at most 4096 classes\)"):
        CPCCLoss(LabelTree.from_levels([[i // 10 for i in range(5000)]]), "l2", cuda_graph=True)
    crit = CPCCLoss(_tree(6), "l2", cuda_graph=True)
    crit._fixed.graphs.graphs["fake"] = object()  # stands for a captured CUDA graph (not copyable)
    for twin in (copy.deepcopy(crit), pickle.loads(pickle.dumps(crit))):
        assert not twin._fixed.graphs.graphs and twin.cuda_graph


def test_a_failed_capture_warns_once_and_that_shape_runs_without_a_graph(monkeypatch):
    """A CUDA graph that cannot be captured (an operation capture forbids) must not end a run:
    one warning naming the error, then the same loss and gradient, computed eagerly, for that
    shape; the capture is not tried again every step. (On CPU: the capture is replaced by one
    that raises as CUDA does.)"""
    from otcpcc.objectives import graphed

    tries = []

    def failing(fn, x, labels):
        tries.append(tuple(x.shape))
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore")

    monkeypatch.setattr(graphed, "_Captured", failing)
    f, y, tree = make_problem(48, 6, 2, 5, seed=1)
    crit = CPCCLoss(tree, "fastft", cuda_graph=True)
    cache = crit._fixed.graphs
    fn = lambda x, labels: graphed.fixed_loss(x, labels, *crit._fixed._target(crit.tree_dist), 6,  # noqa: E731
                                              "fastft", chunk=64)
    with pytest.warns(RuntimeWarning, match=r"capturing the CUDA graph for features \(48, 5\) failed "
                                            r"\(CUDA error: operation not permitted when stream is capturing\)"):
        loss, grad = cache(fn, f, y)
    want_loss, want_grad = graphed.value_and_grad(fn, f, y)
    assert loss.item() == want_loss.item() and torch.equal(grad, want_grad) and loss.item() > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again, _ = cache(fn, f * 2, y)
    assert tries == [(48, 5)] and again.item() == pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.parametrize("graph", [False, True])
def test_nan_swd_projections_are_refused_when_built(graph):
    theta = random_projections(3, 4, seed=0)
    theta[1, 2] = math.inf
    with pytest.raises(ValueError, match="projections has NaN or inf entries"):
        CPCCLoss(_tree(6), "swd", cuda_graph=graph, projections=theta)


def test_cuda_graph_flags_override_a_config_file_and_may_change_on_resume(tmp_path, capsys):
    """A config file's cuda_graph + emd is fixed by --no-cuda-graph (cross-field checks run after
    the flags); a quoted "true" is named; resuming with --cuda-graph changed is allowed."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("distance: emd\ncuda_graph: true\nepochs: 1\n")
    tiny = ["--no-progress", "--data-opt", "train_per_class=8", "--data-opt", "test_per_class=4"]
    out = tmp_path / "r"
    assert main(["train", "--config", str(cfg), "--no-cuda-graph", *tiny, "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["cuda_graph"] is False
    capsys.readouterr()
    one_line_error(capsys, main(["train", "--config", str(cfg), *tiny, "--out", str(tmp_path / "r2")]),
                   "cuda_graph (--cuda-graph): cuda_graph=True supports distance")
    cfg.write_text("distanse: l2\n")  # a bad key the flags do not fix is still named in the file
    one_line_error(capsys, main(["train", "--config", str(cfg), *tiny, "--out", str(tmp_path / "r3")]),
                   f"unknown key 'distanse' in {cfg}")
    cfg.write_text('distance: l2\ncuda_graph: "true"\nepochs: 1\n')
    one_line_error(capsys, main(["train", "--config", str(cfg), *tiny, "--out", str(tmp_path / "r3")]),
                   "(write it without quotes)")
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--cuda-graph", "--distance",
                 "l2", "--no-progress"]) == 2  # the distance may not change ...
    capsys.readouterr()
    run = tmp_path / "r4"
    assert main(["train", "--distance", "l2", "--epochs", "1", *tiny, "--out", str(run)]) == 0
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--cuda-graph", "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["cuda_graph"] is True  # ... cuda_graph may


def test_train_cuda_graph_on_a_cpu_says_it_runs_eagerly(tmp_path, capsys):
    tiny = ["--epochs", "1", "--data-opt", "train_per_class=8", "--data-opt", "test_per_class=4"]
    assert main(["train", *tiny, "--distance", "l2", "--cuda-graph", "--out", str(tmp_path / "a")]) == 0
    assert "note: --cuda-graph only replays graphs on CUDA" in capsys.readouterr().err
    assert main(["train", *tiny, "--distance", "none", "--cuda-graph", "--out", str(tmp_path / "b")]) == 0
    assert "cuda-graph" not in capsys.readouterr().err  # no CPCC term (compare's flat CE runs)


def test_cpcc_refuses_two_classes_and_merged_config_errors_name_the_real_cause(tmp_path, capsys):
    """Breaker findings: with 2 classes CPCC is always undefined and silently did nothing; a
    config file's value fixed by a flag was still reported while another value was the cause."""
    with pytest.raises(ValueError, match="CPCC needs at least 3 classes, got 2"):
        CPCCLoss(LabelTree.from_parents({"a": "r", "b": "r"}), "l2")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: -1\n")
    one_line_error(capsys, main(["train", "--config", str(cfg), "--lr", "0.1", "--epochs", "0",
                                 "--out", str(tmp_path / "r")]), "epochs")
