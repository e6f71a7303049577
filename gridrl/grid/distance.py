"""Electrical distance from the substation: where along the feeder a bus sits, in ohms.

Voltage rise and drop grow with the impedance between a bus and the substation, not with the
number of buses or kilometres in between, so voltage profiles are drawn against the summed branch
impedance |Z| (and R) along the path from the slack bus. Branch impedances are pandapower's
(``pandapower.topology.create_nxgraph`` with ``calc_branch_impedances``), taken in per unit so
that lines on different voltage levels and transformers add up, then expressed in ohms referred
to one voltage: the feeder side of the substation (the low-voltage side of the transformers at
the slack bus, or the slack bus's own voltage when it feeds lines directly). On a one-level
feeder such as ieee33 these are the plain line ohms. Closed bus-bus switches count as zero
impedance, open switches and out-of-service branches as absent.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
import pandas as pd

__all__ = ["ElectricalDistance", "electrical_distance"]


@dataclass(frozen=True)
class ElectricalDistance:
    """Per energized bus (index ``net.bus.index``): ``parent`` (next bus towards the slack, −1 at
    the slack), ``z_ohm`` and ``r_ohm`` (summed along the path, referred to ``v_ref_kv``)."""

    table: pd.DataFrame
    v_ref_kv: float


def _pu(key: str):
    def weight(u, v, data) -> float:
        edges = data.values() if all(isinstance(d, dict) for d in data.values()) else [data]
        return min(float(e.get(key, 0.0)) for e in edges)  # switches carry no impedance
    return weight


def electrical_distance(feeder) -> ElectricalDistance:
    """Summed |Z| and R from the substation to every energized bus of ``feeder`` (lowest-|Z| path;
    on a radial feeder, the path)."""
    import pandapower.topology as top

    net = feeder.net
    graph = top.create_nxgraph(net, calc_branch_impedances=True, branch_impedance_unit="pu", multi=True)
    slack = int(net.ext_grid.bus[net.ext_grid.in_service].iloc[0])
    pred, dist = nx.dijkstra_predecessor_and_distance(graph, slack, weight=_pu("z_pu"))
    order = sorted(dist, key=dist.get)
    r_pu = {slack: 0.0}
    parent = {slack: -1}
    r_of = _pu("r_pu")
    z_of = _pu("z_pu")
    for bus in order[1:]:
        # among equally short ways in, the one whose branch carries the impedance (not a switch)
        p = max(pred[bus], key=lambda q: z_of(q, bus, graph.get_edge_data(q, bus)))
        parent[bus] = int(p)
        r_pu[bus] = r_pu[p] + r_of(p, bus, graph.get_edge_data(p, bus))
    v_ref_kv = _reference_kv(net, slack)
    base_ohm = v_ref_kv ** 2 / float(net.sn_mva)
    buses = np.asarray(order, dtype=np.int64)
    table = pd.DataFrame({"parent": [parent[b] for b in order],
                          "z_ohm": [dist[b] * base_ohm for b in order],
                          "r_ohm": [r_pu[b] * base_ohm for b in order]}, index=pd.Index(buses, name="bus"))
    return ElectricalDistance(table=table.sort_index(), v_ref_kv=v_ref_kv)


def _reference_kv(net, slack: int) -> float:
    trafo = net.trafo[(net.trafo.hv_bus == slack) & net.trafo.in_service]
    if len(trafo):
        return float(net.bus.vn_kv.loc[trafo.lv_bus].max())
    return float(net.bus.vn_kv.at[slack])
