"""Notes of a comparison report: runs that collapsed during training, figures that were skipped.

A run's collapse is read from its ``metrics.json`` (``collapsed: {epoch, reason}``, written by
``otcpcc.training.loop``, see ``otcpcc.training.health``) into its summary row as
``collapsed = "epoch E: reason"``; :func:`collapse_notes` turns those rows into report lines.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["collapse_notes", "notes_html", "notes_markdown", "run_collapse"]


def run_collapse(run_dir: str | os.PathLike) -> str | None:
    """``"epoch E: reason"`` when ``run_dir/metrics.json`` records a collapse, else None."""
    try:
        rec = json.loads((Path(run_dir) / "metrics.json").read_text()).get("collapsed")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(rec, Mapping):
        return None
    return f"epoch {rec.get('epoch')}: {rec.get('reason')}"


def collapse_notes(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per summary row with a ``collapsed`` entry: method, seed, epoch, reason."""
    return [f"`{r.get('method') or r.get('distance')}` seed {r.get('seed')}: run collapsed at {r['collapsed']}; "
            "its metrics are those of a collapsed model, not of the method (lower --lr)"
            for r in runs if r.get("collapsed")]


def notes_markdown(notes: Sequence[str]) -> list[str]:
    """Markdown lines of a ``## Notes`` section (none when there are no notes)."""
    return ["", "## Notes", "", *(f"- {n}" for n in notes)] if notes else []


def notes_html(notes: Sequence[str]) -> str:
    """The same section as HTML (empty string when there are no notes)."""
    if not notes:
        return ""
    items = "\n".join(f"<li>{html.escape(n).replace('`', '')}</li>" for n in notes)
    return f"<h2>Notes</h2>\n<ul>\n{items}\n</ul>\n"
