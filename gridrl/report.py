"""Self-contained HTML reports of comparisons and evaluations (plotly.js embedded: opens offline).

The report of a results folder (see :mod:`gridrl.compare`) has a summary section and one
section per feeder: energy loss and violations by controller, the min/max voltage envelope
against the band, losses over the day, and a voltage heat map (bus × time) per controller, all
for the feeder's report day. Figure functions take tidy DataFrames and return plotly figures;
:func:`render` turns a list of :class:`Section` into one HTML page, so other parts of gridrl
(learners' training curves) add a section without touching the rest. Writing the file happens
at the edge (``gridrl report``, :func:`gridrl.compare.run_compare`).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gridrl.errors import GridrlError

_PALETTE = ["#636363", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
            "#d62728"]


class ReportError(GridrlError):
    """A folder that holds no results to report."""


@dataclass(frozen=True)
class Section:
    """One titled part of a report: an intro paragraph, then figures and HTML snippets in order."""

    title: str
    parts: Sequence[go.Figure | str] = field(default_factory=tuple)
    intro: str = ""


# --------------------------------------------------------------------------------------------
# figures: DataFrame in, figure out
# --------------------------------------------------------------------------------------------


def _colors(controllers: Sequence[str]) -> dict[str, str]:
    colors = {}
    rest = iter(_PALETTE[1:])
    for c in controllers:
        colors[c] = _PALETTE[0] if c == "none" else ("#d62728" if c == "opf" else next(rest, "#7f7f7f"))
    return colors


def fig_energy_violations(days: pd.DataFrame, *, title: str = "") -> go.Figure:
    """Bars by controller: energy loss (MWh, per seed, summed over days) and violation bus-hours."""
    g = days.groupby("controller", sort=False)
    n_seeds = g["seed"].nunique()
    loss = g["energy_loss_mwh"].sum() / n_seeds
    viol = g["violation_bus_hours"].sum() / n_seeds
    colors = _colors(list(loss.index))
    fig = make_subplots(rows=1, cols=2, subplot_titles=("energy loss (MWh)", "violations (bus-hours out of band)"))
    fig.add_trace(go.Bar(x=list(loss.index), y=loss.values, marker_color=[colors[c] for c in loss.index],
                         name="energy loss", showlegend=False), row=1, col=1)
    fig.add_trace(go.Bar(x=list(viol.index), y=viol.values, marker_color=[colors[c] for c in viol.index],
                         name="violations", showlegend=False), row=1, col=2)
    fig.update_layout(title=title, height=380, margin=dict(t=70, b=40, l=60, r=20))
    return fig


def fig_envelope(steps: pd.DataFrame, *, v_min_pu: float, v_max_pu: float, title: str = "") -> go.Figure:
    """Lowest and highest monitored bus voltage over the day, per controller, against the band."""
    fig = go.Figure()
    colors = _colors(list(dict.fromkeys(steps["controller"])))
    for ctrl, g in steps.groupby("controller", sort=False):
        for col, dash in (("v_max_pu", "solid"), ("v_min_pu", "dot")):
            fig.add_trace(go.Scatter(x=g["hour"], y=g[col], mode="lines", line=dict(color=colors[ctrl], dash=dash),
                                     name=f"{ctrl} {'max' if col == 'v_max_pu' else 'min'}", legendgroup=ctrl))
    for v in (v_min_pu, v_max_pu):
        fig.add_hline(y=v, line=dict(color="black", width=1, dash="dash"))
    fig.update_layout(title=title, xaxis_title="hour of day", yaxis_title="voltage (p.u.)", height=420,
                      margin=dict(t=60, b=40, l=60, r=20))
    return fig


def fig_loss(steps: pd.DataFrame, *, title: str = "") -> go.Figure:
    """Line losses (MW) over the day, per controller."""
    fig = go.Figure()
    colors = _colors(list(dict.fromkeys(steps["controller"])))
    for ctrl, g in steps.groupby("controller", sort=False):
        fig.add_trace(go.Scatter(x=g["hour"], y=g["loss_mw"], mode="lines", name=ctrl, line=dict(color=colors[ctrl])))
    fig.update_layout(title=title, xaxis_title="hour of day", yaxis_title="loss (MW)", height=380,
                      margin=dict(t=60, b=40, l=60, r=20))
    return fig


def fig_heatmaps(voltages: pd.DataFrame, *, v_min_pu: float, v_max_pu: float, title: str = "") -> go.Figure:
    """Bus voltage over the day (bus × time), one panel per controller, one shared colour scale
    centred on 1 p.u. and spanning at least the band. ``voltages``: rows of ``controller, step,
    hour, bus, vm_pu`` (the report passes the monitored buses only)."""
    ctrls = list(dict.fromkeys(voltages["controller"]))
    fig = make_subplots(rows=1, cols=len(ctrls), shared_yaxes=True, subplot_titles=ctrls,
                        horizontal_spacing=0.02)
    half = max(v_max_pu - 1.0, 1.0 - v_min_pu, float((voltages["vm_pu"] - 1.0).abs().max()))
    for k, ctrl in enumerate(ctrls, start=1):
        g = voltages[voltages["controller"] == ctrl]
        m = g.pivot_table(index="bus", columns="step", values="vm_pu", aggfunc="first").sort_index()
        hours = g.drop_duplicates("step").set_index("step")["hour"].reindex(m.columns) if "hour" in g else m.columns
        fig.add_trace(go.Heatmap(z=m.values, x=list(hours), y=[str(b) for b in m.index], coloraxis="coloraxis",
                                 hovertemplate="bus %{y}<br>hour %{x}<br>%{z:.4f} p.u.<extra>" + ctrl + "</extra>"),
                      row=1, col=k)
        fig.update_xaxes(title_text="hour", row=1, col=k)
    fig.update_yaxes(title_text="bus", type="category", row=1, col=1)
    fig.update_layout(title=title, height=520, margin=dict(t=80, b=40, l=60, r=20),
                      coloraxis=dict(colorscale="RdBu_r", cmin=1.0 - half, cmax=1.0 + half, cmid=1.0,
                                     colorbar=dict(title="p.u.")))
    return fig


def summary_table_html(summary: pd.DataFrame) -> str:
    """The comparison summary as an HTML table."""
    from gridrl.compare import format_summary

    rows = format_summary(summary)
    if not rows:
        return "<p>(no results)</p>"
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f'<table class="summary"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# --------------------------------------------------------------------------------------------
# sections of a results folder
# --------------------------------------------------------------------------------------------


def _band(feeder: str) -> tuple[float, float]:
    from gridrl.grid.feeder import resolve_spec

    try:
        v = resolve_spec(feeder).voltage
        return float(v.v_min_pu), float(v.v_max_pu)
    except GridrlError:
        return 0.95, 1.05


def results_sections(results_dir: str | Path) -> list[Section]:
    """The summary and per-feeder sections of a comparison or evaluation folder."""
    from gridrl.compare import collect, summarize

    out = Path(results_dir)
    days = collect(out, table="days")
    if days.empty:
        raise ReportError(f"{out} holds no results (no cells/*/*/seed*/days.parquet); run `gridrl compare` "
                          f"or `gridrl evaluate` with --out {out} first")
    order = _config_order(out)
    days = _ordered(days, order)
    steps = _ordered(collect(out, table="steps"), order)
    volts = _ordered(collect(out, table="voltages"), order)
    summary = summarize(days)
    n_days = days.groupby("feeder")["day"].nunique()
    intro = ("Every controller ran the same days; rates and |v − 1| are over all monitored bus-steps, energies are "
             "summed over the days (averaged over seeds). The loss gap is relative to the centralized optimum "
             "(<code>opf</code>). Flagged steps: droop fixed points or OPF iterations that did not settle, steps "
             "where the band could not be met, and diverged power flows.")
    sections = [Section("Summary", (summary_table_html(summary),), intro)]
    for feeder in dict.fromkeys(days["feeder"]):
        v_min, v_max = _band(feeder)
        fd = days[days["feeder"] == feeder]
        fv = volts[volts["feeder"] == feeder] if not volts.empty else volts
        day = int(fv["day"].mode().iloc[0]) if not fv.empty else int(fd["day"].iloc[0])
        fs = steps[(steps["feeder"] == feeder) & (steps["day"] == day) & (steps["seed"] == steps["seed"].min())]
        date = fd.loc[fd["day"] == day, "date"].iloc[0] if (fd["day"] == day).any() else ""
        parts: list[go.Figure | str] = [
            fig_energy_violations(fd, title=f"{feeder}: {n_days[feeder]} days"),
            fig_envelope(fs, v_min_pu=v_min, v_max_pu=v_max,
                         title=f"{feeder}, day {day} ({date}): lowest and highest bus voltage"),
            fig_loss(fs, title=f"{feeder}, day {day} ({date}): line losses"),
        ]
        if not fv.empty:
            fvd = fv[(fv["day"] == day) & (fv["seed"] == fv["seed"].min())]
            if "monitored" in fvd:
                fvd = fvd[fvd["monitored"]]
            hours = fs[["controller", "step", "hour"]]
            fvd = fvd.merge(hours, on=["controller", "step"], how="left")
            parts.append(fig_heatmaps(fvd, v_min_pu=v_min, v_max_pu=v_max,
                                      title=f"{feeder}, day {day} ({date}): voltages of the monitored buses"))
        sections.append(Section(f"Feeder {feeder}", tuple(parts),
                                f"Band {v_min:g}–{v_max:g} p.u.; detailed plots show day {day} ({date})."))
    return sections


def _config_order(out: Path) -> tuple[list[str], list[str]]:
    """Feeders and controller labels in the order the comparison listed them."""
    try:
        cfg = json.loads((out / "config.json").read_text(encoding="utf-8"))
        from gridrl.compare import ControllerSpec

        return list(cfg.get("feeders", [])), [ControllerSpec(**c).key for c in cfg.get("controllers", [])]
    except (OSError, ValueError, TypeError):
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


def build_report(results_dir: str | Path, *, extra_sections: Sequence[Section] = (), title: str | None = None) -> str:
    """The HTML report of a results folder (plus ``extra_sections``) as a string."""
    out = Path(results_dir)
    sections = results_sections(out) + list(extra_sections)
    return render(sections, title=title or f"gridrl — {out.name or out.resolve().name}")


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table.summary { border-collapse: collapse; font-size: .9em; }
table.summary th, table.summary td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; }
table.summary th { background: #f3f3f3; }
table.summary td:nth-child(-n+2) { text-align: left; }
.figure { margin: 1em 0; }
"""


def render(sections: Sequence[Section], *, title: str = "gridrl report") -> str:
    """Sections as one self-contained HTML page: plotly.js is embedded once, no network needed."""
    from plotly.offline import get_plotlyjs

    body = [f"<h1>{html.escape(title)}</h1>"]
    n = 0
    for sec in sections:
        body.append(f"<h2>{html.escape(sec.title)}</h2>")
        if sec.intro:
            body.append(f"<p>{sec.intro}</p>")
        for part in sec.parts:
            if isinstance(part, go.Figure):
                n += 1
                snippet = part.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig{n}",
                                       config={"displaylogo": False, "responsive": True})
                body.append(f'<div class="figure">{snippet}</div>')
            else:
                body.append(str(part))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
            f"<script type=\"text/javascript\">{get_plotlyjs()}</script></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
