"""The HTML report: self-contained, and every plot actually draws in a headless browser.

The browser check needs Debian's ``chromium`` package (``make test`` installs it). Without it
the test fails with that instruction instead of skipping: a report nobody saw render is not
tested.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import gridrl
from gridrl.cli import app
from gridrl.compare import CompareConfig, parse_controllers, run_compare
from gridrl.report import ReportError, Section, build_report, fig_loss

runner = CliRunner()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A two-controller comparison on one sunny ieee33 test day."""
    feeder = gridrl.load_feeder("ieee33")
    prof = feeder.profiles
    days = feeder.days("test")
    day = int(days[int(np.argmax([prof.pv_p_mw[prof.day_steps(d)].sum() for d in days]))])
    out = tmp_path_factory.mktemp("rep") / "run"
    cfg = CompareConfig(feeders=("ieee33",), controllers=parse_controllers("none,droop:ieee1547-a"), days=(day,))
    run_compare(cfg, out=out, progress=False, report=False)
    return out


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("headless Chromium is needed to check that reports render: install Debian's package "
                    "(apt-get install -y chromium); `make test` does this", pytrace=False)
    return exe


def _dump_dom(path: Path, profile: Path) -> str:
    """The page's DOM after its scripts ran, from headless Chromium with networking off."""
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-extensions", "--disable-dev-shm-usage", "--proxy-server=127.0.0.1:9",
           f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom", path.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_report_is_self_contained(results):
    html = build_report(results)
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"<script[^>]+src=", html), "no external scripts: the report must open offline"
    assert "cdn.plot.ly" not in html.split("</script>", 1)[1]  # beyond plotly.js itself, no CDN link
    assert html.count("Plotly.newPlot") == 4
    for text in ("Summary", "Feeder ieee33", "droop-ieee1547-a", "loss MWh", "gap to opf %", "voltages of the monitored buses"):
        assert text in html


def test_report_renders_in_headless_chromium(results, tmp_path):
    page = tmp_path / "report.html"
    r = runner.invoke(app, ["report", str(results), "--out", str(page)])
    assert r.exit_code == 0, r.output
    dom = _dump_dom(page, tmp_path / "profile")
    figures = re.findall(r'<div id="(fig\d+)" class="([^"]*)"', dom)
    assert len(figures) == 4, "every figure's div is in the page"
    assert all("js-plotly-plot" in cls for _, cls in figures), "plotly drew every figure"
    assert dom.count('class="main-svg"') >= 2 * len(figures)
    assert len(re.findall(r'class="hm"', dom)) == 2, "one heat map per controller"
    assert len(re.findall(r'class="point"', dom)) >= 4, "bars drawn"
    assert len(re.findall(r'class="js-line"', dom)) >= 6, "envelope and loss lines drawn"
    assert "<table class=\"summary\">" in dom


def test_report_sections_can_be_added(results):
    import pandas as pd

    steps = pd.DataFrame({"controller": ["dmpo"] * 3, "hour": [0.0, 0.25, 0.5], "loss_mw": [0.1, 0.2, 0.1]})
    html = build_report(results, extra_sections=[Section("Training", (fig_loss(steps, title="curve"),), "later")])
    assert "<h2>Training</h2>" in html and html.count("Plotly.newPlot") == 5


def test_report_of_a_folder_without_results(tmp_path):
    with pytest.raises(ReportError, match="holds no results"):
        build_report(tmp_path)
    r = runner.invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 2
    assert r.stderr.strip().startswith("error: ") and "holds no results" in r.stderr
    assert not (tmp_path / "report.html").exists()
