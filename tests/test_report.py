"""The HTML report: self-contained, every plot actually draws in a headless browser, and each
figure a grid engineer asks for is there, drawn, non-empty and with units on its axes.

The browser checks need Debian's ``chromium`` package (``make test`` installs it). Without it
the tests fail with that instruction instead of skipping: a report nobody saw render is not
tested. Screenshots are decoded with Pillow (a test dependency).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from typer.testing import CliRunner

import gridrl
from gridrl.cli import app
from gridrl.compare import CompareConfig, parse_controllers, run_compare
from gridrl.grid.distance import electrical_distance
from gridrl.grid.plot import feeder_map, zone_colors
from gridrl.plots import controller_colors
from gridrl.report import ReportError, Section, build_report, fig_loss, results_sections

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
CONTROLLERS = ("none", "droop-ieee1547-a")
N_FIGURES = 10  # per feeder: bars, day distributions, profile, envelope, losses, PV/load/q, agent q, curves,
# heat maps, map


@pytest.fixture(scope="module")
def results(tmp_path_factory, sunny_days):
    """No control and droop on ieee33's sunniest test day and one cloudier one."""
    feeder = gridrl.load_feeder("ieee33")
    prof = feeder.profiles
    days = feeder.days("test")
    dull = int(days[int(np.argmin([prof.pv_p_mw[prof.day_steps(d)].sum() for d in days]))])
    out = tmp_path_factory.mktemp("rep") / "run"
    cfg = CompareConfig(feeders=("ieee33",), controllers=parse_controllers("none,droop:ieee1547-a"),
                        days=(sunny_days[0], dull))
    run_compare(cfg, out=out, progress=False)
    return out


@pytest.fixture(scope="module")
def figures(results) -> dict[str, go.Figure]:
    """The figures of the ieee33 section, by a short name."""
    sec = next(s for s in results_sections(results) if s.title == "Feeder ieee33")
    figs = [p for p in sec.parts if isinstance(p, go.Figure)]
    assert len(figs) == N_FIGURES
    names = ["bars", "days", "profile", "envelope", "losses", "inverters", "agent_q", "curves", "heatmaps", "map"]
    return dict(zip(names, figs))


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("headless Chromium is needed to check that reports render: install Debian's package "
                    "(apt-get install -y chromium); `make test` does this", pytrace=False)
    return exe


def _chromium_cmd(profile: Path) -> list[str]:
    return [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-extensions", "--disable-dev-shm-usage", "--proxy-server=127.0.0.1:9", "--hide-scrollbars",
            f"--user-data-dir={profile}", "--virtual-time-budget=20000"]


def _dump_dom(path: Path, profile: Path) -> str:
    """The page's DOM after its scripts ran, from headless Chromium with networking off."""
    done = subprocess.run(_chromium_cmd(profile) + ["--dump-dom", path.resolve().as_uri()], capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_report_is_self_contained(results):
    html = build_report(results)
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"<script[^>]+src=", html), "no external scripts: the report must open offline"
    assert "cdn.plot.ly" not in html.split("</script>", 1)[1]  # beyond plotly.js itself, no CDN link
    assert html.count("Plotly.newPlot") == N_FIGURES
    for text in ("Summary", "Feeder ieee33", "droop-ieee1547-a", "loss MWh", "gap to opf %",
                 "voltages of the monitored buses", "How it varies across days", "What the inverters did",
                 "Where the agents are", "Provenance", "the evaluated day with the most PV energy"):
        assert text in html, text


def test_report_renders_in_headless_chromium(results, tmp_path):
    page = tmp_path / "report.html"
    r = runner.invoke(app, ["report", str(results), "--out", str(page)])
    assert r.exit_code == 0, r.output
    dom = _dump_dom(page, tmp_path / "profile")
    figures = re.findall(r'<div id="(fig\d+)" class="([^"]*)"', dom)
    assert len(figures) == N_FIGURES, "every figure's div is in the page"
    assert all("js-plotly-plot" in cls for _, cls in figures), "plotly drew every figure"
    assert dom.count('class="main-svg"') >= 2 * len(figures)
    assert len(re.findall(r'class="hm"', dom)) == 4, "voltage and reactive power heat maps, one per controller"
    assert len(re.findall(r'class="point"', dom)) >= 4, "bars drawn"
    assert len(re.findall(r'class="js-line"', dom)) >= 6, "envelope and loss lines drawn"
    assert "<table class=\"summary" in dom and '<dl class="glossary">' in dom
    # ieee33's 33 buses are few enough to be labelled on the map without zooming
    assert len(re.findall(r'class="textpoint"', dom)) >= 33, "bus labels drawn"
    assert len(re.findall(r'class="bartext', dom)) == 4, "every bar labelled with its value, zeros too"


# --------------------------------------------------------------------------------------------
# the figures, one by one
# --------------------------------------------------------------------------------------------

_CATEGORICAL = {"controller", "agent", "bus"}  # axes of names carry no unit
_TEXT_POSITIONS = [f"{v} {h}" for v in ("top", "middle", "bottom") for h in ("left", "center", "right")]


def _axis_titles(fig: go.Figure) -> list[str]:
    """Titles of the axes that carry data (a hidden axis, as on a map, needs none; a panel sharing
    another's axis, tick labels hidden, is covered by that axis's title)."""
    titles = []
    for name in dir(fig.layout):
        if re.fullmatch(r"[xy]axis\d*", name):
            ax = fig.layout[name]
            if ax.visible is not False and not (ax.matches and ax.showticklabels is False):
                titles.append((ax.title.text or "") if ax.title else "")
    return titles


def test_every_axis_is_titled_with_its_unit(figures):
    for name, fig in figures.items():
        for title in _axis_titles(fig):
            assert title, f"{name}: an axis has no title"
            assert title in _CATEGORICAL or re.search(r"\([^)]*\)", title), f"{name}: {title!r} names no unit"


@pytest.fixture(scope="module")
def screenshots(figures, tmp_path_factory) -> dict[str, np.ndarray]:
    """Each figure drawn by headless Chromium, as an RGB array: one page with every figure at a
    known place, one screenshot, cut into pieces."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("shots")
    width, top, divs, boxes = 1100, 0, [], {}
    for k, (name, fig) in enumerate(figures.items()):
        height = int(fig.layout.height or 450)
        fig = go.Figure(fig).update_layout(width=width, height=height)
        divs.append(f'<div style="position:absolute;left:0;top:{top}px">'
                    + fig.to_html(full_html=False, include_plotlyjs=k == 0, div_id=f"s{k}",
                                  config={"displayModeBar": False, "staticPlot": True}) + "</div>")
        boxes[name] = (top, top + height)
        top += height
    page = folder / "figures.html"
    page.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body style='margin:0'>"
                    + "".join(divs) + "</body></html>", encoding="utf-8")
    png = folder / "figures.png"
    done = subprocess.run(_chromium_cmd(folder / "profile") + [f"--window-size={width},{top}",
                                                               f"--screenshot={png}", page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and png.exists(), done.stderr[-2000:]
    image = np.asarray(Image.open(png).convert("RGB"))
    return {name: image[a:b] for name, (a, b) in boxes.items()}


def _has_colour(img: np.ndarray, hex_colour: str, *, min_pixels: int = 30, tol: int = 40) -> bool:
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(img.astype(int) - rgb).max(axis=2) <= tol).sum()) >= min_pixels


@pytest.mark.parametrize("name", ["bars", "days", "profile", "inverters", "agent_q", "curves", "map"])
def test_new_figure_is_drawn_and_not_empty(screenshots, name):
    img = screenshots[name]
    background = (img.min(axis=2) >= 235)
    sparse = 0.995 if name == "map" else 0.97  # a map is lines and dots on white
    assert background.mean() < sparse, f"{name}: the screenshot is (nearly) blank"
    colours = len(np.unique(img.reshape(-1, 3)[::7], axis=0))
    assert colours > 40, f"{name}: only {colours} colours drawn"
    c = controller_colors(CONTROLLERS)
    expected = {"bars": [c["none"], c["droop-ieee1547-a"]], "days": [c["none"], c["droop-ieee1547-a"]],
                "profile": [c["none"], c["droop-ieee1547-a"]], "inverters": ["#e6a000", c["droop-ieee1547-a"]],
                "agent_q": [], "curves": [c["droop-ieee1547-a"]], "map": ["#000000"]}[name]
    for colour in expected:
        assert _has_colour(img, colour), f"{name}: nothing drawn in {colour}"
    if name == "agent_q":  # droop absorbs on the sunny day: blue cells in its heat map
        assert (img[..., 2].astype(int) - img[..., 0] > 60).sum() > 200


# --------------------------------------------------------------------------------------------
# what the figures show is right
# --------------------------------------------------------------------------------------------


def test_voltage_profile_is_drawn_at_the_days_extremes(figures, results):
    steps = pd.concat(pd.read_parquet(p) for p in results.glob("cells/ieee33/none/seed0/steps.parquet"))
    day = figures["profile"].layout.title.text.split("day ")[1].split(" ")[0]
    s = steps[steps["day"] == int(day)]
    hhmm = lambda h: f"{int(round(h * 60)) // 60:02d}:{int(round(h * 60)) % 60:02d}"  # noqa: E731
    captions = [a.text for a in figures["profile"].layout.annotations]
    assert f"highest voltage (none): {hhmm(s.loc[s['v_max_pu'].idxmax(), 'hour'])}" in captions
    assert f"lowest voltage (none): {hhmm(s.loc[s['v_min_pu'].idxmin(), 'hour'])}" in captions
    # the uncontrolled line reaches the day's highest voltage at the far end of the feeder
    none = [t for t in figures["profile"].data if t.name == "none"][0]
    assert max(y for y in none.y if y is not None) == pytest.approx(s["v_max_pu"].max(), abs=1e-6)


def test_voltage_profile_is_one_trace_per_controller_drawing_each_branch_once(figures, tmp_path):
    from gridrl.plots import feeder_paths

    fig = figures["profile"]
    assert [t.name for t in fig.data] == [c for _ in range(2) for c in CONTROLLERS], "per panel, one per controller"
    assert [t.name for t in fig.data if t.showlegend] == list(CONTROLLERS)
    d = electrical_distance(gridrl.load_feeder("ieee33")).table
    paths = feeder_paths(d["parent"], d["z_ohm"], set(d.index))
    assert len(paths) == 4, "ieee33: the main feeder and three laterals (ends at buses 18, 22, 25, 33)"
    branches = [(a, b) for path in paths for a, b in zip(path, path[1:])]
    assert sorted(branches) == sorted((int(p), int(b)) for b, p in d["parent"].items() if p >= 0), "each once"
    for trace in fig.data:
        assert sum(x is None for x in trace.x) == len(paths) - 1, "laterals joined, with a gap between them"
        assert sum(s > 0 for s in trace.marker.size) == 33, "one marker per bus"
    layout = _browser_layout(fig, tmp_path)
    legend = [t["text"] for t in layout["texts"] if "legendtext" in t["where"]]
    assert legend == list(CONTROLLERS)
    drawn = [tr for tr in layout["traces"] if tr["points"]]
    assert len(drawn) == 2 * len(CONTROLLERS) and all(len(tr["points"]) >= 33 for tr in drawn)


def test_bars_show_their_values_even_zero(figures):
    viol = figures["bars"].data[1]
    assert list(viol.text)[1] == "0" or float(viol.y[1]) > 0
    assert all(t != "" for t in viol.text)


def test_electrical_distance_sums_the_line_impedances():
    feeder = gridrl.load_feeder("ieee33")
    d = electrical_distance(feeder)
    net = feeder.net
    assert d.v_ref_kv == pytest.approx(12.66) and d.table.loc[0, "z_ohm"] == 0
    # MAPDN's bus 18 (index 17) at the end of the main feeder: the lines 0-1-…-17 in series
    z = r = 0.0
    bus = 17
    while bus != 0:
        line = net.line[(net.line.to_bus == bus) & net.line.in_service].iloc[0]
        zl = complex(line.r_ohm_per_km, line.x_ohm_per_km) * line.length_km / line.parallel
        z, r, bus = z + abs(zl), r + zl.real, int(line.from_bus)
    assert d.table.loc[17, "z_ohm"] == pytest.approx(z, rel=1e-9)
    assert d.table.loc[17, "r_ohm"] == pytest.approx(r, rel=1e-9)
    t = d.table
    parent = t["parent"][t["parent"] >= 0]
    assert (t.loc[parent.index, "z_ohm"].to_numpy() > t.loc[parent.to_numpy(), "z_ohm"].to_numpy()).all()


def test_electrical_distance_across_a_transformer():
    """mv-rural: a 110/20 kV substation; distances are referred to 20 kV and start at the slack."""
    feeder = gridrl.load_feeder("mv-rural")
    d = electrical_distance(feeder)
    assert d.v_ref_kv == pytest.approx(20.0)
    net = feeder.net
    energized = feeder.bus_zone.index[feeder.bus_zone.notna()]
    assert set(energized) <= set(d.table.index)
    lv = net.trafo.lv_bus.iloc[0]
    assert 0 < d.table.loc[lv, "z_ohm"] < d.table["z_ohm"].max()


@pytest.mark.parametrize("name", ["ieee141", "mv-rural"])
def test_neighbouring_zones_never_share_a_colour(name):
    feeder = gridrl.load_feeder(name)
    colour = zone_colors(feeder)
    adj = np.asarray(feeder.adjacency, dtype=bool)
    agents = feeder.agents
    clashes = [(agents[i], agents[j]) for i, j in zip(*np.nonzero(adj)) if colour[agents[i]] == colour[agents[j]]]
    assert not clashes
    counts = pd.Series(colour).value_counts()
    assert len(counts) >= min(len(agents), 8), "the palette is used, not three colours for everything"
    assert counts.max() - counts.min() <= max(2, len(agents) // len(counts)), "colours used evenly"


def test_map_draws_the_agent_graph_and_labels_on_zoom():
    feeder = gridrl.load_feeder("ieee141")
    fig = feeder_map(feeder, max_labels=50)
    graph = next(t for t in fig.data if t.name == "agent graph (neighbours)")
    assert sum(x is None for x in graph.x) == int(np.asarray(feeder.adjacency).sum() // 2)
    meta = fig.layout.meta["zoom_labels"]
    assert meta["max"] == 50 and len(meta["text"]) == len(meta["x"]) == 141
    assert fig.data[meta["trace"]].mode == "markers+text"
    assert len(meta["position"]) == len(meta["size"]) == 141 and set(meta["position"]) <= set(_TEXT_POSITIONS)
    assert sorted(meta["always"]) == meta["always"] and len(meta["always"]) == len(feeder.agents) + 1


def test_map_labels_buses_once_zoomed_in(tmp_path):
    """In the browser: 141 buses are too many to label at full view, so only the agents' buses and
    the substation are; zoomed in on a few, every bus in view is."""
    from gridrl.grid.plot import ZOOM_LABELS_JS, bus_positions

    feeder = gridrl.load_feeder("ieee141")
    fig = feeder_map(feeder, max_labels=40)
    pos = np.array(list(bus_positions(feeder).values()))
    cx, cy = np.median(pos, axis=0)
    span = np.ptp(pos, axis=0) / 12
    zoom = ("var gd = document.getElementById('{plot_id}'); Plotly.relayout(gd, {'xaxis.range': [%f, %f], "
            "'yaxis.range': [%f, %f]});" % (cx - span[0], cx + span[0], cy - span[1], cy + span[1]))
    inside = int(((np.abs(pos[:, 0] - cx) <= span[0]) & (np.abs(pos[:, 1] - cy) <= span[1])).sum())
    assert 0 < inside <= 40
    counts = {}
    for name, script in (("full", ZOOM_LABELS_JS), ("zoomed", ZOOM_LABELS_JS + zoom)):
        page = tmp_path / f"{name}.html"
        fig.write_html(str(page), include_plotlyjs=True, post_script=script)
        counts[name] = len(re.findall(r'class="textpoint"', _dump_dom(page, tmp_path / f"profile-{name}")))
    assert counts == {"full": len(feeder.agents) + 1, "zoomed": inside}


@pytest.mark.parametrize("name", ["ieee33", "ieee141"])
def test_map_labels_cover_no_marker_and_no_other_label(name, tmp_path):
    """At full view in the browser: ieee33 names all its buses, ieee141 its agents' buses and the
    substation; no label sits on another label, on an inverter's star or on the substation."""
    from gridrl.grid.plot import ZOOM_LABELS_JS

    feeder = gridrl.load_feeder(name)
    fig = feeder_map(feeder)
    layout = _browser_layout(fig, tmp_path, width=1000, script=ZOOM_LABELS_JS)
    order = [t.name for t in fig.data]
    traces = dict(zip(order, layout["traces"]))
    labels = traces["bus labels"]["texts"]
    assert len(labels) == (33 if name == "ieee33" else len(feeder.agents) + 1)
    clashes = [(i, j) for i, a in enumerate(labels) for j, b in enumerate(labels[i + 1:], i + 1) if _overlap(a, b)]
    assert not clashes, f"labels on labels: {clashes}"
    symbols = traces["PV inverters (agents)"]["points"] + traces["substation (slack)"]["points"]
    assert len(symbols) == len(feeder.agents) + 1
    covered = [s for s in symbols if any(_overlap(s, lab) for lab in labels)]
    assert not covered, f"{len(covered)} stars or the substation under a label"
    if name == "ieee33":
        dots = traces["buses (colour = agent zone)"]["points"]
        assert not [d for d in dots if any(_overlap(d, lab) for lab in labels)], "a bus under a label"


def test_report_of_an_older_folder_says_what_is_missing(results, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(results, old)
    for f in list(old.glob("cells/*/*/seed*/agents.parquet")) + list(old.glob("cells/*/*/seed*/controller.json")):
        f.unlink()
    (old / "provenance.json").unlink()
    html = build_report(old)
    assert "Per-agent reactive power is not in this folder" in html
    assert "This folder has no <code>provenance.json</code>" in html
    assert html.count("Plotly.newPlot") == N_FIGURES - 2


def test_report_shows_provenance(results):
    html = build_report(results)
    prov = json.loads((results / "provenance.json").read_text())
    assert prov["feeders"]["ieee33"]["spec_hash"] in html
    assert prov["runs"][0]["date_utc"] in html and "Configuration" in html


def test_report_sections_can_be_added(results):
    steps = pd.DataFrame({"controller": ["dmpo"] * 3, "hour": [0.0, 0.25, 0.5], "loss_mw": [0.1, 0.2, 0.1]})
    html = build_report(results, extra_sections=[Section("Training", (fig_loss(steps, title="curve"),), "later")])
    assert "<h2>Training</h2>" in html and html.count("Plotly.newPlot") == N_FIGURES + 1
    assert html.index("<h2>Training</h2>") < html.index("<h2>Provenance</h2>")


def test_report_of_a_folder_without_results(tmp_path):
    with pytest.raises(ReportError, match="holds no results"):
        build_report(tmp_path)
    r = runner.invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 2
    assert r.stderr.strip().startswith("error: ") and "holds no results" in r.stderr
    assert not (tmp_path / "report.html").exists()


# --------------------------------------------------------------------------------------------
# figures that read well: no text on text, readable axes (checked where the browser laid them out)
# --------------------------------------------------------------------------------------------

# Runs in the page after plotly drew the figure: the box of every text and every marker, per
# trace, and every axis's tick labels, as JSON in a <pre id="layout"> that --dump-dom returns.
_MEASURE_JS = """
setTimeout(function () {
  var gd = document.getElementById('{plot_id}');
  function box(el) { var r = el.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; }
  var texts = [];
  gd.querySelectorAll('text').forEach(function (t) {
    var r = t.getBoundingClientRect();
    if (r.width > 0 && t.textContent.trim()) {
      var g = t.closest('g[class]');
      texts.push({text: t.textContent, where: (t.getAttribute('class') || '') + ' ' + (g ? g.getAttribute('class') : ''),
                  box: box(t)});
    }
  });
  var traces = [];
  gd.querySelectorAll('.scatterlayer .trace').forEach(function (tr) {
    var pts = [], txt = [];
    tr.querySelectorAll('path.point').forEach(function (p) { pts.push(box(p)); });
    tr.querySelectorAll('.textpoint text').forEach(function (t) { if (t.textContent) txt.push(box(t)); });
    traces.push({points: pts, texts: txt});
  });
  var ticks = {};
  Object.keys(gd._fullLayout).forEach(function (k) {
    if (/^[xy]axis\\d*$/.test(k)) {
      ticks[k] = Array.from(gd.querySelectorAll('.' + k.replace('axis', '') + 'tick text')).map(function (t) {
        return t.textContent; });
    }
  });
  var pre = document.createElement('pre');
  pre.id = 'layout';
  pre.textContent = JSON.stringify({texts: texts, traces: traces, ticks: ticks});
  document.body.appendChild(pre);
}, 300);
"""


def _browser_layout(fig: go.Figure, folder: Path, *, width: int = 1100, script: str = "") -> dict:
    """Where headless Chromium put a figure's texts, markers and tick labels (see _MEASURE_JS)."""
    import html as html_lib

    folder.mkdir(parents=True, exist_ok=True)
    fig = go.Figure(fig).update_layout(width=width)
    page = folder / "figure.html"
    fig.write_html(str(page), include_plotlyjs=True, config={"displayModeBar": False},
                   post_script=[s for s in (script, _MEASURE_JS) if s])
    dom = _dump_dom(page, folder / "profile")
    m = re.search(r'<pre id="layout">(.*?)</pre>', dom, re.S)
    assert m, "the measuring script ran"
    return json.loads(html_lib.unescape(m.group(1)))


def _overlap(a, b, slack: float = 1.0) -> bool:
    return min(a[2], b[2]) - max(a[0], b[0]) > slack and min(a[3], b[3]) - max(a[1], b[1]) > slack


def _overlapping_texts(layout: dict) -> list[tuple[str, str]]:
    t = layout["texts"]
    return [(a["text"], b["text"]) for i, a in enumerate(t) for b in t[i + 1:] if _overlap(a["box"], b["box"])]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder as `gridrl train` leaves it after a long run that evaluated on the test days
    only at its end (one evaluation point at 301,056 steps), whose validation kept the policy of
    8,192 steps, beside a comparison where three controllers keep every bus in the band."""
    run = tmp_path_factory.mktemp("run") / "ieee33-dmpo"
    (run / "compare").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"feeder": "ieee33", "config": {
        "algo": "dmpo", "steps": 301056, "seed": 0, "num_envs": 32, "eval_split": "test", "eval_days": None,
        "compare_days": None, "validation_days": 20, "learner": {}, "env": {}}}), encoding="utf-8")
    pd.DataFrame({"feeder": "ieee33", "controller": ["none", "droop-ieee1547-b", "droop-tuned", "opf", "dmpo"],
                  "controllable_rate": [0.9489, 0.9999, 1.0, 1.0, 1.0],
                  "energy_loss_mwh": [45.999, 43.064, 39.494, 33.898, 35.59]}).to_csv(run / "compare" / "summary.csv",
                                                                                     index=False)
    rows = []
    for k, steps in enumerate(range(8192, 301057, 8192 * 6)):
        rows += [(k, steps, 10.0 * k, "val/controllable_rate", 1.0), (k, steps, 10.0 * k, "val/energy_loss_mwh", 9.8),
                 (k, steps, 10.0 * k, "val/selected_env_steps", 8192.0),
                 (k, steps, 10.0 * k, "train/episode_return", -40.0 + k), (k, steps, 10.0 * k, "time/env_s", 2.0)]
    rows += [(99, 301056, 990.0, "eval/controllable_rate", 1.0), (99, 301056, 990.0, "eval/energy_loss_mwh", 35.59)]
    pd.DataFrame(rows, columns=["iteration", "env_steps", "wall_s", "tag", "value"]).to_csv(run / "scalars.csv",
                                                                                            index=False)
    return run


@pytest.fixture(scope="module")
def run_figures(run_dir) -> dict[str, go.Figure]:
    from gridrl.training_report import training_sections

    figs = [p for p in training_sections(run_dir)[0].parts if isinstance(p, go.Figure)]
    return {f.layout.title.text.split(":")[0].split(" on ")[0]: f for f in figs}


def test_reference_lines_are_named_in_the_legend_not_piled_on_the_plot(run_figures, tmp_path):
    fig = run_figures["Evaluation"]
    refs = [t for t in fig.data if t.legendgroup and t.legendgroup.startswith("reference ")]
    assert {t.name for t in refs if t.showlegend} == {"none", "droop-ieee1547-b", "droop-tuned", "opf"}
    assert len(refs) == 8, "every reference in both panels, each named once in the legend"
    assert len({(t.line.color, t.line.dash) for t in refs}) == 4, "each reference drawn its own way"
    layout = _browser_layout(fig, tmp_path)
    assert not _overlapping_texts(layout), _overlapping_texts(layout)
    legend = [t["text"] for t in layout["texts"] if "legendtext" in t["where"]]
    assert {"none", "droop-ieee1547-b", "droop-tuned", "opf", "dmpo"} <= set(legend)


def test_a_single_evaluation_point_sits_on_a_readable_axis(run_figures, tmp_path):
    fig = run_figures["Evaluation"]
    layout = _browser_layout(fig, tmp_path)
    for axis in ("xaxis", "xaxis2"):
        ticks = layout["ticks"][axis]
        assert "0" in ticks and len(ticks) >= 4, f"{axis}: steps from zero, several ticks: {ticks}"
        assert all(re.fullmatch(r"\d+k?", t) for t in ticks), f"{axis}: whole steps, written short: {ticks}"
    point = [t for t in fig.data if t.name == "dmpo"]
    assert all(t.mode == "markers+text" and t.marker.size >= 8 for t in point), "one point: a marker with its value"
    assert [t.text[0] for t in point] == ["1", "35.59"]
    assert not _overlapping_texts(layout)


def test_selected_policy_axis_has_whole_step_ticks(run_figures, tmp_path):
    fig = run_figures["Validation"]
    layout = _browser_layout(fig, tmp_path)
    ticks = layout["ticks"]["yaxis3"]
    assert ticks and all(re.fullmatch(r"\d+k?", t) for t in ticks), ticks
    assert "8k" in ticks or any(t.replace(",", "").isdigit() and int(t.replace(",", "")) >= 8000 for t in ticks)
    assert not _overlapping_texts(layout), _overlapping_texts(layout)


def test_model_panels_name_every_series_once_in_its_own_colour():
    from gridrl.training_report import _MODEL_PANELS, fig_model

    tags = [p.replace("*", "4") for series in _MODEL_PANELS.values() for p in series]
    sc = pd.DataFrame([(k, 1024 * k, 1.0 * k, tag, 0.1 * k) for tag in tags for k in (1, 2)],
                      columns=["iteration", "env_steps", "wall_s", "tag", "value"]).assign(run="r", algo="dmpo", seed=0)
    fig = fig_model(sc)
    names = {label for series in _MODEL_PANELS.values() for label in series.values()}
    legend = [t.name for t in fig.data if t.showlegend]
    assert sorted(legend) == sorted(names), "each series named once, whichever panel it is in"
    colour = {t.name: t.line.color for t in fig.data}
    assert len(set(colour.values())) == len(names), "no two series share a colour"
