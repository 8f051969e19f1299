"""otcpcc <command>: train, evaluate, compare, diagnose, pilot, sweep, bench.

Flags follow torchvision's reference training scripts (--epochs --batch-size --lr --momentum
--wd --arch --device --seed --workers --amp --resume --out). Settings resolve as: defaults <
--preset paper (published per-dataset values) < --config FILE (YAML or JSON) < flags.
Expected errors (bad names or values, missing files, a run directory that exists or does not fit)
print one line "otcpcc: error: ..." on stderr and exit with status 2; Ctrl-C during training
saves a checkpoint and exits with status 130, SIGTERM (kill, timeout, a scheduler) does the
same and exits with status 143. Set OTCPCC_DEBUG=1 to get the full traceback
instead.

Examples:

    otcpcc train --data synthetic --epochs 20 --out runs/fastft     # fastft, lam 1 (default)
    otcpcc train --out runs/fastft --resume --epochs 20
    otcpcc train --preset paper --data cifar100 --data-dir ~/data --distance fastft --out runs/c100
    otcpcc evaluate runs/fastft --cost-matrix costs.csv
    otcpcc compare                      # synthetic data, methods none,hxe,soft,l2,fastft -> runs/compare
    otcpcc train --method hxe --alpha 0.1 --distance fastft   # HXE + lam * FastFT-CPCC
    otcpcc diagnose --data digits --out runs/diag   # does OT matter here? (OT vs l2)
    otcpcc pilot --data digits --cost-matrix costs.csv --out runs/pilot
    otcpcc sweep --distance fastft --lams 0,0.5,1,2 --batch-sizes 64,256
    python -m torch.distributed.run --standalone --nproc_per_node 2 -m otcpcc train --data synthetic --epochs 2
"""
# (plain text, not reStructuredText: it is printed by --help as it stands)

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..flags import OneLineParser, count_list
from .args import (
    _device,
    _float_list,
    _key_value,
    _name_list,
    _out_dir,
    _positive_int,
    add_train_args,
    config_from_args,
    refuse_unused_flags,
)

PROG = "otcpcc"
_Parser = OneLineParser  # one-line usage errors (``otcpcc train: error: ...``), exit status 2


def _say(args: argparse.Namespace, msg: str | None) -> None:
    if msg and not getattr(args, "no_progress", False):
        print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    from ..training import train

    if args.resume and args.out and not args.config and (Path(args.out) / "config.json").is_file():
        from ..runs.rundir import resumed_config

        resumed_config(Path(args.out))  # the run's own file: damaged is named so, not as a --config file
        args.config = str(Path(args.out) / "config.json")  # resume: the run's settings < flags
    cfg = config_from_args(args)
    if cfg.weights and not args.resume and not Path(cfg.weights).is_file():
        raise FileNotFoundError(f"weights file {cfg.weights!r} does not exist; pass the path of a "
                                "saved state dict with --weights")
    if cfg.preset and cfg.data == "inat2021" and not cfg.weights:
        _say(args, f"{PROG}: note: the published iNaturalist protocol fine-tunes layer4 of an "
                   "ImageNet-pretrained ResNet-18; pass its local state dict with --weights")
    name = "+".join(n for n in (cfg.method, cfg.distance) if n not in ("ce", "none")) or "none"
    out = Path(args.out) if args.out is not None else Path("runs") / f"{cfg.data}_{name}_seed{cfg.seed}"
    run = train(cfg, out, resume=args.resume, force=args.force, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(run)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation.evaluate import YARDSTICKS, checkpoint_label, evaluate_run

    res = evaluate_run(args.run, cost_matrix=args.cost_matrix, split=args.split,
                       device=args.device, data_dir=args.data_dir, partial=args.partial)
    if res.get("partial"):  # --partial on an unfinished run: say which epoch these numbers are
        print(f"{PROG}: note: {args.run} has not finished training; these are the figures of its "
              f"{checkpoint_label(res['epoch'], res['step'])} (eval.json records partial: true)",
              file=sys.stderr)
    if args.json:
        print(json.dumps(res, indent=2, default=str))
        return 0
    keys = [k for k in res if k.endswith("_acc") or k.startswith("fine_top")]
    keys += [k for k in res if k.startswith("map_")]
    keys += ["mistake_severity", "hier_dist@1", "hier_dist@5", "expected_cost",
             "expected_cost_argmax", "fine_acc_crm", "mistake_severity_crm", "expected_cost_crm"]
    for prefix in ("test_cpcc_", "test_cpcc_target_"):  # the own distance once, as test_cpcc_own
        keys += [f"{prefix}{d}" for d in (*YARDSTICKS, "own")]
    own = res.get("test_cpcc_distance")
    rows = [(k, f"{res[k]:.4f}  ({own}, the run's distance)" if k.endswith("_own")
             and isinstance(res[k], float) else res[k]) for k in keys if k in res]
    target = res.get("target") or {}  # subpopulation-shift tasks (BREEDS-style target classes)
    rows += [(f"target.{k}", v) for k, v in target.items()
             if k.startswith(("zero_shot_", "one_shot_fine", "map_"))]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    mm = res["multimodality"]
    print(f"{'mean_components':<{width}}  {mm['mean_components']:.2f}")
    name = "eval.json" if args.split == "test" else f"eval_{args.split}.json"
    print(f"wrote {Path(args.run) / name}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..study.compare import run_compare

    _say(args, refuse_unused_flags(args, "compare"))
    args.distance = "none"  # each method sets its own; --dist-opt is checked per method by compare
    cfg = config_from_args(args)
    out = run_compare(cfg, args.methods, args.seeds, Path(args.out), force=args.force,
                      progress=not args.no_progress, cost_matrix=args.cost_matrix,
                      resume=args.resume)
    print(out)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..study.compare import run_sweep

    _say(args, refuse_unused_flags(args, "sweep"))
    cfg = config_from_args(args)
    out = run_sweep(cfg, args.lams, args.batch_sizes, Path(args.out), force=args.force,
                    progress=not args.no_progress, resume=args.resume)
    print(out)
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    from ..evaluation.diagnose import diagnose

    res = diagnose(args.data if args.data or args.run else "synthetic", run=args.run,
                   data_dir=args.data_dir, data_options=dict(args.data_opt or []),
                   data_seed=args.data_seed, max_components=args.max_components,
                   device=args.device, max_per_class=args.max_per_class, tree=args.tree)
    if args.out:
        from ..study.diagnosis_report import write_diagnosis

        print(f"wrote {write_diagnosis(args.out, res)}", file=sys.stderr)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"dataset {res['dataset']}: {res['source']}, {res['n']} samples")
    rows = res["per_class"]
    width = max([len("class")] + [len(str(r["class"])) for r in rows])
    print(f"{'class':<{width}}  components")
    for r in rows:
        print(f"{r['class']:<{width}}  {r['components']}")
    print(f"mean components: {res['mean_components']:.2f}  "
          f"(multi-modal classes: {res['frac_multimodal']:.0%})")
    def num(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    print(f"l2 vs emd: rank agreement {num(res['rank_agreement_l2_emd'])}, CPCC l2 "
          f"{num(res['cpcc_l2'])}, CPCC emd {num(res['cpcc_emd'])}")
    print(f"recommend: {res['recommend']}: " + " ".join(res["reasons"]))
    return 0


def cmd_pilot(args: argparse.Namespace) -> int:
    from ..study.pilot import run_pilot
    from ..study.pilot_budget import PILOT_EPOCHS

    if args.epochs is None and not args.config:
        args.epochs = PILOT_EPOCHS  # a small budget unless asked otherwise
    _say(args, refuse_unused_flags(args, "pilot"))
    args.distance = "none"  # each method sets its own; --dist-opt is checked per method
    cfg = config_from_args(args)
    out = run_pilot(cfg, Path(args.out), methods=args.methods, seeds=args.seeds,
                    cost_matrix=args.cost_matrix, force=args.force,
                    progress=not args.no_progress, resume=args.resume)
    answer = json.loads((out / "pilot.json").read_text(encoding="utf-8"))
    # the answers here too, not only in the report
    print(textwrap.fill(f"{PROG} pilot: {answer['recommendation']}", 100, subsequent_indent="  "))
    if answer.get("ot_matters"):
        print(f"{PROG} pilot: does optimal transport matter (an OT method against l2, after "
              f"training)? {answer['ot_matters']}")
    print(out / "report.html")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench.speed import main as bench_main

    rest = [a for a in args.rest]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    try:
        return int(bench_main(rest) or 0)
    except SystemExit as e:  # its argparse: --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)


# --------------------------------------------------------------------------- parser
_STUDY_RESUME = ("continue an interrupted run of this same command in --out: finished runs are "
                 "reused, an unfinished one continues from its last.pt; refused if any setting "
                 "differs (only --device, --workers, --data-dir, --cuda-graph may change)")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog=PROG, description=__doc__, formatter_class=fmt)
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("train", help="train one model (task loss + lam * CPCC)", formatter_class=fmt,
                       description="Train one model; writes config.json, tree.json, log.csv, "
                                   "last.pt and metrics.json into --out.")
    add_train_args(p)
    g = p.add_argument_group("run directory")
    g.add_argument("-o", "--out", metavar="DIR", type=_out_dir,
                   help="run directory (default runs/<data>_<distance>_seed<seed>)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last.pt with its settings "
                        "(flags may only change --epochs, --device, --workers, --eval-every, "
                        "--data-dir)")
    g.add_argument("--force", action="store_true", help="overwrite an existing run in --out")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a run (writes RUN/eval.json)",
                       description="The evaluation protocol on a finished run: accuracy per "
                                   "level, TestCPCC (l2, emd, own), retrieval mAP, mistake "
                                   "severity, hierarchical distance@k, expected cost, "
                                   "multi-modality.")
    p.add_argument("run", metavar="RUN", help="run directory written by otcpcc train")
    p.add_argument("--cost-matrix", metavar="CSV",
                   help="misclassification costs keyed by class names (header row of names, "
                        "one row per true class); default: tree distance")
    p.add_argument("--split", default="test",
                   help="split to evaluate: test (default), train, or an extra split")
    p.add_argument("--device", default="cpu", type=_device,
                   help="cpu (default), cuda, cuda:N, auto")
    p.add_argument("--data-dir", metavar="PATH", help="the data's location if it moved")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.add_argument("--partial", action="store_true",
                   help="evaluate a run that has not finished training (still training, or "
                        "interrupted) at the epoch of its last.pt; refused without it")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="train + evaluate several methods, write a report",
                       formatter_class=fmt,
                       description="Train every --methods on the same data and seeds, "
                                   "evaluate, judge each against flat CE (paired over seeds, "
                                   "95% t-intervals), and write summary.json, report.md, "
                                   "report.html and figures into --out. With no flags: "
                                   "synthetic data.")
    add_train_args(p, "compare")
    g = p.add_argument_group("comparison")
    g.add_argument("--methods", "--distances", dest="methods", type=_name_list,
                   default=["none", "hxe", "soft", "l2", "fastft"], metavar="LIST",
                   help="comma-separated methods: none (flat CE), hxe, soft, a CPCC distance "
                        "(CE + lam * CPCC: l2, emd, sinkhorn, swd, fastft) or loss+distance "
                        "such as hxe+fastft (default none,hxe,soft,l2,fastft; --distances is "
                        "an alias)")
    g.add_argument("--seeds", type=int, default=3, metavar="N",
                   help="seeds per distance: seed .. seed+N-1 (default 3: mean ± std)")
    g.add_argument("-o", "--out", default="runs/compare", metavar="DIR", type=_out_dir,
                   help="output directory (default runs/compare)")
    g.add_argument("--force", action="store_true", help="overwrite an existing --out")
    g.add_argument("--resume", action="store_true", help=_STUDY_RESUME)
    g.add_argument("--cost-matrix", metavar="CSV", help="cost matrix for expected cost")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("sweep", help="grid over lam and batch size",
                       description="Train and evaluate every (lam, batch size) pair; write "
                                   "sweep.csv and sweep.png (TestCPCC and accuracy against "
                                   "each), with --distance (default fastft).")
    add_train_args(p, "sweep")
    g = p.add_argument_group("grid")
    g.add_argument("--lams", type=_float_list, default=[0.0, 0.5, 1.0, 2.0], metavar="LIST",
                   help="comma-separated lambdas (default 0,0.5,1,2)")
    g.add_argument("--batch-sizes", type=count_list, default=[64, 256], metavar="LIST",
                   help="comma-separated batch sizes (default 64,256)")
    g.add_argument("-o", "--out", default="runs/sweep", metavar="DIR", type=_out_dir,
                   help="output directory (default runs/sweep)")
    g.add_argument("--force", action="store_true", help="overwrite an existing --out")
    g.add_argument("--resume", action="store_true", help=_STUDY_RESUME)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("diagnose", help="does optimal transport matter here? (OT vs l2)",
                       description="On input features (--data; --data features --data-dir X.npz "
                                   "for any model's embeddings) or a run's learned test features "
                                   "(--features-of RUN): modes per class (calibrated split test), "
                                   "l2 vs EMD class distances (rank agreement, CPCC of each) and "
                                   "a recommendation, ot or l2. See docs/pilot.md.")
    p.add_argument("--data", metavar="NAME", help="dataset (default synthetic)")
    p.add_argument("--features-of", "--run", dest="run", metavar="RUN",
                   help="use the learned test features of this run directory")
    p.add_argument("--tree", metavar="FILE", help="label tree file replacing the data's tree")
    p.add_argument("-o", "--out", metavar="DIR",
                   help="write diagnose.json, diagnose.md, diagnose.html, diagnose.png here")
    p.add_argument("--data-dir", metavar="PATH")
    p.add_argument("--data-opt", action="append", type=_key_value, metavar="KEY=VALUE")
    p.add_argument("--data-seed", type=int, default=0, metavar="N")
    p.add_argument("--max-components", type=int, default=5, metavar="M",
                   help="largest mixture tried per class (default 5)")
    p.add_argument("--max-per-class", type=_positive_int, default=200, metavar="N",
                   help="samples per class used (default 200)")
    p.add_argument("--device", default="cpu", type=_device)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_diagnose)

    from ..study.pilot_budget import PILOT_EPOCHS, PILOT_METHODS, PILOT_SEEDS

    p = sub.add_parser("pilot", help="diagnose + compare on a small budget + recommend",
                       formatter_class=fmt,
                       description="A team's pilot: does OT matter on this data (diagnosis), "
                                   "then train flat CE and the CPCC candidates on a small budget, "
                                   "and write report.md / report.html with the cost of mistakes "
                                   "and a recommendation. See docs/pilot.md.")
    add_train_args(p, "pilot")
    g = p.add_argument_group("pilot")
    for action in p._actions:  # a pilot's own budget
        if action.dest == "epochs":
            action.help = f"epochs per run (default {PILOT_EPOCHS} in a pilot)"
    g.add_argument("--methods", type=_name_list, default=list(PILOT_METHODS), metavar="LIST",
                   help=f"methods to compare (default {','.join(PILOT_METHODS)})")
    g.add_argument("--seeds", type=int, default=PILOT_SEEDS, metavar="N",
                   help=f"seeds per method (default {PILOT_SEEDS}; epochs default "
                        f"{PILOT_EPOCHS})")
    g.add_argument("--cost-matrix", metavar="CSV", help="misclassification costs by class name")
    g.add_argument("-o", "--out", default="runs/pilot", metavar="DIR",
                   help="output directory (default runs/pilot)")
    g.add_argument("--force", action="store_true", help="overwrite an existing --out")
    g.add_argument("--resume", action="store_true", help=_STUDY_RESUME)
    p.set_defaults(func=cmd_pilot)

    p = sub.add_parser("bench", help="speed benchmarks of the CPCC distances",
                       add_help=False, description="Run otcpcc.bench; see otcpcc bench --help.")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)
    return parser


def _one_line(e: BaseException) -> str:
    """The message as one line; an error re-raised from a data-loader worker (its message holds
    the worker's traceback) keeps only the original error's own last line."""
    text = str(e).strip() or type(e).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if any("Traceback (most recent call last)" in ln for ln in lines):
        return lines[-1].split(": ", 1)[-1]  # "ValueError: <message>" -> "<message>"
    return "; ".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``otcpcc`` and ``python -m otcpcc``; returns the exit status."""
    from ..runs.signals import exit_status, sigterm_raises

    try:
        with sigterm_raises():  # SIGTERM unwinds as Ctrl-C does, whatever the command
            return _main(argv)
    except KeyboardInterrupt as e:  # Ctrl-C while importing or starting up: one line, no traceback
        print(f"{PROG}: {_stopped(e)}", file=sys.stderr)
        return exit_status(e)


def _stopped(e: KeyboardInterrupt) -> str:
    """What stopped the command, for its last line: interrupted (Ctrl-C), stopped by SIGTERM."""
    from ..runs.signals import signal_name

    signum = getattr(e, "signum", None)
    return "interrupted" if signum in (None, 2) else f"stopped by {signal_name(signum)}"


def _interrupted_study(argv: Sequence[str], e: KeyboardInterrupt) -> int:
    """Ctrl-C or SIGTERM in compare / pilot / sweep: say what is kept and the command that continues."""
    import shlex

    from ..runs.signals import exit_status
    from ..training import TrainingInterrupted

    kept = f" and a checkpoint in {e.run_dir}/last.pt" if isinstance(e, TrainingInterrupted) else ""
    words = [a for a in argv if a not in ("--force", "--resume")] + ["--resume"]
    again = " ".join(shlex.quote(a) for a in (PROG, *words))
    print(f"{PROG}: {_stopped(e)}; the finished runs{kept} are kept; continue with {again}",
          file=sys.stderr)
    return exit_status(e)


def _main(argv: Sequence[str] | None) -> int:
    from ..runs.signals import exit_status
    from ..training import TrainingInterrupted

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # everything after "bench" belongs to otcpcc.bench
        argv = ["bench", "--", *argv[1:]] if len(argv) > 1 else argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help / --version (0) or a usage error (2)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    debug = os.environ.get("OTCPCC_DEBUG", "") not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as e:
        if args.command in ("compare", "pilot", "sweep"):  # a study continues as a whole
            return _interrupted_study(argv, e)
        if not isinstance(e, TrainingInterrupted):
            print(f"{PROG}: {_stopped(e)}", file=sys.stderr)
            return exit_status(e)
        if os.environ.get("RANK", "0") == "0":
            again = f"{PROG} train --out {e.run_dir} --resume"
            if "WORLD_SIZE" in os.environ:  # under torchrun: the same launcher again
                again = f"python -m torch.distributed.run --nproc_per_node {os.environ['WORLD_SIZE']} -m {again}"
            print(f"{PROG}: {_stopped(e)}; checkpoint saved in {e.run_dir}/last.pt; continue "
                  f"with {again}", file=sys.stderr)
        return exit_status(e)
    except (ValueError, OSError, ImportError) as e:
        if debug:
            raise
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank fails alike: say it once
            print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
