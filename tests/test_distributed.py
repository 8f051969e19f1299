"""DDP on the CPU: gloo, 2 processes.

- ``CPCCLoss(gather=True)`` in 2 processes with unequal local batches (5 and 7 rows): the loss on
  every rank is the single-process loss on the concatenated batch, and each rank's gradient is
  ``W * dL/dx_local`` (the relation documented in ``otcpcc.gather``); one DDP optimizer step on
  2 ranks x 6 rows equals one step of one process on the 12 rows.
- ``torchrun --nproc_per_node 2 -m otcpcc train`` end to end: 2 ranks x batch 8 == 1 process x
  batch 16, rank 0 alone writes one run directory, ``--resume`` under torchrun, evaluation that
  gathers the test split from both ranks, ``--sync-bn``.

This file doubles as the worker script of the 2-process unit checks (``python
tests/test_distributed.py RANK WORLD INIT_FILE OUT_DIR``).
"""

from __future__ import annotations

import csv
import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from otcpcc.objectives import CPCCLoss
from otcpcc.runs.checkpoint import load_checkpoint
from otcpcc.tree import LabelTree

pytestmark = pytest.mark.slow

WORLD = 2
SIZES = (5, 7)  # unequal local batches of the CPCCLoss checks
STEP_ROWS = 6  # rows per rank in the one-step DDP check (equal: DDP averages the mean CE)
LAM = 2.0
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


# --------------------------------------------------------------------------- shared problem
def toy_tree() -> LabelTree:
    """6 leaves under 3 parents under the root."""
    return LabelTree.from_levels([[0, 0, 1, 1, 2, 2]])


def toy_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch [12, 4] float64; classes are split across the two ranks' rows."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(12, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 4, 5, 1, 2, 3, 4, 5])
    return x, y


def toy_model() -> torch.nn.Module:
    from otcpcc.models import build_model

    torch.manual_seed(3)
    return build_model("mlp", (4,), 6, hidden=[8, 8]).double()


def toy_images() -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    return 2.0 + 3.0 * torch.randn(12, 3, 2, 2, generator=g, dtype=torch.float64)


def bn_probe() -> torch.Tensor:
    """Fixed weights c: the global loss is sum(BN(x) * c), a sum of per-row terms."""
    return torch.randn(12, 3, 2, 2, generator=torch.Generator().manual_seed(12),
                       dtype=torch.float64)


def sync_bn_layer() -> torch.nn.Module:
    """A BatchNorm2d with non-trivial affine weights, converted for sync on the CPU."""
    from otcpcc.distributed.syncbn import convert_sync_batchnorm

    bn = torch.nn.BatchNorm2d(3, momentum=0.3).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    return convert_sync_batchnorm(bn, torch.device("cpu"))


def toy_split() -> TensorDataset:
    """13 samples (an odd split: 7 + 6 per rank)."""
    x, y = toy_batch()
    return TensorDataset(torch.cat([x, x[:1] + 1]).float(), torch.cat([y, y[:1]]))


def step_loss(model, x, y, gather: bool) -> torch.Tensor:
    features, logits = model(x)
    return F.cross_entropy(logits, y) + LAM * CPCCLoss(toy_tree(), "fastft", gather=gather)(
        features, y)


def rows_of(rank: int, sizes=SIZES) -> slice:
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


# --------------------------------------------------------------------------- worker (one rank)
def worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """Run every 2-process check on this rank; save what the parent compares."""
    import torch.distributed as dist

    from otcpcc.distributed.gather import all_gather_labels, all_gather_with_grad

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        x, y = toy_batch()
        mine = rows_of(rank)
        res: dict = {"labels": all_gather_labels(y[mine])}
        for distance in ("l2", "fastft", "l2+graph", "fastft+graph"):
            xr = x[mine].clone().requires_grad_()
            loss = CPCCLoss(toy_tree(), distance.removesuffix("+graph"), gather=True,
                            cuda_graph=distance.endswith("+graph"))(xr, y[mine])
            loss.backward()
            res[distance] = (loss.detach(), xr.grad)

        # an empty rank: rank 0 sends no rows, rank 1 three
        part = x[:0] if rank == 0 else x[:3]
        part = part.clone().requires_grad_()
        gathered = all_gather_with_grad(part)
        (gathered ** 2).sum().backward()
        res["empty"] = (gathered.detach(), part.grad)

        # CPU SyncBatchNorm on [n_r, 3, 2, 2] images, unequal local batches
        bn = sync_bn_layer()
        img = toy_images()[mine].clone().requires_grad_()
        out = bn(img)
        (out * bn_probe()[mine]).sum().backward()  # this rank's part of the global loss
        res["bn"] = (out.detach(), img.grad, bn.weight.grad, bn.bias.grad,
                     bn.running_mean.clone(), bn.running_var.clone())

        # evaluation: predict() shards a 13-sample split over the ranks and gathers it back
        from otcpcc.distributed.env import DistEnv
        from otcpcc.evaluation.inference import predict

        env = DistEnv(rank=rank, world_size=world)
        res["predict"] = predict(toy_model().float(), toy_split(), env, SimpleNamespace(
            batch_size=4, workers=0))

        # one DDP step, rows 6r..6r+5 on rank r
        model = torch.nn.parallel.DistributedDataParallel(toy_model())
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        step = rows_of(rank, (STEP_ROWS,) * world)
        loss = step_loss(model, x[step], y[step], gather=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
        res["step"] = (loss.detach(), {k: v.detach() for k, v in model.module.state_dict().items()})
        torch.save(res, Path(out_dir) / f"rank{rank}.pt")
        # Free the DDP wrapper (its reducer holds the group) and meet at a barrier before the
        # group is torn down; otherwise a rank could abort at exit ("terminate called without an
        # active exception"), seen once in CI.
        del model, opt
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Run :func:`worker` in 2 processes; their saved results, in rank order."""
    out = tmp_path_factory.mktemp("ranks")
    procs = [subprocess.Popen([sys.executable, __file__, str(r), str(WORLD), str(out / "store"),
                               str(out)], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for r in range(WORLD)]
    logs = [p.communicate(timeout=120)[0] for p in procs]
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} exited with {p.returncode}:\n{logs[r][-3000:]}"
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("distance", ["l2", "fastft", "l2+graph", "fastft+graph"])
def test_gathered_cpcc_loss_and_gradient_match_one_process(ranks, distance):
    """Each rank's gathered CPCC equals one process's on the whole batch (the default path; with
    cuda_graph=True the fixed-shape loss on the gathered batch)."""
    x, y = toy_batch()
    x = x.clone().requires_grad_()
    loss = CPCCLoss(toy_tree(), distance.removesuffix("+graph"))(x, y)
    loss.backward()
    assert 0.0 < float(loss.detach()) < 2.0
    for r, res in enumerate(ranks):
        loss_r, grad_r = res[distance]
        assert float(loss_r) == pytest.approx(float(loss.detach()), abs=1e-12), r
        assert grad_r.shape == (SIZES[r], 4)
        # the all-gather backward sums the gradient over ranks: W * dL/dx_local; DDP's average
        # over ranks divides by W again
        torch.testing.assert_close(grad_r, WORLD * x.grad[rows_of(r)], atol=1e-12, rtol=1e-10)
    assert x.grad.abs().sum() > 0


def test_all_gather_labels_with_unequal_sizes(ranks):
    _, y = toy_batch()
    for res in ranks:
        assert torch.equal(res["labels"], y)


def test_all_gather_with_an_empty_rank(ranks):
    x, _ = toy_batch()
    for r, res in enumerate(ranks):
        gathered, grad = res["empty"]
        torch.testing.assert_close(gathered, x[:3])
        assert grad.shape == ((0, 4) if r == 0 else (3, 4))
    # d/dx of sum(X^2), summed over the two ranks that both computed it
    torch.testing.assert_close(ranks[1]["empty"][1], WORLD * 2 * x[:3])


def test_cpu_sync_batchnorm_uses_the_global_batch(ranks):
    """BatchNorm2d on the 12 images in one process == CPUSyncBatchNorm on 5 + 7 in two: outputs,
    input gradients, summed affine gradients and running statistics."""
    from otcpcc.distributed.syncbn import CPUSyncBatchNorm

    bn = sync_bn_layer()
    assert isinstance(bn, CPUSyncBatchNorm)  # outside a process group: plain BatchNorm
    img = toy_images().requires_grad_()
    out = bn(img)
    (out * bn_probe()).sum().backward()
    for r, res in enumerate(ranks):
        out_r, grad_r, *_ = res["bn"]
        torch.testing.assert_close(out_r, out.detach()[rows_of(r)])
        # the global loss is a sum of per-row terms, so no factor W here
        torch.testing.assert_close(grad_r, img.grad[rows_of(r)])
        torch.testing.assert_close(res["bn"][4], bn.running_mean)
        torch.testing.assert_close(res["bn"][5], bn.running_var)
    torch.testing.assert_close(sum(res["bn"][2] for res in ranks), bn.weight.grad)
    torch.testing.assert_close(sum(res["bn"][3] for res in ranks), bn.bias.grad)
    local_only = F.batch_norm(toy_images()[rows_of(0)], None, None, bn.weight.detach(),
                              bn.bias.detach(), training=True)
    assert (local_only - ranks[0]["bn"][0]).abs().max() > 1e-2  # per-rank BN would differ


def test_predict_gathers_the_whole_split_in_dataset_order(ranks):
    from otcpcc.distributed.env import DistEnv
    from otcpcc.evaluation.inference import predict

    one = predict(toy_model().float(), toy_split(), DistEnv(), SimpleNamespace(batch_size=4,
                                                                              workers=0))
    assert one["labels"].shape == (13,)
    for res in ranks:  # every rank holds the whole split
        assert res["predict"].keys() == one.keys()
        for k in one:
            torch.testing.assert_close(res["predict"][k], one[k], atol=1e-6, rtol=1e-5, msg=k)


def test_one_ddp_step_equals_one_step_on_the_double_batch(ranks):
    x, y = toy_batch()
    model = toy_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = step_loss(model, x, y, gather=False)
    opt.zero_grad()
    loss.backward()
    opt.step()
    # each rank's loss is its local mean CE + LAM * (1 - CPCC of the global batch)
    mean_loss = sum(float(res["step"][0]) for res in ranks) / WORLD
    assert mean_loss == pytest.approx(float(loss.detach()), abs=1e-6)
    moved = 0.0
    for res in ranks:
        params = res["step"][1]
        for k, v in model.state_dict().items():
            torch.testing.assert_close(params[k], v, atol=1e-6, rtol=0, msg=k)
        moved += sum(float((params[k] - v).abs().sum()) for k, v in toy_model().state_dict().items())
    assert moved > 0  # the step did change the parameters


def test_ctrl_c_relayed_by_torchrun_is_one_request(monkeypatch):
    """A terminal's Ctrl-C reaches each worker twice (directly, then relayed by torchrun's agent):
    that is one request to stop after the step; a later second Ctrl-C still aborts."""
    import signal

    from otcpcc.training.control import StopRequest

    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # the relayed copy
        assert stop.requested
        monkeypatch.setattr(StopRequest, "RELAY_WINDOW_S", 0.0)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100):  # let the handler run
                pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# --------------------------------------------------------------------------- torchrun end to end
# One 2-rank training run shared by the tests below: a BatchNorm MLP with --sync-bn, so that
# BatchNorm too sees the global batch and 2 ranks x batch 8 == 1 process x batch 16 holds for
# every parameter and running statistic (without --sync-bn each rank would normalise its own 8).
DATA = {"train_per_class": 8, "test_per_class": 5, "branching": [3, 3]}  # 9 classes, 72 / 45
MODEL = {"hidden": [32, 16], "batch_norm": True}
FLAGS = ["--data", "synthetic", "--data-opt", "train_per_class=8", "--data-opt",
         "test_per_class=5", "--data-opt", "branching=[3, 3]", "--model-opt", "hidden=[32, 16]",
         "--model-opt", "batch_norm=true", "--sync-bn", "--distance", "l2", "--lam", "2",
         "--lr", "0.05", "--device", "cpu", "--no-progress"]


def single_cfg(**kw):
    from otcpcc.runs.config import TrainConfig

    base = dict(data="synthetic", data_options=dict(DATA), model_options=dict(MODEL),
                sync_bn=True, distance="l2", lam=LAM, lr=0.05, device="cpu", batch_size=16,
                epochs=2)
    base.update(kw)
    return TrainConfig.from_dict(base)


def torchrun(*args: str) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
         str(WORLD), "-m", "otcpcc", "train", *args],
        capture_output=True, text=True, timeout=300, env=ENV)
    errors = [ln for ln in res.stderr.splitlines() if "rror" in ln or "otcpcc" in ln]
    assert res.returncode == 0, f"torchrun exited with {res.returncode}:\n" + "\n".join(
        errors[:20]) + "\n...\n" + res.stderr[-2000:]
    return res


def log_rows(run: Path) -> list[dict]:
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def assert_same_params(a: Path, b: Path) -> None:
    pa, pb = load_checkpoint(a / "last.pt")["model"], load_checkpoint(b / "last.pt")["model"]
    assert pa.keys() == pb.keys()  # no "module." prefix from the DDP wrapper
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], atol=1e-6, rtol=1e-5, msg=k)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    """2 ranks x batch 8, 2 epochs, l2-CPCC on the global batch, --sync-bn."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    res = torchrun(*FLAGS, "--epochs", "2", "--batch-size", "8", "--out", str(out))
    assert res.stdout.strip().splitlines() == [str(out)]  # rank 0 alone prints the run dir
    return out


@pytest.fixture(scope="module")
def one_run(tmp_path_factory) -> Path:
    """1 process x batch 16 (--sync-bn is a no-op in one process)."""
    from otcpcc.training import train

    return train(single_cfg(), tmp_path_factory.mktemp("one") / "run", progress=False)


def test_torchrun_two_ranks_match_one_process_with_the_double_batch(ddp_run, one_run):
    """2 ranks x batch 8 (CPCC on the gathered global batch, synced BatchNorm) == 1 process x
    batch 16: log, metrics, parameters and BatchNorm running statistics.

    The DistributedSampler splits one permutation between the ranks, so every global batch holds
    the same samples as the single-process batch; l2-CPCC, mean CE and BatchNorm statistics do
    not depend on the order.
    """
    m_ddp, m_one = metrics(ddp_run), metrics(one_run)
    assert m_ddp["world_size"] == 2 and m_one["world_size"] == 1
    assert m_ddp["num_test"] == m_one["num_test"] == 45
    for k in ("train_loss", "train_acc", "test_acc", "test_cpcc"):
        assert m_ddp[k] == pytest.approx(m_one[k], abs=1e-5), k
    for ra, rb in zip(log_rows(ddp_run), log_rows(one_run), strict=True):
        for k in ("loss", "ce", "cpcc", "train_acc", "test_acc"):
            assert float(ra[k]) == pytest.approx(float(rb[k]), abs=1e-5), k
    assert_same_params(ddp_run, one_run)
    state = load_checkpoint(ddp_run / "last.pt")["model"]
    assert sum(k.endswith("running_var") for k in state) == 2  # both BatchNorm layers compared


def test_rank0_alone_writes_one_run_directory(ddp_run):
    files = sorted(p.name for p in ddp_run.iterdir() if p.name != "tb")
    assert files == ["config.json", "last.pt", "log.csv", "metrics.json", "tree.json"]
    assert sorted(p.name for p in ddp_run.parent.iterdir()) == ["run"]  # no per-rank siblings
    assert [r["epoch"] for r in log_rows(ddp_run)] == ["1", "2"]  # one row per epoch, not per rank
    cfg = json.loads((ddp_run / "config.json").read_text())
    assert cfg["meta"]["world_size"] == 2 and cfg["batch_size"] == 8 and cfg["sync_bn"] is True
    ckpt = load_checkpoint(ddp_run / "last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2  # one RNG state per rank
    assert ckpt["epoch"] == 2


def test_ddp_test_metrics_cover_the_whole_test_split(ddp_run, tmp_path):
    """TestCPCC and accuracy of the 2-rank run (test split gathered from both ranks, 23 + 22
    samples) equal a single-process evaluation of the same checkpoint."""
    from otcpcc.evaluation.evaluate import evaluate_run

    run = tmp_path / "run"
    shutil.copytree(ddp_run, run)
    ev = evaluate_run(run)
    m = metrics(ddp_run)
    assert ev["test_cpcc_distance"] == m["test_cpcc_distance"] == "l2"
    assert ev["test_cpcc_l2"] == pytest.approx(m["test_cpcc"], abs=1e-6)
    assert ev["fine_top1"] == pytest.approx(m["test_acc"], abs=1e-6)
    assert ev["n"] == m["num_test"] == 45


def test_resume_under_torchrun_matches_a_resumed_single_process_run(ddp_run, one_run, tmp_path):
    from otcpcc.cli import main
    from otcpcc.runs.rundir import RunDirError
    from otcpcc.training import train

    ddp, one = tmp_path / "ddp", tmp_path / "one"
    shutil.copytree(ddp_run, ddp)
    shutil.copytree(one_run, one)
    torchrun("--resume", "--out", str(ddp), "--epochs", "3", "--no-progress")
    train(single_cfg(epochs=3), one, resume=True, progress=False)
    m = metrics(ddp)
    assert m["epochs"] == 3 and m["world_size"] == 2
    assert [r["epoch"] for r in log_rows(ddp)] == ["1", "2", "3"]
    for ra, rb in zip(log_rows(ddp), log_rows(one), strict=True):
        assert float(ra["loss"]) == pytest.approx(float(rb["loss"]), abs=1e-5)
    assert m["test_cpcc"] == pytest.approx(metrics(one)["test_cpcc"], abs=1e-5)
    assert_same_params(ddp, one)
    # one process does not resume the 2-rank run (the data order would change), and refusing
    # leaves the run directory as it was
    before = (ddp / "config.json").read_bytes()
    with pytest.raises(RunDirError, match=r"world_size \(2 -> 1\)"):
        train(single_cfg(epochs=4, batch_size=8), ddp, resume=True, progress=False)
    assert (ddp / "config.json").read_bytes() == before
    # `otcpcc evaluate` works on the run afterwards
    assert main(["evaluate", str(ddp)]) == 0
    assert json.loads((ddp / "eval.json").read_text())["epoch"] == 3


if __name__ == "__main__":  # a worker of the `ranks` fixture
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
