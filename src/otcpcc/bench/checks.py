"""What ``otcpcc bench`` refuses before it runs anything (a bench takes minutes; a bad flag found
after it would waste them): flags that ``--scale`` or ``--big`` would silently ignore,
``--reference`` with ``--no-reference``, a ``--train-arch`` that is no image model, and a
``--json`` file that cannot be written."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..distances import resolve
from ..flags import given_flags, refuse_unused, unwritable
from .rows import with_graph_rows


def refuse_overridden(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Sequence[str]) -> None:
    """ValueError naming the flags that ``--scale`` (fixed cases) or ``--big`` would silently ignore."""
    if not (args.scale or args.big):
        return
    given = given_flags(parser, argv)
    if args.scale:
        scale_note = ("--scale runs fixed cases (16k batches over 1000 classes, 100k test sets); "
                      "drop those flags, or leave out --scale to time the distances with them")
        refuse_unused(given, "bench --scale", {a.dest: scale_note for a in parser._actions
                                               if a.dest not in ("help", "scale", "json")})
    refuse_unused(given, "bench --big", dict.fromkeys(
        ("classes", "batch_sizes", "distances"),
        "--big sets K=1000, B=16384 and fastft; drop those flags, or leave out --big"))


def refusal(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Sequence[str]) -> str | None:
    """The one-line reason ``otcpcc bench`` (``argv``, parsed into ``args``) must not start, or None."""
    try:
        refuse_overridden(parser, args, argv)
    except ValueError as err:
        return str(err)
    if args.reference is not None and args.no_reference:
        return ("--reference and --no-reference contradict each other; pass --reference PATH to "
                "time that baseline, or --no-reference to time otcpcc only")
    if not args.train_step and any(a == "--train-budget" or a.startswith("--train-budget=")
                                   for a in argv):
        return "--train-budget is only used by --train-step; add --train-step or drop --train-budget"
    if args.train_arch is not None:
        from ..models.backbones import ARCHS

        image_archs = [a for a in ARCHS if a != "mlp"]
        if not args.train_step:
            return "--train-arch is only used by --train-step; add --train-step or drop --train-arch"
        if args.train_arch not in image_archs:
            return (f"--train-arch {args.train_arch!r} is not a model for 3x32x32 images; choose "
                    f"from {', '.join(image_archs)}")
    if args.cuda_graph and not set(with_graph_rows(args.distances, args.weights)) - set(args.distances):
        fix = " or --weights uniform" if args.weights != "uniform" and "fastft" in map(resolve, args.distances) else ""
        return (f"--cuda-graph times l2, swd, and fastft with uniform weights, but --distances "
                f"{','.join(args.distances)} with --weights {args.weights} has none of them; add one{fix}, "
                "or drop --cuda-graph")
    if args.json not in (None, "-"):
        return unwritable(args.json)
    return None


def write_json_flag(path: str, text: str) -> int:
    """Write ``text`` to the ``--json`` path: exit status 0, or 2 after a one-line error naming
    ``--json`` on stderr where it cannot be written (disk full, a folder, no permission). A plain
    write, not a rename: the path may be a device or a pipe."""
    import sys
    from pathlib import Path

    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as e:
        print(f"otcpcc: error: cannot write --json {path}: {e.strerror or e}; give another path", file=sys.stderr)
        return 2
    return 0
