"""``otcpcc pilot``: diagnose, compare the candidates on a small budget, recommend one.

``run_pilot(cfg, out)``:

1. :func:`otcpcc.evaluation.diagnose.diagnose` on the input features of ``cfg.data`` →
   ``out/diagnosis/`` (diagnose.json/.md/.html/.png);
2. :func:`otcpcc.study.compare.run_compare` of ``PILOT_METHODS`` for ``seeds`` seeds →
   ``out/compare/`` (summary.json, its report, one run directory per method and seed);
3. ``out/report.md`` / ``out/report.html`` / ``out/pilot.json``: the closing recommendation and
   the one answer to "does optimal transport matter here?" (``otcpcc.study.recommendation``:
   after training, the OT method against the same method with class means; the diagnosis of the
   input features as before-training evidence), the diagnosis, the comparison table, the paired
   verdicts against flat CE (``summary.json``'s ``verdicts`` when compare writes them, else
   recomputed by :func:`otcpcc.study.verdict.verdicts`) and the cost of mistakes under the cost
   matrix. ``pilot.json`` holds the recommendation's fields too (``recommended_method``,
   ``better``, ``worse``, ``worse_fine_acc``, ``seeds_needed``, ``seeds_estimate``,
   ``ot_matters``, ``ot_evidence``, ``ot_input_diagnosis``, ``ot_agrees_with_diagnosis``).

To add a method (e.g. the hierarchy-aware baseline ``hxe`` once compare knows it), add its name to
``PILOT_METHODS``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..runs.checkpoint import atomic_write_text
from ..runs.config import ConfigError, TrainConfig
from .compare import _say, check_compare, removed_if_empty_on_failure, run_compare
from .diagnosis_report import diagnosis_markdown, html_page, markdown_to_html_body, write_diagnosis
from .methods import resolve_methods
from .pilot_budget import PILOT_METHODS, PILOT_SEEDS
from .recommendation import COST_METRIC, closing_recommendation, ot_answer, ot_paragraph, recommendation
from .report import markdown_tables
from .resume import STUDY_FILE, open_study, read_saved, study_record, write_study
from .tables import aggregate_runs, fmt, md_cell, method_name
from .verdict import BASELINE
from .verdict import ot_verdicts as ot_verdicts_of
from .verdict import verdicts as verdicts_of

__all__ = ["closing_recommendation", "run_pilot"]


def _verdict_table(verdicts: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["| method | metric | difference vs flat CE | 95% CI | call |", "|---|---|---|---|---|"]
    lines += [f"| {md_cell(v['method'])} | {md_cell(v['metric'])} | {fmt(v['diff_mean'])} | [{fmt(v['ci_low'])}, "
              f"{fmt(v['ci_high'])}] | {v['call']} |" for v in verdicts]
    return lines


def run_pilot(cfg: TrainConfig, out: str | os.PathLike, *, methods: Sequence[str] = PILOT_METHODS,
              seeds: int = PILOT_SEEDS, cost_matrix: str | None = None, force: bool = False,
              progress: bool = True, resume: bool = False) -> Path:
    """Diagnose, compare ``methods`` over ``seeds`` seeds with ``cfg``'s budget, write the report
    (module docstring). ``out/study.json`` stores the settings; ``resume`` continues an interrupted
    pilot asked with the same ones (``study.resume``): a written diagnosis and the finished runs
    are reused, an unfinished run continues from its checkpoint. The data is loaded once here, for
    the diagnosis and the checks of the cost matrix and CPCC target (each training run still loads
    its own). Returns ``out``."""
    from ..runs.build import load_data

    out = Path(out)
    names = [s.name for s in resolve_methods(methods)]  # each bad or repeated entry named
    if BASELINE not in names:  # the pilot's verdicts and recommendation are against flat CE
        raise ConfigError(f"pilot needs {BASELINE} (flat CE) in --methods: its verdicts and its "
                          f"recommendation are paired against flat CE; pass --methods "
                          f"{','.join([BASELINE, *names])}")
    if cost_matrix is not None and not Path(cost_matrix).is_file():
        raise FileNotFoundError(f"cost matrix {cost_matrix!r} not found; check --cost-matrix")
    record = study_record("pilot", cfg, list(methods), seeds, cost_matrix)
    open_study(out, record, resume=resume, force=force)
    diagnosed = resume and (out / "diagnosis" / "diagnose.html").is_file()  # written last
    bundle = None
    if not diagnosed or cost_matrix is not None or cfg.cpcc_target is not None:
        bundle = load_data(cfg.replace(cpcc_target=None))  # once: diagnosis + the checks below
    tree = bundle.tree if bundle is not None else None
    check_compare(cfg, list(methods), seeds, cost_matrix, tree=tree)  # every input checked first
    with removed_if_empty_on_failure(out):
        if not resume:
            write_study(out, record)
        return _pilot(cfg, out, methods, seeds, cost_matrix, force, progress, resume, bundle)


def _pilot(cfg: TrainConfig, out: Path, methods: Sequence[str], seeds: int, cost_matrix: str | None,
           force: bool, progress: bool, resume: bool, bundle: Any) -> Path:
    from ..evaluation.diagnose import diagnose

    if bundle is None:  # resumed after the diagnosis was written: reuse it as it stands
        _say(progress, "[pilot] diagnosis written earlier; reusing it")
        diag = read_saved(out / "diagnosis" / "diagnose.json", "recommend",
                          f"delete {out / 'diagnosis'} and rerun with --resume to diagnose again "
                          "(the finished runs are kept)")
    else:
        _say(progress, "[pilot] diagnosis")
        diag = diagnose(cfg.data, data_dir=cfg.data_dir, data_options=dict(cfg.data_options),
                        data_seed=cfg.data_seed, tree=cfg.tree, bundle=bundle)
        write_diagnosis(out / "diagnosis", diag)
    resume_compare = resume and (out / "compare" / STUDY_FILE).is_file()  # else it had not begun
    run_compare(cfg, list(methods), seeds, out / "compare", force=force, progress=progress,
                cost_matrix=cost_matrix, resume=resume_compare, tree=bundle.tree if bundle else None)
    summary = json.loads((out / "compare" / "summary.json").read_text(encoding="utf-8"))
    aggregate = summary.get("aggregate") or aggregate_runs(summary["runs"])
    verdicts = summary.get("verdicts") or verdicts_of(summary["runs"])
    ot_rows = summary.get("ot_verdicts")
    ot_rows = ot_verdicts_of(summary["runs"]) if ot_rows is None else ot_rows
    rec = recommendation(diag, aggregate, verdicts, summary["runs"], ot_rows)
    costs = cost_matrix or "tree distance (no --cost-matrix given)"
    flat_ce_run = out / "compare" / BASELINE / f"seed{cfg.seed}"  # named as it works from here
    cost_lines = [f"- {method_name(r)}: cost of the decisions (argmax) "
                  f"{fmt(r.get(COST_METRIC + '_mean'))} (soft expected cost "
                  f"{fmt(r.get('expected_cost_mean'))}), mistake severity "
                  f"{fmt(r.get('mistake_severity_mean'))}, fine accuracy "
                  f"{fmt(r.get('fine_acc_mean'))}" for r in aggregate]
    md = "\n".join([
        "# otcpcc pilot", "",
        f"Data `{cfg.data}`; methods {', '.join(methods)}; {seeds} seeds; {cfg.epochs} epochs, "
        f"batch {cfg.batch_size}, λ {cfg.lam:g}.", "",
        "## Recommendation", "", rec["recommendation"], "",
        "## Does optimal transport matter here?", "", ot_paragraph(diag, ot_rows, features_hint=str(flat_ce_run)), "",
        diagnosis_markdown(diag, figure="diagnosis/diagnose.png", level=2,
                           heading="Input features, before training: the diagnosis says"),
        "## Comparison (compare/report.html has the figures)", "", markdown_tables(aggregate), "",
        "### Paired verdicts against flat CE", "", *_verdict_table(verdicts), "",
        f"## Cost of mistakes (cost matrix: {costs})", "",
        "Cost of the decisions (argmax) = mean over test samples of C[true, argmax prediction] "
        "(what the verdicts use); soft expected cost = the same averaged over the predicted "
        "distribution.", "", *cost_lines, ""])
    atomic_write_text(out / "report.md", md)
    body = markdown_to_html_body(md, {"diagnosis/diagnose.png": out / "diagnosis" / "diagnose.png"})
    atomic_write_text(out / "report.html", html_page("otcpcc pilot", body))
    result = {"diagnosis": {k: diag[k] for k in ("mean_components", "frac_multimodal",
                                                 "rank_agreement_l2_emd", "cpcc_l2", "cpcc_emd",
                                                 "recommend", "reasons")},
              "methods": list(methods), "seeds": seeds, "verdicts": verdicts,
              **rec, **ot_answer(diag, ot_rows)}
    atomic_write_text(out / "pilot.json", json.dumps(result, indent=2) + "\n")
    _say(progress, f"[pilot] wrote {out / 'report.html'}")
    return out
