"""Resuming a comparison (``otcpcc compare --resume``, ``otcpcc pilot --resume``).

A study (a compare or a pilot) stores what it was asked in ``out/study.json`` before its first run:
the resolved base :class:`~otcpcc.runs.config.TrainConfig`, the method entries (in order), the
number of seeds and the cost matrix (its path and the SHA-256 of its contents). ``--resume``
reopens ``out`` only when the command now given asks the same (:func:`open_study`; the keys in
:data:`STUDY_FREE_KEYS` may change, as for ``otcpcc train --resume``), then each run directory is in
one of four states (:func:`run_state`):

- ``evaluated`` (``metrics.json`` and ``eval.json``): its ``eval.json`` is reused as it stands
  when it was computed with this study's cost matrix (:func:`evaluated_alike`), else evaluated again;
- ``trained`` (``metrics.json`` only: stopped during evaluation): evaluated again;
- ``checkpoint`` (``last.pt``, no ``metrics.json``): ``train(resume=True)`` continues it from its
  last checkpoint (the training loop's own exact resume);
- ``new`` (nothing trained): trained from the start.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..flags import make_dir
from ..metrics.mistakes import cost_matrix_sha256
from ..runs.checkpoint import CHECKPOINT, atomic_write_text
from ..runs.config import TrainConfig

STUDY_FILE = "study.json"
# settings that may change on --resume: where and how fast it runs, not what is computed (as for
# `otcpcc train --resume`, except epochs and eval_every: they change a study's numbers and notes)
STUDY_FREE_KEYS = frozenset({"device", "workers", "data_dir", "cuda_graph"})
# settings a study sets for each run itself, and the flag it takes them from (a sweep from its
# grid, a compare or pilot from its methods): the base config's values are never used, so they
# may differ on --resume
SET_BY_STUDY = {"sweep": {"lam": "--lams", "batch_size": "--batch-sizes"},
                "compare": {"distance": "--methods", "method": "--methods"},
                "pilot": {"distance": "--methods", "method": "--methods"}}


class StudyResumeError(ValueError):
    """``--resume`` onto nothing, or onto a study stored with different settings."""


def cost_fingerprint(cost_matrix: Any) -> str | None:
    """SHA-256 (hex) of a cost matrix: the bytes of a CSV file, or of a float64 array; ``None``
    for the tree distance (no matrix). O(file size)."""
    if cost_matrix is None:
        return None
    if isinstance(cost_matrix, (str, os.PathLike)):
        return hashlib.sha256(Path(cost_matrix).read_bytes()).hexdigest()
    return cost_matrix_sha256(cost_matrix)


def study_record(command: str, cfg: TrainConfig, methods: Sequence[str], seeds: int,
                 cost_matrix: Any) -> dict[str, Any]:
    """What ``out/study.json`` holds: ``{command, config, methods, seeds, cost_matrix,
    cost_matrix_sha256}`` (``cost_matrix``: the CSV path, ``"array"`` or ``None``)."""
    source = None if cost_matrix is None else (
        str(cost_matrix) if isinstance(cost_matrix, (str, os.PathLike)) else "array")
    return {"command": command, "config": cfg.to_dict(), "methods": list(methods),
            "seeds": int(seeds), "cost_matrix": source,
            "cost_matrix_sha256": cost_fingerprint(cost_matrix)}


def study_differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """Each differing setting as ``"name (saved -> now)"``: the config keys outside
    :data:`STUDY_FREE_KEYS`, ``methods``, ``seeds`` and the cost matrix's contents."""
    before = TrainConfig.from_dict(saved["config"], source=STUDY_FILE).to_dict()
    after = now["config"]
    free = STUDY_FREE_KEYS | set(SET_BY_STUDY.get(now["command"], {}))
    auto = before.get("arch") == "auto" or after.get("arch") == "auto"  # resolved from the data later
    changes = [f"{k} ({before[k]!r} -> {after[k]!r})" for k in before
               if k not in free and before[k] != after.get(k) and not (k == "arch" and auto)]
    for key in ("command", "methods", "seeds"):
        if saved.get(key) != now[key]:
            name = "grid" if key == "methods" and now["command"] == "sweep" else key  # lam<λ>_bs<B>
            changes.append(f"{name} ({saved.get(key)!r} -> {now[key]!r})")
    if saved.get("cost_matrix_sha256") != now["cost_matrix_sha256"]:
        was, is_ = saved.get("cost_matrix") or "tree distance", now["cost_matrix"] or "tree distance"
        changes.append(f"cost_matrix ({was} -> {is_}" + (", other contents)" if was == is_ else ")"))
    return changes


def open_study(out: Path, record: Mapping[str, Any], *, resume: bool, force: bool) -> None:
    """Check that ``out`` may hold this study; writes nothing.

    Without ``resume``: ``out`` must be absent or empty unless ``force`` (as before ``--resume``
    existed). With ``resume``: ``out/study.json`` must exist and ask the same as ``record``
    (:func:`study_differences`); else :class:`StudyResumeError` naming every differing setting.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory; choose another --out")
    stored = out / STUDY_FILE
    if resume and force:
        raise StudyResumeError("pass either --resume (continue the comparison) or --force "
                               "(start over), not both")
    if not resume:
        if out.is_dir() and any(out.iterdir()) and not force:
            again = "pass --resume to continue it, " if stored.is_file() else ""
            raise ValueError(f"{out} already exists and is not empty; {again}pass --force to "
                             "overwrite it, or choose another --out")
        return
    if not stored.is_file():
        if out.is_dir() and any(out.iterdir()):  # e.g. written before --resume existed
            raise StudyResumeError(f"cannot resume {out}: it holds no {STUDY_FILE}, so its settings "
                                   "cannot be checked; start over with --force or choose another --out")
        raise StudyResumeError(f"nothing to resume in {out}: no {STUDY_FILE} there; run without "
                               "--resume, or pass the --out of an earlier run of this command")
    try:
        saved = json.loads(stored.read_text(encoding="utf-8"))
        changes = study_differences(saved, record)
    except (ValueError, KeyError, TypeError) as e:
        raise StudyResumeError(f"cannot resume {out}: {stored} is unreadable ({e}); start over "
                               "with --force or choose another --out") from None
    if changes:
        raise StudyResumeError(
            f"cannot resume {out}: it was started with different settings: {', '.join(changes)}; "
            "resume with the original settings, or start over with --force or another --out")


def write_study(out: Path, record: Mapping[str, Any]) -> None:
    """Write ``out/study.json`` (atomically; ``out`` created)."""
    make_dir(out, "--out")  # a path under a file, /proc/x ...: one line naming --out
    atomic_write_text(out / STUDY_FILE, json.dumps(record, indent=2, default=str) + "\n")


def run_state(run_dir: Path) -> str:
    """``"evaluated"``, ``"trained"``, ``"checkpoint"`` or ``"new"`` (module docstring)."""
    if (run_dir / "metrics.json").is_file():
        return "evaluated" if (run_dir / "eval.json").is_file() else "trained"
    return "checkpoint" if (run_dir / CHECKPOINT).is_file() else "new"


@contextmanager
def earlier_run(run_dir: Path) -> Iterator[None]:
    """Around what reads the files an interrupted study left in ``run_dir``: a ValueError or
    OSError (a corrupt checkpoint, config.json or tree.json; a file where the run directory
    should be) gets the fix that works inside a study instead of train's own (delete that run
    directory and resume: only that run is trained again)."""
    try:
        yield
    except (ValueError, OSError) as e:
        if f"delete {run_dir}" in str(e) or not os.path.lexists(run_dir):  # its fix named; nothing there
            raise
        problem = str(e).split("; ")[0]  # its own fix (retrain, choose another --out) is train's
        raise ValueError(f"{problem}; delete {run_dir} and rerun with --resume to train that run "
                         "again (the study's other runs are kept)") from None


def check_run_config(run_dir: Path, cfg: TrainConfig) -> None:
    """Refuse to reuse a finished run whose ``config.json`` asks other settings than this study
    gives it (edited by hand, or copied from another study); one-line ValueError naming each."""
    from ..runs.config import read_run_config

    path = run_dir / "config.json"
    _, saved = read_run_config(path)
    if cfg.arch == "auto":  # training resolves it from the data (runs.build.resolve_arch)
        cfg = cfg.replace(arch=saved.arch)
    changes = saved.changes(cfg, ignore=STUDY_FREE_KEYS)
    if changes:
        raise ValueError(f"{path} was trained with other settings than this study gives it: "
                         f"{', '.join(changes)}; delete {run_dir} and rerun with --resume to train "
                         "it again, or restore its config.json")


def read_saved(path: Path, key: str, fix: str) -> dict[str, Any]:
    """A JSON object an earlier, interrupted study wrote, holding ``key``; else a one-line
    ValueError naming the file and ending with ``fix``."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # missing, unreadable, not UTF-8, not JSON
        raise ValueError(f"{path} is missing or not JSON ({e}); {fix}") from None
    if not isinstance(found, dict) or key not in found:
        raise ValueError(f"{path} holds no {key!r}; {fix}")
    return found


def stored_metrics(run_dir: Path) -> dict[str, Any]:
    """The metrics a finished run's evaluation wrote (``run_dir/eval.json``), as they stand."""
    return read_saved(run_dir / "eval.json", "fine_acc",
                      "delete it and rerun with --resume to evaluate that run again")


def evaluated_alike(saved: Mapping[str, Any], run_dir: Path, cost_matrix: Any) -> bool:
    """Whether a saved ``eval.json`` (``saved``) was computed with the cost matrix this study
    evaluates with (``cost_matrix``: a CSV path, an array or ``None`` = tree distance), compared
    by the ``cost_matrix_sha256`` of the matrix resolved against ``run_dir/tree.json``
    (:func:`otcpcc.metrics.cost_matrix_sha256`); an ``eval.json`` written before that key existed
    matches only the tree distance; one of an unfinished run (``partial``) never matches. E.g.
    the run was evaluated again by hand with another ``--cost-matrix``: ``False``, so the study
    evaluates it again instead of mixing costs."""
    from ..evaluation.evaluate import resolve_cost_matrix
    from ..tree import LabelTree

    if saved.get("split", "test") != "test" or saved.get("partial"):  # e.g. evaluate --partial
        return False
    expected = cost_matrix_sha256(resolve_cost_matrix(
        cost_matrix, LabelTree.from_file(run_dir / "tree.json"))[0])
    if "cost_matrix_sha256" not in saved:
        return expected is None and saved.get("cost_matrix") == "tree distance"
    return saved["cost_matrix_sha256"] == expected
