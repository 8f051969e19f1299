"""Host-device syncs of CPCCLoss, counted on CPU (a regression guard, not a timing).

On CUDA every host read of a tensor value waits for the GPU queue; the same reads show on CPU as
profiler operators (``aten::_local_scalar_dense``, ``aten::nonzero``, ...) and host copies
(``.tolist()``), which :func:`otcpcc.bench.syncs.count_syncs` counts. The bounds below are the counts
reached: l2 and swd read the class sizes (with the label range) once and the finite/near-zero flags
once; sinkhorn adds one read for its two solver decisions and one per 10 iterations.
"""

import pytest
import torch

from otcpcc import CPCCLoss
from otcpcc.bench.problem import make_problem
from otcpcc.bench.syncs import count_syncs
from otcpcc.distances import class_distances, cost

MAX_SYNCS = {"l2": 2, "swd": 2, "sinkhorn": 5}


def _step(distance: str, batch: int = 256):
    f, y, tree = make_problem(batch, 20, 5, 32, seed=0)
    x = f.detach().requires_grad_()
    crit = CPCCLoss(tree, distance)

    def step():
        x.grad = None
        crit(x, y).backward()

    step()  # warm up (first-call work is not per call)
    return step


@pytest.mark.parametrize("distance", sorted(MAX_SYNCS))
def test_cpcc_loss_host_syncs_stay_bounded(distance):
    found = count_syncs(_step(distance))
    assert found.total <= MAX_SYNCS[distance], f"{distance}: {found}"


def test_sync_counter_sees_item_tolist_mask_and_backward():
    x = torch.arange(6.0, requires_grad=True)

    class ReadsInBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t * 2

        @staticmethod
        def backward(ctx, g):
            g.tolist()  # a host copy inside backward (where a TorchFunctionMode sees nothing)
            return g * 2

    def work():
        float(x.detach().sum())  # aten::_local_scalar_dense
        _ = x[x > 2]  # aten::nonzero
        ReadsInBackward.apply(x).sum().backward()  # Tensor.tolist

    found = count_syncs(work)
    assert found.by_source == {"aten::_local_scalar_dense": 1, "aten::nonzero": 1, "Tensor.tolist": 1}
    assert found.total == 3 and found.ops > 0


@pytest.mark.parametrize("cap", [0, 1000])
def test_near_zero_recompute_without_sync_matches_exact(monkeypatch, cap):
    """Classes 0 and 1 hold the same points (offset by 100, so their Gram distances lose every
    digit): l2 and emd of that pair are exactly 0 only if every near-zero entry was recomputed
    from the differences. Within the sync-free cap l2's are fixed without a host read (no
    aten::nonzero); beyond it (cap 0) the distances are evaluated again exactly (nonzero seen).
    Sinkhorn's costs equal those of the exact evaluation either way."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 16, generator=g, dtype=torch.float64).float() * 5 + 100.0
    y = torch.arange(40) % 4
    x[y == 1] = x[y == 0]
    monkeypatch.setattr(cost, "RECOMPUTE_CAP", cap)
    found = count_syncs(lambda: class_distances(x, y, "l2"))
    assert ("aten::nonzero" in found.by_source) == (cap == 0), found
    for name in ("l2", "emd"):
        assert class_distances(x, y, name)[1][0].item() == 0.0, name  # pair (0, 1)
    rho = class_distances(x, y, "sinkhorn")[1]
    monkeypatch.setattr(cost, "RECOMPUTE_CAP", 10**9)
    assert torch.equal(rho, class_distances(x, y, "sinkhorn")[1])
