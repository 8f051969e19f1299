"""Write a diagnosis (:func:`otcpcc.evaluation.diagnose.diagnose`) as ``diagnose.json``, a figure
and a short report (``diagnose.md``, ``diagnose.html`` with the figure embedded).

``diagnose.png``: left, the mode count of every class (calibrated split test); right, every class
pair's ℓ2 distance (class means) against its EMD distance, coloured by tree distance: points on
one monotone curve = OT orders the pairs as the means do; colours sorted along the EMD axis but
mixed along the ℓ2 axis = the distributions carry hierarchy the means miss.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..flags import make_dir
from .figures import _pyplot, _save
from .tables import fmt, md_cell

KEYS = ("mean_components", "frac_multimodal", "rank_agreement_l2_emd", "cpcc_l2", "cpcc_emd",
        "cpcc_gain", "recommend")


def plot_diagnosis(result: Mapping[str, Any], path: Path) -> Path:
    """The two panels described in the module docstring."""
    plt = _pyplot()
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 4))
    rows = result["per_class"]
    counts = [r["components"] for r in rows]
    a0.bar(range(len(counts)), counts, color=["C3" if c > 1 else "C0" for c in counts])
    a0.set_xlabel("class")
    a0.set_ylabel("modes")
    a0.set_title(f"modes per class (mean {result['mean_components']:.2f})")
    if len(rows) <= 30:
        a0.set_xticks(range(len(rows)), [str(r["class"]) for r in rows], rotation=90, fontsize=7)
    pairs = result["ot_effect"]["pairs"]
    sc = a1.scatter(pairs["l2"], pairs["emd"], c=pairs["tree"], cmap="viridis", s=10)
    fig.colorbar(sc, ax=a1, label="tree distance")
    a1.set_xlabel("l2 distance of class means")
    a1.set_ylabel("EMD distance")
    a1.set_title(f"class pairs: Spearman {fmt(result['rank_agreement_l2_emd'], 2)}, CPCC l2 "
                 f"{fmt(result['cpcc_l2'], 2)} / emd {fmt(result['cpcc_emd'], 2)}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _number(v: Any) -> str:
    if isinstance(v, str):
        return v
    return fmt(v) if v is not None else "–"


def diagnosis_markdown(result: Mapping[str, Any], figure: str | None = "diagnose.png",
                       level: int = 1, heading: str = "Does optimal transport matter on these features?"
                       ) -> str:
    """The diagnosis as Markdown: ``heading`` followed by the recommendation in bold, headline
    numbers, reasons, most disagreeing pairs, figure. The pilot titles it as the input features'
    diagnosis (before training), since its own answer comes from the trained runs."""
    h = "#" * level
    lines = [f"{h} {heading} **{result['recommend']}**", "",
             f"Data: `{result['dataset']}`, {result['source']}, {result['n']} samples, "
             f"{result.get('num_classes', len(result['per_class']))} classes.", "",
             "| number | value |", "|---|---|"]
    lines += [f"| {k} | {_number(result.get(k))} |" for k in KEYS]
    lines += ["", *[f"- {r}" for r in result["reasons"]], ""]
    dis = result["ot_effect"]["disagreements"]
    if dis:
        lines += [f"{h}# Class pairs where l2 and EMD disagree most", "",
                  "| pair | tree | l2 (rank, 0–1) | emd (rank, 0–1) |", "|---|---|---|---|"]
        lines += [f"| {md_cell(d['a'])} – {md_cell(d['b'])} | {d['tree']:g} | {fmt(d['l2'], 2)} "
                  f"({d['rank_l2']:.2f}) | {fmt(d['emd'], 2)} ({d['rank_emd']:.2f}) |"
                  for d in dis]
        lines += ["", "Each cell: the class distance, then its rank among all class pairs as a "
                  "fraction (near 0 the closest pair, 1 the farthest); tree: their tree distance "
                  "(path length).", ""]
    if figure:
        lines += [f"![diagnosis]({figure})", ""]
    return "\n".join(lines)


def markdown_to_html_body(md: str, figures: Mapping[str, Path]) -> str:
    """A tiny Markdown subset (headings, tables, bullets, paragraphs, images) to HTML; images
    named in ``figures`` are embedded as base64 PNG."""
    out, table, items = [], [], []

    def flush() -> None:
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
            cells = [[html.escape(c.strip().replace("**", "")) for c in r.strip("|").split("|")]
                     for r in rows]
            head = "".join(f"<th>{c}</th>" for c in cells[0])
            body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>"
                           for r in cells[1:])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            table.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>")
            items.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        if line.startswith("- "):
            items.append(html.escape(line[2:].replace("**", "").replace("`", "")))
            continue
        flush()
        if line.startswith("#"):
            n = len(line) - len(line.lstrip("#"))
            text = html.escape(line[n:].strip().replace("**", "").replace("`", ""))
            out.append(f"<h{n}>{text}</h{n}>")
        elif line.startswith("![") and "](" in line:
            name = line[line.index("](") + 2:-1]
            if name in figures and figures[name].is_file():
                data = base64.b64encode(figures[name].read_bytes()).decode("ascii")
                out.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">')
        elif line.strip():
            out.append(f"<p>{html.escape(line.replace('**', '').replace('`', ''))}</p>")
    flush()
    return "\n".join(out)


def html_page(title: str, body: str) -> str:
    style = ("body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:"
             "collapse}td,th{border:1px solid #bbb;padding:3px 6px}img{max-width:100%}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{style}</style>\n</head>\n<body>\n"
            f"{body}\n</body>\n</html>\n")


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def write_diagnosis(out: str | os.PathLike, result: Mapping[str, Any]) -> Path:
    """Write ``diagnose.json``, ``diagnose.png``, ``diagnose.md`` and ``diagnose.html`` into
    ``out`` (created); each file is written whole to a temporary name, then renamed."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory; choose another --out")
    make_dir(out, "--out")
    figure = plot_diagnosis(result, out / "diagnose.png")
    md = diagnosis_markdown(result)
    page = html_page("otcpcc diagnosis", markdown_to_html_body(md, {"diagnose.png": figure}))
    texts = {"diagnose.json": json.dumps(result, indent=2, default=_json_default) + "\n",
             "diagnose.md": md, "diagnose.html": page}
    for name, text in texts.items():
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)
    return out / "diagnose.json"
