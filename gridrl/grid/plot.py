"""A feeder as a picture: buses coloured by agent zone, inverters marked, branches and the agent
graph drawn, buses labelled on hover and on the map: every bus where there are few enough,
otherwise the agents' buses and the substation, and every bus in view once zoomed in far enough.
Each label sits beside its marker, on the side where it covers no other label or marker.

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


__all__ = ["ZOOM_LABELS_JS", "bus_labels", "bus_positions", "feeder_map", "label_sides", "zone_colors"]

# distinct hues, none grey or black (branches and the substation are)
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
            "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e7ba52"]

#: Bus labels on a map: every bus in view once no more than ``max`` are in view, else the
#: ``always`` ones in view (the agents' buses and the substation) if no more than ``max``. Plotly post-script (``{plot_id}`` is
#: filled in by plotly); the labels, their sides and marker sizes travel in ``layout.meta.zoom_labels``.
ZOOM_LABELS_JS = """
(function () {
  var gd = document.getElementById('{plot_id}');
  var m = gd && gd.layout.meta && gd.layout.meta.zoom_labels;
  if (!m) { return; }
  var always = {};
  (m.always || []).forEach(function (i) { always[i] = true; });
  function update() {
    var xr = gd._fullLayout.xaxis.range, yr = gd._fullLayout.yaxis.range;
    var x0 = Math.min(xr[0], xr[1]), x1 = Math.max(xr[0], xr[1]);
    var y0 = Math.min(yr[0], yr[1]), y1 = Math.max(yr[0], yr[1]);
    var inView = [];
    for (var i = 0; i < m.x.length; i++) {
      if (m.x[i] >= x0 && m.x[i] <= x1 && m.y[i] >= y0 && m.y[i] <= y1) { inView.push(i); }
    }
    var few = inView.filter(function (i) { return always[i]; });
    var show = inView.length <= m.max ? inView : (few.length <= m.max ? few : []);
    function pick(a) { return show.map(function (i) { return a[i]; }); }
    Plotly.restyle(gd, {x: [pick(m.x)], y: [pick(m.y)], text: [pick(m.text)], textposition: [pick(m.position)],
                        'marker.size': [pick(m.size)]}, [m.trace]);
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
    substation a square, the agent graph's edges dashed; buses named on hover and on the map:
    all of them when at most ``max_labels`` are in view, else the agents' buses and the
    substation when at most that many of those are (write it with :data:`ZOOM_LABELS_JS` as
    post-script)."""
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
    bus_size, star_size, slack_size = (6 if not big else 4), (13 if len(inv) <= 40 else 8), 14
    fig.add_trace(scatter(
        x=[pos[b][0] for b in buses], y=[pos[b][1] for b in buses], mode="markers",
        marker=dict(size=bus_size, color=[colour.get(z, "#000000") for z in zone]),
        text=[f"{lab} (index {b}, {net.bus.vn_kv.at[b]:g} kV), zone of agent {z}"
              for lab, b, z in zip(labels, buses, zone)],
        hoverinfo="text", name="buses (colour = agent zone)"))
    fig.add_trace(scatter(
        x=[pos[b][0] for b in inv.bus], y=[pos[b][1] for b in inv.bus], mode="markers",
        marker=dict(symbol="star", size=star_size, color=[colour[a] for a in inv.agent],
                    line=dict(color="black", width=1)),
        text=[f"agent {a}: {(feeder.inverters.agent == a).sum()} inverter(s), "
              f"{feeder.inverters.p_peak_mw[feeder.inverters.agent == a].sum():.3f} MW peak"
              for a in inv.agent],
        hoverinfo="text", name="PV inverters (agents)"))
    slack = int(net.ext_grid.bus[net.ext_grid.in_service].iloc[0])
    if slack in pos:
        fig.add_trace(go.Scatter(x=[pos[slack][0]], y=[pos[slack][1]], mode="markers",
                                 marker=dict(symbol="square", size=slack_size, color="black"),
                                 name="substation (slack)", hoverinfo="name"))
    # the labels: text beside an invisible marker as large as the bus's own, so that no label sits on a marker
    agent_buses = set(int(b) for b in inv.bus)
    size = [slack_size if b == slack else (star_size if b in agent_buses else bus_size) for b in buses]
    always = [k for k, b in enumerate(buses) if b == slack or b in agent_buses]
    x_range, y_range = _padded_range([pos[b][0] for b in buses]), _padded_range([pos[b][1] for b in buses])
    extent = [1.35 * z if b in agent_buses and b != slack else z for z, b in zip(size, buses)]  # a star's tips
    sides = label_sides([pos[b] for b in buses], labels, extent, x_range=x_range, y_range=y_range,
                        first=always, all_of_them=len(buses) <= 600)
    fig.add_trace(go.Scatter(x=[], y=[], mode="markers+text", text=[], textposition=[], hoverinfo="skip",
                             marker=dict(size=[], opacity=0), cliponaxis=False,
                             textfont=dict(size=_LABEL_FONT_PX, color="#222222"), name="bus labels",
                             showlegend=False))
    s = feeder.summary()
    hint = ("" if len(buses) <= max_labels else "<br><sup>agents' buses labelled; zoom in to label every bus</sup>"
            if len(always) <= max_labels else "<br><sup>zoom in to label the buses</sup>")
    fig.update_layout(
        title=f"{feeder.name}: {s['buses']} buses, {s['agents']} agents, PV {s['pv_peak_mw']} MW peak "
              f"({s['pv_to_load']}× load){hint}",
        template="plotly_white", height=_MAP_HEIGHT_PX, margin=_MAP_MARGIN_PX,
        xaxis=dict(visible=False, range=x_range), yaxis=dict(visible=False, range=y_range),
        legend=dict(orientation="h", y=-0.01, yanchor="top"), hovermode="closest",
        meta={"zoom_labels": {"trace": len(fig.data) - 1, "max": int(max_labels), "always": always,
                              "x": [pos[b][0] for b in buses], "y": [pos[b][1] for b in buses], "text": labels,
                              "position": sides, "size": size}})
    return fig


# The map's geometry as label placement assumes it: a figure at least this wide (a wider one only
# spreads the buses further apart), this tall, these margins.
_MAP_WIDTH_PX, _MAP_HEIGHT_PX = 900, 700
_MAP_MARGIN_PX = dict(l=20, r=20, t=80, b=70)
_LABEL_FONT_PX = 10
_SIDES = ("top center", "bottom center", "middle right", "middle left",
          "top right", "top left", "bottom right", "bottom left")


def _padded_range(values: list[float], pad: float = 0.06) -> list[float]:
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return [lo - pad * span, hi + pad * span]


def label_sides(points: list[tuple[float, float]], texts: list[str], marker_px: list[float], *,
                x_range: list[float], y_range: list[float], first: list[int] = (),
                all_of_them: bool = True) -> list[str]:
    """For each point's label, the side of its marker (a plotly ``textposition``) where it covers
    no other label or marker, on the map drawn at its smallest assumed size: greedily, the
    ``first`` points' labels first (those shown at full view), then the rest (shown once zoomed
    in, where there is more room); where every side is taken, the side that covers least.
    ``marker_px``: each marker's width as drawn; ``all_of_them=False`` places only the ``first``
    (a big feeder; the rest go on top)."""
    w = _MAP_WIDTH_PX - _MAP_MARGIN_PX["l"] - _MAP_MARGIN_PX["r"]
    h = _MAP_HEIGHT_PX - _MAP_MARGIN_PX["t"] - _MAP_MARGIN_PX["b"]
    xy = np.array(points, dtype=float).reshape(-1, 2)
    px = (xy[:, 0] - x_range[0]) / (x_range[1] - x_range[0]) * w
    py = (y_range[1] - xy[:, 1]) / (y_range[1] - y_range[0]) * h  # screen y grows downwards
    r = np.asarray(marker_px, dtype=float) / 2
    markers = np.stack([px - r, py - r, px + r, py + r], axis=1)
    placed = np.zeros((0, 4))
    sides = ["top center"] * len(points)
    order = list(first) + ([k for k in range(len(points)) if k not in set(first)] if all_of_them else [])
    line, gap = 1.25 * _LABEL_FONT_PX, 2.0
    for k in order:
        tw = 0.6 * _LABEL_FONT_PX * len(texts[k])
        d = r[k] + gap
        boxes = {"top center": (-tw / 2, -d - line), "bottom center": (-tw / 2, d),
                 "middle right": (d, -line / 2), "middle left": (-d - tw, -line / 2),
                 "top right": (0.7 * d, -0.7 * d - line), "top left": (-0.7 * d - tw, -0.7 * d - line),
                 "bottom right": (0.7 * d, 0.7 * d), "bottom left": (-0.7 * d - tw, 0.7 * d)}
        others = np.concatenate([np.delete(markers, k, axis=0), placed])
        best, best_cover = "top center", np.inf
        for side in _SIDES:
            dx, dy = boxes[side]
            box = np.array([px[k] + dx, py[k] + dy, px[k] + dx + tw, py[k] + dy + line])
            ox = np.clip(np.minimum(others[:, 2], box[2]) - np.maximum(others[:, 0], box[0]), 0, None)
            oy = np.clip(np.minimum(others[:, 3], box[3]) - np.maximum(others[:, 1], box[1]), 0, None)
            cover = float((ox * oy).sum())
            if cover < best_cover:
                best, best_cover, best_box = side, cover, box
            if cover == 0:
                break
        sides[k] = best
        placed = np.vstack([placed, best_box])
    return sides
