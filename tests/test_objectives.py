"""HXELoss and SoftLabelLoss against F.cross_entropy, hand-worked values and finite differences;
crm_predict against a brute-force loop."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from otcpcc import HXELoss, LabelTree, SoftLabelLoss, crm_predict
from otcpcc.metrics import decision_cost

# root -> A -> {a1, a2}; root -> b (a leaf at depth 1: unbalanced)
SMALL = LabelTree.from_parents({"a1": "A", "a2": "A", "A": "root", "b": "root", "root": None})
# an unbalanced tree of depth 4 with a single-child chain (p(C) = p(parent) there)
DEEP = LabelTree.from_parents({
    "x1": "X", "x2": "X", "X": "P", "y1": "Y", "Y": "P", "P": "Q", "z": "Q", "Q": "root",
    "w1": "W", "w2": "W", "w3": "W", "W": "root", "v": "root", "root": None})


def test_hxe_alpha0_is_cross_entropy():
    g = torch.Generator().manual_seed(0)
    for tree in (SMALL, DEEP, LabelTree.from_levels([np.arange(12) // 2, np.arange(12) // 4])):
        k = tree.num_classes
        logits = torch.randn(64, k, generator=g) * 4
        y = torch.randint(0, k, (64,), generator=g)
        got = HXELoss(tree, alpha=0.0)(logits, y)
        assert float(got) == pytest.approx(float(F.cross_entropy(logits, y)), abs=1e-6)


def test_hxe_hand_worked():
    # exp(logits) = 1, 2, 3: p(a1) = 1/6, p(a2) = 2/6, p(A) = 1/2, p(b) = 1/2
    logits = torch.log(torch.tensor([[1.0, 2.0, 3.0]] * 3, dtype=torch.float64))
    y = torch.tensor([0, 1, 2])  # a1 (depth 2), a2, b (depth 1)
    a = 0.5
    w1, w2 = math.exp(-a), math.exp(-2 * a)  # edge above a depth-1 / depth-2 node
    per_sample = [w2 * math.log(3) + w1 * math.log(2),  # -[w2 log((1/6)/(1/2)) + w1 log(1/2)]
                  w2 * math.log(3 / 2) + w1 * math.log(2),
                  w1 * math.log(2)]
    crit = HXELoss(SMALL, alpha=a)
    assert float(crit(logits, y)) == pytest.approx(np.mean(per_sample), rel=1e-12)
    for i in range(3):
        assert float(crit(logits[i:i + 1], y[i:i + 1])) == pytest.approx(per_sample[i], rel=1e-12)


def test_hxe_is_stable_for_extreme_logits():
    logits = torch.tensor([[1000.0, -1000.0, 0.0]])  # float32; softmax underflows to 0 for a2
    a = 0.3
    # label a2: -[w2 (-1000 - logaddexp(1000, -1000)) + w1 (logaddexp(1000, -1000) - lse(all))]
    value = HXELoss(SMALL, alpha=a)(logits.requires_grad_(), torch.tensor([1]))
    assert math.isfinite(float(value.detach()))
    assert float(value.detach()) == pytest.approx(math.exp(-2 * a) * 2000.0, rel=1e-6)
    value.backward()
    assert torch.isfinite(logits.grad).all()


def test_hxe_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(7, DEEP.num_classes, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, DEEP.num_classes, (7,), generator=g)
    crit = HXELoss(DEEP, alpha=0.4)
    assert torch.autograd.gradcheck(lambda z: crit(z, y), (logits,), eps=1e-6, atol=1e-7)


def test_hxe_and_soft_reject_bad_input():
    with pytest.raises(ValueError, match="alpha"):
        HXELoss(SMALL, alpha=-1)
    with pytest.raises(ValueError, match="beta"):
        SoftLabelLoss(SMALL, beta=0)
    for crit in (HXELoss(SMALL), SoftLabelLoss(SMALL)):
        with pytest.raises(ValueError, match=r"\[N, 3\]"):
            crit(torch.zeros(2, 4), torch.tensor([0, 1]))
        with pytest.raises(ValueError, match="not a leaf id"):
            crit(torch.zeros(2, 3), torch.tensor([0, 3]))


def test_soft_labels_equal_cross_entropy_with_hand_built_targets():
    g = torch.Generator().manual_seed(2)
    k, beta = DEEP.num_classes, 7.0
    logits = torch.randn(32, k, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (32,), generator=g)
    D = DEEP.distance_matrix()
    q = torch.zeros(32, k, dtype=torch.float64)
    for n in range(32):
        for j in range(k):
            q[n, j] = math.exp(-beta * D[int(y[n]), j] / D.max())
        q[n] /= q[n].sum()
    got = SoftLabelLoss(DEEP, beta=beta)(logits, y)
    assert float(got) == pytest.approx(float(F.cross_entropy(logits, q)), rel=1e-12)
    # large beta: the targets become one-hot and the loss plain cross-entropy
    sharp = SoftLabelLoss(DEEP, beta=1e4)(logits, y)
    assert float(sharp) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-9)


def test_crm_predict_equals_brute_force_and_argmax_under_01_cost():
    rng = np.random.default_rng(3)
    k = DEEP.num_classes
    probs = rng.dirichlet(np.full(k, 0.3), size=200)
    asymmetric = rng.uniform(0, 5, (k, k)) * (1 - np.eye(k))  # cost[true, predicted]
    for cost in (DEEP.distance_matrix(), asymmetric):
        expected = []
        for p in probs:  # brute force: the risk of every candidate j, the first minimum
            risks = [sum(p[i] * cost[i, j] for i in range(k)) for j in range(k)]
            expected.append(min(range(k), key=lambda j: (risks[j], j)))
        got = crm_predict(probs, cost)
        np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.int64
    assert (got != probs.argmax(1)).any()  # the tree cost does change some decisions here
    zero_one = 1.0 - np.eye(k)
    np.testing.assert_array_equal(crm_predict(probs, zero_one), probs.argmax(1))
    t = crm_predict(torch.tensor(probs), torch.tensor(cost))
    assert isinstance(t, torch.Tensor) and t.tolist() == expected
    y = rng.integers(0, k, 200)
    assert decision_cost(got, y, cost) == pytest.approx(np.mean([cost[a, b] for a, b in zip(y, got, strict=True)]))
    with pytest.raises(ValueError, match="not 1"):
        crm_predict(probs * 2, cost)


def hxe_by_definition(logits: np.ndarray, labels: np.ndarray, tree: LabelTree, alpha: float) -> float:
    """-sum_l exp(-alpha * depth(C_l)) log(p(C_l) / p(C_{l+1})), from summed float64 softmax."""
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    total = 0.0
    for row, y in zip(p, labels, strict=True):
        path = [tree.leaves[y], *tree.ancestors(tree.leaves[y])]
        mass = [row[tree.leaves_under(c)].sum() for c in path]
        total -= sum(math.exp(-alpha * tree.depth(c)) * math.log(mass[i] / mass[i + 1])
                     for i, c in enumerate(path[:-1]))
    return total / len(labels)


DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA; the cpu case is its twin")])]


@pytest.mark.parametrize("device", DEVICES)
def test_hxe_and_soft_in_float32_on_device_match_float64_definitions(device):
    rng = np.random.default_rng(4)
    k = DEEP.num_classes
    logits, y = rng.normal(size=(50, k)) * 3, rng.integers(0, k, 50)
    z = torch.tensor(logits, dtype=torch.float32, device=device, requires_grad=True)
    yt = torch.tensor(y, device=device)
    hxe = HXELoss(DEEP, alpha=0.7).to(device)(z, yt)
    assert float(hxe.detach()) == pytest.approx(hxe_by_definition(logits, y, DEEP, 0.7), rel=1e-5)
    soft = SoftLabelLoss(DEEP, beta=5).to(device)(z, yt)
    (hxe + soft).backward()
    assert z.grad.device.type == device and torch.isfinite(z.grad).all()
    q = SoftLabelLoss(DEEP, beta=5).targets.numpy()[y]
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    assert float(soft.detach()) == pytest.approx(float(-(q * logp).sum(1).mean()), rel=1e-5)


def test_task_losses_check_their_batch():
    """A label count that does not match the logits, float labels, integer logits: one-line errors
    (HXE used to use only the first rows; float labels were truncated)."""
    tree = LabelTree.from_levels([[0, 0, 1, 1]])
    for loss in (HXELoss(tree), SoftLabelLoss(tree)):
        with pytest.raises(ValueError, match="labels must be \\[N\\] with N = 3"):
            loss(torch.randn(3, 4), torch.tensor([0, 1]))
        with pytest.raises(ValueError, match="labels must be integer class ids"):
            loss(torch.randn(2, 4), torch.tensor([0.5, 1.0]))
        with pytest.raises(ValueError, match="logits must be floating point"):
            loss(torch.ones(2, 4, dtype=torch.long), torch.tensor([0, 1]))


def test_hxe_refuses_an_alpha_that_switches_edges_off():
    tree = LabelTree.from_levels([[0, 0, 1, 1]])  # depth 2: weight exp(-2 alpha) underflows above 40
    with pytest.raises(ValueError, match="underflow float32"):
        HXELoss(tree, alpha=1e308)
    HXELoss(tree, alpha=40)


def test_near_constant_target_keeps_its_float64_correlation():
    """A target whose distances differ only beyond float32 precision: float32 features give the
    float64 loss and gradient (not NaN: the target is centred before any cast to float32)."""
    from otcpcc.objectives import CPCCLoss

    t = np.array([[0 if i == j else 1 + 1e-12 * (i + j) for j in range(4)] for i in range(4)])
    labels = torch.tensor([0, 1, 2, 3] * 2)
    x32 = torch.randn(8, 3, generator=torch.Generator().manual_seed(0)).requires_grad_()
    x64 = x32.detach().double().requires_grad_()
    for x in (x32, x64):
        CPCCLoss(t, "fastft")(x, labels).backward()
    with torch.no_grad():
        l32, l64 = CPCCLoss(t, "fastft")(x32, labels), CPCCLoss(t, "fastft")(x64, labels)
    assert torch.isfinite(l32) and abs(float(l32) - float(l64)) < 1e-5
    torch.testing.assert_close(x32.grad.double(), x64.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("make, name", [(HXELoss, "HXELoss"), (SoftLabelLoss, "SoftLabelLoss")])
def test_hxe_and_soft_messages_name_their_loss_and_devices(make, name):
    crit = make(SMALL)
    with pytest.raises(ValueError, match=rf"^label 3 is not a leaf id of the tree of {name} "
                                         rf"\(ids are 0\.\.2\); .* build {name} on the dataset's tree$"):
        crit(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="^logits on meta but labels on cpu; move both to one device$"):
        crit(torch.zeros(2, 3, device="meta"), torch.tensor([0, 1]))


@pytest.mark.parametrize("value", [None, "0.1", True, False, [0.1]])
def test_hxe_alpha_and_soft_beta_must_be_real_numbers(value):
    for make, name in ((HXELoss, "alpha"), (SoftLabelLoss, "beta")):
        with pytest.raises(TypeError, match=f"^{name} must be a real number, got {re.escape(repr(value))} "):
            make(SMALL, value)
    assert HXELoss(SMALL, np.float32(0.25)).alpha == 0.25 and SoftLabelLoss(SMALL, 5).beta == 5.0
