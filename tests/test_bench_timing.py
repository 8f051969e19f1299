"""otcpcc bench: every cell is timed warmed up (interleaved rounds), and --train-step's CPU path.

No timing asserts: the order of the calls is recorded, or the clock is a fake one."""

import re
import types

import pytest
import torch

import otcpcc
from otcpcc.bench import speed, timing
from otcpcc.bench.train_step import bench_train_step, format_train_line
from otcpcc.cli import main

SMALL = dict(classes=4, coarse=2, dim=3, reference=None, reference_repeats=1, reference_budget=60.0,
             device=torch.device("cpu"), dtype=torch.float32, seed=0, n_projections=2)


def _recording_loss(monkeypatch, calls, slow_calls=0, clock=None):
    """CPCCLoss replaced by a loss that logs which instance (cell) is called, in order; with a
    fake clock, its first ``slow_calls`` calls take 0.5 s and the others 1 ms."""
    instances = []

    class Recording:
        def __init__(self, tree, distance, **options):
            self.cell = len(instances)
            instances.append(self)

        def __call__(self, features, labels):
            if clock is not None:
                clock["t"] += 0.5 if len(calls) < slow_calls else 0.001
            calls.append(self.cell)
            return (features * features).sum()

    monkeypatch.setattr(otcpcc, "CPCCLoss", Recording, raising=False)
    return instances


def test_every_cell_is_warmed_up_with_its_own_loss_before_any_cell_is_timed(monkeypatch):
    calls: list[int] = []
    cells = _recording_loss(monkeypatch, calls)
    warmup, repeats = 2, 3
    speed.bench_distances(distances=["l2", "fastft"], batch_sizes=[8, 12], repeats=repeats,
                          warmup=warmup, **SMALL)
    assert len(cells) == 4
    nth = {c: [i for i, k in enumerate(calls) if k == c] for c in range(4)}
    # warm-up + timed + one untimed call for the value and gradient, all on the same object
    assert all(len(v) == warmup + repeats + 1 for v in nth.values()), nth
    last_warm = max(v[warmup - 1] for v in nth.values())
    first_timed = min(v[warmup] for v in nth.values())
    assert last_warm < first_timed, calls  # the old code timed cell 0 before cell 1 ran at all


def test_a_slow_spell_at_the_start_does_not_land_on_the_first_cell(monkeypatch):
    clock = {"t": 0.0}
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock["t"])
    calls: list[int] = []
    # 2 cells, 1 warm-up round, 5 timed rounds: calls 0-5 are slow = the warm-up round and the
    # first two timed rounds; the old per-cell loop gave cell 0 six slow calls (median 500 ms)
    _recording_loss(monkeypatch, calls, slow_calls=6, clock=clock)
    rows = speed.bench_distances(distances=["l2", "fastft"], batch_sizes=[8], repeats=5,
                                 warmup=1, **SMALL)
    assert [r["ours_ms"] for r in rows] == pytest.approx([1.0, 1.0])


def test_warmup_zero_still_warms_every_cell_once(monkeypatch):
    calls: list[int] = []
    _recording_loss(monkeypatch, calls)
    speed.bench_distances(distances=["l2", "fastft"], batch_sizes=[8], repeats=2, warmup=0, **SMALL)
    assert calls[:2] == [0, 1] and len(calls) == 2 + 2 * 2 + 2


def test_the_baseline_gets_one_untimed_full_size_call(monkeypatch):
    sizes: list[int] = []
    real = speed.load_reference(None)

    def reference_cpcc_loss(x, labels, tree_dist, distance, **options):
        sizes.append(x.shape[0])
        return real.reference_cpcc_loss(x, labels, tree_dist, distance, **options)

    fake = types.SimpleNamespace(reference_cpcc_loss=reference_cpcc_loss)
    rows = speed.bench_distances(distances=["l2"], batch_sizes=[40], repeats=1, warmup=1,
                                 **{**SMALL, "classes": 20, "coarse": 4, "reference": fake,
                                    "reference_repeats": 2})
    assert len(sizes) == 3 + 3 and max(sizes[:3]) < 40, sizes  # the estimate's probes: subsets
    assert sizes[3:] == [40, 40, 40]  # one untimed + two timed calls at full size
    assert rows[0]["value_abs_diff"] < 1e-6


LINE = re.compile(
    r"CPCC \((?P<d>\w+)\) adds (?P<pct>-?\d+\.\d)% to one training step of (?P<model>\w+) at batch "
    r"(?P<b>\d+) on cpu \(\d+ threads\): \d+\.\d -> \d+\.\d ms \(input 3x(?P<hw>\d+x\d+), "
    r"(?P<f>\d+)-d features, (?P<k>\d+) classes, fp32, SGD, lambda 1; medians of (?P<n>\d+) "
    r"interleaved rounds\)$")


def test_train_step_cpu_reports_one_line_per_distance_naming_the_step():
    said: list[str] = []
    results = bench_train_step(batch_sizes=[8], distances=["l2", "fastft"], classes=4, coarse=2,
                               repeats=2, warmup=1, device=torch.device("cpu"), seed=0,
                               input_shape=(3, 8, 8), log=said.append)
    assert [r["distance"] for r in results] == ["l2", "fastft"]
    for r in results:
        assert r["model"] == "cnn" and r["batch"] == 8 and r["dtype"] == "fp32" and r["rounds"] == 2
        assert r["overhead"] == pytest.approx(r["step_with_cpcc_ms"] / r["step_ms"] - 1)
        m = LINE.match(format_train_line(r))
        assert m, format_train_line(r)
        assert (m["d"], m["model"], m["b"], m["hw"], m["f"], m["k"], m["n"]) == (
            r["distance"], "cnn", "8", "8x8", str(r["feature_dim"]), "4", "2")
    assert said[0].startswith("train step: cnn (input 3x8x8") and "warming up" in said[0]
    assert "timing 2 round(s)" in said[1]  # announced before the timed rounds


def test_train_step_budget_cuts_the_rounds(monkeypatch):
    clock = {"t": 0.0}

    def tick():
        clock["t"] += 1.0  # every clock read: 1 s, so one round of 2 steps reads as >= 2 s
        return clock["t"]

    monkeypatch.setattr(timing.time, "perf_counter", tick)
    results = bench_train_step(batch_sizes=[8], distances=["l2"], classes=4, coarse=2, repeats=50,
                               warmup=1, device=torch.device("cpu"), seed=0, input_shape=(3, 8, 8),
                               budget_s=10.0)
    assert 1 <= results[0]["rounds"] < 50


def test_cli_train_step_prints_the_answer(capsys):
    assert main(["bench", "--train-step", "--batch-sizes", "8", "--classes", "4", "--coarse", "2",
                 "--dim", "2", "--distances", "l2", "--no-reference", "--repeats", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert LINE.match(out[-1]) and "of cnn at batch 8" in out[-1], out[-1]


@pytest.mark.parametrize("flags, needle", [
    (["--train-arch", "cnn"], "--train-arch is only used by --train-step"),
    (["--train-step", "--train-arch", "mlp"], "--train-arch 'mlp' is not a model for 3x32x32"),
])
def test_train_arch_is_checked_before_running(monkeypatch, capsys, flags, needle):
    monkeypatch.setattr(speed, "bench_distances", lambda **k: pytest.fail("ran the bench"))
    assert main(["bench", *flags, "--batch-sizes", "8", "--no-reference"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("otcpcc: error: ") and needle in err and "\n" not in err, err
