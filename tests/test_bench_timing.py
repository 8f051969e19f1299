"""otcpcc bench: every cell is timed warmed up (interleaved rounds), and --train-step's CPU path.

No timing asserts: the order of the calls is recorded, or the clock is a fake one."""

import json
import re
import types

import pytest
import torch

import otcpcc
from otcpcc.bench import paired, speed, timing, train_step
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
    probes = 1 + 2 * speed.PROBE_REPEATS  # the estimate's: one untimed, each probe size timed thrice
    assert len(sizes) == probes + 3 and max(sizes[:probes]) < 40, sizes  # probes: subsets
    assert sizes[probes:] == [40, 40, 40]  # one untimed + two timed calls at full size
    assert rows[0]["value_abs_diff"] < 1e-6


NUM = r"[+-]\d+\.\d%"
PAIRED = r" of the CE step \(median paired difference, 95% CI "
LINE = re.compile(
    r"CPCC \((?P<d>\w+)\) on one training step of (?P<model>\w+) at batch (?P<b>\d+) on cpu "
    r"\(\d+ threads\): (?P<verdict>within noise: (?P<pct>" + NUM + r")" + PAIRED + r"(?P<lo>" + NUM
    + r") to (?P<hi>" + NUM + r")\)|measurable: " + NUM + PAIRED + NUM + r" to " + NUM
    + r"\)|too few rounds for a 95% interval \((?P<few>\d+) < 6\): " + NUM + r"); "
    r"the CPCC term alone: (?P<alone>\d+\.\d) ms = (?P<share>\d+\.\d)% of the step "
    r"\(medians: CE step \d+\.\d ms, with CPCC \d+\.\d ms; input 3x(?P<hw>\d+x\d+), "
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
        assert r["call"] == "too few rounds" and r["ci_low_pct"] is None is r["ci_high_pct"]
        assert r["cpcc_ms"] > 0
        assert r["cpcc_share_pct"] == pytest.approx(100 * r["cpcc_ms"] / r["step_ms"])
        m = LINE.match(format_train_line(r))
        assert m, format_train_line(r)
        assert (m["d"], m["model"], m["b"], m["hw"], m["f"], m["k"], m["n"]) == (
            r["distance"], "cnn", "8", "8x8", str(r["feature_dim"]), "4", "2")
        assert m["few"] == "2"
    assert said[0].startswith("train step: cnn (input 3x8x8") and "warming up" in said[0]
    assert "timing 2 round(s)" in said[1]  # announced before the timed rounds


@pytest.mark.parametrize("budget, repeats, rounds", [(10.0, 50, 10), (3.0, 50, 6), (3.0, 4, 4)])
def test_train_step_budget_cuts_the_rounds_but_keeps_six(monkeypatch, budget, repeats, rounds):
    clock = {"t": 0.0}

    def tick():
        clock["t"] += 1.0  # every clock read is 1 s later: the warm-up round reads as 1 s
        return clock["t"]

    monkeypatch.setattr(timing.time, "perf_counter", tick)
    results = bench_train_step(batch_sizes=[8], distances=["l2"], classes=4, coarse=2,
                               repeats=repeats, warmup=1, device=torch.device("cpu"), seed=0,
                               input_shape=(3, 8, 8), budget_s=budget)
    # 10 s buys 10 rounds; 3 s buys 3, but 6 are timed (the fewest with a 95% interval) unless
    # --repeats asks for fewer
    assert results[0]["rounds"] == rounds
    assert (results[0]["call"] == "too few rounds") == (rounds < 6)


def test_cli_train_step_prints_the_answer(capsys):
    assert main(["bench", "--train-step", "--batch-sizes", "8", "--classes", "4", "--coarse", "2",
                 "--dim", "2", "--distances", "l2", "--no-reference", "--repeats", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert LINE.match(out[-1]) and "of cnn at batch 8" in out[-1], out[-1]


@pytest.mark.parametrize("flags, needle", [
    (["--train-arch", "cnn"], "--train-arch is only used by --train-step"),
    (["--train-step", "--train-arch", "mlp"], "--train-arch 'mlp' is not a model for 3x32x32"),
    (["--train-budget", "5"], "--train-budget is only used by --train-step"),  # was ignored
    (["--train-budget=5"], "--train-budget is only used by --train-step"),
])
def test_train_arch_is_checked_before_running(monkeypatch, capsys, flags, needle):
    monkeypatch.setattr(speed, "bench_distances", lambda **k: pytest.fail("ran the bench"))
    assert main(["bench", *flags, "--batch-sizes", "8", "--no-reference"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("otcpcc: error: ") and needle in err and "\n" not in err, err


# --------------------------------------------------------------------------- noise of the answer
@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1])
def test_median_interval_ranks_match_the_binomial_oracle(alpha):
    from scipy.stats import binom

    for n in range(1, 61):
        # oracle: the largest k with 2 P(B <= k-1) <= alpha, B ~ Bin(n, 1/2), by scanning every k
        ok = [k for k in range(1, n // 2 + 2) if k <= n + 1 - k
              and 2 * binom.cdf(k - 1, n, 0.5) <= alpha]
        want = (max(ok), n + 1 - max(ok)) if ok else None
        assert paired.median_ci_ranks(n, alpha) == want, n
        assert (want is None) == (n < paired.min_rounds(alpha)), n


def test_median_interval_hand_worked():
    # textbook ranks for 95%: n = 6 -> (1, 6) (coverage 1 - 2/64); n = 10 -> (2, 9); n = 20 -> (6, 15)
    assert [paired.median_ci_ranks(n) for n in (5, 6, 10, 20)] == [None, (1, 6), (2, 9), (6, 15)]
    values = [7.0, -1.0, 3.0, 0.5, 9.0, 2.0, 4.0, -2.0, 5.0, 1.0]  # sorted: -2 -1 .5 1 2 3 4 5 7 9
    assert paired.median_ci(values) == (-1.0, 7.0)
    assert paired.median_ci(values[:5]) is None


def test_paired_overhead_uses_the_per_round_differences():
    base = [100.0, 300.0, 100.0, 300.0, 100.0, 300.0, 200.0]
    diff = [4.0, 6.0, 5.0, 7.0, 5.5, 6.5, 3.0]  # sorted 3 4 5 5.5 6 6.5 7; n = 7 -> ranks (1, 7)
    out = paired.paired_overhead(base, [b + d for b, d in zip(base, diff, strict=True)])
    # the unpaired median(with) / median(base) - 1 would say 205 / 200 - 1 = 2.5%, not 2.75%
    assert out == pytest.approx({"overhead_pct": 100 * 5.5 / 200, "ci_low_pct": 100 * 3 / 200,
                                 "ci_high_pct": 100 * 7 / 200, "call": "measurable"})
    noisy = [b + d for b, d in zip(base, [-30.0, 40.0, 2.0, -10.0, 25.0, 1.0, 3.0], strict=True)]
    out = paired.paired_overhead(base, noisy)
    assert out["call"] == "within noise" and out["overhead_pct"] == pytest.approx(1.0)
    assert (out["ci_low_pct"], out["ci_high_pct"]) == pytest.approx((-15.0, 20.0))
    few = paired.paired_overhead(base[:5], noisy[:5])
    assert few["call"] == "too few rounds" and few["ci_low_pct"] is None
    with pytest.raises(ValueError, match="equally many"):
        paired.paired_overhead(base, noisy[:3])


def test_train_step_answer_comes_from_paired_rounds_and_times_cpcc_alone(monkeypatch):
    # fixed times instead of the clock: rounds alternate fast/slow; CPCC adds 2-4 ms each round
    ce = [800.0, 1000.0] * 4
    with_l2 = [c + d for c, d in zip(ce, [2.0, 4.0, 3.0, 2.5, 3.5, 2.0, 4.0, 3.0], strict=True)]
    alone = [3.0, 3.2, 2.8, 3.1, 3.0, 2.9, 3.3, 3.0]
    seen = {}

    def fake(calls, **kw):
        seen["n_calls"] = len(calls)
        for c in calls:  # run each once: the CPCC-alone call must work on its own
            c()
        return [ce, with_l2, alone, [9.0] * 8, [1.0] * 8]  # 3 calls alone: median of the 24

    monkeypatch.setattr(train_step, "time_interleaved", fake)
    (r,) = bench_train_step(batch_sizes=[8], distances=["l2"], classes=4, coarse=2, repeats=8,
                            warmup=1, device=torch.device("cpu"), seed=0, input_shape=(3, 8, 8))
    assert seen["n_calls"] == 5  # CE step, CE + CPCC step, CPCC alone x 3: in the same rounds
    # oracle by hand: diffs sorted 2 2 2.5 3 3 3.5 4 4, median 3; n = 8 -> ranks (1, 8); CE median 900
    assert (100 * r["overhead"], r["ci_low_pct"], r["ci_high_pct"]) == pytest.approx(
        (100 * 3 / 900, 100 * 2 / 900, 100 * 4 / 900))
    assert r["call"] == "measurable" and r["cpcc_ms"] == pytest.approx(3.0)
    assert r["cpcc_share_pct"] == pytest.approx(100 * 3 / 900)
    line = format_train_line(r)
    assert LINE.match(line), line
    assert ("measurable: +0.3% of the CE step (median paired difference, 95% CI +0.2% to +0.4%); the "
            "CPCC term alone: 3.0 ms = 0.3% of") in line


def test_cpcc_alone_is_called_on_leaf_features_of_the_steps_shape(monkeypatch):
    seen: list[tuple] = []

    class Recording:
        def __init__(self, tree, distance, **options):
            pass

        def __call__(self, features, labels):
            seen.append((tuple(features.shape), features.is_leaf))
            return (features * features).sum()

    monkeypatch.setattr(otcpcc, "CPCCLoss", Recording, raising=False)
    (r,) = bench_train_step(batch_sizes=[8], distances=["l2"], classes=4, coarse=2, repeats=2,
                            warmup=1, device=torch.device("cpu"), seed=0, input_shape=(3, 8, 8))
    shape = (8, r["feature_dim"])
    # per round (1 warm-up + 2 timed): the step's call (through the model) then 3 calls alone
    assert seen == [(shape, False), (shape, True), (shape, True), (shape, True)] * 3


def test_no_reference_speedup_cell_is_a_dash_not_dash_x():
    row = {"distance": "l2", "batch": 256, "ours_ms": 4.2, "reference_ms": None, "speedup": None,
           "value_abs_diff": None, "grad_max_abs_diff": None, "reference_note": "--no-reference"}
    line = speed.format_row(row)
    assert "-x" not in line and line.split()[3] == "-" and line.split()[4] == "-", line
    assert " 12.5x " in speed.format_row({**row, "reference_ms": 52.5, "speedup": 12.5})


def test_cli_json_has_the_noise_fields(tmp_path):
    out = tmp_path / "t.json"
    assert main(["bench", "--train-step", "--batch-sizes", "8", "--classes", "4", "--coarse", "2",
                 "--dim", "2", "--distances", "l2", "--no-reference", "--repeats", "1",
                 "--json", str(out)]) == 0
    (r,) = json.loads(out.read_text())["train_step"]
    assert {"ci_low_pct", "ci_high_pct", "call", "cpcc_ms", "cpcc_share_pct"} <= r.keys()
    assert r["call"] == "too few rounds" and r["ci_low_pct"] is None and r["cpcc_ms"] > 0


def test_round_durations_are_readable_at_every_size():
    """New-user finding: a fast bench round was logged as "one round takes 0.00 s: about 0.1 s"."""
    from otcpcc.bench.timing import duration

    assert [duration(s) for s in (0.0012, 0.5, 1.5, 59.9, 150)] == [
        "1.2 ms", "500.0 ms", "1.50 s", "59.90 s", "2.5 min"]
