"""Render figures in a child process, so that a native crash or a hang cannot kill the report.

t-SNE, PCA (BLAS/OpenMP) and matplotlib run native code; a segmentation fault there (t-SNE on
identical rows does segfault) would end the whole ``otcpcc compare`` before ``report.md`` is
written. :func:`render_isolated` runs a list of plot jobs (a function named ``"module:function"``
and its arguments) in one child Python process (``python .../otcpcc/study/render.py JOBS
STATUS``), which logs ``start``/``done``/``error`` per job to a status file. A job that raises is
skipped with its error message; a job during which the child dies (signal, exit) or exceeds its
time is skipped with that cause, and a new child renders the remaining jobs. Every skip becomes a
``"figure skipped: ..."`` note.

Cost: one extra interpreter start per report, one more per crash. The child registers ``otcpcc``
and ``otcpcc.training`` as bare packages, so torch (which no plot needs) is never imported: the
start costs the matplotlib, SciPy and scikit-learn imports only, about half. The job file is a
pickle that this process writes for its own child, in a private temporary directory.
"""

from __future__ import annotations

import pickle
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["FIGURE_TIMEOUT_S", "render_isolated"]

# seconds allowed per figure (t-SNE of 1000 points per method is the slow part: a few seconds)
FIGURE_TIMEOUT_S = 300.0


def _cause(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the renderer crashed ({name})"
    return f"the renderer exited with status {returncode}"


def _read_status(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split("\t", 2) for line in path.read_text(encoding="utf-8").splitlines() if line]


def render_isolated(jobs: Sequence[Mapping[str, Any]], notes: list[str] | None = None, *,
                    timeout_s: float = FIGURE_TIMEOUT_S) -> list[str]:
    """Run plot ``jobs`` in a child process; return the names of the figures written.

    ``jobs[i] = {"name": "embedding.png", "func": "otcpcc.study.figures:plot_embeddings",
    "kwargs": {...}}`` (the kwargs include the output ``path``; optional ``"args": [...]``).
    Skipped figures add ``"figure skipped: NAME: reason"`` to ``notes``. ``timeout_s`` applies
    per job (the child gets ``timeout_s`` × the jobs left).
    """
    notes = notes if notes is not None else []
    pending = [dict(j) for j in jobs]
    for j in pending:
        if ":" not in j["func"]:
            raise ValueError(f"job {j['name']!r}: func must be 'module:function', got {j['func']!r}")
    done: list[str] = []
    with tempfile.TemporaryDirectory(prefix="otcpcc-figures-") as tmp:
        attempt = 0
        while pending:
            attempt += 1
            job_file = Path(tmp) / f"jobs{attempt}.pkl"
            status = Path(tmp) / f"status{attempt}.txt"
            log = Path(tmp) / f"stderr{attempt}.txt"
            job_file.write_bytes(pickle.dumps(pending))
            with open(log, "wb") as err:
                try:
                    rc: int | None = subprocess.run(
                        [sys.executable, str(Path(__file__).resolve()), str(job_file), str(status)],
                        stdout=subprocess.DEVNULL, stderr=err,
                        timeout=timeout_s * len(pending), check=False).returncode
                except subprocess.TimeoutExpired:
                    rc = None
            started, finished = None, set()
            for rec in _read_status(status):
                if rec[0] == "start":
                    started = rec[1]
                elif rec[0] == "done":
                    done.append(rec[1])
                    finished.add(rec[1])
                elif rec[0] == "error":
                    notes.append(f"figure skipped: {rec[1]}: {rec[2] if len(rec) > 2 else 'error'}")
                    finished.add(rec[1])
            if rc == 0:
                missing = [j["name"] for j in pending if j["name"] not in finished]
                notes += [f"figure skipped: {m}: not rendered" for m in missing]
                break
            cause = (f"the renderer took longer than {timeout_s * len(pending):.0f} s"
                     if rc is None else _cause(rc))
            if started is None or started in finished:  # died before/between jobs: give up
                notes += [f"figure skipped: {j['name']}: {cause}" for j in pending
                          if j["name"] not in finished]
                break
            notes.append(f"figure skipped: {started}: {cause}")
            finished.add(started)
            pending = [j for j in pending if j["name"] not in finished]
    order = [j["name"] for j in jobs]
    return sorted(set(done), key=order.index)


def _child(job_file: str, status_file: str) -> int:
    """The child's side: run each job, logging start/done/error (flushed) to ``status_file``."""
    import importlib

    jobs = pickle.loads(Path(job_file).read_bytes())  # written by our parent, in its tmp dir
    with open(status_file, "a", encoding="utf-8") as st:
        for job in jobs:
            st.write(f"start\t{job['name']}\n")
            st.flush()
            try:
                module, _, name = job["func"].partition(":")
                fn = getattr(importlib.import_module(module), name)
                fn(*job.get("args", ()), **job.get("kwargs", {}))
            except Exception as exc:  # noqa: BLE001 (any error skips this figure only)
                msg = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
                traceback.print_exc()
                st.write(f"error\t{job['name']}\t{msg}\n")
            else:
                st.write(f"done\t{job['name']}\n")
            st.flush()
    return 0


def _bare_packages() -> None:
    """Register ``otcpcc`` and ``otcpcc.training`` without running their ``__init__`` (which
    import torch and the training loop); their submodules (figures, health, tables) import as
    usual."""
    import types

    pkg = Path(__file__).resolve().parents[1]
    for name, path in (("otcpcc", pkg), ("otcpcc.training", pkg / "training")):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [str(path)]
            sys.modules[name] = module


if __name__ == "__main__":
    sys.path.pop(0)  # this file's folder: its module names (report, tables, ...) must not shadow
    _bare_packages()
    sys.exit(_child(sys.argv[1], sys.argv[2]))
