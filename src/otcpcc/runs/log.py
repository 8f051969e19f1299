"""What a run prints and logs: the per-epoch line, a tqdm bar on a terminal, TensorBoard scalars."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOG_COLUMNS = (
    "epoch", "loss", "ce", "cpcc", "train_acc", "test_acc", "lr", "epoch_time", "samples_per_s",
)


def printer(enabled: bool) -> Callable[[str], None]:
    def say(msg: str) -> None:
        if enabled:
            print(msg, file=sys.stderr, flush=True)

    return say


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *a: Any, **k: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(enabled: bool, total: int, initial: int, desc: str) -> Any:
    """A tqdm bar on a terminal; nothing when ``progress=False`` or stderr is not a TTY."""
    if not enabled or not sys.stderr.isatty():
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)


def format_row(row: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['loss']:.4f}", f"ce {row['ce']:.4f}"]
    if not math.isnan(row["cpcc"]):
        parts.append(f"cpcc {row['cpcc']:.4f}")
    parts.append(f"train_acc {row['train_acc']:.4f}")
    if not math.isnan(row["test_acc"]):
        parts.append(f"test_acc {row['test_acc']:.4f}")
    parts += [f"lr {row['lr']:.3g}", f"{row['epoch_time']:.1f}s",
              f"{row['samples_per_s']:.0f} samples/s"]
    return "  ".join(parts)


def open_tensorboard(out: Path, history: list[dict[str, Any]]) -> Any:
    """A SummaryWriter on ``out/tb`` when tensorboard is installed, else ``None``."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tb"), purge_step=len(history) + 1 if history else None)


def log_tensorboard(tb: Any, row: dict[str, Any]) -> None:
    if tb is None:
        return
    for key in LOG_COLUMNS[1:]:
        v = row.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            tb.add_scalar(key, v, row["epoch"])
    tb.flush()
