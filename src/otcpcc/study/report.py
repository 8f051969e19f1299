"""Render a comparison: context, verdict, tables of mean ± std per method, figures with captions.

``render_report(out, summary, run_dirs)`` writes into ``out``:

- ``report.md`` and ``report.html`` (self-contained: figures embedded as base64 PNG), in order:
  the context (data set, classes and tree depth, backbone, λ, epochs, batch size, seeds, methods,
  cost matrix, versions, device; ``otcpcc.study.context``); the "Verdict" in plain sentences
  (``otcpcc.study.sentences``, from ``summary["verdicts"]``); the tables; the return-on-investment
  line per method against ``none`` (relative change of mistake severity and expected cost at the
  change of fine accuracy in percentage points); the figures, each with a caption.
- The tables are transposed and grouped so that they fit a narrow window however many metrics
  there are: one table per metric group (accuracy; mistakes; hierarchy in the features; other),
  one row per metric (↑ higher is better, ↓ lower is better), one column per method (at most
  eight per table; more methods continue in further tables), ``mean ± std`` over seeds, the best
  mean per metric in bold (``**…**`` / ``<strong>``).
- ``tradeoff.png``: fine accuracy against expected cost per method, mean ± std over seeds
  (argmax, and CRM when the summary has it).
- ``heatmaps.png``: tree distance and each method's learned class distance (ℓ2 between class
  means of the test features, ``otcpcc.class_distances``), classes in the tree's dendrogram order.
- ``dendrogram.png``: the given tree's dendrogram beside the dendrogram (average linkage) of each
  method's learned class distances.
- ``embedding.png``: PCA and t-SNE of (at most 1000) test features per method, coloured by the
  coarsest level of the tree.
- ``curves.png``: training curves (loss, CE, batch CPCC, train/test accuracy) from each run's
  ``log.csv``.

Heatmaps, dendrograms and embeddings use one run directory per method (its first seed); curves use
every run; the trade-off uses the summary only. Figures are rendered in a child process; a figure
that cannot be drawn (degenerate features of a collapsed run, a crash) is skipped, and a ``Notes``
section lists the skips and every collapsed run.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..runs.checkpoint import atomic_write_text
from .context import context_lines, read_context
from .figures import _run_list, render_figures
from .notes import collapse_notes, notes_html, notes_markdown
from .seeds_needed import NO_ESTIMATE, cheapest_estimate, separated
from .sentences import ot_sentences, seeds_sentence, verdict_sentences
from .tables import (
    aggregate_runs,
    best_rows,
    cell,
    decision_cost_key,
    md_cell,
    method_chunks,
    method_name,
    metric_direction,
    roi_lines,
    seed_list,
    table_groups,
)
from .verdict import ot_verdicts

_ARROW = {"max": " ↑", "min": " ↓", None: ""}
_LEGEND = ("Mean ± sample standard deviation over seeds (the mean alone for one seed); ↑ higher "
           "is better, ↓ lower is better; the best mean per metric is in bold. CRM: the "
           "conditional-risk decision (the class of least expected cost under the model's "
           "probabilities) instead of the argmax.")
TITLE = "otcpcc comparison"


def _table_cells(aggregate: Sequence[Mapping[str, Any]]
                 ) -> list[tuple[str, list[str], list[tuple[str, list[tuple[str, bool]]]]]]:
    """The report's tables as data: ``(title, method names, [(metric label, [(text, best)])])``
    per metric group and chunk of methods; the first table of each chunk starts with a ``runs``
    row (seeds per method)."""
    tables = []
    best_cache: dict[str, set[int]] = {}
    for chunk in method_chunks(aggregate):
        names = [method_name(aggregate[i]) for i in chunk]
        for g, (title, metrics) in enumerate(table_groups(aggregate)):
            rows = []
            if g == 0:
                rows.append(("runs", [(str(aggregate[i].get("n_runs", "")), False)
                                      for i in chunk]))
            for m in metrics:
                best = best_cache.setdefault(m, best_rows(aggregate, m))
                rows.append((m + _ARROW[metric_direction(m)],
                             [(cell(aggregate[i], m), i in best) for i in chunk]))
            tables.append((title, names, rows))
    return tables


def markdown_tables(aggregate: Sequence[Mapping[str, Any]]) -> str:
    """The grouped tables in Markdown: one row per metric, one column per method."""
    parts = []
    for title, names, rows in _table_cells(aggregate):
        lines = [f"**{title}**", "", "| metric | " + " | ".join(map(md_cell, names)) + " |",
                 "|---|" + "---|" * len(names)]
        for label, cells in rows:
            lines.append(f"| {md_cell(label)} | "
                         + " | ".join(f"**{md_cell(t)}**" if b else md_cell(t) for t, b in cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def html_tables(aggregate: Sequence[Mapping[str, Any]]) -> str:
    """The same tables in HTML; best per metric in ``<strong>``."""
    parts = []
    for title, names, rows in _table_cells(aggregate):
        head = "".join(f"<th>{html.escape(n)}</th>" for n in ["metric", *names])
        body = []
        for label, cells in rows:
            tds = "".join(f"<td><strong>{html.escape(t)}</strong></td>" if b
                          else f"<td>{html.escape(t)}</td>" for t, b in cells)
            body.append(f"<tr><th scope=\"row\">{html.escape(label)}</th>{tds}</tr>")
        parts.append(f"<table>\n<caption>{html.escape(title)}</caption>\n"
                     f"<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body)
                     + "\n</tbody>\n</table>")
    return "\n".join(parts)


def render_markdown(aggregate: Sequence[Mapping[str, Any]], figures: Sequence[tuple[str, str]],
                    context: Sequence[tuple[str, str]], verdict: Sequence[str],
                    notes: Sequence[str] = ()) -> str:
    parts = [f"# {TITLE}", ""]
    parts += [f"- **{label}**: {text}" for label, text in context]
    parts += ["", "## Verdict", ""] + [f"- {s}" for s in verdict]
    parts += ["", "## Results", "", _LEGEND, "", markdown_tables(aggregate), "",
              "## Return on investment (means against `none`)", ""]
    parts += [f"- {line}" for line in roi_lines(aggregate)]
    parts += notes_markdown(notes)
    if figures:
        parts += ["", "## Figures"]
        for f, caption in figures:
            parts += ["", f"![{f[:-4]}]({f})", "", f"*{caption}*"]
    return "\n".join(parts) + "\n"


_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1200px}"
          "table{border-collapse:collapse;margin:0 0 1.2em 0;max-width:100%}"
          "caption{text-align:left;font-weight:bold;padding:4px 0}"
          "td,th{border:1px solid #bbb;padding:3px 6px;text-align:right;overflow-wrap:anywhere}"
          "th[scope=row],thead th:first-child{text-align:left}"
          "dl.context{display:grid;grid-template-columns:max-content 1fr;gap:2px 1em}"
          "dl.context dt{font-weight:bold}dl.context dd{margin:0;overflow-wrap:anywhere}"
          "figure{margin:1.5em 0}figcaption{font-size:90%;color:#333;max-width:60em}"
          "img{max-width:100%;height:auto}")


def render_html(aggregate: Sequence[Mapping[str, Any]], out: Path,
                figures: Sequence[tuple[str, str]], context: Sequence[tuple[str, str]],
                verdict: Sequence[str], notes: Sequence[str] = ()) -> str:
    esc = html.escape
    ctx = "\n".join(f"<dt>{esc(label)}</dt><dd>{esc(text)}</dd>" for label, text in context)
    verdict_items = "\n".join(f"<li>{esc(s).replace('`', '')}</li>" for s in verdict)
    roi_items = "\n".join(f"<li>{esc(line).replace('`', '')}</li>"
                          for line in roi_lines(aggregate))
    figs = []
    for f, caption in figures:
        data = base64.b64encode((out / f).read_bytes()).decode("ascii")
        figs.append(f'<figure>\n<img alt="{esc(f[:-4])}" src="data:image/png;base64,{data}">\n'
                    f"<figcaption>{esc(caption)}</figcaption>\n</figure>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{TITLE}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{TITLE}</h1>\n<dl class=\"context\">\n{ctx}\n</dl>\n"
        f"<h2>Verdict</h2>\n<ul>\n{verdict_items}\n</ul>\n"
        f"<h2>Results</h2>\n<p>{esc(_LEGEND)}</p>\n{html_tables(aggregate)}\n"
        f"<h2>Return on investment (means against none)</h2>\n<ul>\n{roi_items}\n</ul>\n"
        + notes_html(notes)
        + (("<h2>Figures</h2>\n" + "\n".join(figs) + "\n") if figs else "")
        + "</body>\n</html>\n"
    )


def _context(summary: Mapping[str, Any], run_dirs: Mapping[str, Any]) -> dict[str, Any]:
    """``summary["context"]``, completed from the first run directory's files when it lacks
    keys (summaries written before the context was recorded)."""
    ctx: dict[str, Any] = {}
    for v in run_dirs.values():
        dirs = _run_list(v)
        if dirs:
            ctx = read_context(dirs[0])
            break
    ctx.update({k: v for k, v in (summary.get("context") or {}).items() if v is not None})
    return ctx


def render_report(out: str | os.PathLike, summary: Mapping[str, Any],
                  run_dirs: Mapping[str, Any], *, max_points: int = 1000,
                  data_dir: str | None = None) -> None:
    """Write ``report.md``, ``report.html`` and the PNG figures into ``out``.

    ``summary``: ``{"runs": [...], "aggregate": [...], "context": {...}, "verdicts": [...]}`` as
    written by ``run_compare`` (the aggregate is recomputed from ``runs`` when absent; a missing
    context is read from the run directories, then says "not recorded"; missing verdicts are
    said to be missing). ``run_dirs``: method name → run directory or list of run directories
    (one per seed); heatmaps, dendrograms and embeddings use the first, curves use all. An empty
    mapping writes the tables, verdict and trade-off figure only. ``max_points``: test points per
    method in the PCA/t-SNE map (t-SNE is the slow part: ~1–4 s per method at 1000 points).
    ``data_dir``: where the runs' data is now, when it moved since they were trained.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if "runs" not in summary:
        raise ValueError("summary has no 'runs' list: pass the dict written to summary.json")
    runs = summary["runs"]
    aggregate = summary.get("aggregate") or aggregate_runs(runs)
    ctx = _context(summary, run_dirs)
    context = context_lines(ctx, runs)
    verdict = verdict_sentences(summary.get("verdicts"), aggregate,
                                ctx.get("seeds") or seed_list(runs))
    est = cheapest_estimate(runs, aggregate, decision_cost_key(aggregate))
    if summary.get("verdicts") and est and est["status"] != NO_ESTIMATE and not separated(est):
        verdict.append(seeds_sentence(est))  # how many seeds the cheapest candidate would need
    ot_rows = summary.get("ot_verdicts")  # (older summaries have none: derived from the runs)
    verdict += ot_sentences(ot_verdicts(runs) if ot_rows is None else ot_rows)
    notes = collapse_notes(runs)  # + "figure skipped: ..." from render_figures
    figures = render_figures(out, aggregate, run_dirs, max_points, runs=runs,
                             cost_source=str(ctx.get("cost_matrix") or "tree distance"), notes=notes,
                             data_dir=data_dir)
    atomic_write_text(out / "report.md", render_markdown(aggregate, figures, context, verdict, notes))
    atomic_write_text(out / "report.html", render_html(aggregate, out, figures, context, verdict, notes))
