"""Mutation check: does the suite fail when the numeric core is wrong?

    python benchmarks/mutate.py            # every mutant, ~10-20 min on 2 cores
    python benchmarks/mutate.py -k swd     # mutants whose name contains "swd"
    python benchmarks/mutate.py --list

Each mutant is one small deliberate bug (an exact text replacement in one file of src/otcpcc). For
each, the repository's src/ and tests/ are copied to a temporary folder, the bug is applied there
(never in the working tree) and the tests that cover that file run against the copy
(``python -m pytest -x -q``). A mutant is *killed* when a test fails, *survives* when all pass. The
score is killed / applied. A mutant whose text is no longer in the file is reported as ``stale``
(update its text after a refactor). Too slow for CI; run it after changing the numeric core and put
the score in your note.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # under src/otcpcc
    old: str
    new: str
    tests: tuple[str, ...]  # test files (under tests/) that should kill it


DIST = ("test_distances.py", "test_oracle_gaps.py", "test_loss.py", "test_reference.py")
METRICS = ("test_metrics.py", "test_oracle_gaps.py")
TRAIN = ("test_train.py", "test_oracle_gaps.py")

MUTANTS = (
    # the training step
    Mutant("step: regulariser detached", "training/step.py",
           "loss = ce + cfg.lam * reg", "loss = ce + cfg.lam * reg.detach()", TRAIN),
    Mutant("step: regulariser sign", "training/step.py",
           "loss = ce + cfg.lam * reg", "loss = ce - cfg.lam * reg", TRAIN),
    # distances
    Mutant("cost: no near-zero recompute", "distances/cost.py",
           "    overflows = _OVERFLOWS.get()\n", "    return vals[:s]\n", DIST),
    Mutant("groups: pair order swapped", "distances/groups.py",
           "pair_i, pair_j = torch.triu_indices(k, k, offset=1, device=labels.device)",
           "pair_j, pair_i = torch.triu_indices(k, k, offset=1, device=labels.device)", DIST),
    Mutant("swd: wrong root for p != 2", "distances/swd.py",
           ".pow(1.0 / p)", ".pow(0.5)", DIST),
    Mutant("emd: LP cost blocks scaled", "distances/emd.py",
           ".sqrt_().mul_(c).cpu().numpy()", ".sqrt_().mul_(c * 1.01).cpu().numpy()", DIST),
    Mutant("bands: diagonal block not halved", "distances/bands.py",
           "mass[:, :rows.stop - rows.start].mul_(0.5)", "mass[:, :rows.stop - rows.start].mul_(1.0)",
           ("test_scale.py", *DIST)),
    Mutant("bands: backward drops the column side", "distances/bands.py",
           "out[cols] += coef.sum(0)[:, None] * xb[cols] - coef.T @ xb[rows]", "pass",
           ("test_scale.py", *DIST)),
    Mutant("bands: deferred check never reruns", "distances/bands.py",
           "return bool(self.flags) and bool(torch.stack(self.flags).any())", "return False",
           ("test_scale.py", *DIST)),
    Mutant("l2: means doubled", "distances/l2.py",
           "means = class_means(", "means = 2 * class_means(", DIST),
    Mutant("sinkhorn: reg ignored", "distances/sinkhorn.py",
           "reg: float = 10.0", "reg: float = 1.0", DIST),
    # the loss
    Mutant("pearson: no centring of t", "objectives/correlation.py",
           "tc = t - t.mean()", "tc = t", ("test_loss.py", "test_reference.py")),
    Mutant("pearson: no sqrt", "objectives/correlation.py",
           "norm = torch.sqrt(s_rr)", "norm = s_rr",
           ("test_loss.py", "test_reference.py")),
    Mutant("pearson backward: drops the r term", "objectives/correlation.py",
           "tc * (a * grad) - rc * (b * grad)", "tc * (a * grad)", ("test_loss.py", "test_reference.py")),
    Mutant("distances: overflowed values pass", "distances/__init__.py",
           "finite = max_abs(rho.detach()) < math.inf", "finite = max_abs(rho.detach()) <= math.inf",
           ("test_trust_bad_input.py",)),
    Mutant("fastft switch: work model inverted", "distances/fastft.py",
           "return n * n + ENTRY_COST * entries <= BAND_CELL_COST",
           "return n * n + ENTRY_COST * entries > BAND_CELL_COST",
           ("test_fastft_switch.py",)),
    Mutant("emd: unit columns mapped to the wrong pair", "distances/emd.py",
           'col, side="right") - 1]', 'col, side="left") - 1]', ("test_scale.py", *DIST)),
    Mutant("fixed fastft: a tie's segment owned twice", "distances/fixed.py",
           'prev = torch.where(cls[:, None] < other, ceil, torch.div(q, n, rounding_mode="floor"))',
           "prev = ceil", ("test_graphed.py",)),
    Mutant("dense pair gradient: C not symmetric", "distances/cost.py",
           "index_add_(0, flat if flat is not None else ia * n + ib, coef).index_add_(0, ib * n + ia, coef)",
           "index_add_(0, flat if flat is not None else ia * n + ib, coef)", ("test_graphed.py", *DIST)),
    Mutant("rows pair gradient: row b not updated", "distances/cost.py",
           "grad_x.index_add_(0, a, g).index_add_(0, b, -g)", "grad_x.index_add_(0, a, g)",
           ("test_graphed.py", *DIST)),
    Mutant("masked correlation: centred over every pair", "objectives/correlation.py",
           "rc = torch.where(mask, r - r.sum() / size, 0)", "rc = torch.where(mask, r - r.mean(), 0)",
           ("test_graphed.py",)),
    # metrics
    Mutant("severity: matrix transposed", "metrics/mistakes.py",
           "d[y[wrong], p[wrong]]", "d[p[wrong], y[wrong]]", METRICS),
    Mutant("hier_dist: matrix transposed", "metrics/mistakes.py",
           "d[y[:, None], top]", "d[top, y[:, None]]", METRICS),
    Mutant("expected_cost: matrix transposed", "metrics/mistakes.py",
           "np.sum(p * c[y], axis=1)", "np.sum(p * c.T[y], axis=1)", METRICS),
    Mutant("hier_dist: top-k from the lowest scores", "metrics/mistakes.py",
           'np.argsort(-s, axis=1, kind="stable")', 'np.argsort(s, axis=1, kind="stable")', METRICS),
    Mutant("accuracy: coarse argmin", "metrics/accuracy.py",
           "coarse.argmax(axis=1)", "coarse.argmin(axis=1)", METRICS),
    Mutant("retrieval: dot instead of cosine", "metrics/retrieval.py",
           "def _unit_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:\n",
           "def _unit_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:\n    return x\n", METRICS),
    # the tree
    Mutant("tree: lca weight counted once", "tree/labeltree.py",
           "up = rw[s:e] - wn", "up = rw[s:e] - 0.5 * wn", ("test_tree.py",)),
)


def run_mutant(m: Mutant, timeout: float) -> tuple[str, float, str]:
    target = ROOT / "src" / "otcpcc" / m.path
    text = target.read_text(encoding="utf-8")
    if m.old not in text:
        return "stale", 0.0, f"text not found in {m.path}"
    with tempfile.TemporaryDirectory(prefix="otcpcc-mutant-") as tmp:
        tmp = Path(tmp)
        shutil.copytree(ROOT / "src", tmp / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        shutil.copytree(ROOT / "tests", tmp / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", tmp / "pyproject.toml")
        (tmp / "src" / "otcpcc" / m.path).write_text(text.replace(m.old, m.new, 1), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(tmp / "src")}
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
               *[f"tests/{t}" for t in m.tests]]
        t0 = time.perf_counter()
        try:
            res = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "killed", time.perf_counter() - t0, "timeout"
        dt = time.perf_counter() - t0
        lines = res.stdout.strip().splitlines() or [""]
        failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
        return ("survived" if res.returncode == 0 else "killed"), dt, (failed or lines)[-1][:160]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", default="", help="only mutants whose name contains this")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant (a hang counts as killed)")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if args.k in m.name]
    if args.list:
        for m in chosen:
            print(f"{m.name:45s} {m.path}")
        return 0
    counts = {"killed": 0, "survived": 0, "stale": 0}
    for m in chosen:
        status, dt, detail = run_mutant(m, args.timeout)
        counts[status] += 1
        print(f"{status:9s} {dt:6.1f}s  {m.name:45s} {detail}", flush=True)
    applied = counts["killed"] + counts["survived"]
    score = counts["killed"] / applied if applied else float("nan")
    print(f"killed {counts['killed']} of {applied} applied mutants ({score:.0%}); "
          f"{counts['stale']} stale")
    return 0 if counts["survived"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
