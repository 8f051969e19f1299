"""How much memory one chunk of a chunked distance computation may take.

Every loop over chunks (Gram tiles, row chunks, plan chunks, quantile bands) sizes its chunks
from :func:`chunk_budget`: a fraction of the memory available *now* on the device (CPU:
``MemAvailable`` from ``/proc/meminfo``, else ``os.sysconf``; CUDA: free memory), between
``MIN_BYTES`` and ``MAX_BYTES``. So the working memory of a distance is bounded for any N and K,
and adapts to the machine instead of being tuned to one.

``BUDGET_BYTES`` overrides the measurement (tests set it tiny to force many chunks).
"""

from __future__ import annotations

import os

import torch

FRACTION = 8  # one chunk may use 1/FRACTION of the available memory ...
MIN_BYTES = 16 << 20  # ... but at least this (a chunk must hold a few rows) ...
MAX_BYTES = 1 << 30  # ... and at most this (larger chunks are no faster)
BUDGET_BYTES: int | None = None  # set to force a budget (tests: tiny, to cross every boundary)


def available_bytes(device: torch.device | str | None = None) -> int:
    """Memory available for new allocations on ``device`` (bytes), best effort."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 * MAX_BYTES


def chunk_budget(device: torch.device | str | None = None) -> int:
    """Bytes one chunk may use: ``BUDGET_BYTES`` if set, else available / ``FRACTION`` clamped
    to [``MIN_BYTES``, ``MAX_BYTES``]."""
    if BUDGET_BYTES is not None:
        return int(BUDGET_BYTES)
    return int(min(MAX_BYTES, max(MIN_BYTES, available_bytes(device) // FRACTION)))


def chunk_items(bytes_per_item: int, device: torch.device | str | None = None) -> int:
    """How many items of ``bytes_per_item`` fit in one chunk (at least 1)."""
    return max(1, chunk_budget(device) // max(1, int(bytes_per_item)))
