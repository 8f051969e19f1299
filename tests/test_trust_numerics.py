"""Issue 9, items 14-16: zero variance relative to the feature scale, CPCC over the whole float
range, and Sinkhorn's reg below the precision of cost/reg."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import pearsonr

from otcpcc import CPCCLoss, LabelTree, class_distances, cpcc

TREE = LabelTree.from_levels([[0, 0, 1, 1, 2, 2]])
Y = torch.arange(30) % 6
NAMES = ["l2", "emd", "sinkhorn", "swd", "fastft"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [1.0, 7.7e5, 3e-20])
def test_identical_features_give_one_and_zero_gradient(name, scale):
    """One 512-d row repeated: Gram rounding made every rho a nonzero constant (the mean of equal
    values then rounds off them) and the loss 0.9999999 with gradients up to 160."""
    row = (torch.rand(512, generator=torch.Generator().manual_seed(0)) + 1) * scale
    x = row.repeat(30, 1).requires_grad_(True)
    loss = CPCCLoss(TREE, name, **({"reg": scale} if name == "sinkhorn" else {}))(x, Y)
    loss.backward()
    assert float(loss.detach()) == 1.0 and float(x.grad.abs().max()) == 0.0


@pytest.mark.parametrize("name", ["l2", "swd"])
def test_features_equal_up_to_rounding_give_one(name):
    """Rows that differ by an ulp (swd's projection noise, ~7e-7 at d = 512) are not a signal.
    (emd/sinkhorn/fastft read sample distances from Gram tiles, whose cancellation noise is
    sqrt(eps d) max|x| ~ 0.01 here: a cost.py matter.)"""
    g = torch.Generator().manual_seed(1)
    row = torch.rand(512, generator=g) + 1
    ulps = torch.randint(-2, 3, (30, 1), generator=g).float() * torch.finfo(torch.float32).eps
    x = (row * (1 + ulps)).requires_grad_(True)
    loss = CPCCLoss(TREE, name, seed=0) if name == "swd" else CPCCLoss(TREE, name)
    out = loss(x, Y)
    out.backward()
    assert float(out.detach()) == 1.0 and float(x.grad.abs().max()) == 0.0


def test_small_real_signal_is_kept():
    """A class signal of 1e-4 on features of size 1 (far above rounding) still correlates."""
    g = torch.Generator().manual_seed(2)
    x = 1 + 1e-4 * torch.randn(30, 8, generator=g) + 1e-3 * torch.tensor([0, 0, 1, 1, 5, 5])[Y, None]
    assert cpcc(x, Y, TREE, "l2") > 0.5


@pytest.mark.parametrize("name", ["l2", "emd", "swd", "fastft", "sinkhorn"])
@pytest.mark.parametrize("dtype, scales", [(torch.float32, [1e20, 1e30, 1e-22, 1e-35]),
                                           (torch.float64, [1e160, 1e300, 1e-300])])
def test_cpcc_is_scale_invariant_over_the_float_range(name, dtype, scales):
    """cpcc(x * s) == cpcc(x): was 0.0 at 1e20 (squares overflowed) and off at 1e-22 (underflow).
    Sinkhorn's reg is a length, so it scales with the features."""
    x = torch.randn(30, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    opts = {"seed": 0} if name == "swd" else {}
    base = cpcc(x.to(dtype), Y, TREE, name, **opts, **({"reg": 1.0} if name == "sinkhorn" else {}))
    assert abs(base) > 0.01
    for s in scales:
        extra = {"reg": s} if name == "sinkhorn" else {}
        assert cpcc((x * s).to(dtype), Y, TREE, name, **opts, **extra) == pytest.approx(base, rel=1e-4)


def test_pearson_matches_scipy_at_huge_scale():
    x = torch.randn(30, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    _, rho = class_distances(x, Y, "l2")
    t = [TREE.distance_matrix()[i, j] for i in range(6) for j in range(i + 1, 6)]
    expected = pearsonr(t, rho.numpy()).statistic
    assert cpcc((x * 1e20).float(), Y, TREE, "l2") == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("dtype, reg", [(torch.float32, 1e-38), (torch.float32, 1e-10),
                                        (torch.float64, 1e-20)])
def test_sinkhorn_reg_below_precision_names_the_cause(dtype, reg):
    """reg=1e-38 returned NaN silently (and 1e-10 in float32 garbage: 23 instead of 3)."""
    x = torch.randn(30, 8, generator=torch.Generator().manual_seed(5)).to(dtype)
    with pytest.raises(ValueError, match=r"reg=1e-\d+ is too small for these float\d\d costs.*"
                                         r"raise reg"):
        class_distances(x, Y, "sinkhorn", reg=reg)


def test_sinkhorn_small_reg_within_precision_still_works():
    """reg = 1e-4 on costs up to ~7 is within float32 precision: values agree with float64."""
    x = torch.randn(30, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    a = class_distances(x.float(), Y, "sinkhorn", reg=1e-4, max_iter=5000)[1]
    b = class_distances(x, Y, "sinkhorn", reg=1e-4, max_iter=5000)[1]
    torch.testing.assert_close(a.double(), b, rtol=1e-2, atol=0)
