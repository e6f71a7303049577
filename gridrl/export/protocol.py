"""The machine-readable description of an exported policy (``policy.json``): what each graph
reads and returns, in which units, how observations are normalised, which messages every agent
sends and receives each step, and what the inverter must apply.

It is written for the engineer who wires the graphs to inverters, and read back by gridrl's own
test of the export (:func:`gridrl.export.onnx_graph.numpy_pool` pools messages exactly as the
``messages`` section says), so description and graphs cannot drift apart unnoticed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["FORMAT", "describe_policy", "feature_unit"]

FORMAT = "gridrl-onnx-policy"

_UNITS = {
    "dv_pu": ("p.u.", "measured voltage magnitude minus 1 at zone bus slot k (slot 0: the agent's own bus)"),
    "p_mw": ("MW", "net active power injection (generation minus consumption) at zone bus slot k"),
    "q_mvar": ("MVAr", "net reactive power injection at zone bus slot k"),
    "mask": ("1", "1 where zone bus slot k is a real bus, 0 for padding (all four features of the slot are 0 then)"),
    "inv_p_mw": ("MW", "active power of the agent's inverters (summed)"),
    "inv_q_mvar": ("MVAr", "reactive power the agent's inverters apply now (set-points of the previous step)"),
    "inv_q_avail_mvar": ("MVAr", "available reactive power of the agent's inverters, sum of sqrt(s_max^2 - p^2)"),
    "sin_time": ("1", "sin(2 pi t / 24 h), t the local time of day"),
    "cos_time": ("1", "cos(2 pi t / 24 h)"),
    "dv_own_pu": ("p.u.", "own bus voltage minus 1"),
    "dv_min_pu": ("p.u.", "lowest zone bus voltage minus 1"),
    "dv_mean_pu": ("p.u.", "mean zone bus voltage minus 1"),
    "dv_max_pu": ("p.u.", "highest zone bus voltage minus 1"),
    "p_zone_mw": ("MW", "net active power injection summed over the zone"),
    "q_zone_mvar": ("MVAr", "net reactive power injection summed over the zone"),
    "pv_forecast_mw": ("MW", "forecast PV power of the agent's inverters k steps ahead (an oracle)"),
    "load_forecast_mw": ("MW", "forecast active load of the zone k steps ahead (an oracle)"),
}


def feature_unit(name: str) -> tuple[str, str]:
    """``(unit, meaning)`` of an observation feature name such as ``dv_pu[3]``."""
    base = name.partition("[")[0]
    return _UNITS.get(base, ("?", "see gridrl.env.core.VoltageControlEnv"))


def describe_policy(*, run, feeder, env, deployed, graphs: dict[str, str], sizes: dict[str, int]) -> dict[str, Any]:
    """``policy.json`` for the deployed policy of ``run`` (a :class:`~gridrl.marl.run.Run`) on
    ``feeder``, observed as in ``env`` (an environment of the evaluation configuration)."""
    from gridrl.version import __version__

    policy = deployed.inner
    graph = policy.graph
    agents = list(policy.agents)
    norm = policy.obs_norm
    n, d = len(agents), len(policy.obs_names)
    h, k = policy.actor.net.message_dim, graph.hops
    mean = _np(norm.mean)
    std = np.sqrt(_np(norm.var) + norm.eps)
    keep = _np(norm.keep).astype(bool)
    per_agent_stats = mean.ndim == 2
    features = []
    for c, name in enumerate(policy.obs_names):
        unit, meaning = feature_unit(name)
        row = {"index": c, "name": name, "unit": unit, "meaning": meaning, "normalised": not bool(keep[c])}
        if not per_agent_stats:
            row.update(mean=float(mean[c]) if not keep[c] else 0.0, std=float(std[c]) if not keep[c] else 1.0)
        features.append(row)

    bus_names = [int(b) for b in feeder.net.bus.index]
    zone = env.zone_index.numpy()
    inv = feeder.inverters
    links = graph.links()
    own_v, own_p, own_qa = deployed.own_columns
    agent_rows = []
    for i, name in enumerate(agents):
        mine = inv[inv["agent"] == name]
        receives = [{"from": agents[j], "hop": hop, "via": agents[last]} for r, j, hop, last in links if r == i]
        sends: dict[str, list[str]] = {}
        for r, j, hop, last in links:
            if last == i:
                sends.setdefault(agents[r], []).append(agents[j])
        agent_rows.append({
            "index": i, "name": name,
            "zone_buses": [bus_names[p] for p in zone[i] if p < len(bus_names)],
            "inverters": [{"sgen": int(s), "bus": int(r["bus"]), "s_max_mva": float(r["s_max_mva"]),
                           "p_peak_mw": float(r["p_peak_mw"])} for s, r in mine.iterrows()],
            "sends": [{"to": to, "messages_of": origin} for to, origin in sends.items()],
            "receives": receives,
            "floats_sent_per_step": h * sum(len(o) for o in sends.values()),
        })
    env_cfg = env.config
    envelope = deployed.describe()["envelope"]
    stats = deployed.statistics
    ratings = deployed.rating_range
    return {
        "format": FORMAT, "version": 1, "gridrl_version": __version__,
        "run": {"path": str(run.path), "algo": run.algo, "feeder": run.feeder, "feeder_hash": run.header["feeder_hash"],
                "checkpoint_sha256_16": run.hash, "seed": run.header["seed"],
                "selected_step": (run.checkpoint["driver"].get("best") or {}).get("env_steps")},
        "graphs": {name: {"file": f, "bytes": sizes[name]} for name, f in graphs.items()},
        "graph_choice": ("one graph shared by every agent, the agent's index (input 'agent', int64) selecting its "
                         "learned embedding" + (" and its own weights" if policy.actor.net.own_weights else "")
                         + ": the actor's weights are shared by all agents, so one file serves every inverter"),
        "step": {"minutes": env_cfg.step_minutes, "observation": env_cfg.observation,
                 "when": "at the start of each interval each agent measures, sends its message, receives its "
                         "neighbours' messages of the same instant, runs action.onnx and applies q_mvar for the "
                         "interval"},
        "agents": agent_rows,
        "inputs": {
            "obs": {"shape": ["batch", d], "dtype": "float32", "features": features,
                    "zone_layout": env_cfg.zone_layout,
                    "note": "raw measurements in the units listed; each agent reads only its own zone and inverters"},
            "agent": {"shape": ["batch"], "dtype": "int64", "meaning": "the agent's index (agents[].index)"},
        },
        "normalisation": {
            "in_graph": True,
            "formula": "clip((obs - mean) / std, -clip, clip) * valid[agent]; features with normalised = false "
                       "pass unchanged",
            "clip": float(norm.clip), "per_agent": per_agent_stats,
            **({"mean": mean.tolist(), "std": std.tolist()} if per_agent_stats else {}),
            "valid": _np(norm.valid).astype(int).tolist() if norm.valid is not None else None,
        },
        "messages": {
            "floats": h, "hops": k, "dtype": "float32",
            "produced_by": "message.onnx(obs, agent): the agent's own message, sent every step",
            "relay": "a message from an agent h >= 2 hops away arrives from agents[].receives[].via, which relays "
                     "it unchanged along a fixed shortest path; agents[].sends lists, per neighbour, whose "
                     "messages to forward (the agent's own first when listed) in that order",
            "pooled": "action.onnx input 'pooled' [k*floats]: for hop = 1..k, at offset (hop-1)*floats, the mean of "
                      "the messages that arrived this step from the agents listed in receives with that hop "
                      "(zeros if none arrived)",
            "heard": "action.onnx input 'heard' [k]: for hop = 1..k, (messages arrived) / (agents listed at that "
                     "hop); 0 where no agent lies at that hop",
            "lost": "a message that did not arrive is left out of the mean: absent, never stale",
            "floats_per_agent_step_mean": float(np.mean([r["floats_sent_per_step"] for r in agent_rows])),
            "outage_alert_floats_per_agent_step": float(deployed.communication - policy.communication),
        },
        "outputs": {
            "action": {"shape": ["batch"], "dtype": "float32", "unit": "share of available reactive power",
                       "meaning": "reactive power as a share of the agent's available reactive power "
                                  "sqrt(s_max^2 - p^2), in [-1, 1], positive injects; safety envelope applied"},
            "q_mvar": {"shape": ["batch"], "dtype": "float32", "unit": "MVAr",
                       "meaning": "action * inv_q_avail_mvar: the agent's reactive power set-point (generator "
                                  "convention, positive injects)"},
            "apply": "each of the agent's inverters sets q_mvar = action * sqrt(s_max^2 - p^2) of its own "
                     "(the agent's q_mvar split in proportion to its inverters' available reactive power) and holds "
                     "it for the interval",
        },
        "residual": None if policy.residual is None else {
            **policy.residual.record(), "in_graph": True,
            "statement": ("the policy's action is a residual on this curve: before the envelope, action = "
                          "clip(base + policy, -1, 1), base = a_now + damping * (f(v) * s / q_available - a_now) "
                          "at the agent's own measured voltage v (f: the curve's q at v, linear between "
                          "breakpoints, flat beyond; s = sqrt(p^2 + q_available^2); a_now = inv_q_mvar / "
                          "q_available, its reactive power now; 0 without headroom)"),
        },
        "envelope": {
            **envelope,
            "in_graph": True,
            "reads": {"own_voltage": policy.obs_names[own_v] + " + 1", "p": policy.obs_names[own_p],
                      "q_available": policy.obs_names[own_qa]},
            "ieee1547_b": {"v_pu": [0.92, 0.98, 1.02, 1.08], "q_share_of_s_rated": [0.44, 0.0, 0.0, -0.44]},
            "statement": ("near the band's edges the action sent is at least as corrective as IEEE 1547-B's at the "
                          "agent's own measured voltage: action <= a_B(v) where v >= v_max - margin, action >= a_B(v) "
                          "where v <= v_min + margin (a_B(v) = clip(f_B(v) * s / q_available, -1, 1), "
                          "s = sqrt(p^2 + q_available^2)); inside, the policy's action passes unchanged"),
            "settle": (None if not envelope.get("edge_settle") else
                       "the graph applies the statement at the voltage measured at the interval's start; during the "
                       "interval the inverter's own IEEE 1547-B volt-var function holds it as a limit on the q_mvar "
                       "sent (at least as corrective as a_B at the voltage it measures then), which settles as "
                       "comparisons model it (edge_settle)"),
            "outage_alerts": None if not envelope.get("outage_alert_hops") else {
                "in_graph": False,
                "rule": ("an agent whose reactive power at the interval's start is less than half of what its "
                         "set-point in force asks (action * q_available of the interval it was sent for, held within q_available "
                         "now; at least 2 % of its rating) raises an alert for the day; each step an agent takes the "
                         "highest alert level its neighbours on the agent graph send, less one (the agent out sends "
                         "outage_alert_hops + 1), and sends its own; an agent with a level above 0 applies the "
                         "statement's upper bound from v >= v_max - outage_margin_pu"),
                "outage_alert_hops": envelope.get("outage_alert_hops"),
                "outage_margin_pu": envelope.get("outage_margin_pu"),
                "deployment": ("the graph keeps no state between steps: the agent's controller keeps its previous "
                               "set-point and alert level, exchanges the level with its neighbours, and where alerted "
                               "clamps the graph's action to at most a_B(v) from v_max - outage_margin_pu"),
            },
            "handover": None if stats is None else {
                "rule": "an agent with a tested feature more than handover_z standard deviations from its training "
                        "mean acts as IEEE 1547-B droop, a_B(v)",
                "tested_features": [policy.obs_names[c] for c in range(d) if bool(stats[2][:, c].any())],
                "settle": "the graph gives a_B at the voltage measured at the interval's start; a handed-over "
                          "inverter runs its own IEEE 1547-B volt-var function, which settles on its voltage during "
                          "the interval (as comparisons model it)",
            },
            "rating_handover": None if ratings is None else {
                "rule": "an agent whose inverters report a rating s = sqrt(p^2 + q_available^2) > 0 outside "
                        "[low_mva, high_mva] (the ratings it was trained with, widened by rating_tolerance) acts as "
                        "IEEE 1547-B droop, a_B(v)",
                "low_mva": _np(ratings[0]).tolist(), "high_mva": _np(ratings[1]).tolist(),
            },
        },
        "network": {"file": graphs.get("network"), "note": "obs [batch, N, D] -> actions [batch, N], every message "
                    "delivered: for simulation, e.g. `gridrl score --controller network.onnx`"},
    }


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy()
