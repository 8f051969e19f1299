"""Run directories: refuse to clobber an existing run, create one, write its config and tree.

A run directory holds ``config.json`` (resolved values, versions, git commit), ``tree.json``,
``log.csv``, ``last.pt`` and ``metrics.json`` (see :data:`otcpcc.runs.checkpoint.RUN_FILES`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .checkpoint import CHECKPOINT, RUN_FILES, atomic_write_text, remove_stale_temporaries
from .config import ConfigError, TrainConfig, read_run_config

if TYPE_CHECKING:
    from ..distributed.env import DistEnv


class RunDirError(ValueError):
    """A run directory that cannot be used as asked (exists, missing, incompatible)."""


def check_run_dir(out: Path, *, resume: bool, force: bool) -> None:
    """Refuse early: an existing run without ``force``/``resume``, ``resume`` without a run, or a
    folder under a run file's name (writing it would fail after training). A run exists where any
    of :data:`RUN_FILES` is (even without its config.json: training there would overwrite its
    checkpoint, metrics and log)."""
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a directory; choose another --out")
    for name in RUN_FILES:
        if name != "tb" and (out / name).is_dir():
            raise RunDirError(f"{out / name} is a folder, not otcpcc's file: move or remove it, then "
                              "run again")
    held = next((n for n in RUN_FILES if os.path.lexists(out / n)), None)
    exists = held is not None
    if resume and not (out / "config.json").is_file() and exists:
        raise RunDirError(f"cannot resume {out}: its config.json is missing or not a file, so the run's "
                          "settings are unknown; start it over with --force (or restore config.json)")
    if resume and not (out / "config.json").is_file():
        raise RunDirError(
            f"nothing to resume in {out}: no config.json there; run without --resume "
            "or pass the directory of an earlier run"
        )
    if resume and not (out / CHECKPOINT).is_file():
        raise RunDirError(
            f"nothing to resume in {out}: no {CHECKPOINT} checkpoint; start over with --force"
        )
    if exists and not (resume or force):
        raise RunDirError(
            f"run directory {out} already holds a run ({held}); pass --force to overwrite "
            "it, --resume to continue it, or choose another --out"
        )


def discard_run_files(out: Path) -> None:
    """Remove the files a run writes from ``out`` (:data:`RUN_FILES`, the evaluations of other
    splits, the temporaries of an interrupted write), nothing else (``--force``)."""
    for name in RUN_FILES:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            if name == "tb":  # otcpcc's TensorBoard event files; anything else in tb/ is kept
                for event in p.glob("events.out.tfevents.*"):
                    event.unlink()
                if not any(p.iterdir()):
                    p.rmdir()
        elif os.path.lexists(p):
            p.unlink()
    remove_stale_temporaries(out)
    for path, _ in _evaluations(out):
        path.unlink()


def _evaluations(out: Path) -> list[tuple[Path, dict]]:
    """The evaluations otcpcc wrote in ``out`` (``eval.json``, ``eval_<split>.json``: JSON objects
    with a ``split`` and an ``epoch``) and their contents; other files are not listed."""
    found = []
    for path in sorted(out.glob("eval*.json")):
        if path.name != "eval.json" and not path.name.startswith("eval_"):
            continue
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not an evaluation otcpcc wrote: leave it alone
        if isinstance(saved, dict) and "split" in saved and "epoch" in saved:
            found.append((path, saved))
    return found


def discard_stale_evaluations(out: Path, epochs: int) -> list[str]:
    """Remove the evaluations in ``out`` (``eval.json``, ``eval_<split>.json``) of an earlier state
    of the model: an ``evaluate --partial`` one (``partial: true``) or one of another epoch than
    ``epochs``; called when training finishes, so that only an evaluation of the finished model
    can sit beside its ``metrics.json``. Returns the names removed (e.g. ``["eval.json"]``)."""
    removed = []
    for path, saved in _evaluations(out):
        if saved.get("partial") or saved.get("epoch") != epochs:
            path.unlink()
            removed.append(path.name)
    return removed


def prepare_run_dir(out: Path, cfg: TrainConfig, env: DistEnv, *, resume: bool, force: bool,
                    tree, meta: dict | None = None) -> None:
    """Create/clean ``out``; check a resumed configuration; write config.json and tree.json
    (``meta`` adds entries to config.json's ``meta``)."""
    if resume:
        check_resume_config(out, cfg, env)
    elif force:
        discard_run_files(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"resolved_device": str(env.device), "world_size": env.world_size,
            "num_classes": tree.num_classes, **(meta or {})}

    atomic_write_text(out / "config.json", cfg.to_json(meta) + "\n")
    tree.to_file(out / "tree.json")  # written beside and moved in: replaces a link, never writes through it


def _damaged(out: Path, problem: str) -> RunDirError:
    """The refusal to resume ``out`` whose config.json is damaged (``problem`` names it)."""
    return RunDirError(f"cannot resume {out}: {problem}; restore it, or start the run over with "
                       "--force or another --out")


def resumed_config(out: Path) -> tuple[dict, TrainConfig]:
    """The mapping and settings of the run ``out`` being resumed (its config.json); a damaged
    file is a one-line RunDirError naming it as the run's own, with the fixes of a resume."""
    try:
        return read_run_config(out / "config.json")
    except ConfigError as e:
        raise _damaged(out, str(e)) from None


def check_resume_config(out: Path, cfg: TrainConfig, env: DistEnv) -> None:
    """Refuse to resume ``out`` with settings its config.json does not have (naming each change)."""
    raw, saved = resumed_config(out)
    changes = saved.changes(cfg)
    meta = raw.get("meta")
    ran_on = meta.get("world_size", env.world_size) if isinstance(meta, dict) else env.world_size
    if isinstance(ran_on, bool) or not isinstance(ran_on, int) or ran_on < 1:
        raise _damaged(out, f"{out / 'config.json'} is damaged (meta.world_size {ran_on!r} is not a "
                            "process count)")
    if ran_on != env.world_size:  # (last.pt is checked too) refuse before rewriting files
        changes.append(f"world_size ({ran_on} -> {env.world_size})")
    if changes:
        details = ", ".join(changes)
        raise RunDirError(
            f"cannot resume {out} with a different configuration: {details}; "
            "resume with the original settings or start a new run with another --out"
        )


