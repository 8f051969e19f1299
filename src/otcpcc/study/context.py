"""The context of a comparison: what was trained on what, how, where.

``read_context(run_dir)`` gathers it from one run directory written by ``otcpcc train``
(``config.json``: resolved settings, versions, device; ``tree.json``: classes and depth;
``eval.json``: the cost matrix's source). ``run_compare`` stores it, with the methods and seeds, as
``summary.json["context"]``; the report renders it with :func:`context_lines`, filling what a
summary lacks from its runs (methods, seeds) and saying "not recorded" for the rest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .tables import method_name, seed_list

NOT_RECORDED = "not recorded"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_context(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The context of one run (missing files give missing keys, never an error).

    Keys: ``data``, ``data_options``, ``num_classes``, ``tree_depth`` (edges from the root to the
    deepest leaf), ``levels`` (coarser level names, bottom-up), ``backbone`` (the resolved
    ``arch``), ``model_options``, ``lam``, ``epochs``, ``batch_size``, ``optimizer``, ``lr``,
    ``cost_matrix`` (``"tree distance"`` or the CSV path), ``otcpcc`` and ``torch`` versions,
    ``device`` (the resolved one) and ``git_commit``.
    """
    run_dir = Path(run_dir)
    cfg = _read_json(run_dir / "config.json")
    meta = cfg.get("meta") if isinstance(cfg.get("meta"), dict) else {}
    versions = meta.get("versions") if isinstance(meta.get("versions"), dict) else {}
    ctx: dict[str, Any] = {k: cfg[k] for k in ("data", "data_options", "model_options", "lam",
                                               "epochs", "batch_size", "optimizer", "lr")
                           if k in cfg}
    if "arch" in cfg:
        ctx["backbone"] = cfg["arch"]
    if (run_dir / "tree.json").exists():
        from ..tree import LabelTree

        try:
            tree = LabelTree.from_file(run_dir / "tree.json", format="json")
        except ValueError:
            tree = None
        if tree is not None:
            ctx["num_classes"] = tree.num_classes
            ctx["tree_depth"] = max(tree.depth(leaf) for leaf in tree.leaves)
            ctx["levels"] = [lev.name for lev in tree.levels]
    elif "num_classes" in meta:
        ctx["num_classes"] = meta["num_classes"]
    cost = _read_json(run_dir / "eval.json").get("cost_matrix")
    if cost is not None:
        ctx["cost_matrix"] = cost
    for key, value in (("otcpcc", versions.get("otcpcc")), ("torch", versions.get("torch")),
                       ("device", meta.get("resolved_device")),
                       ("git_commit", meta.get("git_commit"))):
        if value is not None:
            ctx[key] = value
    return ctx


def _options(opts: Any) -> str:
    if not isinstance(opts, Mapping) or not opts:
        return ""
    return " (" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")"


def _get(ctx: Mapping[str, Any], key: str) -> str:
    value = ctx.get(key)
    return NOT_RECORDED if value is None or value == "" else str(value)


def context_lines(context: Mapping[str, Any], runs: Sequence[Mapping[str, Any]] = ()
                  ) -> list[tuple[str, str]]:
    """``(label, text)`` lines of the report's header.

    ``context``: ``summary["context"]`` (see :func:`read_context`, plus ``methods`` and
    ``seeds``); methods and seeds missing from it are read off ``runs`` (the summary rows).
    """
    ctx = dict(context)
    if not ctx.get("methods") and runs:
        ctx["methods"] = list(dict.fromkeys(method_name(r) for r in runs))
    if not ctx.get("seeds") and runs:
        ctx["seeds"] = seed_list(runs)
    data = _get(ctx, "data") + _options(ctx.get("data_options"))
    if ctx.get("num_classes") is not None:
        data += f": {ctx['num_classes']} fine classes"
    if ctx.get("tree_depth") is not None:
        levels = ctx.get("levels") or []
        named = f" (levels below the root: {', '.join(map(str, reversed(levels)))}, fine)" \
            if levels else ""
        data += f", tree depth {ctx['tree_depth']}{named}"
    training = (f"{_get(ctx, 'epochs')} epochs, batch size {_get(ctx, 'batch_size')}, "
                f"{_get(ctx, 'optimizer')} lr {_get(ctx, 'lr')}")
    lam = (f"λ = {_get(ctx, 'lam')} for every CPCC term (methods without CPCC train with "
           "λ = 0)")
    seeds = ctx.get("seeds") or []
    seed_text = (", ".join(map(str, seeds)) + " (every method: the same data and seeds)"
                 if seeds else NOT_RECORDED)
    software = (f"otcpcc {_get(ctx, 'otcpcc')}, torch {_get(ctx, 'torch')}, "
                f"device {_get(ctx, 'device')}")
    if ctx.get("git_commit"):
        software += f", git commit {str(ctx['git_commit'])[:10]}"
    return [("Data", data),
            ("Backbone", _get(ctx, "backbone") + _options(ctx.get("model_options"))),
            ("λ", lam),
            ("Training", training),
            ("Seeds", seed_text),
            ("Methods", ", ".join(map(str, ctx.get("methods") or [])) or NOT_RECORDED),
            ("Cost matrix", _get(ctx, "cost_matrix")),
            ("Software", software)]
