"""How close is each approximate class distance to exact EMD? (``otcpcc bench --approx``)

For every feature set and every approximation ρ̃ ∈ {fastft (order batch), fastft (order
sorted), swd, sinkhorn, l2}, against exact EMD ρ (POT-equivalent LP) on the same samples:

* ``rel_err``: mean over class pairs of |ρ̃ − ρ| / ρ (0 = equal; FastFT is ≥ EMD, ℓ2 ≤ EMD);
* ``spearman``: Spearman rank correlation of the [pairs] vectors ρ̃ and ρ (1 = same ordering of
  the class pairs, which is what CPCC's correlation mostly sees);
* ``dcpcc``: CPCC(ρ̃) − CPCC(ρ), both against the label tree (TestCPCC difference);
* ``order``: mean over pairs of |ρ̃(shuffled rows) − ρ̃| / ρ̃ for one reshuffle of the rows
  (seed 1): how much the value depends on the order of the batch;
* ``ms`` and ``x_batch``: median time of one forward + backward of ``class_distances(...).sum()``
  on float32 features (of ``--repeats``), and that time over FastFT-batch's.

Feature sets (each class capped at ``--max-per-class`` samples, drawn with ``--seed``; the rows
are shuffled with ``--seed`` first, since FastFT-batch depends on their order):

a. the input features of the embedded data sets (synthetic: 20 classes, 32-d; digits: 10
   classes, 64-d), test split;
b. the learned test features of a trained run (``--run DIR``; without it a plain-CE run is trained
   once into ``runs/approx-learned``: synthetic data, 5 epochs, seed 0);
c. Gaussian mixtures with a two-level tree (3 coarse × 4 fine classes; class f of coarse c has
   two modes at ``2 g_c + h_f ± m_f``, g, h, m ~ N(0, I_d), noise N(0, 0.25 I_d), 60 samples per
   class) in dimensions ``--dims``.

Also ``batch=B`` rows (``--batch``): the same metrics averaged over ``--batches`` random batches
of B samples, i.e. the few samples per class that the regulariser sees in training.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..flags import OneLineParser, count_list, int_at_least, unwritable

APPROX = (("fastft", {"order": "batch"}, "fastft-batch"),
          ("fastft", {"order": "sorted"}, "fastft-sorted"),
          ("swd", {"seed": 0}, "swd"),
          ("sinkhorn", {}, "sinkhorn"),
          ("l2", {}, "l2"))


def _cap(x: np.ndarray, y: np.ndarray, cap: int, rng: np.random.Generator):
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        keep.append(rng.choice(idx, min(cap, idx.size), replace=False))
    keep = rng.permutation(np.concatenate(keep))  # shuffled: batch order is a random order
    return x[keep], y[keep]


def _timed(x: torch.Tensor, y: torch.Tensor, name: str, opts: dict, repeats: int) -> float:
    from ..distances import class_distances

    times = []
    for _ in range(repeats + 1):
        xg = x.detach().clone().requires_grad_(True)
        t0 = time.perf_counter()
        class_distances(xg, y, name, **opts)[1].sum().backward()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times[1:])  # the first call warms up


def compare(x: np.ndarray, y: np.ndarray, tree, repeats: int = 3, timing: bool = True
            ) -> dict[str, dict[str, float]]:
    """Metrics of every approximation against exact EMD on one feature set (see module doc)."""
    from scipy.stats import spearmanr

    from ..distances import class_distances, group_by_class
    from ..objectives.correlation import pearson
    from ..objectives.target import target_matrix

    xt = torch.as_tensor(x, dtype=torch.float64)
    yt = torch.as_tensor(y, dtype=torch.long)
    classes, emd = class_distances(xt, yt, "emd")
    g = group_by_class(yt)
    k = int(target_matrix(tree).shape[0])
    ci, cj = classes[g.pair_i], classes[g.pair_j]
    t = target_matrix(tree).view(-1)[ci * k + cj]
    cpcc_emd = float(pearson(t, emd))
    x32 = xt.float()
    base = _timed(x32, yt, "fastft", {}, repeats) if timing else float("nan")
    out: dict[str, dict[str, float]] = {}
    shuffle = torch.as_tensor(np.random.default_rng(1).permutation(len(y)))
    for name, opts, label in APPROX:
        rho = class_distances(xt, yt, name, **opts)[1]
        rho_shuffled = class_distances(xt[shuffle], yt[shuffle], name, **opts)[1]
        pos = emd > 0
        rel = float(((rho - emd).abs()[pos] / emd[pos]).mean())
        ms = _timed(x32, yt, name, opts, repeats) if timing else float("nan")
        corr = pearson(t, rho)
        out[label] = {
            "rel_err": rel,
            "spearman": float(spearmanr(rho.numpy(), emd.numpy())[0]),
            "dcpcc": (float(corr) if corr is not None else 0.0) - cpcc_emd,
            "order": float(((rho_shuffled - rho).abs()[pos] / rho[pos]).mean()),
            "ms": ms, "x_batch": ms / base,
        }
    out["emd"] = {"cpcc": cpcc_emd, "ms": _timed(x32, yt, "emd", {}, repeats) if timing
                  else float("nan")}
    return out


def compare_batches(x: np.ndarray, y: np.ndarray, tree, batch: int, batches: int,
                    rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """:func:`compare` averaged over ``batches`` random batches of ``batch`` rows (no timing)."""
    runs = []
    for _ in range(batches):
        idx = rng.choice(len(y), min(batch, len(y)), replace=False)
        runs.append(compare(x[idx], y[idx], tree, timing=False))
    return {m: {key: float(np.mean([r[m][key] for r in runs])) for key in runs[0][m]}
            for m in runs[0]}


def gaussian_mixture(d: int, seed: int, per_class: int = 60):
    """Features [12 · per_class, d], labels, and the 3 × 4 two-level tree (module doc, c)."""
    from ..tree import LabelTree

    rng = np.random.default_rng(seed)
    coarse, fine = 3, 4
    k = coarse * fine
    parent = np.arange(k) // fine
    g, h, m = rng.normal(size=(coarse, d)), rng.normal(size=(k, d)), rng.normal(size=(k, d))
    y = np.repeat(np.arange(k), per_class)
    sign = np.where(np.arange(len(y)) % 2 == 0, 1.0, -1.0)[:, None]
    x = 2 * g[parent[y]] + h[y] + sign * m[y] + 0.5 * rng.normal(size=(len(y), d))
    return x, y, LabelTree.from_levels([parent])


def embedded_inputs(name: str):
    """(features [N, D] float64, labels, tree) of an embedded data set's test split."""
    from ..data import get_dataset

    b = get_dataset(name)
    x, y = b.test.tensors
    return x.reshape(len(y), -1).double().numpy(), y.numpy(), b.tree


def learned_features(run: str | None, say=print):
    """(test features, labels, tree) of ``run``; trains the default run first when it is None."""
    from ..evaluation.evaluate import load_run
    from ..evaluation.inference import predict

    if run is None:
        run = "runs/approx-learned"
        if not (Path(run) / "last.pt").is_file():
            from ..training import train

            say(f"training {run}: synthetic data, plain CE, 5 epochs, seed 0")
            train({"data": "synthetic", "epochs": 5, "seed": 0, "device": "cpu"}, run,
                  force=True, progress=False)
    loaded = load_run(run)
    res = predict(loaded.model, loaded.bundle.test, loaded.env, loaded.cfg)
    return res["features"].double().numpy(), res["labels"].numpy(), loaded.tree


def table(rows: list[tuple[str, dict]], timing: bool = True) -> str:
    """Markdown table: one row per (feature set, approximation)."""
    head = "| features | distance | rel. error vs EMD | Spearman vs EMD | ΔTestCPCC | order effect |"
    lines = [head + (" ms | × batch |" if timing else ""),
             "|---|---|---|---|---|---|" + ("---|---|" if timing else "")]
    for setname, res in rows:
        for label, r in res.items():
            if label == "emd":
                time_cells = f" {r['ms']:.1f} | |" if timing else ""
                lines.append(f"| {setname} | emd (exact) | 0 | 1 | CPCC {r['cpcc']:.4f} | 0 |"
                             + time_cells)
                continue
            time_cells = f" {r['ms']:.1f} | {r['x_batch']:.2f} |" if timing else ""
            lines.append(f"| {setname} | {label} | {r['rel_err']:.4f} | {r['spearman']:.4f} | "
                         f"{r['dcpcc']:+.4f} | {r['order']:.1e} |" + time_cells)
    return "\n".join(lines)


def verdict(rows: list[tuple[str, dict]]) -> str:
    """Whether fastft-sorted is closer to EMD (rel. error and Spearman) at ≤ 1.5× the time on
    every full feature set."""
    fails = []
    for setname, res in rows:
        s, b = res["fastft-sorted"], res["fastft-batch"]
        if not (s["rel_err"] < b["rel_err"] and s["spearman"] >= b["spearman"]):
            fails.append(f"{setname}: sorted is not closer to EMD")
        if s.get("x_batch", 0) == s.get("x_batch", 0) and s.get("x_batch", 0) > 1.5:
            fails.append(f"{setname}: sorted takes {s['x_batch']:.2f}x the batch order's time")
    if not fails:
        return "fastft order=sorted is closer to EMD at <= 1.5x the time on every full set: it qualifies as the default"
    return "fastft keeps order=batch as the default (" + "; ".join(fails) + ")"


def _threads(text: str) -> int:
    """argparse type: 0 (leave as is) up to 4x the CPU cores (100000 threads crashed the process)."""
    value, most = int_at_least(0)(text), 4 * (os.cpu_count() or 1)
    if value > most:
        raise argparse.ArgumentTypeError(f"expected at most {most} (4x this machine's CPU cores), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="otcpcc bench --approx", description=__doc__.split("\n")[0])
    p.add_argument("--approx", action="store_true", help="(selects this benchmark)")
    p.add_argument("--run", default=None, metavar="DIR", help="run whose learned features to use")
    p.add_argument("--dims", type=count_list, default=[2, 16, 128],
                   help="Gaussian-mixture dimensions (default 2,16,128)")
    p.add_argument("--max-per-class", type=int_at_least(2), default=100, metavar="N")
    p.add_argument("--batch", type=int_at_least(0), default=256, metavar="B",
                   help="batch rows: B samples per batch (0: none; default 256)")
    p.add_argument("--batches", type=int_at_least(1), default=10, help="batches averaged (default 10)")
    p.add_argument("--repeats", type=int_at_least(1), default=3, help="timed calls (median)")
    p.add_argument("--seed", type=int_at_least(0), default=0)
    p.add_argument("--threads", type=_threads, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    why = unwritable(args.json) if args.json is not None else None
    if why:  # before the run, not after it
        print(f"otcpcc: error: {why}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    say = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    sets = [(f"input {n}", lambda n=n: embedded_inputs(n)) for n in ("synthetic", "digits")]
    # a --run given is loaded first: a wrong directory is refused before minutes of work
    learned = learned_features(args.run, say) if args.run is not None else None
    sets.append(("learned (synthetic CE run)", lambda: learned or learned_features(None, say)))
    sets += [(f"mixture d={d}", lambda d=d: gaussian_mixture(d, args.seed)) for d in args.dims]
    rows, batch_rows = [], []
    for setname, make in sets:
        say(f"{setname} ...")
        x, y, tree = make()
        rng = np.random.default_rng(args.seed)
        xc, yc = _cap(x, y, args.max_per_class, rng)
        rows.append((setname, compare(xc, yc, tree, args.repeats)))
        if args.batch:
            batch_rows.append((f"{setname}, batch {args.batch}",
                               compare_batches(x, y, tree, args.batch, args.batches, rng)))
    print(table(rows))
    if batch_rows:
        print()
        print(table(batch_rows, timing=False))
    print()
    print("Verdict on the full sets: " + verdict(rows))
    if args.json:
        from .checks import write_json_flag

        return write_json_flag(args.json, json.dumps({"full": rows, "batches": batch_rows}, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
