"""Defects of the library's bad-input trial, each pinned by values: HXE / soft-label losses on NaN
logits and empty batches, LabelTree.levels on deep trees, CPCC gradients of tiny features, emd's
overflow error, swd's zero projection columns, and diagnose below its per-class minimum."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from otcpcc import CPCCLoss, HXELoss, LabelTree, SoftLabelLoss, cpcc
from otcpcc.cli import main
from otcpcc.distances.cost import overflow_error
from otcpcc.tree.common import Level

TREE6 = LabelTree.from_levels([[0, 0, 1, 1, 2, 2]])


# ------------------------------------------------------------------ 1. HXE / soft labels
@pytest.mark.parametrize("make", [lambda: HXELoss(TREE6, alpha=0.3), lambda: SoftLabelLoss(TREE6, beta=5)])
def test_task_losses_refuse_nan_logits_and_give_zero_on_an_empty_batch(make):
    crit = make()
    logits, y = torch.randn(8, 6, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 6
    bad = logits.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match=r"^logits contain NaN or inf in 1 of 8 rows; check the model"):
        crit(bad, y)
    bad[5, 0] = float("inf")
    with pytest.raises(ValueError, match="in 2 of 8 rows"):
        crit(bad, y)
    empty = torch.zeros(0, 6, requires_grad=True)
    loss = crit(empty, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and empty.grad is not None and empty.grad.shape == (0, 6)
    # finite logits keep their value: HXE with alpha = 0 and soft labels with beta -> oo are CE
    ref = torch.nn.functional.cross_entropy(logits, y)
    assert torch.allclose(HXELoss(TREE6, alpha=0.0)(logits, y), ref, rtol=1e-6)


def test_a_diverged_model_under_hxe_is_a_non_finite_step_not_a_bad_input_error():
    from otcpcc.runs.config import TrainConfig
    from otcpcc.training.step import train_step

    class Nan(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            return x * self.w, torch.full((x.shape[0], 6), float("nan")) * self.w

    model = Nan()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = train_step(model, None, opt, torch.randn(4, 3), torch.arange(4), TrainConfig(),
                       torch.device("cpu"), False, HXELoss(TREE6))
    assert math.isnan(stats.loss) and stats.n == 4 and model.w.item() == 1.0  # no step taken


# ------------------------------------------------------------------ 2. LabelTree.levels
def _levels_walking_up(tree: LabelTree) -> list[Level]:
    """The former implementation (walk up from every leaf at every depth), as the oracle."""
    out = []
    dmax = max(tree.depth(n) for n in tree.leaves)
    for d in range(dmax - 1, 0, -1):
        targets = []
        for leaf in tree.leaves:
            n = leaf
            while tree.depth(n) > d:
                n = tree.parent(n)
            targets.append(n)
        pos: dict[str, int] = {}
        for t in targets:
            pos.setdefault(t, len(pos))
        out.append(Level(f"depth{d}", np.array([pos[t] for t in targets], dtype=np.int64), list(pos)))
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=40), st.randoms(use_true_random=False))
def test_levels_match_walking_up_on_random_trees(picks, rnd):
    parent: dict[str, str | None] = {"r": None}
    for i, p in enumerate(picks):  # node i hangs under a random earlier node
        parent[f"n{i}"] = list(parent)[p % len(parent)]
    tree = LabelTree(parent)
    leaves = tree.leaves
    rnd.shuffle(leaves)
    tree = tree.restrict(leaves)  # a leaf order other than the natural one
    got, want = tree.levels, _levels_walking_up(tree)
    assert [lv.name for lv in got] == [lv.name for lv in want]
    for a, b in zip(got, want, strict=True):
        assert a.names == b.names and a.ids.dtype == np.int64 and np.array_equal(a.ids, b.ids)


def _caterpillar(depth: int) -> str:
    s = "(a,b0)"
    for i in range(1, depth):
        s = f"({s},b{i})"
    return s + ";"


def test_levels_of_a_2000_deep_caterpillar(tmp_path):
    # the former walk took ~0.76 s at depth 400 and grew as depth^3 (~95 s here); now ~0.3 s
    depth = 2000
    (tmp_path / "t.nwk").write_text(_caterpillar(depth))
    tree = LabelTree.from_file(tmp_path / "t.nwk")
    levels = tree.levels
    assert tree.num_classes == depth + 1 and len(levels) == depth - 1
    for d in (depth - 1, 1000, 1):  # leaves a, b0, ..., b{D-d-1} under the depth-d node; the rest
        lv = levels[depth - 1 - d]  # (b{D-d} .. b{D-1}, depths d .. 1) are their own nodes
        assert lv.name == f"depth{d}" and len(lv.names) == d + 1
        want = np.concatenate([np.zeros(depth - d + 1, dtype=np.int64), np.arange(1, d + 1)])
        assert np.array_equal(lv.ids, want)
        assert lv.names[1:] == [f"b{i}" for i in range(depth - d, depth)]
        assert tree.depth(lv.names[0]) == d


def test_hxe_tables_of_a_deep_caterpillar(tmp_path):
    depth, alpha = 800, 0.05  # the former per-entry tensor writes took ~3.7 s at depth 400
    (tmp_path / "t.nwk").write_text(_caterpillar(depth))
    tree = LabelTree.from_file(tmp_path / "t.nwk")
    crit = HXELoss(tree, alpha=alpha)
    a = tree.index("a")  # depth 800: edges above nodes of depth 800, 799, ..., 1
    assert torch.allclose(crit._weight[a], torch.exp(-alpha * torch.arange(depth, 0, -1, dtype=torch.float64)))
    last = tree.index(f"b{depth - 1}")  # depth 1: one edge, the rest padding of weight 0
    assert crit._weight[last, 0] == math.exp(-alpha) and not crit._weight[last, 1:].any()
    logits = torch.zeros(2, tree.num_classes)  # uniform: -log p(C_l)/p(C_l+1) by hand
    val = crit(logits, torch.tensor([last, last]))  # p(b{D-1}) / p(root) = 1 / (D + 1)
    assert math.isclose(val.item(), math.exp(-alpha) * math.log(depth + 1), rel_tol=1e-6)


# ------------------------------------------------------------------ 3. tiny features' gradient
def _grads(x32: torch.Tensor, y: torch.Tensor, distance: str, **opts):
    a = x32.clone().requires_grad_()
    loss32 = CPCCLoss(TREE6, distance=distance, **opts)(a, y)
    loss32.backward()
    b = x32.double().requires_grad_()  # the same (rounded) input, in float64
    loss64 = CPCCLoss(TREE6, distance=distance, **opts)(b, y)
    loss64.backward()
    return loss32.item(), a.grad, loss64.item(), b.grad


@pytest.mark.parametrize("distance, scale, n, d, seed", [
    ("fastft", 1e-38, 240, 32, 0), ("emd", 1e-38, 120, 64, 1), ("swd", 1e-38, 60, 16, 0),
    ("sinkhorn", 1e-38, 120, 64, 2), ("l2", 1e-40, 60, 16, 0)])
def test_cpcc_gradient_of_tiny_features_equals_float64(distance, scale, n, d, seed):
    # these gave NaN gradients (finite loss) before: 1/(s_r·norm) or w/‖x_a − x_b‖ overflowed
    torch.manual_seed(seed)
    x = torch.randn(n, d) * scale  # float32, partly subnormal; float64 of the same numbers = oracle
    y = torch.arange(n) % 6
    opts = {"seed": 0} if distance == "swd" else {}
    v32, g32, v64, g64 = _grads(x, y, distance, **opts)
    big = float(g64.abs().max())
    assert 1e35 < big < torch.finfo(torch.float32).max  # representable, near float32's edge
    assert torch.isfinite(g32).all()
    assert float((g32.double() - g64).abs().max()) <= 1e-4 * big
    assert abs(v32 - v64) < 1e-4


def test_cpcc_gradient_beyond_float32_saturates_with_its_sign():
    torch.manual_seed(0)
    x = torch.randn(12, 5) * 1e-40  # true gradient up to ~1.7e39: beyond float32
    y = torch.arange(12) % 6
    _, g32, _, g64 = _grads(x, y, "l2")
    fmax = torch.finfo(torch.float32).max
    over = g64.abs() > fmax
    assert over.any() and torch.isfinite(g32).all()
    assert torch.equal(g32[over].double(), torch.sign(g64[over]) * fmax)
    assert torch.allclose(g32[~over].double(), g64[~over], rtol=1e-3, atol=1e-4 * fmax)


def test_cpcc_gradient_at_ordinary_scale_unchanged():
    torch.manual_seed(3)
    x, y = torch.randn(30, 4, dtype=torch.float64), torch.arange(30) % 6
    a = x.clone().requires_grad_()
    CPCCLoss(TREE6, distance="fastft")(a, y).backward()
    b = (x * 1e-30).requires_grad_()  # CPCC is scale-free: the gradient scales as 1/scale
    CPCCLoss(TREE6, distance="fastft")(b, y).backward()
    assert torch.allclose(b.grad * 1e-30, a.grad, rtol=1e-9, atol=1e-12)
    # the same through autograd on the plain formula (tree distances vs rho from class_distances)
    from otcpcc import class_distances

    c = x.clone().requires_grad_()
    classes, rho = class_distances(c, y, "fastft")
    i, j = torch.combinations(classes).T.numpy()
    t = torch.from_numpy(TREE6.distance_matrix()[i, j])
    tc, rc = t - t.mean(), rho - rho.mean()
    (1 - (tc * rc).sum() / (tc.norm() * rc.norm())).backward()
    assert torch.allclose(c.grad, a.grad, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ 4. emd overflow
def test_emd_overflow_error_comes_before_the_solvers():
    torch.manual_seed(0)
    x, y = torch.rand(60, 8) * 3e38, torch.arange(60) % 6  # finite, but the centring overflows
    for distance in ("emd", "fastft"):  # 10 per class: emd's LP path (scipy, POT)
        with pytest.raises(ValueError) as err:
            cpcc(x, y, TREE6, distance=distance)
        assert str(err.value) == str(overflow_error(distance))
    with pytest.raises(ValueError, match="^emd distances are not finite although the features are"):
        cpcc(x, y, TREE6, distance="emd", weights="near")  # POT's network simplex


# ------------------------------------------------------------------ 5. swd zero directions
@pytest.mark.parametrize("proj", [torch.zeros(4, 3), torch.tensor([[1.0, 0], [0, 0], [0, 0], [2, 0]]),
                                  torch.full((4, 2), 1e-50, dtype=torch.float64)])
def test_swd_refuses_zero_projection_columns(proj):
    x, y = torch.randn(12, 4), torch.arange(12) % 6
    with pytest.raises(ValueError, match=r"^swd option projections has \d zero column\(s\) of \d"):
        cpcc(x, y, TREE6, distance="swd", projections=proj)  # 1e-50 is 0 in float32: caught late
    if proj.dtype == torch.float32:
        with pytest.raises(ValueError, match="zero column"):
            CPCCLoss(TREE6, distance="swd", projections=proj)


def test_swd_with_unit_projections_still_matches_pot():
    ot = pytest.importorskip("ot")
    torch.manual_seed(1)
    x, y = torch.randn(12, 3, dtype=torch.float64), torch.tensor([0] * 6 + [1] * 6)
    proj = torch.eye(3, dtype=torch.float64)
    from otcpcc import class_distances

    _, rho = class_distances(x, y, "swd", projections=proj)
    want = ot.sliced_wasserstein_distance(x[:6].numpy(), x[6:].numpy(), projections=proj.numpy(), p=2)
    assert math.isclose(rho.item(), float(want), rel_tol=1e-9)


# ------------------------------------------------------------------ 6. diagnose's minimum
def test_diagnose_refuses_fewer_than_20_per_class(capsys):
    assert main(["diagnose", "--data", "digits", "--max-per-class", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("otcpcc: error: --max-per-class 1 is below 20")
    assert "pass --max-per-class 20 or more" in err


def test_diagnose_of_small_classes_is_undetermined():
    from otcpcc.evaluation.diagnose import diagnose
    from otcpcc.study.recommendation import ot_answer, ot_paragraph

    res = diagnose("synthetic", data_options={"train_per_class": 12, "test_per_class": 2})
    assert res["recommend"] == "undetermined" and res["reasons"][0] == res["undetermined"]
    assert "have fewer than 20 samples" in res["undetermined"] and "12" in res["undetermined"]
    rows = [{"metric": "expected_cost_argmax", "call": "worse", "method": "fastft"}]
    assert ot_answer(res, rows)["ot_agrees_with_diagnosis"] is None
    assert "too few samples per class to tell" in ot_paragraph(res, rows)
