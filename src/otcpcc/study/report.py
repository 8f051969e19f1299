"""Render a comparison: a table of mean ± std per method, the return-on-investment line, figures.

``render_report(out, summary, run_dirs)`` writes into ``out``:

- ``report.md`` and ``report.html`` (self-contained: figures embedded as base64 PNG): one row per
  method, one column per metric, ``mean ± std`` over seeds, the best mean per column in bold
  (``**…**`` / ``<strong>``). Higher is better for accuracies, CPCC and mAP; lower is better for
  mistake severity, hierarchical distance@k and expected cost; other columns are not marked.
- a "Verdict" section: one sentence per method against ``none``, paired over seeds with 95%
  t-intervals (``study.verdict``);
- the return-on-investment line per method against the flat baseline ``none``:
  relative change of mistake severity and expected cost, at the change of fine accuracy in
  percentage points (accuracies are fractions in [0, 1]).
- ``heatmaps.png``: tree distance and each method's learned class distance (ℓ2 between class
  means of the test features, ``otcpcc.class_distances``), classes in the tree's dendrogram order.
- ``dendrogram.png``: the given tree's dendrogram beside the dendrogram (average linkage) of each
  method's learned class distances.
- ``embedding.png``: PCA and t-SNE of (at most 1000) test features per method, coloured by the
  coarsest level of the tree.
- ``curves.png``: training curves (loss, CE, batch CPCC, train/test accuracy) from each run's
  ``log.csv``.

Figures use one run directory per method (its first seed); curves use every run. Figures are
rendered in a child process; a figure that cannot be drawn (degenerate features of a collapsed
run, a crash) is skipped, and a ``## Notes`` section lists the skips and every collapsed run.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .figures import render_figures
from .notes import collapse_notes, notes_html, notes_markdown
from .tables import aggregate_runs, best_rows, cell, roi_lines, row_name, table_columns
from .verdict import verdict_sentences, verdicts


def markdown_table(aggregate: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table: method, runs, then ``mean ± std`` per metric; best per column in bold."""
    cols = table_columns(aggregate)
    best = {c: best_rows(aggregate, c) for c in cols}
    lines = ["| method | runs | " + " | ".join(cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for i, row in enumerate(aggregate):
        cells = [f"**{cell(row, c)}**" if i in best[c] else cell(row, c) for c in cols]
        lines.append(f"| {row_name(row)} | {row.get('n_runs', '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def html_table(aggregate: Sequence[Mapping[str, Any]]) -> str:
    """The same table as HTML; best per column in ``<strong>``."""
    cols = table_columns(aggregate)
    best = {c: best_rows(aggregate, c) for c in cols}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["method", "runs", *cols])
    body = []
    for i, row in enumerate(aggregate):
        tds = [f"<td>{html.escape(row_name(row))}</td>",
               f"<td>{html.escape(str(row.get('n_runs', '')))}</td>"]
        for c in cols:
            text = html.escape(cell(row, c))
            tds.append(f"<td><strong>{text}</strong></td>" if i in best[c] else f"<td>{text}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return (f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body)
            + "\n</tbody>\n</table>")


_LEGEND = ("Mean ± sample standard deviation over seeds (the mean alone for one seed); "
           "the best mean per column is in bold (higher is better for accuracies, CPCC and "
           "mAP; lower for mistake severity, hier_dist@k and expected cost).")


_VERDICT_NOTE = ("Each method against flat cross-entropy (`none`), paired by seed (same seed, same "
                 "data): mean difference ± half-width of its 95% t-interval; better / worse when "
                 "the interval excludes 0, within noise when it contains 0. Decision costs are "
                 "under the run's cost matrix (default: tree distance); CRM = the "
                 "conditional-risk decision argmin_j Σ_i p(i|x) C[i, j] (Karthik et al. 2021).")


def render_markdown(aggregate: Sequence[Mapping[str, Any]], figures: Sequence[str],
                    sentences: Sequence[str] = (), notes: Sequence[str] = ()) -> str:
    parts = ["# otcpcc comparison", "", _LEGEND, "", markdown_table(aggregate), ""]
    if sentences:
        parts += ["## Verdict", "", _VERDICT_NOTE, ""] + [f"- {s}" for s in sentences] + [""]
    parts += ["## Return on investment (against `none`)", ""]
    parts += [f"- {line}" for line in roi_lines(aggregate)]
    parts += notes_markdown(notes)
    if figures:
        parts += ["", "## Figures", ""] + [f"![{f[:-4]}]({f})" for f in figures]
    return "\n".join(parts) + "\n"


def render_html(aggregate: Sequence[Mapping[str, Any]], out: Path, figures: Sequence[str],
                sentences: Sequence[str] = (), notes: Sequence[str] = ()) -> str:
    imgs = []
    for f in figures:
        data = base64.b64encode((out / f).read_bytes()).decode("ascii")
        imgs.append(f'<h3>{html.escape(f[:-4])}</h3>\n<img alt="{html.escape(f[:-4])}" '
                    f'src="data:image/png;base64,{data}">')
    verdict = ("<h2>Verdict</h2>\n<p>" + html.escape(_VERDICT_NOTE).replace("`", "") + "</p>\n<ul>\n"
               + "\n".join(f"<li>{html.escape(x)}</li>" for x in sentences) + "\n</ul>\n"
               if sentences else "")
    roi_items = "\n".join(f"<li>{html.escape(line).replace('`', '')}</li>"
                          for line in roi_lines(aggregate))
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #bbb;padding:3px 6px;text-align:right}"
             "img{max-width:100%}")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>otcpcc comparison</title>\n<style>{style}</style>\n</head>\n<body>\n"
        f"<h1>otcpcc comparison</h1>\n<p>{html.escape(_LEGEND)}</p>\n{html_table(aggregate)}\n"
        + verdict +
        f"<h2>Return on investment (against none)</h2>\n<ul>\n{roi_items}\n</ul>\n"
        + notes_html(notes)
        + (("<h2>Figures</h2>\n" + "\n".join(imgs) + "\n") if imgs else "")
        + "</body>\n</html>\n"
    )


def render_report(out: str | os.PathLike, summary: Mapping[str, Any],
                  run_dirs: Mapping[str, Any], *, max_points: int = 1000) -> None:
    """Write ``report.md``, ``report.html`` and the PNG figures into ``out``.

    ``summary``: ``{"runs": [...], "aggregate": [...]}`` as written by ``run_compare`` (the
    aggregate is recomputed from ``runs`` when absent). ``run_dirs``: method name → run directory
    or list of run directories (one per seed); figures use the first, curves use all. An empty
    mapping writes the table and ROI line without figures. ``max_points``: test points per
    method in the PCA/t-SNE map (t-SNE is the slow part: ~1–4 s per method at 1000 points).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if "runs" not in summary:
        raise ValueError("summary has no 'runs' list: pass the dict written to summary.json")
    aggregate = summary.get("aggregate") or aggregate_runs(summary["runs"])
    rows = summary["verdicts"] if "verdicts" in summary else verdicts(summary["runs"])
    sentences = verdict_sentences(rows)
    notes = collapse_notes(summary["runs"])  # + "figure skipped: ..." from render_figures
    figures = render_figures(out, aggregate, run_dirs, max_points, notes)
    (out / "report.md").write_text(render_markdown(aggregate, figures, sentences, notes), encoding="utf-8")
    (out / "report.html").write_text(render_html(aggregate, out, figures, sentences, notes),
                                     encoding="utf-8")
