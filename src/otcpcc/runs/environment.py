"""What a run records of the software it ran on: package versions and the git commit."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any


def git_commit() -> str | None:
    """The commit of the git checkout holding this package, or ``None`` outside one."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def environment_info() -> dict[str, Any]:
    """Package versions and git commit, for reproducibility records."""
    import numpy
    import torch

    from .. import __version__

    return {
        "versions": {
            "otcpcc": __version__,
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "python": platform.python_version(),
        },
        "git_commit": git_commit(),
    }
