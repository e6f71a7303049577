"""A feeder as a picture: buses coloured by agent zone, inverters marked, branches and the agent
graph drawn, buses labelled on hover and, once zoomed in far enough, on the map itself.

Bus positions come from the net's geodata where every energized bus has it, otherwise from a
tree layout of the feeder (depth from the substation across, leaves spread down). Zone colours
are a colouring of the agent graph: neighbouring zones never share a colour, zones two hops
apart avoid it where the palette allows, and colours are used evenly.
"""

from __future__ import annotations

import json
from collections import deque

import numpy as np
import plotly.graph_objects as go

from gridrl.grid.feeder import Feeder


__all__ = ["ZOOM_LABELS_JS", "bus_labels", "bus_positions", "feeder_map", "zone_colors"]

# distinct hues, none grey or black (branches and the substation are)
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
            "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e7ba52"]

#: Bus labels appear on a map once no more than ``max`` of them are in view (plotly post-script;
#: ``{plot_id}`` is filled in by plotly). The label positions travel in ``layout.meta.zoom_labels``.
ZOOM_LABELS_JS = """
(function () {
  var gd = document.getElementById('{plot_id}');
  var m = gd && gd.layout.meta && gd.layout.meta.zoom_labels;
  if (!m) { return; }
  function update() {
    var xr = gd._fullLayout.xaxis.range, yr = gd._fullLayout.yaxis.range;
    var x0 = Math.min(xr[0], xr[1]), x1 = Math.max(xr[0], xr[1]);
    var y0 = Math.min(yr[0], yr[1]), y1 = Math.max(yr[0], yr[1]);
    var xs = [], ys = [], ts = [];
    for (var i = 0; i < m.x.length; i++) {
      if (m.x[i] >= x0 && m.x[i] <= x1 && m.y[i] >= y0 && m.y[i] <= y1) {
        xs.push(m.x[i]); ys.push(m.y[i]); ts.push(m.text[i]);
      }
    }
    var show = xs.length <= m.max;
    Plotly.restyle(gd, {x: [show ? xs : []], y: [show ? ys : []], text: [show ? ts : []]}, [m.trace]);
  }
  gd.on('plotly_relayout', update);
  update();
})();
"""


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


def zone_colors(feeder: Feeder) -> dict[str, str]:
    """Agent → colour such that agents that are neighbours on the agent graph differ (and, where
    the palette allows, agents two hops apart too), with the colours used evenly."""
    hops = np.asarray(feeder.hop_distance)
    n = len(feeder.agents)
    order = sorted(range(n), key=lambda i: (-int((hops[i] == 1).sum()), i))  # most neighbours first
    colour: dict[int, int] = {}
    used = np.zeros(len(_PALETTE), dtype=int)
    for i in order:
        for radius in (2, 1, 0):
            banned = {colour[j] for j in colour if 0 < hops[i, j] <= radius}
            free = [c for c in range(len(_PALETTE)) if c not in banned]
            if free:
                break
        else:  # more neighbours than colours: the colour fewest neighbours have
            clash = np.bincount([colour[j] for j in colour if hops[i, j] == 1], minlength=len(_PALETTE))
            free = [int(np.argmin(clash))]
        pick = min(free, key=lambda c: (used[c], c))
        colour[i] = pick
        used[pick] += 1
    return {a: _PALETTE[colour[i]] for i, a in enumerate(feeder.agents)}


def bus_labels(feeder: Feeder) -> dict[int, str]:
    """Bus index → the name a reader of the case recognises (the same convention as agent names)."""
    from gridrl.grid.sources import bus_names

    names, _ = bus_names(feeder.spec, feeder._net)
    return {int(b): str(n) for b, n in names.items()}


def feeder_map(feeder: Feeder, *, max_labels: int = 80) -> go.Figure:
    """Plotly figure of the feeder: zones coloured (neighbours differ), inverters as stars, the
    substation a square, the agent graph's edges dashed; buses named on hover, and on the map
    once at most ``max_labels`` are in view (write it with :data:`ZOOM_LABELS_JS` as post-script)."""
    net = feeder._net
    pos = bus_positions(feeder)
    ex, ey = [], []
    for u, v in _branches(net):
        if u in pos and v in pos:
            ex += [pos[u][0], pos[v][0], None]
            ey += [pos[u][1], pos[v][1], None]
    fig = go.Figure()
    big = len(pos) > 1500  # WebGL beyond that; SVG below keeps text crisp
    scatter = go.Scattergl if big else go.Scatter
    fig.add_trace(scatter(x=ex, y=ey, mode="lines", line=dict(color="#bbbbbb", width=1), hoverinfo="skip",
                          name="branches"))
    colour = zone_colors(feeder)
    inv = feeder.inverters.drop_duplicates("bus")
    agent_pos = {a: pos[b] for a, b in zip(inv.agent, inv.bus) if b in pos}
    gx, gy = [], []
    adj = np.asarray(feeder.adjacency, dtype=bool)
    for i, a in enumerate(feeder.agents):
        for j in np.nonzero(adj[i])[0]:
            b = feeder.agents[j]
            if i < j and a in agent_pos and b in agent_pos:
                gx += [agent_pos[a][0], agent_pos[b][0], None]
                gy += [agent_pos[a][1], agent_pos[b][1], None]
    fig.add_trace(scatter(x=gx, y=gy, mode="lines", line=dict(color="rgba(60,60,60,0.55)", width=1.5, dash="dash"),
                          hoverinfo="skip", name="agent graph (neighbours)"))
    buses = [b for b in feeder.bus_zone.index if b in pos]
    zone = feeder.bus_zone.loc[buses]
    name = bus_labels(feeder)
    labels = [name[b] for b in buses]
    fig.add_trace(scatter(
        x=[pos[b][0] for b in buses], y=[pos[b][1] for b in buses], mode="markers",
        marker=dict(size=6 if not big else 4, color=[colour.get(z, "#000000") for z in zone]),
        text=[f"{lab} (index {b}, {net.bus.vn_kv.at[b]:g} kV), zone of agent {z}"
              for lab, b, z in zip(labels, buses, zone)],
        hoverinfo="text", name="buses (colour = agent zone)"))
    fig.add_trace(scatter(
        x=[pos[b][0] for b in inv.bus], y=[pos[b][1] for b in inv.bus], mode="markers",
        marker=dict(symbol="star", size=13 if len(inv) <= 40 else 8, color=[colour[a] for a in inv.agent],
                    line=dict(color="black", width=1)),
        text=[f"agent {a}: {(feeder.inverters.agent == a).sum()} inverter(s), "
              f"{feeder.inverters.p_peak_mw[feeder.inverters.agent == a].sum():.3f} MW peak"
              for a in inv.agent],
        hoverinfo="text", name="PV inverters (agents)"))
    slack = int(net.ext_grid.bus[net.ext_grid.in_service].iloc[0])
    if slack in pos:
        fig.add_trace(go.Scatter(x=[pos[slack][0]], y=[pos[slack][1]], mode="markers",
                                 marker=dict(symbol="square", size=14, color="black"),
                                 name="substation (slack)", hoverinfo="name"))
    fig.add_trace(go.Scatter(x=[], y=[], mode="text", text=[], textposition="top center", hoverinfo="skip",
                             textfont=dict(size=10, color="#222222"), name="bus labels (zoom in)", showlegend=False))
    s = feeder.summary()
    fig.update_layout(
        title=f"{feeder.name}: {s['buses']} buses, {s['agents']} agents, PV {s['pv_peak_mw']} MW peak "
              f"({s['pv_to_load']}× load)",
        template="plotly_white", height=700, xaxis=dict(visible=False), yaxis=dict(visible=False),
        legend=dict(orientation="h"), hovermode="closest",
        meta={"zoom_labels": {"trace": len(fig.data) - 1, "max": int(max_labels),
                              "x": [pos[b][0] for b in buses], "y": [pos[b][1] for b in buses], "text": labels}})
    return fig
