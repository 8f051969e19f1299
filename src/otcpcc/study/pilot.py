"""``otcpcc pilot``: diagnose, compare the candidates on a small budget, recommend one.

``run_pilot(cfg, out)``:

1. :func:`otcpcc.evaluation.diagnose.diagnose` on the input features of ``cfg.data`` →
   ``out/diagnosis/`` (diagnose.json/.md/.html/.png);
2. :func:`otcpcc.study.compare.run_compare` of ``PILOT_METHODS`` for ``seeds`` seeds →
   ``out/compare/`` (summary.json, its report, one run directory per method and seed);
3. ``out/report.md`` / ``out/report.html`` / ``out/pilot.json``: the diagnosis, the comparison
   table, the paired verdicts against flat CE (``summary.json``'s ``verdicts`` when compare writes
   them, else recomputed by :func:`otcpcc.study.verdict.verdicts`), the cost of mistakes under the cost matrix, and the
   closing recommendation (:func:`closing_recommendation`).

To add a method (e.g. the hierarchy-aware baseline ``hxe`` once compare knows it), add its name to
``PILOT_METHODS``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..runs.config import TrainConfig
from .compare import _say, check_compare, removed_if_empty_on_failure, run_compare
from .diagnosis_report import diagnosis_markdown, html_page, markdown_to_html_body, write_diagnosis
from .pilot_budget import PILOT_METHODS, PILOT_SEEDS
from .report import markdown_tables
from .resume import STUDY_FILE, open_study, read_saved, study_record, write_study
from .sentences import ot_sentences
from .tables import aggregate_runs, fmt
from .verdict import verdicts as verdicts_of

COST_METRIC = "expected_cost_argmax"  # the cost of the model's decisions (argmax), per sample


def _method(row: Mapping[str, Any]) -> str:
    return str(row.get("method", row.get("distance")))


def closing_recommendation(diagnosis: Mapping[str, Any], aggregate: Sequence[Mapping[str, Any]],
                           verdicts: Sequence[Mapping[str, Any]]) -> str:
    """One paragraph. A method is *supported* when its decision-cost verdict (``COST_METRIC``) against flat CE is
    ``better`` and its fine-accuracy verdict is not ``worse``. Among supported methods, an OT one
    (fastft, emd, …) is preferred only when the diagnosis says ``ot`` and its mean expected cost
    is lower than l2-CPCC's; otherwise the cheapest supported one. None supported: flat CE."""
    calls = {(v["method"], v["metric"]): v for v in verdicts}
    cost = {str(r.get("method", r["distance"])): r.get(f"{COST_METRIC}_mean") for r in aggregate}
    supported = [m for m in cost if m != "none"
                 and calls.get((m, COST_METRIC), {}).get("call") == "better"
                 and calls.get((m, "fine_acc"), {}).get("call") != "worse"]
    diag = (f"the diagnosis says {diagnosis['recommend']} (CPCC l2 {fmt(diagnosis['cpcc_l2'], 2)}"
            f" vs emd {fmt(diagnosis['cpcc_emd'], 2)}, Spearman "
            f"{fmt(diagnosis['rank_agreement_l2_emd'], 2)})")
    if not supported:
        return (f"Use flat cross-entropy for now: no candidate lowered the expected cost of "
                f"mistakes beyond seed noise on this budget; {diag}. A longer pilot (more "
                f"epochs, more seeds) may still separate them.")
    ot = [m for m in supported if m not in ("l2", "hxe", "soft")]
    pick = next((m for m in supported if m == "l2"), supported[0])
    if diagnosis["recommend"] == "ot" and ot:
        best_ot = min(ot, key=lambda m: cost[m] if cost[m] is not None else math.inf)
        if pick != "l2" or (cost[best_ot] or math.inf) < (cost["l2"] or math.inf):
            pick = best_ot
    v = calls[(pick, COST_METRIC)]
    return (f"Use {pick}: expected cost {fmt(cost.get('none'), 3)} → {fmt(cost[pick], 3)} "
            f"(paired difference {fmt(v['diff_mean'], 3)}, 95% CI [{fmt(v['ci_low'], 3)}, "
            f"{fmt(v['ci_high'], 3)}]); {diag}.")


def _verdict_table(verdicts: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["| method | metric | difference vs flat CE | 95% CI | call |", "|---|---|---|---|---|"]
    lines += [f"| {v['method']} | {v['metric']} | {fmt(v['diff_mean'])} | [{fmt(v['ci_low'])}, "
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
    closing = closing_recommendation(diag, aggregate, verdicts)
    costs = cost_matrix or "tree distance (no --cost-matrix given)"
    cost_lines = [f"- {_method(r)}: cost of the decisions {fmt(r.get(COST_METRIC + '_mean'))} "
                  f"(soft expected cost {fmt(r.get('expected_cost_mean'))}), mistake "
                  f"severity {fmt(r.get('mistake_severity_mean'))}, fine accuracy "
                  f"{fmt(r.get('fine_acc_mean'))}" for r in aggregate]
    md = "\n".join([
        "# otcpcc pilot", "",
        f"Data `{cfg.data}`; methods {', '.join(methods)}; {seeds} seeds; {cfg.epochs} epochs, "
        f"batch {cfg.batch_size}, λ {cfg.lam:g}.", "",
        "## Recommendation", "", closing, "",
        diagnosis_markdown(diag, figure="diagnosis/diagnose.png", level=2),
        "## Comparison (compare/report.html has the figures)", "", markdown_tables(aggregate), "",
        "### Paired verdicts against flat CE", "", *_verdict_table(verdicts), "",
        f"## Cost of mistakes (cost matrix: {costs})", "",
        "Cost of the decisions = mean over test samples of C[true, argmax prediction] (what the "
        "verdicts use); soft expected cost = the same averaged over the predicted distribution.",
        "", *cost_lines, "", *[f"- {line}" for line in ot_sentences(summary.get("ot_verdicts"))],
        ""])
    (out / "report.md").write_text(md, encoding="utf-8")
    body = markdown_to_html_body(md, {"diagnosis/diagnose.png": out / "diagnosis" / "diagnose.png"})
    (out / "report.html").write_text(html_page("otcpcc pilot", body), encoding="utf-8")
    result = {"diagnosis": {k: diag[k] for k in ("mean_components", "frac_multimodal",
                                                 "rank_agreement_l2_emd", "cpcc_l2", "cpcc_emd",
                                                 "recommend", "reasons")},
              "methods": list(methods), "seeds": seeds, "verdicts": verdicts,
              "recommendation": closing}
    (out / "pilot.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    _say(progress, f"[pilot] wrote {out / 'report.html'}")
    return out
