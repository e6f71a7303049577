"""The report's figures: tidy DataFrames in, plotly figures out (nothing is read or written here).

Every figure titles its axes with units. Controllers keep one colour across all figures of a
report (``none`` grey, ``opf`` red, the others from a fixed palette in the comparison's order).
Sign convention for reactive power: positive injects (raises the voltage), as pandapower's sgen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["controller_colors", "feeder_paths", "fig_agent_q", "fig_day_distributions", "fig_droop_curves",
           "fig_energy_violations", "fig_envelope", "fig_heatmaps", "fig_inverters_day", "fig_loss",
           "fig_voltage_profile"]

_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
_NONE, _OPF, _BAND = "#636363", "#d62728", "#444444"
_MARGIN = dict(t=70, b=50, l=70, r=20)


def controller_colors(controllers: Sequence[str]) -> dict[str, str]:
    """One colour per controller label: ``none`` grey, ``opf`` red, the rest in order."""
    colors, rest = {}, iter(_PALETTE)
    for c in dict.fromkeys(controllers):
        colors[c] = _NONE if c == "none" else (_OPF if c == "opf" else next(rest, "#7f7f7f"))
    return colors


def _band(fig: go.Figure, v_min_pu: float, v_max_pu: float, **where) -> None:
    for v in (v_min_pu, v_max_pu):
        fig.add_hline(y=v, line=dict(color=_BAND, width=1, dash="dash"), **where)


def _label(value: float) -> str:
    """A bar's value as people write it: 0, 0.75, 12.5, 3,890."""
    if value == 0:
        return "0"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _hhmm(hour: float) -> str:
    minutes = int(round(hour * 60))
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


# --------------------------------------------------------------------------------------------
# all days
# --------------------------------------------------------------------------------------------


def fig_energy_violations(days: pd.DataFrame, *, title: str = "") -> go.Figure:
    """Bars by controller: energy loss (MWh, per seed, summed over days) and violation bus-hours,
    each bar labelled with its value (so a zero reads "0", not as a missing bar)."""
    g = days.groupby("controller", sort=False)
    n_seeds = g["seed"].nunique()
    loss = g["energy_loss_mwh"].sum() / n_seeds
    viol = g["violation_bus_hours"].sum() / n_seeds
    colors = controller_colors(list(loss.index))
    fig = make_subplots(rows=1, cols=2, subplot_titles=("energy loss over all days", "voltage violations"))
    for col, series in ((1, loss), (2, viol)):
        fig.add_trace(go.Bar(x=list(series.index), y=series.values, marker_color=[colors[c] for c in series.index],
                             text=[_label(v) for v in series.values], textposition="outside", cliponaxis=False,
                             showlegend=False, hovertemplate="%{x}: %{y:.4g}<extra></extra>"), row=1, col=col)
    fig.update_yaxes(title_text="energy loss (MWh)", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="violations (bus-hours out of band)", rangemode="tozero", row=1, col=2)
    if not viol.any():
        fig.update_yaxes(range=[0, 1], row=1, col=2)  # all zero: keep an axis the labels can sit on
    fig.update_xaxes(title_text="controller")
    fig.update_layout(title=title, height=420, margin=_MARGIN)
    return fig


def fig_day_distributions(daily: pd.DataFrame, *, v_min_pu: float, v_max_pu: float, detail_day: int | None = None,
                          title: str = "") -> go.Figure:
    """How each controller fares across days: one box (with every day as a point) per controller
    for the day's energy loss, lowest and highest bus voltage, and violation bus-hours. The detail
    day is ringed. ``daily``: one row per controller × seed × day with ``controller, day, date,
    energy_loss_mwh, v_min_pu, v_max_pu, violation_bus_hours``."""
    panels = (("energy_loss_mwh", "energy loss", "energy loss per day (MWh)"),
              ("v_min_pu", "lowest voltage", "lowest voltage of the day (p.u.)"),
              ("v_max_pu", "highest voltage", "highest voltage of the day (p.u.)"),
              ("violation_bus_hours", "violations", "violations per day (bus-hours)"))
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for _, t, _ in panels], horizontal_spacing=0.07)
    ctrls = list(dict.fromkeys(daily["controller"]))
    colors = controller_colors(ctrls)
    for k, (col, _, label) in enumerate(panels, start=1):
        for ctrl in ctrls:
            g = daily[daily["controller"] == ctrl]
            fig.add_trace(go.Box(
                y=g[col], name=ctrl, marker_color=colors[ctrl], boxpoints="all", jitter=0.4, pointpos=0,
                marker=dict(size=4, opacity=0.6), line=dict(width=1.5), showlegend=False,
                customdata=np.stack([g["day"], g["date"]], axis=1),
                hovertemplate=f"{ctrl}<br>day %{{customdata[0]}} (%{{customdata[1]}})<br>%{{y:.4g}}<extra></extra>"),
                row=1, col=k)
            if detail_day is not None and (g["day"] == detail_day).any():
                d = g[g["day"] == detail_day]
                fig.add_trace(go.Scatter(x=[ctrl] * len(d), y=d[col], mode="markers", showlegend=False,
                                         marker=dict(symbol="circle-open", size=12, color="black", line=dict(width=2)),
                                         hovertemplate=f"detail day {detail_day}<br>%{{y:.4g}}<extra>{ctrl}</extra>"),
                              row=1, col=k)
        fig.update_yaxes(title_text=label, row=1, col=k)
        fig.update_xaxes(title_text="controller", tickangle=-30, row=1, col=k)
    _band(fig, v_min_pu, v_max_pu, row=1, col=2)
    _band(fig, v_min_pu, v_max_pu, row=1, col=3)
    fig.update_layout(title=title, height=480, margin=_MARGIN)
    return fig


# --------------------------------------------------------------------------------------------
# the detail day
# --------------------------------------------------------------------------------------------


def fig_envelope(steps: pd.DataFrame, *, v_min_pu: float, v_max_pu: float, title: str = "") -> go.Figure:
    """Lowest and highest monitored bus voltage over the day, per controller, against the band."""
    fig = go.Figure()
    colors = controller_colors(list(steps["controller"]))
    for ctrl, g in steps.groupby("controller", sort=False):
        for col, dash in (("v_max_pu", "solid"), ("v_min_pu", "dot")):
            fig.add_trace(go.Scatter(x=g["hour"], y=g[col], mode="lines", line=dict(color=colors[ctrl], dash=dash),
                                     name=f"{ctrl} {'max' if col == 'v_max_pu' else 'min'}", legendgroup=ctrl))
    _band(fig, v_min_pu, v_max_pu)
    fig.update_layout(title=title, xaxis_title="hour of day (h)", yaxis_title="voltage (p.u.)", height=420,
                      margin=_MARGIN)
    return fig


def fig_loss(steps: pd.DataFrame, *, title: str = "") -> go.Figure:
    """Line losses (MW) over the day, per controller."""
    fig = go.Figure()
    colors = controller_colors(list(steps["controller"]))
    for ctrl, g in steps.groupby("controller", sort=False):
        fig.add_trace(go.Scatter(x=g["hour"], y=g["loss_mw"], mode="lines", name=ctrl, line=dict(color=colors[ctrl])))
    fig.update_layout(title=title, xaxis_title="hour of day (h)", yaxis_title="loss (MW)", height=380,
                      margin=_MARGIN)
    return fig


def fig_heatmaps(voltages: pd.DataFrame, *, v_min_pu: float, v_max_pu: float,
                 bus_names: Mapping[int, str] | None = None, title: str = "") -> go.Figure:
    """Bus voltage over the day (bus × time), one panel per controller, one shared colour scale
    centred on 1 p.u. and spanning at least the band. ``voltages``: rows of ``controller, step,
    hour, bus, vm_pu`` (the report passes the monitored buses only); rows in bus-index order,
    labelled with ``bus_names`` where given."""
    ctrls = list(dict.fromkeys(voltages["controller"]))
    fig = make_subplots(rows=1, cols=len(ctrls), shared_yaxes=True, subplot_titles=ctrls,
                        horizontal_spacing=0.02)
    half = max(v_max_pu - 1.0, 1.0 - v_min_pu, float((voltages["vm_pu"] - 1.0).abs().max()))
    for k, ctrl in enumerate(ctrls, start=1):
        g = voltages[voltages["controller"] == ctrl]
        m = g.pivot_table(index="bus", columns="step", values="vm_pu", aggfunc="first").sort_index()
        hours = g.drop_duplicates("step").set_index("step")["hour"].reindex(m.columns) if "hour" in g else m.columns
        rows = [(bus_names or {}).get(int(b), str(b)) for b in m.index]
        fig.add_trace(go.Heatmap(z=m.values, x=list(hours), y=rows, coloraxis="coloraxis",
                                 hovertemplate="%{y}<br>hour %{x}<br>%{z:.4f} p.u.<extra>" + ctrl + "</extra>"),
                      row=1, col=k)
        fig.update_xaxes(title_text="hour of day (h)", row=1, col=k)
    fig.update_yaxes(title_text="bus" if bus_names else "bus (pandapower index)", type="category", row=1, col=1)
    fig.update_layout(title=title, height=520, margin=dict(t=80, b=50, l=70, r=20),
                      coloraxis=dict(colorscale="RdBu_r", cmin=1.0 - half, cmax=1.0 + half, cmid=1.0,
                                     colorbar=dict(title="voltage (p.u.)")))
    return fig


def fig_voltage_profile(voltages: pd.DataFrame, distance: pd.DataFrame, *, steps: Mapping[str, int],
                        hours: Mapping[int, float], v_ref_kv: float, v_min_pu: float, v_max_pu: float,
                        agent_buses: Mapping[int, str] | None = None, bus_names: Mapping[int, str] | None = None,
                        title: str = "") -> go.Figure:
    """Bus voltage against electrical distance from the substation, one panel per chosen step,
    one trace per controller (one legend entry): the feeder drawn as its paths from the
    substation, the longest first and each lateral from the bus it branches off, separated by
    gaps; every bus a marker, the agents' buses stars.

    voltages: ``controller, step, bus, vm_pu`` rows covering the chosen steps.
    distance: per bus (index) ``parent`` and ``z_ohm`` (see :mod:`gridrl.grid.distance`).
    steps: panel caption → step index, e.g. ``{"highest voltage": 48, "lowest voltage": 76}``.
    agent_buses: bus → agent name; those buses are marked.
    bus_names: bus → name shown on hover (default ``bus <index>``).
    """
    ctrls = list(dict.fromkeys(voltages["controller"]))
    colors = controller_colors(ctrls)
    captions = [f"{cap}: {_hhmm(hours[s])}" for cap, s in steps.items()]
    fig = make_subplots(rows=1, cols=len(steps), shared_yaxes=True, subplot_titles=captions, horizontal_spacing=0.04)
    z = distance["z_ohm"]
    agent_buses = agent_buses or {}
    scatter = go.Scattergl if len(distance) > 1500 else go.Scatter  # WebGL for thousands of buses
    for k, step in enumerate(steps.values(), start=1):
        at = voltages[voltages["step"] == step]
        for ctrl in ctrls:
            v = at[at["controller"] == ctrl].set_index("bus")["vm_pu"]
            xs, ys, sizes, symbols, labels = [], [], [], [], []
            for n, path in enumerate(feeder_paths(distance["parent"], z, set(v.index) & set(z.index))):
                # a gap before each further path; its first bus, where it branches off, has its marker already
                points = [(None, None, 0, "")] if n else []
                points += [(float(z[bus]), float(v[bus]), 0 if n and j == 0 else (9 if bus in agent_buses else 3), bus)
                           for j, bus in enumerate(path)]
                for x, y, size, bus in points:
                    xs.append(x)
                    ys.append(y)
                    sizes.append(size)
                    symbols.append("star" if bus in agent_buses else "circle")
                    labels.append("" if x is None else (bus_names or {}).get(bus, f"bus {bus}") + f" (index {bus})"
                                  + (f", agent {agent_buses[bus]}" if bus in agent_buses else ""))
            fig.add_trace(scatter(x=xs, y=ys, mode="lines+markers", name=ctrl, legendgroup=ctrl, showlegend=k == 1,
                                  line=dict(color=colors[ctrl], width=1.6), text=labels,
                                  marker=dict(color=colors[ctrl], size=sizes, symbol=symbols),
                                  hovertemplate="%{text}<br>%{x:.3f} Ω<br>%{y:.4f} p.u.<extra>" + ctrl + "</extra>"),
                          row=1, col=k)
        fig.update_xaxes(title_text=f"electrical distance from the substation, Σ|Z| (Ω at {v_ref_kv:g} kV)",
                         row=1, col=k)
        _band(fig, v_min_pu, v_max_pu, row=1, col=k)
    fig.update_yaxes(title_text="voltage (p.u.)", row=1, col=1)
    fig.update_layout(title=title, height=480, margin=_MARGIN)
    return fig


def feeder_paths(parent: pd.Series, z_ohm: pd.Series, buses: set[int]) -> list[list[int]]:
    """A radial feeder (``parent`` per bus, -1 at the substation) cut into paths that together
    draw every branch between ``buses`` once: from each root (a bus whose parent is not among
    ``buses``) the path to its electrically farthest bus, then each lateral from the bus it
    branches off to its own farthest bus, farthest-reaching laterals first."""
    children: dict[int, list[int]] = {b: [] for b in buses}
    roots = []
    for bus in parent.index:
        if bus not in buses:
            continue
        p = int(parent[bus])
        if p in buses:
            children[p].append(bus)
        else:
            roots.append(bus)
    reach: dict[int, float] = {}  # bus → largest distance in its subtree
    order = list(roots)
    for bus in order:  # breadth first: the list grows as it is walked
        order.extend(children[bus])
    for bus in reversed(order):
        reach[bus] = max([float(z_ohm[bus])] + [reach[c] for c in children[bus]])
    paths, starts = [], [(r, None) for r in sorted(roots, key=lambda b: -reach[b])]
    while starts:
        bus, junction = starts.pop(0)
        path = ([junction] if junction is not None else []) + [bus]
        branches = []
        while children[bus]:
            kids = sorted(children[bus], key=lambda c: -reach[c])
            branches += [(c, bus) for c in kids[1:]]
            bus = kids[0]
            path.append(bus)
        paths.append(path)
        starts = sorted(starts + branches, key=lambda s: -reach[s[0]])
    return paths


def fig_inverters_day(steps: pd.DataFrame, *, title: str = "") -> go.Figure:
    """What the inverters did over the day: PV output and load (top, the same for every
    controller), and the inverters' total reactive power per controller (bottom; + injects)."""
    ctrls = list(dict.fromkeys(steps["controller"]))
    colors = controller_colors(ctrls)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1, row_heights=[0.4, 0.6],
                        subplot_titles=("PV output and load", "inverters' reactive power, all agents (+ injects)"))
    first = steps[steps["controller"] == ctrls[0]]
    fig.add_trace(go.Scatter(x=first["hour"], y=first["pv_p_mw"], mode="lines", name="PV output",
                             line=dict(color="#e6a000", width=2), fill="tozeroy"), row=1, col=1)
    fig.add_trace(go.Scatter(x=first["hour"], y=first["load_p_mw"], mode="lines", name="load",
                             line=dict(color="#333333", width=2)), row=1, col=1)
    for ctrl in ctrls:
        g = steps[steps["controller"] == ctrl]
        fig.add_trace(go.Scatter(x=g["hour"], y=g["q_mvar"], mode="lines", name=f"Σq {ctrl}",
                                 line=dict(color=colors[ctrl])), row=2, col=1)
    fig.add_hline(y=0, line=dict(color="#999999", width=1), row=2, col=1)
    fig.update_yaxes(title_text="power (MW)", row=1, col=1)
    fig.update_yaxes(title_text="reactive power (Mvar)", row=2, col=1)
    fig.update_xaxes(title_text="hour of day (h)", row=2, col=1)
    fig.update_layout(title=title, height=560, margin=_MARGIN)
    return fig


def fig_agent_q(agents: pd.DataFrame, *, hours: Mapping[int, float], title: str = "") -> go.Figure:
    """Reactive power of every agent over the day (agent × time), one panel per controller, one
    colour scale centred on zero (blue absorbs, red injects). ``agents``: ``controller, step,
    agent, q_mvar`` rows, agents in feeder order."""
    ctrls = list(dict.fromkeys(agents["controller"]))
    order = list(dict.fromkeys(agents["agent"]))
    fig = make_subplots(rows=1, cols=len(ctrls), shared_yaxes=True, subplot_titles=ctrls, horizontal_spacing=0.02)
    half = float(agents["q_mvar"].abs().max()) or 1.0
    for k, ctrl in enumerate(ctrls, start=1):
        g = agents[agents["controller"] == ctrl]
        m = g.pivot_table(index="agent", columns="step", values="q_mvar", aggfunc="first").reindex(order)
        fig.add_trace(go.Heatmap(z=m.values, x=[hours[s] for s in m.columns], y=list(m.index), coloraxis="coloraxis",
                                 hovertemplate="agent %{y}<br>hour %{x}<br>%{z:.4f} Mvar<extra>" + ctrl + "</extra>"),
                      row=1, col=k)
        fig.update_xaxes(title_text="hour of day (h)", row=1, col=k)
    fig.update_yaxes(title_text="agent", type="category", row=1, col=1)
    height = min(900, max(360, 120 + 14 * len(order)))  # hundreds of agents: thin rows, still on screen
    fig.update_layout(title=title, height=height, margin=dict(t=80, b=50, l=110, r=20),
                      coloraxis=dict(colorscale="RdBu_r", cmin=-half, cmax=half, cmid=0.0,
                                     colorbar=dict(title="q (Mvar)")))
    return fig


def fig_droop_curves(curves: Mapping[str, Mapping], points: pd.DataFrame, *, v_min_pu: float, v_max_pu: float,
                     title: str = "") -> go.Figure:
    """The volt-var curves in use, one panel per droop controller, with the detail day's operating
    points (every agent at every step) on top.

    curves: controller → ``{"v_pu": [...], "q": [...], "reference": "s_max" | "q_avail"}``.
    points: ``controller, vm_pu, q_frac`` rows: own-bus voltage and reactive power as a fraction of
        the curve's reference (points below the curve are inverters out of headroom).
    """
    names = list(curves)
    colors = controller_colors(list(points["controller"]) + names if len(points) else names)
    fig = make_subplots(rows=1, cols=len(names), shared_yaxes=True, horizontal_spacing=0.05,
                        subplot_titles=[f"{n} (q as a share of {curves[n]['reference']})" for n in names])
    for k, name in enumerate(names, start=1):
        c = curves[name]
        v = list(c["v_pu"])
        lo, hi = min(v[0], v_min_pu) - 0.03, max(v[-1], v_max_pu) + 0.03
        fig.add_trace(go.Scatter(x=[lo, *v, hi], y=[c["q"][0], *c["q"], c["q"][-1]], mode="lines",
                                 line=dict(color="black", width=2), name="curve", showlegend=k == 1,
                                 hovertemplate="%{x:.3f} p.u. → %{y:.3f}<extra>curve</extra>"), row=1, col=k)
        p = points[points["controller"] == name]
        if len(p):
            fig.add_trace(go.Scattergl(x=p["vm_pu"], y=p["q_frac"], mode="markers", name="operating points",
                                       showlegend=k == 1, marker=dict(color=colors[name], size=4, opacity=0.5),
                                       hovertemplate="%{x:.4f} p.u., %{y:.3f}<extra>" + name + "</extra>"),
                          row=1, col=k)
        for x in (v_min_pu, v_max_pu):
            fig.add_vline(x=x, line=dict(color=_BAND, width=1, dash="dash"), row=1, col=k)
        fig.update_xaxes(title_text="own-bus voltage (p.u.)", row=1, col=k)
    fig.update_yaxes(title_text="q / reference (+ injects)", row=1, col=1)
    fig.update_layout(title=title, height=440, margin=_MARGIN)
    return fig
