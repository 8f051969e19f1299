"""The flags every training command shares (``add_train_args``), how they become a
:class:`~otcpcc.runs.config.TrainConfig` (``config_from_args``), and the value parsers behind them."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeVar

from ..flags import int_at_least, refuse_unused
from ..runs.config import METHODS, OPTIMIZERS, PRESET_NAMES, SCHEDULES, TrainConfig

T = TypeVar("T")


# --------------------------------------------------------------------------- value parsers
def _key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as YAML (``3`` -> int, ``1e-3`` -> float, ``[4, 5]`` -> list,
    ``x`` -> str, ``-`` -> '-'; see :func:`otcpcc.yaml_values.load_value`)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, _, raw = text.partition("=")
    if not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a name before '=', got {text!r}")
    from ..yaml_values import load_value

    value = load_value(raw) if raw.strip() else ""
    return key.strip().replace("-", "_"), value


def _number_list(type_: Callable[[str], T], what: str) -> Callable[[str], list[T]]:
    """argparse type: comma-separated values read by ``type_`` (empty items skipped); anything
    else: "expected comma-separated <what>, got '...'"."""
    def parse(text: str) -> list[T]:
        try:
            return [type_(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what}, got {text!r}") from None

    parse.__name__ = f"{getattr(type_, '__name__', 'value')}_list"
    return parse


_float_list = _number_list(float, "numbers")


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


_positive_int = int_at_least(1)


# --------------------------------------------------------------------------- shared flags
# Train flags a command sets itself, per command: flag dest -> what to pass instead. They stay
# in the parser (hidden from --help) so that giving one is refused with that hint (see
# refuse_unused_flags) instead of being silently overridden.
NOT_USED: dict[str, dict[str, str]] = {
    "compare": {"distance": "pass --methods (compare trains every method listed there, e.g. none,l2,fastft)",
                "method": "pass --methods (compare trains every method listed there, e.g. none,hxe,hxe+fastft)"},
    "pilot": {"distance": "pass --methods (a pilot trains every method listed there, e.g. none,l2,fastft)",
              "method": "pass --methods (a pilot trains every method listed there, e.g. none,hxe,hxe+fastft)"},
    "sweep": {"lam": "pass --lams (sweep trains every lambda listed there)",
              "batch_size": "pass --batch-sizes (sweep trains every batch size listed there)"},
}


def refuse_unused_flags(args: argparse.Namespace, command: str) -> str | None:
    """ValueError naming the train flags given to ``command`` that it does not use
    (:func:`otcpcc.flags.refuse_unused` on ``NOT_USED[command]``). Those keys in a ``--config``
    file are not refused (a run's config.json holds them all): the note to print, or None."""
    refuse_unused(args, command, NOT_USED.get(command, {}))
    if not args.config:
        return None
    from ..runs.config import load_config_file

    found = [k for k in NOT_USED.get(command, {}) if k in load_config_file(args.config)]
    if not found:
        return None
    from ..study.resume import SET_BY_STUDY

    flags = " and ".join(dict.fromkeys(SET_BY_STUDY[command][k] for k in found))
    return (f"otcpcc: note: {' and '.join(found)} in {args.config} {'are' if len(found) > 1 else 'is'} "
            f"not used: {command} takes {'them' if len(found) > 1 else 'it'} from {flags} (on the "
            "command line only)")


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
    g.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=S,
                   help="CPCC with fixed shapes and no host sync, one CUDA graph per batch shape "
                        "(l2, swd; fastft with uniform weights); bad input then gives a NaN loss")

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
                   help="quiet: no progress bar, per-epoch or summary lines (train prints only "
                        "the run directory; the numbers are in the files written)")


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
