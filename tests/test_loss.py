"""CPCCLoss and cpcc against SciPy (pearsonr, cophenet) and the degenerate cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.cluster.hierarchy import cophenet
from scipy.stats import pearsonr

from oracles import oracle_distances
from otcpcc import CPCCLoss, LabelTree, class_distances, cpcc

# 12 fine classes -> 6 mid -> 3 coarse (equal depth)
MID = np.arange(12) // 2
COARSE = np.arange(12) // 4
TREE = LabelTree.from_levels([MID, COARSE])


def data(seed=0, n=90, d=5, classes=12):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centers = rng.normal(size=(classes, d)) * 3
    return rng.normal(size=(n, d)) + centers[y], y


@pytest.mark.parametrize("name", ["l2", "emd", "sinkhorn", "fastft"])
def test_cpcc_equals_pearsonr(name):
    x, y = data()
    D = TREE.distance_matrix()
    classes = np.unique(y)
    t = [D[i, j] for i, j in itertools.combinations(classes, 2)]
    expected = pearsonr(t, oracle_distances(name, x, y))[0]
    assert cpcc(torch.tensor(x), torch.tensor(y), TREE, name) == pytest.approx(expected, rel=1e-5)
    loss = CPCCLoss(TREE, name)(torch.tensor(x), torch.tensor(y))
    assert float(loss) == pytest.approx(1 - expected, rel=1e-5)


def test_tree_distances_hand_worked():
    D = TREE.distance_matrix()
    assert D[0, 1] == 2 and D[0, 2] == 4 and D[0, 4] == 6 and D[0, 0] == 0


def linkage_of_tree() -> np.ndarray:
    """The 12-3 tree as a SciPy linkage: siblings merge at height 1, mid groups at 2, coarse at 3."""
    Z, nodes, nxt = [], {i: i for i in range(12)}, 12
    def merge(a, b, h):
        nonlocal nxt
        size = (a < 12) + (b < 12) + sum(Z[c - 12][3] for c in (a, b) if c >= 12)
        Z.append([a, b, h, size])
        nxt += 1
        return nxt - 1
    mids = [merge(nodes[2 * m], nodes[2 * m + 1], 1.0) for m in range(6)]
    coarse = [merge(mids[2 * c], mids[2 * c + 1], 2.0) for c in range(3)]
    top = merge(coarse[0], coarse[1], 3.0)
    merge(top, coarse[2], 3.0)
    return np.array(Z, dtype=float)


def test_cpcc_equals_scipy_cophenet_on_equal_depth_tree():
    x, y = data(1, n=200)
    assert len(np.unique(y)) == 12
    _, rho = class_distances(torch.tensor(x), torch.tensor(y), "l2")
    c, coph = cophenet(linkage_of_tree(), rho.numpy())
    D = TREE.distance_matrix()
    np.testing.assert_allclose(coph * 2, [D[i, j] for i, j in itertools.combinations(range(12), 2)])
    assert cpcc(torch.tensor(x), torch.tensor(y), TREE, "l2") == pytest.approx(c, rel=1e-9)


def test_loss_gradient_flows_and_matches_finite_differences():
    x, y = data(2, n=40)
    xt = torch.tensor(x, requires_grad=True)
    crit = CPCCLoss(TREE, "l2")
    crit(xt, torch.tensor(y)).backward()
    eps = 1e-6
    for idx in [(0, 0), (5, 3), (17, 1)]:
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        yt = torch.tensor(y)
        fd = (float(crit(torch.tensor(xp), yt)) - float(crit(torch.tensor(xm), yt))) / (2 * eps)
        assert xt.grad[idx].item() == pytest.approx(fd, rel=1e-4, abs=1e-8)


@pytest.mark.parametrize("name", ["l2", "emd", "sinkhorn", "swd", "fastft"])
def test_degenerate_batches_give_one_and_zero_gradient(name):
    crit = CPCCLoss(TREE, name)
    one_class = torch.randn(6, 3, requires_grad=True)
    loss = crit(one_class, torch.zeros(6, dtype=torch.long))
    loss.backward()
    assert loss.item() == 1.0 and torch.equal(one_class.grad, torch.zeros(6, 3))
    same = torch.ones(6, 3, requires_grad=True)  # zero variance of rho
    loss = crit(same, torch.tensor([0, 0, 4, 4, 8, 8]))
    loss.backward()
    assert loss.item() == 1.0 and torch.equal(same.grad, torch.zeros(6, 3))
    siblings = torch.randn(4, 3, requires_grad=True)  # zero variance of tree distances
    assert crit(siblings, torch.tensor([0, 0, 1, 1])).item() == 1.0
    assert cpcc(one_class, torch.zeros(6, dtype=torch.long), TREE, name) == 0.0


def test_labels_outside_tree_are_an_error():
    with pytest.raises(ValueError, match="label 12 is not a leaf id"):
        CPCCLoss(TREE)(torch.randn(3, 2), torch.tensor([0, 1, 12]))
    with pytest.raises(ValueError, match="label -1"):
        cpcc(torch.randn(3, 2), torch.tensor([0, -1, 1]), TREE)


def test_non_tree_argument_is_an_error():
    with pytest.raises(ValueError, match="expected a LabelTree"):
        CPCCLoss({"a": "b"})


def test_loss_options_are_passed_to_the_distance():
    x, y = data(3)
    a = CPCCLoss(TREE, "sk", reg=2.0)(torch.tensor(x), torch.tensor(y))
    b = CPCCLoss(TREE, "sinkhorn", reg=50.0)(torch.tensor(x), torch.tensor(y))
    assert not torch.isclose(a, b)
    assert "reg=2.0" in repr(CPCCLoss(TREE, "sk", reg=2.0))


def test_cpcc_rewards_hierarchical_features():
    """Features placed by the tree score near 1; shuffled class positions score lower."""
    rng = np.random.default_rng(4)
    coarse = rng.normal(size=(3, 8)) * 10
    mid = coarse[np.arange(6) // 2] + rng.normal(size=(6, 8)) * 3
    fine = mid[MID] + rng.normal(size=(12, 8))
    y = np.repeat(np.arange(12), 5)
    x = fine[y] + 0.1 * rng.normal(size=(60, 8))
    good = cpcc(torch.tensor(x), torch.tensor(y), TREE, "emd")
    bad = cpcc(torch.tensor(x), torch.tensor(rng.permutation(12)[y]), TREE, "emd")
    assert good > 0.8 and good > bad + 0.3


@pytest.mark.parametrize("distance, options, match", [
    ("l2", {"reg": 1.0}, "'l2' has no option 'reg'"),
    ("sk", {"reg": 0.0}, "reg must be a finite number > 0"),
    ("swd", {"n_projections": 0}, "n_projections must be an integer >= 1"),
    ("fastft", {"weights": "heavy"}, "unknown sample weighting 'heavy'"),
])
def test_bad_options_fail_at_construction(distance, options, match):
    with pytest.raises(ValueError, match=match):
        CPCCLoss(TREE, distance, **options)
    with pytest.raises(ValueError, match=match):
        class_distances(torch.randn(4, 2), torch.tensor([0, 0, 1, 1]), distance, **options)


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_casting_the_loss_keeps_its_target_float64(cuda_graph):
    """Breaker finding: ``crit.half()`` (or ``model.half()`` with the loss inside) cast the target
    buffer to float16: distances over 65504 became inf (loss 1.0, NaN gradient) and the rest were
    rounded (a silently different CPCC). Casts now move the target's device only."""
    big = torch.tensor([[0, 7e4, 1e5], [7e4, 0, 1e5], [1e5, 1e5, 0]], dtype=torch.float64)
    fine = torch.tensor(LabelTree.from_levels([MID, COARSE]).distance_matrix()) * 1.001
    x = torch.randn(36, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for target, y in ((big, torch.arange(36) % 3), (fine, torch.arange(36) % 12)):
        want = CPCCLoss(target, "l2", cuda_graph=cuda_graph)(x, y)
        for cast in ("half", "bfloat16", "float", "double"):
            crit = getattr(CPCCLoss(target, "l2", cuda_graph=cuda_graph), cast)()
            assert crit.tree_dist.dtype == torch.float64 and torch.equal(crit.tree_dist, target.to(torch.float64))
            xx = x.clone().requires_grad_()
            got = crit(xx, y)
            got.backward()
            assert got.item() == want.item() and torch.isfinite(xx.grad).all(), cast
    with pytest.raises(TypeError, match="gather must be True or False, got 'no'"):
        CPCCLoss(TREE, "l2", gather="no")
