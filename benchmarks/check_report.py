"""Check a comparison report in a real headless browser: it fits a 1280 px window, every image loads.

    python benchmarks/check_report.py REPORT.html     # check one report
    python benchmarks/check_report.py                 # make a small real report (tiny compare), check it
    python benchmarks/check_report.py --self-test     # the check itself: a report with 8 methods and
                                                      # every metric passes, a too-wide table and a
                                                      # broken image fail

How: a copy of the HTML gets a script that, on ``load``, measures the page and writes the numbers
into the DOM (``<pre id="otcpcc-check">{json}</pre>``); Debian's ``chromium`` renders it headless at
``--window-size=1280,900`` and prints the DOM (``--dump-dom``), from which the numbers are read.
Passes when the document's ``scrollWidth`` ≤ its ``clientWidth`` (the viewport less any vertical
scroll bar: no horizontal scroll), no table, figure or image reaches past the right edge, and every
``<img>`` has loaded with ``naturalWidth > 0``. Exit status 0 pass, 1 fail, 2 cannot check
(chromium missing: ``apt-get install -y chromium``).
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

WIDTH, HEIGHT = 1280, 900
_MARK = "otcpcc-check"
_PROBE = """<script>
window.addEventListener("load", function () {
  var de = document.documentElement, w = de.clientWidth;
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                   .map(function (i) { return i.alt || i.src.slice(0, 60); });
  var wide = Array.prototype.slice.call(document.querySelectorAll("table, figure, img, pre, dl"))
      .filter(function (e) { return e.getBoundingClientRect().right > w + 0.5; })
      .map(function (e) { return e.tagName.toLowerCase() + " right edge "
                                 + Math.round(e.getBoundingClientRect().right); });
  var r = {clientWidth: w, innerWidth: window.innerWidth,
           scrollWidth: Math.max(de.scrollWidth, document.body ? document.body.scrollWidth : 0),
           images: imgs.length, broken: broken, wide: wide};
  var pre = document.createElement("pre");
  pre.id = "MARK";
  pre.textContent = JSON.stringify(r);
  document.body.appendChild(pre);
});
</script>
""".replace("MARK", _MARK)


class CannotCheck(RuntimeError):
    """No browser to check with."""


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise CannotCheck("chromium not found; install it: apt-get update && apt-get install -y "
                      "chromium")


def measure(report: str | Path, width: int = WIDTH, height: int = HEIGHT,
            timeout: float = 120.0) -> dict[str, Any]:
    """Render ``report`` headless at ``width`` × ``height`` and return the page's measurements:
    ``clientWidth``, ``innerWidth``, ``scrollWidth``, ``images`` (count), ``broken`` (images not
    loaded), ``wide`` (elements reaching past the right edge)."""
    report = Path(report).resolve()
    text = report.read_text(encoding="utf-8")
    probed = text.replace("</body>", _PROBE + "</body>") if "</body>" in text else text + _PROBE
    browser = find_chromium()
    with tempfile.TemporaryDirectory(prefix="otcpcc-check-") as tmp:
        copy = report.parent / f".{report.stem}.check.html"  # beside it: relative images resolve
        copy.write_text(probed, encoding="utf-8")
        try:
            res = subprocess.run(
                [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--user-data-dir={tmp}", f"--window-size={width},{height}",
                 "--hide-scrollbars=false", "--virtual-time-budget=10000", "--dump-dom",
                 copy.as_uri()],
                capture_output=True, text=True, timeout=timeout, check=False)
        finally:
            copy.unlink(missing_ok=True)
    m = re.search(rf'<pre id="{_MARK}">(.*?)</pre>', res.stdout, re.S)
    if not m:
        raise CannotCheck(f"chromium printed no measurements (exit {res.returncode}): "
                          f"{res.stderr.strip()[-500:]}")
    return json.loads(html.unescape(m.group(1)))


def problems(m: dict[str, Any]) -> list[str]:
    """What is wrong with a page, from :func:`measure`'s numbers (empty: it passes)."""
    out = []
    if m["scrollWidth"] > m["clientWidth"]:
        out.append(f"horizontal scroll: content {m['scrollWidth']} px wide in a "
                   f"{m['clientWidth']} px window")
    out += [f"too wide: {w}" for w in m["wide"]]
    out += [f"image not loaded: {b}" for b in m["broken"]]
    return out


def check(report: str | Path, width: int = WIDTH) -> list[str]:
    """Problems of ``report`` at ``width`` px (empty list: it fits and every image loads)."""
    return problems(measure(report, width))


# ---------------------------------------------------------------------------- reports to check
def _hand_made_summary(n_methods: int = 8, seeds: int = 3) -> dict[str, Any]:
    """A summary with ``n_methods`` methods, every metric of a comparison (argmax and CRM), long
    names, verdicts and a context: the widest report a comparison writes."""
    names = ["none", "hxe", "soft", "l2", "fastft", "emd", "sinkhorn", "swd"][:n_methods]
    runs = []
    for i, name in enumerate(names):
        for s in range(seeds):
            v = 0.01 * i + 0.003 * s
            runs.append({"method": name, "distance": name if i >= 3 else "none", "seed": s,
                         "lam": 1.0, "fine_acc": 0.7 - v, "fine_acc_crm": 0.69 - v,
                         "fine_top2": 0.85, "coarse_acc": 0.88 + v, "test_cpcc_l2": 0.6 + v,
                         "test_cpcc_emd": 0.5 + v, "test_cpcc_own": 0.7, "map_fine": 0.6,
                         "map_coarse": 0.7 + v, "mistake_severity": 2.9 - v,
                         "mistake_severity_crm": 2.7 - v, "hier_dist@1": 0.8, "hier_dist@5": 2.5,
                         "expected_cost": 0.9 - v, "expected_cost_crm": 0.85 - v,
                         "multimodality_mean_components": 3.5, "multimodality_frac_multimodal": 1.0,
                         "cpcc_subsample_emd_max_per_class": 100, "train_time_s": 12.5})
    verdicts = [{"method": n, "metric": m, "baseline": "none", "diff_mean": -0.01,
                 "ci_low": -0.02, "ci_high": 0.001, "call": "within noise"}
                for n in names[1:] for m in ("fine_acc", "expected_cost", "expected_cost_crm",
                                             "mistake_severity", "test_cpcc_emd", "map_coarse")]
    context = {"data": "synthetic", "data_options": {"branching": [4, 5], "noise": 0.8,
                                                     "a_rather_long_option_name": "x" * 120},
               "num_classes": 20, "tree_depth": 2, "levels": ["coarse"], "backbone": "mlp",
               "lam": 1.0, "epochs": 15, "batch_size": 128, "optimizer": "sgd", "lr": 0.1,
               "cost_matrix": "/a/very/long/path/" + "to/" * 30 + "costs.csv",
               "otcpcc": "0.1.0", "torch": "2.x", "device": "cpu", "methods": names,
               "seeds": list(range(seeds))}
    return {"context": context, "runs": runs, "verdicts": verdicts}


def _render(summary: dict[str, Any], out: Path) -> Path:
    from otcpcc.study.report import render_report

    render_report(out, summary, {})
    return out / "report.html"


def too_wide_report(out: Path) -> Path:
    """A page with a 40-column table of unbreakable cells: must fail the check."""
    out.mkdir(parents=True, exist_ok=True)
    cells = "".join(f"<td style='white-space:nowrap'>column_{i}_0.123±0.004</td>" for i in range(40))
    path = out / "wide.html"
    path.write_text(f"<!DOCTYPE html><html><body><table><tr>{cells}</tr></table></body></html>")
    return path


def broken_image_report(out: Path) -> Path:
    """A page whose image does not decode: must fail the check."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "broken.html"
    path.write_text("<!DOCTYPE html><html><body><p>ok</p>"
                    "<img alt='broken' src='data:image/png;base64,AAAA'></body></html>")
    return path


def tiny_compare(out: Path) -> Path:
    """A real, small comparison (two methods × two seeds, one epoch on a tiny synthetic set)."""
    from otcpcc.study.compare import run_compare

    cfg = {"data": "synthetic", "data_options": {"branching": [2, 3], "train_per_class": 12,
                                                 "test_per_class": 6},
           "epochs": 1, "batch_size": 16, "model_options": {"hidden": [32, 16]}, "device": "cpu"}
    run_compare(cfg, ["none", "fastft"], seeds=2, out=out, progress=False, force=True)
    return out / "report.html"


def self_test(tmp: Path) -> list[str]:
    """Failures of the check itself (empty: it judges all three pages right)."""
    fails = []
    good = check(_render(_hand_made_summary(), tmp / "good"))
    if good:
        fails.append(f"the widest hand-made report should pass, got {good}")
    wide = check(too_wide_report(tmp / "bad"))
    if not any(p.startswith("horizontal scroll") for p in wide):
        fails.append(f"a 40-column table should fail with horizontal scroll, got {wide}")
    broken = check(broken_image_report(tmp / "bad"))
    if broken != ["image not loaded: broken"]:
        fails.append(f"a broken image should fail, got {broken}")
    return fails


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", nargs="?", help="report.html to check (default: make a tiny one)")
    ap.add_argument("--self-test", action="store_true", help="check the check itself")
    ap.add_argument("--width", type=int, default=WIDTH, help=f"window width (default {WIDTH})")
    args = ap.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="otcpcc-report-") as tmp:
            if args.self_test:
                fails = self_test(Path(tmp))
                for f in fails:
                    print(f"check_report self-test: FAIL: {f}")
                if not fails:
                    print("check_report self-test: ok (wide report passes, too-wide table and "
                          "broken image fail)")
                return 1 if fails else 0
            path = Path(args.report) if args.report else tiny_compare(Path(tmp) / "cmp")
            m = measure(path, args.width)
            bad = problems(m)
            for p in bad:
                print(f"check_report: FAIL: {path.name}: {p}")
            if not bad:
                print(f"check_report: ok: {path.name} fits {m['clientWidth']} px "
                      f"(content {m['scrollWidth']} px), {m['images']} images loaded")
            return 1 if bad else 0
    except CannotCheck as e:
        print(f"check_report: cannot check: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
