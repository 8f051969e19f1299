"""Compare methods and sweep hyper-parameters: train, evaluate, summarise, render.

``run_compare`` trains every method (``study.methods``: ``none`` = plain cross-entropy, ``hxe``,
``soft``, a CPCC distance = CE + λ·CPCC, or ``hxe+fastft``) on the same data for the same seeds,
evaluates each run (``otcpcc.evaluate.evaluate_run``), writes ``summary.json`` with the paired
verdicts against ``none`` (``study.verdict``) and renders the report
(``otcpcc.report.render_report``). ``run_sweep`` trains a grid over λ and batch
size and writes ``sweep.csv`` and ``sweep.png``.

Layout::

    out/summary.json, report.md, report.html, *.png      (compare)
    out/study.json                                       (its settings, for --resume: study.resume)
    out/<method>/seed<k>/                                (one run directory per method and seed)
    out/sweep.csv, sweep.png, lam<λ>_bs<B>/              (sweep)
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from ..runs.checkpoint import atomic_write_text
from ..runs.config import TrainConfig
from .context import read_context
from .methods import resolve_methods
from .notes import run_collapse
from .report import render_report
from .resume import (
    check_run_config,
    earlier_run,
    evaluated_alike,
    open_study,
    run_state,
    stored_metrics,
    study_record,
    write_study,
)
from .sentences import NO_BASELINE
from .tables import _is_number, aggregate_runs
from .verdict import BASELINE, ot_verdicts, verdicts

# the summary's leading keys, in this order; every other evaluation metric follows
_FIRST_KEYS = ("fine_acc", "test_cpcc_l2", "test_cpcc_emd", "test_cpcc_own", "mistake_severity",
               "expected_cost", "fine_acc_crm", "mistake_severity_crm", "expected_cost_argmax",
               "expected_cost_crm")


def _as_config(cfg: TrainConfig | Mapping[str, Any]) -> TrainConfig:
    if isinstance(cfg, TrainConfig):
        cfg.validate()
        return cfg
    return TrainConfig.from_dict(dict(cfg))


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into ``parent_child`` keys, keeping scalars (numbers, strings, bools,
    ``None``); lists and arrays are dropped (they stay in each run's ``eval.json``). Non-finite
    numbers become ``None`` so that the JSON stays valid."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, prefix=f"{name}_"))
        elif isinstance(value, (bool, str)) or value is None:
            flat[name] = value
        elif _is_number(value):
            v = float(value) if isinstance(value, (float, np.floating)) else int(value)
            flat[name] = v if math.isfinite(v) else None
    return flat


def _train_time(run_dir: Path) -> float | None:
    """Training seconds: ``train_time_s`` of ``run_dir/metrics.json``, else the sum of the
    ``epoch_time`` column of ``run_dir/log.csv``; ``None`` when neither is there."""
    try:
        value = json.loads((run_dir / "metrics.json").read_text()).get("train_time_s")
        if _is_number(value):
            return float(value)
    except (OSError, ValueError, AttributeError):
        pass
    path = run_dir / "log.csv"
    if not path.exists():
        return None
    with open(path, newline="") as f:
        times = [r.get("epoch_time") for r in csv.DictReader(f)]
    try:
        return float(sum(float(t) for t in times if t not in (None, "")))
    except ValueError:
        return None


def run_row(run_dir: Path, metrics: Mapping[str, Any], **ids: Any) -> dict[str, Any]:
    """One summary row: ``ids`` (distance, seed, …), ``fine_acc`` (= ``fine_top1``), the leading
    metrics (``test_cpcc_own`` = evaluate's ``test_cpcc``, TestCPCC under the run's own
    distance), every other flattened metric, ``train_time_s`` (see :func:`_train_time`) and
    ``collapsed`` (``"epoch E: reason"`` from ``metrics.json``, or ``None``)."""
    flat = flatten_metrics(metrics)
    flat["fine_acc"] = flat.get("fine_top1")
    if "test_cpcc_own" not in flat and "test_cpcc" in flat:  # evaluate's own-distance TestCPCC
        flat["test_cpcc_own"] = flat["test_cpcc"]
    row: dict[str, Any] = dict(ids)
    row.update({k: flat.get(k) for k in _FIRST_KEYS})
    row.update({k: v for k, v in flat.items() if k not in row})
    row["train_time_s"] = _train_time(run_dir)
    row["collapsed"] = run_collapse(run_dir)  # "epoch E: reason" or None
    return row


def _eval_device(cfg: TrainConfig) -> str:
    if cfg.device != "auto":
        return cfg.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _train_and_evaluate(cfg: TrainConfig, run_dir: Path, force: bool, progress: bool,
                        cost_matrix: Any, resume: bool = False) -> dict[str, Any]:
    """Train and evaluate one run; with ``resume``, reuse what ``run_dir`` already holds
    (``study.resume.run_state``: its eval.json, its trained model, or its last checkpoint)."""
    from ..evaluation.evaluate import evaluate_run
    from ..training import train
    from ..training.control import NonFiniteLoss

    state = run_state(run_dir) if resume else "new"
    with earlier_run(run_dir) if resume else nullcontext():  # fixes for its corrupt files
        if state in ("evaluated", "trained"):
            check_run_config(run_dir, cfg)
        if state == "evaluated":
            saved = stored_metrics(run_dir)
            if evaluated_alike(saved, run_dir, cost_matrix):
                _say(progress, f"[resume] {run_dir} finished earlier; reusing its eval.json")
                return {"run_dir": run_dir, "metrics": saved}
            state = "trained"  # e.g. evaluated again by hand with another --cost-matrix
            _say(progress, f"[compare] {run_dir}/eval.json was not computed with this comparison's "
                           f"cost matrix ({saved.get('cost_matrix')}) on the finished run; evaluating it again")
        elif state == "trained":
            _say(progress, f"[resume] {run_dir} was trained earlier; evaluating it")
        try:
            if state != "trained":  # a checkpoint continues; a directory with none starts over
                run_dir = Path(train(cfg, run_dir, resume=state == "checkpoint",
                                     force=force or (resume and state == "new"), progress=progress))
        except NonFiniteLoss as e:  # one diverged run is a finding of the comparison, not its end
            print(f"otcpcc: {e}; the comparison goes on without this run", file=sys.stderr, flush=True)
            where = re.search(r"epoch (\d+)/\d+, step (\d+)", str(e))
            when = f"epoch {where[1]}: the loss became non-finite at step {where[2]}" if where else str(e).split(";")[0]
            return {"run_dir": None, "metrics": {}, "diverged": f"{when} (training stopped; no metrics)"}
        return {"run_dir": run_dir,
                "metrics": evaluate_run(run_dir, cost_matrix=cost_matrix, device=_eval_device(cfg),
                                    data_dir=cfg.data_dir)}  # where the data is now (may change on --resume)


def run_compare(base_cfg: TrainConfig | Mapping[str, Any], methods: Sequence[str], seeds: int,
                out: str | os.PathLike, force: bool = False, progress: bool = True,
                cost_matrix: Any = None, resume: bool = False, tree: Any = None) -> Path:
    """Train and evaluate every method for ``seeds`` seeds, summarise, judge and render the report.

    Each entry of ``methods`` (``study.methods.resolve_method``: ``none``, ``hxe``, ``soft``, a
    CPCC distance, ``hxe+fastft``, …; λ, α, β from ``base_cfg``) trains with seeds
    ``base_cfg.seed … base_cfg.seed + seeds − 1`` into ``out/<method>/seed<k>``, so every method
    sees the same data and initial seeds. ``out/summary.json`` holds ``{"runs": [row per run],
    "aggregate": [mean/std per method], "verdicts": [paired verdict per method and metric
    against none]}`` (rows: see :func:`run_row`, with ``method`` and ``distance``; verdicts: see
    :func:`otcpcc.study.verdict.verdicts`); then :func:`otcpcc.report.render_report` writes
    ``report.md``, ``report.html`` and figures. An ``out`` that exists and is not empty raises
    ``ValueError`` unless ``force`` or ``resume``. ``out/study.json`` stores the settings;
    ``resume`` continues an interrupted comparison asked with the same ones (``study.resume``:
    finished runs are reused, an unfinished one continues from its checkpoint), so its summary
    equals an uninterrupted one. ``tree``: the data's label tree when the caller already loaded
    it (the cost-matrix and CPCC-target checks then load no data). Returns ``out``.
    """
    cfg = _as_config(base_cfg)
    specs, configs = check_compare(cfg, methods, seeds, cost_matrix, tree=tree)
    out = Path(out)
    record = study_record("compare", cfg, [s.name for s in specs], seeds, cost_matrix)
    open_study(out, record, resume=resume, force=force)
    with removed_if_empty_on_failure(out):
        if not resume:
            write_study(out, record)
        return _compare(cfg, specs, configs, seeds, out, force, progress, cost_matrix, resume)


def check_compare(cfg: TrainConfig, methods: Sequence[str], seeds: int, cost_matrix: Any = None,
                  tree: Any = None) -> tuple[list[Any], dict[str, TrainConfig]]:
    """Everything a comparison needs, checked before any file is written: the method entries, the
    seeds, one validated config per method (each gets the ``--dist-opt`` options its distance takes;
    an option no listed distance takes is refused), the cost matrix and the CPCC target (against
    ``tree``, the data's label tree; loaded from the data when ``None``). Returns
    ``(method specs, {method name: config})``."""
    from ..distances import OPTIONS, resolve

    specs = resolve_methods(methods)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive integer, got {seeds!r}; pass --seeds 1 or more")
    opts = dict(cfg.distance_options)
    takes = {s.name: set(OPTIONS[resolve(s.distance)]) if s.distance != "none" else set() for s in specs}
    unused = [k for k in opts if not any(k in t for t in takes.values())]
    if unused:
        raise ValueError(f"distance option(s) {', '.join(unused)} (--dist-opt, or distance_options of a "
                         f"--config file) apply to none of the methods {','.join(s.name for s in specs)}; "
                         "drop them or add a method whose distance takes them")
    configs = {s.name: cfg.replace(method=s.method, distance=s.distance,
                                   distance_options={k: v for k, v in opts.items() if k in takes[s.name]})
               for s in specs}
    if tree is not None and len(tree.leaves) < 3 and any(s.distance != "none" for s in specs):
        from ..objectives.target import too_few_classes

        raise ValueError(too_few_classes(len(tree.leaves), "list only methods without CPCC "
                                                           "(e.g. --methods none,hxe,soft)"))
    if cost_matrix is not None or cfg.cpcc_target is not None:  # refuse before training
        from ..evaluation.evaluate import resolve_cost_matrix
        from ..objectives.target import load_cpcc_target
        from ..runs.build import load_data

        if tree is None:
            tree = load_data(cfg.replace(cpcc_target=None)).tree
        if cost_matrix is not None:
            resolve_cost_matrix(cost_matrix, tree)
        if cfg.cpcc_target is not None:
            load_cpcc_target(cfg.cpcc_target, list(tree.leaves))
    return specs, configs


@contextmanager
def removed_if_empty_on_failure(out: Path) -> Iterator[None]:
    """On any failure (bad input found late, Ctrl-C), remove the empty folders this command left
    under ``out`` (and ``out`` itself when empty), so that the retry needs no ``--force``; finished
    runs stay."""
    try:
        yield
    except BaseException:
        if out.is_dir():
            for d in sorted((p for p in out.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                if not any(d.iterdir()):
                    d.rmdir()
            if not any(out.iterdir()):
                out.rmdir()
        raise


def _compare(cfg: TrainConfig, specs: list[Any], configs: dict[str, TrainConfig], seeds: int,
             out: Path, force: bool, progress: bool, cost_matrix: Any, resume: bool = False) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    runs, run_dirs = [], {}
    total, done = len(specs) * seeds, 0
    for spec in specs:
        run_dirs[spec.name] = []
        for seed in range(cfg.seed, cfg.seed + seeds):
            done += 1
            _say(progress, f"[compare {done}/{total}] method={spec.name} seed={seed}")
            res = _train_and_evaluate(configs[spec.name].replace(seed=seed),
                                      out / spec.name / f"seed{seed}", force, progress, cost_matrix,
                                      resume)
            lam = cfg.lam if spec.distance != "none" else 0.0
            if res["run_dir"] is None:  # diverged: no metrics, a note in the report
                runs.append({"method": spec.name, "distance": spec.distance, "seed": seed, "lam": lam,
                             "collapsed": res["diverged"]})
                continue
            run_dirs[spec.name].append(res["run_dir"])
            runs.append(run_row(res["run_dir"], res["metrics"], method=spec.name,
                                distance=spec.distance, seed=seed, lam=lam))
    run_dirs = {name: dirs for name, dirs in run_dirs.items() if dirs}
    if not run_dirs:
        raise ValueError(f"every run of the comparison diverged (NaN/inf loss); nothing to compare in {out}: "
                         "lower --lr or --lam")
    first_dir = next(iter(run_dirs.values()))[0]
    context = {**read_context(first_dir), "lam": cfg.lam, "methods": [s.name for s in specs],
               "seeds": list(range(cfg.seed, cfg.seed + seeds))}
    summary = {"context": context, "runs": runs, "aggregate": aggregate_runs(runs),
               "verdicts": verdicts(runs), "ot_verdicts": ot_verdicts(runs)}
    if BASELINE not in context["methods"]:  # said, not left to an empty list
        summary["verdicts_note"] = NO_BASELINE
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    render_report(out, summary, run_dirs, data_dir=cfg.data_dir)
    _say(progress, f"[compare] wrote {out / 'summary.json'} and {out / 'report.html'}")
    return out


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Rows to CSV: columns = union of keys in first-appearance order; ``None`` → empty cell."""
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in cols})
    atomic_write_text(path, buf.getvalue())  # a stop while writing keeps the old file whole


def _val(row: Mapping[str, Any], key: str) -> float:
    v = row.get(key)
    return float(v) if _is_number(v) else float("nan")


def plot_sweep(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """2×2 figure: TestCPCC (emd solid, ℓ2 dashed) and fine accuracy, against λ (one line per
    batch size) and against batch size (one line per λ)."""
    from .figures import _pyplot, _save

    plt = _pyplot()
    lams = sorted({float(r["lam"]) for r in rows})
    sizes = sorted({int(r["batch_size"]) for r in rows})
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), squeeze=False)
    cmap = plt.get_cmap("tab10")
    panels = ((0, "test_cpcc_emd", "TestCPCC"), (1, "fine_acc", "fine accuracy"))
    for r, key, label in panels:
        for col, (xkey, xs, gkey, groups) in enumerate(
                (("lam", lams, "batch_size", sizes), ("batch_size", sizes, "lam", lams))):
            ax = axes[r][col]
            for i, g in enumerate(groups):
                sel = sorted((x for x in rows if float(x[gkey]) == g), key=lambda x: x[xkey])
                xv = [float(x[xkey]) for x in sel]
                name = f"B={g:g}" if gkey == "batch_size" else f"λ={g:g}"
                ax.plot(xv, [_val(x, key) for x in sel], "o-", color=cmap(i % 10), label=name)
                if key == "test_cpcc_emd":
                    ax.plot(xv, [_val(x, "test_cpcc_l2") for x in sel], "s--",
                            color=cmap(i % 10), alpha=0.6)
            ax.set_xlabel("λ" if xkey == "lam" else "batch size")
            ax.set_ylabel(label + (" (emd solid, l2 dashed)" if key == "test_cpcc_emd" else ""))
            if xkey == "lam" and len(xs) > 1 and min(xs) >= 0 and max(xs) > 0:
                positive = [x for x in xs if x > 0]
                ax.set_xscale("symlog", linthresh=min(positive))
            if xkey == "batch_size" and len(xs) > 1:
                ax.set_xscale("log", base=2)
                ax.set_xticks(xs, [str(int(x)) for x in xs])
                ax.minorticks_off()
            ax.legend(fontsize=7)
    return _save(fig, path)


def run_sweep(base_cfg: TrainConfig | Mapping[str, Any], lams: Sequence[float],
              batch_sizes: Sequence[int], out: str | os.PathLike, force: bool = False,
              progress: bool = True, resume: bool = False) -> Path:
    """Train and evaluate every (λ, batch size) pair with ``base_cfg``'s distance and seed.

    Runs go to ``out/lam<λ>_bs<B>``; ``out/sweep.csv`` has one row per pair (lam, batch_size,
    fine_acc, test_cpcc_l2, test_cpcc_emd, mistake_severity, expected_cost, then every other
    evaluation metric) and ``out/sweep.png`` plots TestCPCC and accuracy against each. The
    distance must not be ``"none"`` (λ would have no effect). ``out/study.json`` stores the
    settings and the grid; ``resume`` continues an interrupted sweep asked with the same ones
    (as :func:`run_compare`: finished runs reused, an unfinished one from its checkpoint).
    Returns ``out``.
    """
    cfg = _as_config(base_cfg)
    if cfg.distance == "none":
        raise ValueError("sweep needs a CPCC distance, λ has no effect with distance none; "
                         "pass e.g. --distance fastft")
    lams = list(dict.fromkeys(float(x) for x in lams))
    batch_sizes = list(dict.fromkeys(batch_sizes))
    if not lams or not batch_sizes:
        raise ValueError("sweep needs at least one λ and one batch size; pass --lams and "
                         "--batch-sizes")
    for flag, bad, need in (("--lams", [x for x in lams if not (math.isfinite(x) and x >= 0)],
                             "each lambda must be a finite number >= 0"),
                            ("--batch-sizes", [b for b in batch_sizes if b < 1], "each batch_size must be >= 1")):
        if bad:  # named here: the config's own check would name --lam / --batch-size
            raise ValueError(f"{flag} lists {bad[0]:g}; {need}")
    grid = [cfg.replace(lam=lam, batch_size=bs) for lam in lams for bs in batch_sizes]  # validate
    out = Path(out)
    names = [f"lam{c.lam:g}_bs{c.batch_size}" for c in grid]
    clash = next(((a, b) for i, a in enumerate(lams) for b in lams[i + 1:] if f"{a:g}" == f"{b:g}"), None)
    if clash is not None:  # one run directory for two lambdas: one run would overwrite the other
        raise ValueError(f"--lams {clash[0]!r} and {clash[1]!r} agree to 6 digits and would share "
                         f"the run directories lam{clash[0]:g}_bs<B>; give lambdas that differ within "
                         "6 significant digits")
    record = study_record("sweep", cfg, names, 1, None)
    open_study(out, record, resume=resume, force=force)
    with removed_if_empty_on_failure(out):
        if not resume:
            write_study(out, record)
        return _sweep(grid, names, out, force, progress, resume)


def _sweep(grid: list[TrainConfig], names: list[str], out: Path, force: bool, progress: bool,
           resume: bool) -> Path:
    rows = []
    for i, (c, name) in enumerate(zip(grid, names, strict=True), 1):
        _say(progress, f"[sweep {i}/{len(grid)}] lam={c.lam:g} batch_size={c.batch_size}")
        res = _train_and_evaluate(c, out / name, force, progress, None, resume=resume)
        row = run_row(res["run_dir"], res["metrics"], lam=c.lam, batch_size=c.batch_size)
        rows.append({**row, "distance": c.distance, "seed": c.seed})
    write_csv(rows, out / "sweep.csv")
    plot_sweep(rows, out / "sweep.png")
    _say(progress, f"[sweep] wrote {out / 'sweep.csv'} and {out / 'sweep.png'}")
    return out
