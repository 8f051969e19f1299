"""The report in a real headless browser (benchmarks/check_report.py): it fits a 1280 px window and
every image loads; the check itself fails a too-wide table and a broken image.

.ci/run installs chromium and runs ``benchmarks/check_report.py --self-test`` and a real tiny
report unconditionally; this twin skips (with its reason) on a clone without chromium.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "check_report.py"
_spec = importlib.util.spec_from_file_location("check_report", _PATH)
check_report = importlib.util.module_from_spec(_spec)
sys.modules["check_report"] = check_report
_spec.loader.exec_module(check_report)

pytestmark = pytest.mark.skipif(
    not any(shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")),
    reason="chromium not installed (apt-get install -y chromium); .ci/run installs it and runs "
           "benchmarks/check_report.py unconditionally")


def test_problems_from_measurements():
    ok = {"clientWidth": 1280, "innerWidth": 1280, "scrollWidth": 1280, "images": 2, "broken": [],
          "wide": []}
    assert check_report.problems(ok) == []
    assert check_report.problems({**ok, "scrollWidth": 1281}) == [
        "horizontal scroll: content 1281 px wide in a 1280 px window"]
    assert check_report.problems({**ok, "broken": ["heatmaps"]}) == [
        "image not loaded: heatmaps"]


def test_widest_report_fits_and_the_check_fails_bad_pages(tmp_path):
    good = check_report._render(check_report._hand_made_summary(), tmp_path / "good")
    m = check_report.measure(good)
    assert m["clientWidth"] == 1280 and m["scrollWidth"] <= 1280 and m["images"] == 1
    assert check_report.problems(m) == []
    wide = check_report.check(check_report.too_wide_report(tmp_path / "bad"))
    assert wide[0].startswith("horizontal scroll: content") and "too wide: table" in wide[1]
    assert check_report.check(check_report.broken_image_report(tmp_path / "bad")) == [
        "image not loaded: broken"]
    # the same report fails in a window narrower than its tables
    assert check_report.check(good, width=500)[0].startswith("horizontal scroll")
