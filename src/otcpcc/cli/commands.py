"""otcpcc <command>: train, evaluate, compare, diagnose, sweep, bench.

Flags follow torchvision's reference training scripts (--epochs --batch-size --lr --momentum
--wd --arch --device --seed --workers --amp --resume --out). Settings resolve as: defaults <
--preset paper (published per-dataset values) < --config FILE (YAML or JSON) < flags.
Expected errors (bad names or values, missing files, a run directory that exists or does not fit)
print one line "otcpcc: error: ..." on stderr and exit with status 2; Ctrl-C during training
saves a checkpoint and exits with status 130. Set OTCPCC_DEBUG=1 to get the full traceback
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
    torchrun --standalone --nproc_per_node 2 -m otcpcc train --data synthetic --epochs 2
"""
# (plain text, not reStructuredText: it is printed by --help as it stands)

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..runs.config import METHODS, OPTIMIZERS, PRESET_NAMES, SCHEDULES, TrainConfig

PROG = "otcpcc"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``otcpcc train: error: ...``) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


# --------------------------------------------------------------------------- value parsers
def _key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as YAML (``3`` -> int, ``[4, 5]`` -> list, ``x`` -> str)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, _, raw = text.partition("=")
    import yaml

    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().replace("-", "_"), value


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}") from None


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None


def _name_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _out_dir(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path; name the run directory, e.g. --out runs/x")
    return text


def _device(text: str) -> str:
    dev = text.strip().lower()
    if dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()):
        return dev
    raise argparse.ArgumentTypeError(f"unknown device {text!r}; choose auto, cpu, cuda or cuda:N")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


# --------------------------------------------------------------------------- shared flags
# Train flags a command sets itself, per command: flag dest -> what to pass instead. They stay
# in the parser (hidden from --help) so that giving one is refused with that hint (see
# refuse_unused_flags) instead of being silently overridden.
NOT_USED: dict[str, dict[str, str]] = {
    "compare": {"distance": "--methods (compare trains every method listed there, e.g. none,l2,fastft)",
                "method": "--methods (compare trains every method listed there, e.g. none,hxe,hxe+fastft)"},
    "sweep": {"lam": "--lams (sweep trains every lambda listed there)",
              "batch_size": "--batch-sizes (sweep trains every batch size listed there)"},
}
_FLAG_OF = {"lam": "--lam", "batch_size": "--batch-size", "distance": "--distance", "method": "--method"}


def refuse_unused_flags(args: argparse.Namespace, command: str) -> None:
    """ValueError naming the first train flag given to ``command`` that it does not use."""
    for dest, instead in NOT_USED.get(command, {}).items():
        if getattr(args, dest, None) is not None:
            flag = _FLAG_OF.get(dest, "--" + dest.replace("_", "-"))
            raise ValueError(f"{command} does not use {flag}; pass {instead}")


def add_train_args(p: argparse.ArgumentParser, command: str = "train") -> None:
    """Every TrainConfig flag; defaults are None so that only given flags override --config.

    Flags in ``NOT_USED[command]`` are hidden from --help (and refused when given)."""
    hidden = NOT_USED.get(command, {})

    def shown(dest: str, text: str) -> str:
        return argparse.SUPPRESS if dest in hidden else text

    S = None  # noqa: N806
    g = p.add_argument_group("configuration file")
    g.add_argument("--config", metavar="FILE",
                   help="YAML or JSON file of config keys (a run's config.json works too); "
                        "flags override it")
    g.add_argument("--preset", default=S, choices=PRESET_NAMES,
                   help="paper: the published per-dataset hyperparameters of the CPCC / OT-CPCC "
                        "reference code for --data (cifar10, cifar100, breeds-*, inat2021); "
                        "--config and flags override them")

    g = p.add_argument_group("data")
    g.add_argument("--data", default=S, metavar="NAME",
                   help="dataset: synthetic (default), digits, cifar10, cifar100, folder, "
                        "breeds-living17, breeds-nonliving26, breeds-entity13, breeds-entity30, "
                        "inat2021, features")
    g.add_argument("--data-dir", default=S, metavar="PATH", help="where the dataset's files are")
    g.add_argument("--data-seed", type=int, default=S, metavar="N",
                   help="seed of the dataset itself (splits, synthetic draws; default 0)")
    g.add_argument("--data-opt", dest="data_opt", action="append", type=_key_value,
                   metavar="KEY=VALUE",
                   help="loader option, repeatable (e.g. --data-opt train_per_class=50 "
                        "--data-opt branching=[4,5])")
    g.add_argument("--hierarchy-dir", default=S, metavar="PATH",
                   help="BREEDS hierarchy files (= --data-opt hierarchy_dir=PATH)")
    g.add_argument("--skip-bad-images", action="store_true", default=S,
                   help="skip undecodable images with a count instead of failing")
    g.add_argument("--tree", default=S, metavar="FILE",
                   help="label tree file (edges / json / newick); replaces the dataset's tree")

    g = p.add_argument_group("model")
    g.add_argument("--arch", default=S, metavar="NAME",
                   help="mlp, cnn, resnet18/34/50, vit_b_16, vit_l_16, or a timm name; default "
                        "auto (mlp for vectors, cnn for small images, resnet18 otherwise)")
    g.add_argument("--model-opt", dest="model_opt", action="append", type=_key_value,
                   metavar="KEY=VALUE", help="build_model option, repeatable (e.g. hidden=[256])")
    g.add_argument("--weights", default=S, metavar="FILE", help="local pretrained state dict")
    g.add_argument("--freeze", action="append", type=_name_list, metavar="PATTERNS",
                   help="freeze parameters matching these comma-separated patterns")
    g.add_argument("--train-only", action="append", type=_name_list, metavar="PATTERNS",
                   help="train only these patterns (plus the classifier), e.g. layer4")
    g.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=S,
                   help="SyncBatchNorm under torchrun/DDP")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=S, metavar="N", help="epochs (default 15)")
    g.add_argument("-b", "--batch-size", type=int, default=S, metavar="N",
                   help=shown("batch_size", "batch size per process (default 128)"))
    g.add_argument("--lr", type=float, default=S, help="learning rate (default 0.1)")
    g.add_argument("--momentum", type=float, default=S, help="SGD momentum (default 0.9)")
    g.add_argument("--wd", "--weight-decay", dest="wd", type=float, default=S,
                   help="weight decay (default 5e-4)")
    g.add_argument("--opt", "--optimizer", dest="optimizer", default=S, choices=OPTIMIZERS,
                   help="optimizer (default sgd)")
    g.add_argument("--schedule", "--lr-scheduler", dest="schedule", default=S, choices=SCHEDULES,
                   help="learning-rate schedule (default cosine)")
    g.add_argument("--step-size", "--lr-step-size", dest="step_size", type=int, default=S,
                   metavar="N", help="epochs per step of the step schedule (default 30)")
    g.add_argument("--gamma", "--lr-gamma", dest="gamma", type=float, default=S,
                   help="factor per step of the step schedule (default 0.1)")
    g.add_argument("--warmup-epochs", "--lr-warmup-epochs", dest="warmup_epochs", type=int,
                   default=S, metavar="N", help="linear warm-up epochs (default 0)")

    g = p.add_argument_group("task loss on the logits")
    g.add_argument("--method", default=S, choices=METHODS,
                   help=shown("method", "ce: cross-entropy (default); hxe: hierarchical cross-entropy; "
                              "soft: soft-label cross-entropy (Bertinetto et al., CVPR 2020)"))
    g.add_argument("--alpha", type=float, default=S,
                   help="hxe: weight exp(-alpha * depth) of each edge (default 0.1; 0 = CE)")
    g.add_argument("--beta", type=float, default=S,
                   help="soft: target sharpness, q(j) ~ exp(-beta * D[y,j] / max D) (default 10)")

    g = p.add_argument_group("CPCC regulariser: loss = task loss + lam * (1 - CPCC)")
    g.add_argument("--distance", default=S, metavar="NAME",
                   help=shown("distance", "class distance: fastft (fft, default), l2, emd, "
                              "sinkhorn (sk), swd, or none (plain cross-entropy)"))
    g.add_argument("--lam", type=float, default=S,
                   help=shown("lam", "weight lambda of the CPCC term (default 1)"))
    g.add_argument("--reg", type=float, default=S, help="Sinkhorn entropic regularisation")
    g.add_argument("--n-projections", type=int, default=S, metavar="L",
                   help="sliced Wasserstein projections")
    g.add_argument("--dist-opt", dest="dist_opt", action="append", type=_key_value,
                   metavar="KEY=VALUE", help="distance option, repeatable (e.g. order=sorted "
                                             "for fastft)")
    g.add_argument("--cpcc-target", default=S, metavar="CSV",
                   help="correlate with this class-distance / cost matrix (the --cost-matrix "
                        "CSV format; symmetrised as (C + C^T)/2) instead of the tree")

    g = p.add_argument_group("runtime")
    g.add_argument("--device", default=S, help="auto (default), cpu, cuda, cuda:N")
    g.add_argument("--seed", type=int, default=S, help="training seed (default 0)")
    g.add_argument("-j", "--workers", type=int, default=S, metavar="N",
                   help="DataLoader worker processes (default 0)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=S,
                   help="bf16 autocast (CUDA only)")
    g.add_argument("--eval-every", type=int, default=S, metavar="N",
                   help="test accuracy every N epochs (the last one always; default 1)")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bar or per-epoch lines")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from parsed flags: defaults < --config < flags."""
    given: dict[str, Any] = {}
    if args.config:
        given["config"] = args.config
    for name in TrainConfig.field_names():
        value = getattr(args, name, None)
        if value is not None and not isinstance(value, (list, dict)):
            given[name] = value
    data_opts = dict(args.data_opt or [])
    if args.hierarchy_dir is not None:
        data_opts["hierarchy_dir"] = args.hierarchy_dir
    if args.skip_bad_images:
        data_opts["skip_bad_images"] = True
    if data_opts:
        given["data_options"] = data_opts
    if args.model_opt:
        given["model_options"] = dict(args.model_opt)
    dist_opts = dict(args.dist_opt or [])
    if args.reg is not None:
        dist_opts["reg"] = args.reg
    if args.n_projections is not None:
        dist_opts["n_projections"] = args.n_projections
    if dist_opts:
        given["distance_options"] = dist_opts
    for name in ("freeze", "train_only"):
        value = getattr(args, name, None)
        if value:
            given[name] = [p for group in value for p in group]
    return TrainConfig.from_args(given)


def _say(args: argparse.Namespace, msg: str) -> None:
    if not getattr(args, "no_progress", False):
        print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    from ..training import train

    if args.resume and args.out and not args.config and (Path(args.out) / "config.json").is_file():
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
    from ..evaluation.evaluate import evaluate_run

    res = evaluate_run(args.run, cost_matrix=args.cost_matrix, split=args.split,
                       device=args.device, data_dir=args.data_dir)
    if args.json:
        print(json.dumps(res, indent=2, default=str))
        return 0
    keys = [k for k in res if k.endswith("_acc") or k.startswith("fine_top")]
    keys += [k for k in res if k.startswith("map_")]
    keys += ["mistake_severity", "hier_dist@1", "hier_dist@5", "expected_cost",
             "expected_cost_argmax", "fine_acc_crm", "mistake_severity_crm", "expected_cost_crm"]
    keys += [k for k in res if k.startswith("test_cpcc_")]
    rows = [(k, res[k]) for k in keys if k in res]
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

    refuse_unused_flags(args, "compare")
    cfg = config_from_args(args)
    out = run_compare(cfg, args.methods, args.seeds, Path(args.out), force=args.force,
                      progress=not args.no_progress, cost_matrix=args.cost_matrix)
    print(out)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..study.compare import run_sweep

    refuse_unused_flags(args, "sweep")
    cfg = config_from_args(args)
    out = run_sweep(cfg, args.lams, args.batch_sizes, Path(args.out), force=args.force,
                    progress=not args.no_progress)
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
    from ..study.pilot import PILOT_EPOCHS, run_pilot

    if args.epochs is None and not args.config:
        args.epochs = PILOT_EPOCHS  # a small budget unless asked otherwise
    cfg = config_from_args(args)
    out = run_pilot(cfg, Path(args.out), methods=args.methods, seeds=args.seeds,
                    cost_matrix=args.cost_matrix, force=args.force,
                    progress=not args.no_progress)
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
    g.add_argument("--batch-sizes", type=_int_list, default=[64, 256], metavar="LIST",
                   help="comma-separated batch sizes (default 64,256)")
    g.add_argument("-o", "--out", default="runs/sweep", metavar="DIR", type=_out_dir,
                   help="output directory (default runs/sweep)")
    g.add_argument("--force", action="store_true", help="overwrite an existing --out")
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

    from ..study.pilot import PILOT_EPOCHS, PILOT_METHODS, PILOT_SEEDS

    p = sub.add_parser("pilot", help="diagnose + compare on a small budget + recommend",
                       formatter_class=fmt,
                       description="A team's pilot: does OT matter on this data (diagnosis), "
                                   "then train flat CE and the CPCC candidates on a small budget, "
                                   "and write report.md / report.html with the cost of mistakes "
                                   "and a recommendation. See docs/pilot.md.")
    add_train_args(p)
    g = p.add_argument_group("pilot")
    g.add_argument("--methods", type=_name_list, default=list(PILOT_METHODS), metavar="LIST",
                   help=f"methods to compare (default {','.join(PILOT_METHODS)})")
    g.add_argument("--seeds", type=int, default=PILOT_SEEDS, metavar="N",
                   help=f"seeds per method (default {PILOT_SEEDS}; epochs default "
                        f"{PILOT_EPOCHS})")
    g.add_argument("--cost-matrix", metavar="CSV", help="misclassification costs by class name")
    g.add_argument("-o", "--out", default="runs/pilot", metavar="DIR",
                   help="output directory (default runs/pilot)")
    g.add_argument("--force", action="store_true", help="overwrite an existing --out")
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
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C while importing or starting up: one line, no traceback
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _main(argv: Sequence[str] | None) -> int:
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
    except TrainingInterrupted as e:
        if os.environ.get("RANK", "0") == "0":
            again = f"{PROG} train --out {e.run_dir} --resume"
            if "WORLD_SIZE" in os.environ:  # under torchrun: the same launcher again
                again = f"torchrun --nproc_per_node {os.environ['WORLD_SIZE']} -m {again}"
            print(f"{PROG}: interrupted; checkpoint saved in {e.run_dir}/last.pt; continue with "
                  f"{again}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, ImportError) as e:
        if debug:
            raise
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank fails alike: say it once
            print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
