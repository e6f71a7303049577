"""Self-contained HTML reports of comparisons and evaluations (plotly.js embedded: opens offline).

The report of a results folder (see :mod:`gridrl.compare`) answers, per feeder, what a grid
engineer asks of a voltage controller:

- how it does over all days (energy loss and violations, every bar labelled) and how that
  varies from day to day (per-day distributions, the worst day of each controller);
- on the detail day: where along the feeder the voltage leaves the band (voltage against
  electrical distance from the substation at the day's extreme steps), the min/max envelope and
  losses over the day, what the inverters did (total and per-agent reactive power beside PV and
  load, the droop curves with their operating points) and the bus × time heat maps;
- where the agents sit (the feeder map with zones and the agent graph);

plus a summary table with a glossary of its columns, and the folder's provenance (gridrl
version and commit, feeder spec hashes, configuration, command lines, dates). The detail day is
the configuration's ``report_day`` or else the evaluated day with the most PV energy; the report
says which. Folders written before a table existed get a note in place of the figures that need it.

Figures come from :mod:`gridrl.plots`; :func:`render` turns a list of :class:`Section` into one
HTML page, so other reports (a training run's curves, :mod:`gridrl.training_report`) add a section
without touching the rest. The report reads a results folder only (its layout and summary tables
from :mod:`gridrl.compare.folder` and :mod:`gridrl.compare.summary`) and knows nothing of how the
comparison ran. Writing the file happens at the edge (``gridrl report``, :mod:`gridrl.pipeline`).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from gridrl.compare.config import ControllerSpec
from gridrl.compare.folder import cell_folder, collect
from gridrl.compare.summary import SUMMARY_COLUMNS, SUMMARY_GLOSSARY, format_summary, summarize
from gridrl.errors import GridrlError
from gridrl.plots import (fig_agent_q, fig_day_distributions, fig_droop_curves, fig_energy_violations, fig_envelope,
                          fig_heatmaps, fig_inverters_day, fig_loss, fig_voltage_profile)

__all__ = ["ReportError", "Section", "build_report", "fig_energy_violations", "fig_envelope", "fig_heatmaps",
           "fig_loss", "render", "results_sections", "summary_table_html"]


class ReportError(GridrlError):
    """A folder that holds no results to report."""


@dataclass(frozen=True)
class Section:
    """One titled part of a report: an intro paragraph, then figures and HTML snippets in order."""

    title: str
    parts: Sequence[go.Figure | str] = field(default_factory=tuple)
    intro: str = ""


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------


def _html_table(rows: list[dict[str, Any]], *, left: int = 2) -> str:
    if not rows:
        return "<p>(no results)</p>"
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f'<table class="summary left{left}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def summary_table_html(summary: pd.DataFrame) -> str:
    """The comparison summary as an HTML table."""
    return _html_table(format_summary(summary))


def glossary_html() -> str:
    """What every summary column means."""
    items = "".join(f"<dt>{html.escape(SUMMARY_COLUMNS[k])}</dt><dd>{html.escape(v)}</dd>"
                    for k, v in SUMMARY_GLOSSARY.items())
    return f'<dl class="glossary">{items}</dl>'


def _worst_days_html(daily: pd.DataFrame) -> str:
    """Each controller's worst day: most violation bus-hours, ties (e.g. none at all) broken by
    the largest deviation from 1 p.u."""
    rows = []
    for ctrl, g in daily.groupby("controller", sort=False):
        w = g.sort_values(["violation_bus_hours", "max_abs_dv_pu"], ascending=False, kind="stable").iloc[0]
        rows.append({"controller": ctrl, "worst day": f"{int(w['day'])} ({w['date']})",
                     "violations (bus-h)": f"{w['violation_bus_hours']:.3g}",
                     "max |v−1| (p.u.)": f"{w['max_abs_dv_pu']:.4f}",
                     "lowest / highest v (p.u.)": f"{w['v_min_pu']:.4f} / {w['v_max_pu']:.4f}",
                     "loss (MWh)": f"{w['energy_loss_mwh']:.3f}",
                     "days with violations": f"{int((g['violation_bus_hours'] > 0).sum())} of {len(g)}"})
    return _html_table(rows, left=2)


def _provenance_html(out: Path) -> str:
    from gridrl.provenance import read_provenance

    prov = read_provenance(out)
    if prov is None:
        return ("<p>This folder has no <code>provenance.json</code> (written by gridrl versions before it was "
                "recorded); its configuration is in <code>config.json</code>.</p>")
    runs = []
    for r in prov.get("runs", []):
        git = r.get("git") or {}
        commit = (git.get("commit") or "")[:12] + (" (uncommitted changes)" if git.get("dirty") else "")
        runs.append({"date (UTC)": r.get("date_utc", ""), "command": r.get("command", ""),
                     "gridrl": r.get("gridrl_version", ""), "commit": commit or "not a git checkout",
                     "cells run": r.get("cells_to_run", "")})
    feeders = [{"feeder": name, "spec hash": f.get("spec_hash", ""), "spec file": f.get("spec_file", ""),
                "source": f.get("source", "")} for name, f in prov.get("feeders", {}).items()]
    packages = ", ".join(f"{k} {v}" for k, v in ((prov.get("runs") or [{}])[-1].get("packages") or {}).items() if v)
    warn = "".join(f'<p class="warning">{html.escape(w)}</p>' for w in prov.get("warnings", []))
    config = html.escape(json.dumps(prov.get("config", {}), indent=2, sort_keys=True))
    return (warn + "<h3>Runs into this folder</h3>" + _html_table(runs, left=5)
            + "<h3>Feeder specs</h3>" + _html_table(feeders, left=4)
            + (f"<p>Packages of the latest run: {html.escape(packages)}.</p>" if packages else "")
            + f"<details><summary>Configuration</summary><pre>{config}</pre></details>")


# --------------------------------------------------------------------------------------------
# sections of a results folder
# --------------------------------------------------------------------------------------------


def _config(out: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((out / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _config_order(cfg: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Feeders and controller labels in the order the comparison listed them."""
    try:
        return list(cfg.get("feeders", [])), [ControllerSpec(**c).key for c in cfg.get("controllers", [])]
    except TypeError:
        return [], []


def _ordered(df: pd.DataFrame, order: tuple[list[str], list[str]]) -> pd.DataFrame:
    """Rows with feeders and controllers in the order the comparison listed them."""
    if df.empty:
        return df
    keys = {}
    for col, names in zip(("feeder", "controller"), order):
        rank = {c: i for i, c in enumerate(names)}
        keys[f"_{col}"] = df[col].map(lambda c, r=rank: r.get(c, len(r)))
    return (df.assign(**keys).sort_values(list(keys), kind="stable").drop(columns=list(keys))
            .reset_index(drop=True))


def _load(feeder: str):
    from gridrl.grid.feeder import load_feeder

    try:
        return load_feeder(feeder)
    except GridrlError:
        return None


def _curves(out: Path, feeder: str, cfg: dict[str, Any], controllers: Sequence[str], seed: int) -> dict[str, dict]:
    """Volt-var curves of the droop controllers: from each cell's controller.json, else the config."""
    from gridrl.control.droop import resolve_curve

    curves = {}
    for ctrl in controllers:
        try:
            d = json.loads((cell_folder(out, feeder, ctrl, seed) / "controller.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and {"v_pu", "q", "reference"} <= set(d):
            curves[ctrl] = {"v_pu": d["v_pu"], "q": d["q"], "reference": d["reference"]}
    for c in cfg.get("controllers", []):
        try:
            spec = ControllerSpec(**c)
            if spec.name == "droop" and spec.key in controllers and spec.key not in curves:
                _, curve = resolve_curve(spec.preset, spec.curve)
                curves[spec.key] = {"v_pu": list(curve.v_pu), "q": list(curve.q), "reference": curve.reference}
        except (TypeError, GridrlError):
            continue
    return curves


def results_sections(results_dir: str | Path) -> list[Section]:
    """The summary, per-feeder and provenance sections of a comparison or evaluation folder."""
    out = Path(results_dir)
    days = collect(out, table="days")
    if days.empty:
        raise ReportError(f"{out} holds no results (no cells/*/*/seed*/days.parquet); run `gridrl compare` "
                          f"or `gridrl evaluate` with --out {out} first")
    cfg = _config(out)
    order = _config_order(cfg)
    days = _ordered(days, order)
    tables = {t: _ordered(collect(out, table=t), order) for t in ("steps", "voltages", "agents")}
    intro = ("Every controller ran the same days; rates and |v − 1| are over all monitored bus-steps, energies are "
             "summed over the days (averaged over seeds). The loss gap is relative to the centralized optimum "
             "(<code>opf</code>). The glossary below says what each column counts.")
    sections = [Section("Summary", (summary_table_html(summarize(days)), glossary_html()), intro)]
    for feeder in dict.fromkeys(days["feeder"]):
        sections.append(_feeder_section(out, feeder, days[days["feeder"] == feeder],
                                        {t: (df[df["feeder"] == feeder] if not df.empty else df)
                                         for t, df in tables.items()}, cfg))
    sections.append(Section("Provenance", (_provenance_html(out),),
                            "Where these results came from, so that they can be reproduced or told apart."))
    return sections


def _feeder_section(out: Path, name: str, fd: pd.DataFrame, t: dict[str, pd.DataFrame], cfg: dict) -> Section:
    from gridrl.grid.feeder import resolve_spec

    feeder = _load(name)
    try:
        volt = resolve_spec(name).voltage
        v_min, v_max = float(volt.v_min_pu), float(volt.v_max_pu)
    except GridrlError:
        v_min, v_max = 0.95, 1.05
    steps, volts, agents = t["steps"], t["voltages"], t["agents"]
    seed = int(fd["seed"].min())
    day = int(volts["day"].mode().iloc[0]) if not volts.empty else int(fd["day"].iloc[0])
    date = fd.loc[fd["day"] == day, "date"].iloc[0] if (fd["day"] == day).any() else ""
    why = ("set by the configuration's <code>report_day</code>" if cfg.get("report_day") is not None
           else "the evaluated day with the most PV energy, where voltage rise is worst")
    ctrls = list(dict.fromkeys(fd["controller"]))
    fs = steps[(steps["day"] == day) & (steps["seed"] == seed)] if not steps.empty else steps
    hours = dict(zip(fs["step"], fs["hour"])) if not fs.empty else {}
    parts: list[go.Figure | str] = [fig_energy_violations(fd, title=f"{name}: {fd['day'].nunique()} days, all "
                                                                    f"controllers")]

    parts.append("<h3>How it varies across days</h3>")
    if not steps.empty:
        extremes = (steps.groupby(["controller", "seed", "day"], sort=False)
                    .agg(v_min_pu=("v_min_pu", "min"), v_max_pu=("v_max_pu", "max")).reset_index())
        daily = fd.merge(extremes, on=["controller", "seed", "day"], how="left")
        parts += [fig_day_distributions(daily, v_min_pu=v_min, v_max_pu=v_max, detail_day=day,
                                        title=f"{name}: every day of the split (ringed: the detail day {day})"),
                  "<p>Each controller's worst day: the most bus-hours outside the band, or where none has any, "
                  "the largest deviation from 1 p.u.</p>", _worst_days_html(daily)]

    parts.append(f"<h3>The detail day: day {day} ({html.escape(str(date))})</h3>")
    fv = volts[(volts["day"] == day) & (volts["seed"] == seed)] if not volts.empty else volts
    if feeder is not None and not fv.empty and not fs.empty:
        parts.append(_profile_figure(feeder, fv, fs, ctrls, hours, v_min, v_max, name, day, date))
    if not fs.empty:
        parts += [fig_envelope(fs, v_min_pu=v_min, v_max_pu=v_max,
                               title=f"{name}, day {day} ({date}): lowest and highest bus voltage"),
                  fig_loss(fs, title=f"{name}, day {day} ({date}): line losses")]

    parts.append("<h3>What the inverters did</h3>")
    fa = agents[(agents["day"] == day) & (agents["seed"] == seed)] if not agents.empty else agents
    if not fs.empty and {"q_mvar", "pv_p_mw", "load_p_mw"} <= set(fs.columns):
        parts.append(fig_inverters_day(fs, title=f"{name}, day {day} ({date}): PV, load and the inverters' "
                                                 f"reactive power"))
    if not fa.empty:
        parts.append(fig_agent_q(fa, hours=hours, title=f"{name}, day {day} ({date}): reactive power per agent"))
        curves = _curves(out, name, cfg, ctrls, seed)
        if curves and feeder is not None:
            parts.append(fig_droop_curves(curves, _curve_points(feeder, fa, curves), v_min_pu=v_min, v_max_pu=v_max,
                                          title=f"{name}: droop curves in use, with day {day}'s operating points"))
    else:
        parts.append("<p class=\"note\">Per-agent reactive power is not in this folder (written before gridrl "
                     "kept it); re-run the comparison into a new folder to see it.</p>")

    if not fv.empty:
        fvd = fv[fv["monitored"]] if "monitored" in fv else fv
        fvd = fvd.merge(fs[["controller", "step", "hour"]], on=["controller", "step"], how="left")
        names = None
        if feeder is not None:
            from gridrl.grid.plot import bus_labels

            names = bus_labels(feeder)
        parts.append(fig_heatmaps(fvd, v_min_pu=v_min, v_max_pu=v_max, bus_names=names,
                                  title=f"{name}, day {day} ({date}): voltages of the monitored buses"))
    if feeder is not None:
        from gridrl.grid.plot import feeder_map

        parts += ["<h3>Where the agents are</h3>", feeder_map(feeder)]
    intro = (f"Band {v_min:g}–{v_max:g} p.u. The detail day is day {day} ({html.escape(str(date))}): {why}.")
    return Section(f"Feeder {name}", tuple(parts), intro)


def _profile_figure(feeder, fv, fs, ctrls, hours, v_min, v_max, name, day, date) -> go.Figure:
    """Voltage against electrical distance at the reference controller's extreme steps of the day."""
    from gridrl.grid.distance import electrical_distance
    from gridrl.grid.plot import bus_labels

    ref = "none" if "none" in ctrls else ctrls[0]
    r = fs[fs["controller"] == ref]
    at = {f"highest voltage ({ref})": int(r.loc[r["v_max_pu"].idxmax(), "step"]),
          f"lowest voltage ({ref})": int(r.loc[r["v_min_pu"].idxmin(), "step"])}
    dist = electrical_distance(feeder)
    inv = feeder.inverters.drop_duplicates("bus")
    return fig_voltage_profile(fv[fv["step"].isin(list(at.values()))], dist.table, steps=at, hours=hours,
                               v_ref_kv=dist.v_ref_kv, v_min_pu=v_min, v_max_pu=v_max,
                               agent_buses=dict(zip(inv["bus"], inv["agent"])),
                               bus_names=bus_labels(feeder),
                               title=f"{name}, day {day} ({date}): voltage along the feeder at the steps of the "
                                     f"highest and lowest voltage without control")


def _curve_points(feeder, agents: pd.DataFrame, curves: dict[str, dict]) -> pd.DataFrame:
    """Each droop agent-step as (own-bus voltage, q as a share of its curve's reference)."""
    s_max = feeder.inverters.groupby("agent")["s_max_mva"].sum()
    frames = []
    for ctrl, c in curves.items():
        a = agents[agents["controller"] == ctrl]
        ref = a["q_avail_mvar"] if c["reference"] == "q_avail" else a["agent"].map(s_max)
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(ref > 0, a["q_mvar"] / ref, np.nan)
        frames.append(pd.DataFrame({"controller": ctrl, "vm_pu": a["vm_pu"], "q_frac": frac}).dropna())
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["controller", "vm_pu", "q_frac"])


def build_report(results_dir: str | Path, *, extra_sections: Sequence[Section] = (), title: str | None = None) -> str:
    """The HTML report of a results folder (plus ``extra_sections``) as a string."""
    out = Path(results_dir)
    sections = results_sections(out)
    sections = sections[:-1] + list(extra_sections) + sections[-1:]  # provenance stays last
    return render(sections, title=title or f"gridrl — {out.name or out.resolve().name}")


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
h3 { font-size: 1.1em; margin-top: 1.6em; }
table.summary { border-collapse: collapse; font-size: .9em; margin: .5em 0; }
table.summary th, table.summary td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; }
table.summary th { background: #f3f3f3; }
table.left2 td:nth-child(-n+2), table.left4 td:nth-child(-n+4), table.left5 td:nth-child(-n+5) { text-align: left; }
dl.glossary { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; font-size: .9em; }
dl.glossary dt { font-weight: 600; } dl.glossary dd { margin: 0; }
.note { color: #666; font-style: italic; } .warning { color: #b00; font-weight: 600; }
pre { background: #f7f7f7; padding: .6em; overflow-x: auto; font-size: .85em; }
.figure { margin: 1em 0; }
"""


def render(sections: Sequence[Section], *, title: str = "gridrl report") -> str:
    """Sections as one self-contained HTML page: plotly.js is embedded once, no network needed."""
    from plotly.offline import get_plotlyjs

    from gridrl.grid.plot import ZOOM_LABELS_JS

    body = [f"<h1>{html.escape(title)}</h1>"]
    n = 0
    for sec in sections:
        body.append(f"<h2>{html.escape(sec.title)}</h2>")
        if sec.intro:
            body.append(f"<p>{sec.intro}</p>")
        for part in sec.parts:
            if isinstance(part, go.Figure):
                n += 1
                meta = part.layout.meta if isinstance(part.layout.meta, dict) else {}
                snippet = part.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig{n}",
                                       config={"displaylogo": False, "responsive": True},
                                       post_script=ZOOM_LABELS_JS if "zoom_labels" in meta else None)
                body.append(f'<div class="figure">{snippet}</div>')
            else:
                body.append(str(part))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
            f"<script type=\"text/javascript\">{get_plotlyjs()}</script></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
