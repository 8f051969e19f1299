"""Run-directory files: atomic writes, checkpoints that load with ``weights_only=True``, RNG states.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled objects),
so ``torch.load(path, weights_only=True)`` reads it and a crafted file cannot run code. Every file
is written to a temporary name in the same directory and then renamed over the target
(``os.replace`` is atomic on POSIX and Windows), so a crash or Ctrl-C never leaves a half-written
``last.pt``, ``log.csv`` or ``metrics.json`` behind.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .signals import sigterm_kills

CHECKPOINT = "last.pt"
TMP_CHECKPOINT = "ckpt.tmp"
FORMAT_VERSION = 1

# Every file a training run or an evaluation writes into a run directory (``--force`` removes
# exactly these, never anything else the user may have put there).
RUN_FILES = (
    "config.json", "tree.json", "log.csv", CHECKPOINT, TMP_CHECKPOINT, "metrics.json",
    "eval.json", "tb", "cpcc_target.csv",
)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if not tmp.is_dir():  # (a folder of that name is the user's: never removed)
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):  # one line naming the file and the fix, not "[Errno 21] ..."
            raise OSError(f"cannot write {path} ({e.strerror or e}); {_write_fix(path, tmp)}") from None
        raise


def _write_fix(path: Path, tmp: Path) -> str:
    """What to do when ``path`` could not be written through ``tmp``."""
    for p in (path, tmp):
        if p.is_dir():
            return f"{p} is a folder, not otcpcc's file: move or remove it, then run again"
    return "free space or fix the folder's permissions, then run again"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    _atomic_write_bytes(Path(path), text.encode("utf-8"))


def _json_safe(value: Any) -> Any:
    """NaN/inf -> None (JSON has no NaN), numpy scalars -> Python numbers, recursively."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (NaN and inf become ``null``)."""
    atomic_write_text(path, json.dumps(_json_safe(obj), indent=2) + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]],
              columns: Sequence[str]) -> None:
    """Atomically write ``rows`` (dicts) as CSV with a header of ``columns``; NaN -> empty cell."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    for row in rows:
        clean = {}
        for k in columns:
            v = row.get(k)
            if isinstance(v, float) and not math.isfinite(v):
                v = ""
            clean[k] = "" if v is None else v
        w.writerow(clean)
    atomic_write_text(path, buf.getvalue())


# ---------------------------------------------------------------------------- RNG states
def get_rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python ``random`` generator states as tensors/numbers."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()  # noqa: NPY002 (the global state is what we save)
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {
            "version": int(py_version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(  # noqa: NPY002
        (n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


# ---------------------------------------------------------------------------- checkpoints
@contextmanager
def _removed_on_sigterm(tmp: Path) -> Iterator[None]:
    """While writing ``tmp``: a SIGTERM (``kill``, a scheduler's stop) first removes ``tmp``, then
    takes its usual course (the previous handler, by default the end of the process), so that no
    half-written temporary file is left behind. Only in the main thread (where handlers live), and
    only where SIGTERM would end the process on the spot: under a handler of otcpcc's
    (:func:`.signals.sigterm_raises`, training's StopRequest) the write either finishes or is
    unwound by an exception, which :func:`save_checkpoint` cleans up after."""
    if threading.current_thread() is not threading.main_thread() or not sigterm_kills():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        tmp.unlink(missing_ok=True)
        signal.signal(signal.SIGTERM, old)
        os.kill(os.getpid(), signal.SIGTERM)  # again, to the previous handler

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, old)


def remove_stale_temporaries(run_dir: str | os.PathLike) -> None:
    """Remove the temporary files an earlier process killed while writing left in ``run_dir``
    (``ckpt.tmp``, ``<run file>.tmp``, ``eval_<split>.json.tmp``: SIGKILL, power loss); called by
    ``train --resume`` as soon as it holds the run's lock, so that a refused resume (a corrupt
    ``last.pt``, changed settings) leaves nothing half-written behind either. Finished files and
    other ``*.tmp`` files (not otcpcc's) are never touched."""
    run_dir = Path(run_dir)
    for name in (TMP_CHECKPOINT, *(f"{n}.tmp" for n in RUN_FILES if n not in (TMP_CHECKPOINT, "tb"))):
        (run_dir / name).unlink(missing_ok=True)
    for tmp in run_dir.glob("eval_*.json.tmp"):  # evaluate --split SPLIT writes eval_SPLIT.json
        tmp.unlink(missing_ok=True)


def save_checkpoint(run_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``run_dir/ckpt.tmp``, then rename it to ``run_dir/last.pt``; an error,
    Ctrl-C or SIGTERM while writing removes ``ckpt.tmp`` (``last.pt`` stays the previous one)."""
    run_dir = Path(run_dir)
    tmp, final = run_dir / TMP_CHECKPOINT, run_dir / CHECKPOINT
    try:
        with _removed_on_sigterm(tmp), open(tmp, "wb") as f:
            torch.save({"format": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException as e:  # disk full, Ctrl-C ...: no partial file left to fill the disk
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OSError(e.errno, f"cannot write checkpoint {final} ({e.strerror or e}); the "
                          f"previous {CHECKPOINT} is unchanged: free space or fix the directory, "
                          "then --resume") from None
        raise
    return final


def load_checkpoint(path: str | os.PathLike,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; an unreadable file is a one-line ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {str(path)!r}; train the run first (otcpcc train --out DIR)"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle.UnpicklingError, RuntimeError (truncated zip), EOFError ...
        first = (str(e).splitlines() or [type(e).__name__])[0]
        first = first.split(". ")[0][:160]  # torch's first sentence: its advice is not for this file
        raise ValueError(
            f"cannot read checkpoint {str(path)!r}: it is corrupt or not an otcpcc checkpoint "
            f"(torch.load: {first}); retrain, or restore the file"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise ValueError(
            f"{str(path)!r} is not an otcpcc checkpoint (no 'model'/'epoch' entries); "
            "pass a run directory written by otcpcc train"
        )
    return state
