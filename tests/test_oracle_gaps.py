"""Where a wrong answer used to ship green (a mutation check, issue 15): each test here failed on a
deliberate bug in the code it guards and passes on the real code.

- the regulariser must train something (not only be computed);
- float32 features with large offsets: centring and the near-zero Gram recompute keep every distance
  and gradient exact;
- exact EMD above the Gram threshold (the per-pair cdist blocks) against POT;
- sliced Wasserstein with p != 2 against POT;
- the pair enumeration itself (a swap of the two classes of a pair is invisible to symmetric distances);
- asymmetric cost matrices through every mistake metric against brute force.
"""

from __future__ import annotations

import itertools
import json
import sys

import numpy as np
import ot
import pytest
import torch

from oracles import oracle_distances
from otcpcc import class_distances
from otcpcc.distances import random_projections
from otcpcc.distances.cost import GRAM_ALWAYS_N
from otcpcc.distances.groups import group_by_class
from otcpcc.metrics import expected_cost, hier_dist_at_k, mistake_severity
from otcpcc.runs.config import TrainConfig
from otcpcc.training import train

NAMES = ["l2", "emd", "sinkhorn", "swd", "fastft"]


# ----------------------------------------------------------------------------- the regulariser trains
def _test_cpcc(tmp_path, lam: float) -> float:
    cfg = TrainConfig.from_dict(dict(
        data="synthetic", data_options={"train_per_class": 20, "test_per_class": 10, "branching": [2, 3]},
        epochs=6, batch_size=16, lr=0.05, model_options={"hidden": [32, 16]}, device="cpu",
        distance="fastft", lam=lam, seed=0))
    out = train(cfg, tmp_path / f"lam{lam}", progress=False)
    return json.loads((out / "metrics.json").read_text())["test_cpcc"]


@pytest.mark.slow
def test_the_cpcc_term_raises_test_cpcc_for_the_same_seed(tmp_path):
    """Same seed, data and model: lambda = 1 ends with a TestCPCC(fastft) well above lambda = 0
    (0.84 vs 0.51 here; over seeds 0-5 the gap was 0.33-0.78). A detached regulariser gives equal values."""
    flat, reg = _test_cpcc(tmp_path, 0.0), _test_cpcc(tmp_path, 1.0)
    assert reg > flat + 0.2, (flat, reg)


# ----------------------------------------------------------------------------- large offsets
def _offset_batch(seed=0, n=90, d=8, layout="common"):
    """Six classes 0.01 apart. ``common``: all at 1000 (one common offset). ``split``: classes
    0-2 at +1000, 3-5 at -1000, so the batch mean is ~0 and centring cannot remove the offset."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 6, size=n)
    y[:6] = np.arange(6)
    side = np.where(y < 3, 1.0, -1.0)[:, None] if layout == "split" else 1.0
    x = 1000.0 * side + 0.01 * (rng.normal(size=(n, d)) + 2.0 * rng.normal(size=(6, d))[y])
    return x, y


def _opts(name, d):
    opts: dict = {}
    kw: dict = {}
    if name == "swd":
        theta = random_projections(d, 10, seed=0, dtype=torch.float64)
        opts["projections"] = theta.float()
        kw["projections"] = theta.numpy()
    if name == "sinkhorn":
        opts["reg"] = kw["reg"] = 0.01  # the default 10 is huge against costs of ~0.03: a flat plan
    return opts, kw


@pytest.mark.parametrize(("name", "layout"), [
    (name, layout) for name in [*NAMES, "fastft-bands", "fastft-gpu-layout"]
    for layout in ("common", "split")
    # POT's sinkhorn (the oracle) underflows on the split pairs: costs ~5e5 times reg
    if (name, layout) != ("sinkhorn", "split")])
def test_float32_with_a_large_offset_matches_the_float64_oracle(name, layout, monkeypatch):
    """Features ±1000 + 0.01 * noise in float32: the Gram identity ||a||^2 + ||b||^2 - 2ab loses every
    digit of the distances (they are ~1e-2, the squares ~1e6). A common offset is removed by centring
    the batch; where classes sit on both sides of the mean (``split``) the entries are recomputed from
    differences (without the recompute, l2 and fastft fail on ``split``; emd builds its cost
    blocks in float64)."""
    x, y = _offset_batch(layout=layout)
    x32 = torch.tensor(x, dtype=torch.float32)
    if name.startswith("fastft-"):  # "fastft" itself takes the stored plans at this size
        monkeypatch.setattr(sys.modules["otcpcc.distances.fastft"], "PATH", "bands")
    if name == "fastft-gpu-layout":  # the deferred cancellation check, then the exact rerun
        monkeypatch.setattr(sys.modules["otcpcc.distances.bands"], "GPU_LAYOUT", True)
    name = name.split("-")[0]
    # the oracle sees exactly the float32 inputs, computed in float64
    xo = x32.double().numpy()
    opts, kw = _opts(name, x.shape[1])
    got = class_distances(x32, torch.tensor(y), name, **opts)[1].double().numpy()
    want = oracle_distances(name, xo, y, **kw)
    np.testing.assert_allclose(got, want, rtol=2e-2)


@pytest.mark.parametrize("name", NAMES)
def test_float32_values_and_gradients_with_a_huge_common_offset(name):
    """Features 1e5 + noise in float32 (spacing 0.008 there, noise 1): values and constant-plan
    gradients match the same float32 inputs computed in float64 to ~1e-6. Before the batch was
    centred, swd gradients were 13% off, l2 values 2% and gradients 6%."""
    rng = np.random.default_rng(1)
    y = np.arange(200) % 5
    x32 = torch.tensor(1e5 + rng.normal(size=(200, 16)) + rng.normal(size=(5, 16))[y],
                       dtype=torch.float32)
    weights = torch.tensor(rng.normal(size=10))
    opts, _ = _opts(name, 16)
    opts = {k: (v.double() if k == "projections" else v) for k, v in opts.items()}
    if name == "sinkhorn":
        opts["reg"] = 1.0
    grads, values = [], []
    for dtype in (torch.float32, torch.float64):
        xt = x32.detach().to(dtype).requires_grad_()
        o = {k: (v.to(dtype) if k == "projections" else v) for k, v in opts.items()}
        rho = class_distances(xt, torch.tensor(y), name, **o)[1]
        (rho.double() * weights).sum().backward()
        values.append(rho.detach().double())
        grads.append(xt.grad.double())
    np.testing.assert_allclose(values[0], values[1], rtol=1e-5)
    assert float((grads[0] - grads[1]).norm() / grads[1].norm()) < 1e-5


# ----------------------------------------------------------------------------- exact EMD, large N
def test_exact_emd_above_the_gram_threshold_matches_pot():
    """More than GRAM_ALWAYS_N samples: each pair's cost block comes from cdist, not one matrix."""
    rng = np.random.default_rng(3)
    sizes = [700, 650, 760]  # unequal: the LP path, not an assignment
    assert sum(sizes) > GRAM_ALWAYS_N
    y = np.repeat(np.arange(3), sizes)
    x = rng.normal(size=(y.size, 3)) + 2.0 * rng.normal(size=(3, 3))[y]
    perm = rng.permutation(y.size)
    x, y = x[perm], y[perm]
    got = class_distances(torch.tensor(x), torch.tensor(y), "emd")[1].numpy()
    want = [ot.emd2(np.full(sizes[i], 1 / sizes[i]), np.full(sizes[j], 1 / sizes[j]),
                    ot.dist(x[y == i], x[y == j], metric="euclidean"), numItermax=10**7)
            for i, j in itertools.combinations(range(3), 2)]
    np.testing.assert_allclose(got, want, rtol=1e-6)


# ----------------------------------------------------------------------------- swd, p != 2
@pytest.mark.parametrize("p", [1, 3])
def test_swd_with_p_other_than_two_matches_pot(p):
    rng = np.random.default_rng(p)
    y = np.repeat(np.arange(4), [7, 5, 9, 1])
    x = rng.normal(size=(y.size, 5)) + 3.0 * rng.normal(size=(4, 5))[y]
    theta = random_projections(5, 12, seed=p, dtype=torch.float64)
    got = class_distances(torch.tensor(x), torch.tensor(y), "swd", p=p, projections=theta)[1].numpy()
    want = [ot.sliced_wasserstein_distance(x[y == i], x[y == j], n_projections=12, p=p,
                                           projections=theta.numpy())
            for i, j in itertools.combinations(range(4), 2)]
    np.testing.assert_allclose(got, want, rtol=1e-6)


# ----------------------------------------------------------------------------- pair enumeration
def test_pairs_are_the_combinations_of_the_present_classes_in_order():
    labels = torch.tensor([7, 2, 2, 9, 0, 7, 9, 9])
    g = group_by_class(labels)
    assert g.classes.tolist() == [0, 2, 7, 9]
    assert g.counts.tolist() == [1, 2, 2, 3]
    pairs = list(zip(g.pair_i.tolist(), g.pair_j.tolist(), strict=True))
    assert pairs == list(itertools.combinations(range(4), 2))
    assert torch.equal(labels[g.order], torch.tensor([0, 2, 2, 7, 7, 9, 9, 9]))
    assert g.order.tolist()[1:3] == [1, 2]  # stable: batch order kept inside a class


# ----------------------------------------------------------------------------- asymmetric costs
def _asym(k=5, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.uniform(0.5, 5.0, size=(k, k))
    np.fill_diagonal(c, 0.0)
    assert not np.allclose(c, c.T)
    return c


def test_mistake_severity_reads_true_row_predicted_column():
    c = _asym()
    y = np.array([0, 1, 2, 3, 4, 0, 2])
    p = np.array([1, 1, 4, 0, 2, 3, 2])
    brute = [c[t, q] for t, q in zip(y, p, strict=True) if t != q]
    assert mistake_severity(p, y, c) == pytest.approx(np.mean(brute))


def test_hier_dist_at_k_reads_true_row_predicted_column():
    c = _asym(seed=1)
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(8, 5))
    y = rng.integers(0, 5, size=8)
    for k in (1, 2, 4):
        brute = []
        for s, t in zip(scores, y, strict=True):
            top = sorted(range(5), key=lambda j, s=s: (-s[j], j))[:k]
            brute.append(np.mean([c[t, j] for j in top]))
        assert hier_dist_at_k(scores, y, c, k) == pytest.approx(np.mean(brute)), k


def test_expected_cost_reads_true_row_predicted_column():
    c = _asym(seed=3)
    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(5), size=6)
    y = rng.integers(0, 5, size=6)
    brute = np.mean([sum(probs[i, j] * c[y[i], j] for j in range(5)) for i in range(6)])
    assert expected_cost(probs, y, c) == pytest.approx(brute)


# ----------------------------------------------------------------------------- AMP and SyncBatchNorm
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA; the cpu case is its twin")])]


@pytest.mark.parametrize("device", DEVICES)
def test_amp_step_runs_the_model_in_bf16_and_cpcc_in_float32(device):
    """train_step(amp=True): the forward runs under bf16 autocast (the loss moves by bf16 rounding, not
    more), the CPCC term receives float32 features, and the step equals one computed by hand."""
    from otcpcc.objectives import CPCCLoss
    from otcpcc.training.step import train_step
    from otcpcc.tree import LabelTree

    dev = torch.device(device)
    tree = LabelTree.from_levels([[0, 0, 1, 1]])
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 6, generator=g), torch.arange(16) % 4
    seen = []

    class Spy(CPCCLoss):
        def forward(self, features, labels):
            seen.append(features.dtype)
            return super().forward(features, labels)

    def run(amp: bool):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU()).to(dev)
        head = torch.nn.Linear(8, 4).to(dev)
        net = _TwoHeads(model, head)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        cfg = TrainConfig(lam=1.0, distance="l2")
        stats = train_step(net, Spy(tree, distance="l2"), opt, x, y, cfg, dev, amp)
        return stats, net

    full, net32 = run(False)
    half, net16 = run(True)
    assert seen == [torch.float32, torch.float32]
    assert half.loss != full.loss  # autocast is really on
    assert half.loss == pytest.approx(full.loss, rel=2e-2)
    # by hand: the same forward under autocast, CE + (1 - CPCC) in float32
    torch.manual_seed(0)
    ref = _TwoHeads(torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU()), torch.nn.Linear(8, 4)).to(dev)
    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
        f, z = ref(x.to(dev))
    from otcpcc import cpcc as cpcc_value
    f, z = f.detach(), z.detach()
    want = float(torch.nn.functional.cross_entropy(z.float(), y.to(dev))) + 1.0 - cpcc_value(f.float(), y.to(dev), tree)
    assert half.loss == pytest.approx(want, rel=1e-5)


class _TwoHeads(torch.nn.Module):
    def __init__(self, body, head):
        super().__init__()
        self.body, self.head = body, head

    def forward(self, x):
        f = self.body(x)
        return f, self.head(f)


@pytest.mark.parametrize("device", DEVICES)
def test_sync_batchnorm_conversion_per_device(device):
    """--sync-bn: PyTorch's SyncBatchNorm on CUDA, the gloo-capable CPUSyncBatchNorm on the CPU; the
    converted layer keeps the running statistics and affine parameters."""
    from otcpcc.distributed.syncbn import CPUSyncBatchNorm, convert_sync_batchnorm

    bn = torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        bn.running_mean.copy_(torch.tensor([0.5, -0.5, 1.5]))
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), bn).to(device)
    out = convert_sync_batchnorm(model, torch.device(device))
    layer = out[1]
    want = torch.nn.SyncBatchNorm if device == "cuda" else CPUSyncBatchNorm
    assert isinstance(layer, want)
    assert torch.equal(layer.weight.detach().cpu(), torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(layer.running_mean.cpu(), torch.tensor([0.5, -0.5, 1.5]))


# ----------------------------------------------------------------------------- extreme scales
def _four_leaf_tree():
    from otcpcc import LabelTree

    return LabelTree.from_parents({"a": "P", "b": "P", "c": "Q", "d": "Q", "P": "R", "Q": "R"})


@pytest.mark.parametrize("name,opts", [("l2", {}), ("emd", {}), ("fastft", {"order": "sorted"}),
                                       ("fastft", {}), ("swd", {"seed": 0})])
def test_tiny_features_have_finite_scaled_gradients(name, opts):
    """CPCC is scale invariant, so the gradient at s·x is the gradient at x divided by s. At
    s = 1e-20 in float32 the plan-cost backward divided huge upstream gradients by tiny norms and
    overflowed to inf, then NaN (l2, emd, sorted fastft); it now works in units of the scale."""
    from otcpcc import CPCCLoss

    tree = _four_leaf_tree()
    x0 = torch.tensor(np.random.default_rng(0).normal(size=(8, 5)))
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    ref = x0.clone().requires_grad_()
    CPCCLoss(tree, name, **opts)(ref, y).backward()
    for s in (1e-20, 1e-30):
        x = (x0 * s).float().requires_grad_()
        CPCCLoss(tree, name, **opts)(x, y).backward()
        assert torch.isfinite(x.grad).all()
        assert float((x.grad.double() * s - ref.grad).norm() / ref.grad.norm()) < 1e-5


def test_cpcc_of_float32_features_with_a_large_common_offset_is_not_called_undefined():
    """Four well separated classes + 1e6 in float32: CPCC is 1 as in float64. The rounding bound
    that decides 'all distances equal' used max|x| (1e6) although the distances see the centred
    batch, so it called CPCC undefined and returned 0 (and the loss had no gradient)."""
    from otcpcc import cpcc

    rng = np.random.default_rng(0)
    y = np.arange(200) % 4
    centres = 3.0 * np.array([[1.0, 0.0], [1.0, 0.3], [-1.0, 0.0], [-1.0, 0.3]])
    base = rng.normal(size=(200, 64)) + np.tile(centres[y], (1, 32))
    for name in ("l2", "fastft"):
        want = cpcc(torch.tensor(base), torch.tensor(y), _four_leaf_tree(), name)
        got = cpcc(torch.tensor(base + 1e6, dtype=torch.float32), torch.tensor(y), _four_leaf_tree(), name)
        assert want > 0.9 and got == pytest.approx(want, abs=1e-3)
