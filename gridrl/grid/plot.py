"""A feeder as a picture: buses coloured by agent zone, inverters marked, branches drawn.

Bus positions come from the net's geodata where every energized bus has it, otherwise from a
tree layout of the feeder (depth from the substation across, leaves spread down).
"""

from __future__ import annotations

import json
from collections import deque

import numpy as np
import plotly.graph_objects as go

from gridrl.grid.feeder import Feeder

_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd"]


def bus_positions(feeder: Feeder) -> dict[int, tuple[float, float]]:
    """``bus -> (x, y)``: geodata when complete, else a tree layout."""
    net = feeder._net
    energized = [int(b) for b in feeder.bus_zone.index[feeder.bus_zone.notna()]]
    geo = _geodata(net)
    if geo and all(b in geo for b in energized):
        return geo
    return _tree_layout(feeder, energized)


def _geodata(net) -> dict[int, tuple[float, float]]:
    if "geo" not in net.bus:
        return {}
    out = {}
    for b, g in net.bus["geo"].items():
        if not isinstance(g, str) or not g:
            continue
        try:
            x, y = json.loads(g)["coordinates"][:2]
        except (ValueError, KeyError, TypeError):
            continue
        out[int(b)] = (float(x), float(y))
    return out


def _branches(net) -> list[tuple[int, int]]:
    pairs = []
    for tab, a, b in (("line", "from_bus", "to_bus"), ("trafo", "hv_bus", "lv_bus")):
        df = net[tab]
        df = df[df.in_service]
        if tab == "line" and len(net.switch):
            sw = net.switch
            open_lines = set(sw.element[(sw.et == "l") & ~sw.closed])
            df = df[~df.index.isin(open_lines)]
        pairs += list(zip(df[a].astype(int), df[b].astype(int)))
    if len(net.switch):
        sw = net.switch[(net.switch.et == "b") & net.switch.closed]
        pairs += list(zip(sw.bus.astype(int), sw.element.astype(int)))
    return pairs


def _tree_layout(feeder: Feeder, energized: list[int]) -> dict[int, tuple[float, float]]:
    net = feeder._net
    adj: dict[int, list[int]] = {b: [] for b in energized}
    for u, v in _branches(net):
        if u in adj and v in adj:
            adj[u].append(v)
            adj[v].append(u)
    root = int(net.ext_grid.bus[net.ext_grid.in_service].iloc[0])
    parent, depth, order = {root: -1}, {root: 0}, [root]
    q = deque([root])
    while q:
        u = q.popleft()
        for v in sorted(adj[u]):
            if v not in parent:
                parent[v], depth[v] = u, depth[u] + 1
                order.append(v)
                q.append(v)
    children: dict[int, list[int]] = {b: [] for b in order}
    for b in order[1:]:
        children[parent[b]].append(b)
    y: dict[int, float] = {}
    counter = [0.0]

    def place(b: int) -> None:  # iterative post-order would be longer; trees here are shallow enough
        stack = [(b, False)]
        while stack:
            node, done = stack.pop()
            kids = children[node]
            if done or not kids:
                if kids:
                    y[node] = float(np.mean([y[k] for k in kids]))
                else:
                    y[node] = counter[0]
                    counter[0] += 1
                continue
            stack.append((node, True))
            stack.extend((k, False) for k in reversed(kids))

    place(root)
    return {b: (float(depth[b]), -y[b]) for b in order}


def feeder_map(feeder: Feeder) -> go.Figure:
    """Plotly figure of the feeder: zones coloured, inverters as stars, the substation a square."""
    net = feeder._net
    pos = bus_positions(feeder)
    ex, ey = [], []
    for u, v in _branches(net):
        if u in pos and v in pos:
            ex += [pos[u][0], pos[v][0], None]
            ey += [pos[u][1], pos[v][1], None]
    fig = go.Figure()
    fig.add_trace(go.Scattergl(x=ex, y=ey, mode="lines", line=dict(color="#bbbbbb", width=1),
                               hoverinfo="skip", showlegend=False))
    colour = {a: _PALETTE[i % len(_PALETTE)] for i, a in enumerate(feeder.agents)}
    buses = [b for b in feeder.bus_zone.index if b in pos]
    zone = feeder.bus_zone.loc[buses]
    fig.add_trace(go.Scattergl(
        x=[pos[b][0] for b in buses], y=[pos[b][1] for b in buses], mode="markers",
        marker=dict(size=6, color=[colour.get(z, "#000000") for z in zone]),
        text=[f"bus {b} ({net.bus.vn_kv.at[b]} kV), zone {z}" for b, z in zip(buses, zone)],
        hoverinfo="text", name="buses (colour = zone)"))
    inv = feeder.inverters.drop_duplicates("bus")
    fig.add_trace(go.Scattergl(
        x=[pos[b][0] for b in inv.bus], y=[pos[b][1] for b in inv.bus], mode="markers",
        marker=dict(symbol="star", size=13 if len(inv) <= 40 else 8, color=[colour[a] for a in inv.agent],
                    line=dict(color="black", width=1)),
        text=[f"agent {a}: {(feeder.inverters.agent == a).sum()} inverter(s), "
              f"{feeder.inverters.p_peak_mw[feeder.inverters.agent == a].sum():.3f} MW peak"
              for a in inv.agent],
        hoverinfo="text", name="PV inverters (agents)"))
    slack = int(net.ext_grid.bus[net.ext_grid.in_service].iloc[0])
    if slack in pos:
        fig.add_trace(go.Scattergl(x=[pos[slack][0]], y=[pos[slack][1]], mode="markers",
                                   marker=dict(symbol="square", size=14, color="black"),
                                   name="substation (slack)", hoverinfo="name"))
    s = feeder.summary()
    fig.update_layout(
        title=f"{feeder.name}: {s['buses']} buses, {s['agents']} agents, PV {s['pv_peak_mw']} MW peak "
              f"({s['pv_to_load']}× load)",
        template="plotly_white", height=700, xaxis=dict(visible=False), yaxis=dict(visible=False),
        legend=dict(orientation="h"))
    return fig
