"""Where a deployed policy's misses against IEEE 1547-B come from, on the validation days.

    python experiments/envelope_misses.py --feeder ieee141 --runs RUN [RUN ...] [--condition pv-1.5]
        [--env '{"pv_scale": 2.0}'] [--outage bus18,bus22] [--envelope '{"margin_pu": 0.02}'] [--out FILE.md]

For each run (deployed as the suite deploys it: the safety envelope and the hand-over) and for
1547-B droop, under one condition of the fault and growth suite, on the feeder's validation days:

- **misses**: the steps where a monitored bus leaves the band under the policy but none does under
  1547-B; per such step the buses out (their voltage and their zone's agent) and, for that agent,
  its own measured voltage when it acted (before its set-point moved), the policy's action, 1547-B's
  action at that voltage, the action sent, whether the envelope's edge region held it and whether
  it was handed over; and 1547-B's own-bus voltage and reactive power at the same step;
- **loss**: energy loss and reactive energy against 1547-B per hour of the day, and, where an
  agent's own measured voltage lay in the upper edge region (``v ≥ v_max − m``), how much more the
  policy absorbed there than 1547-B asked for.

Nothing here looks at the test days.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch


#: bus-steps of the misses shown in the markdown (all of them go to the CSV)
SHOWN = 40


def _recording(ctrl):
    """Wrap a deployed policy (a SafetyEnvelope) so each step keeps ``[B, N]`` arrays: own measured
    voltage, the policy's action, 1547-B's action there, the action sent and the hand-over."""
    from gridrl.env.envelope import droop_b_action

    rec = {k: [] for k in ("v_meas", "raw", "a_b", "sent", "handed", "qa")}
    inner_act, outer_act = ctrl.inner.act, ctrl.act
    last = {}

    def inner(obs, **kw):
        a = inner_act(obs, **kw)
        last["raw"] = torch.as_tensor(a, dtype=torch.float64).cpu().numpy()
        return a

    def outer(obs, **kw):
        sent = outer_act(obs, **kw)
        x = torch.as_tensor(obs).to(torch.float64).cpu()
        v, p, qa = ctrl.own_measurements(x)
        rec["v_meas"].append(v.numpy())
        rec["qa"].append(qa.numpy())
        rec["a_b"].append(droop_b_action(v, p, qa).numpy())
        rec["raw"].append(last["raw"])
        rec["sent"].append(torch.as_tensor(sent).numpy())
        rec["handed"].append((ctrl.outside(x) | ctrl.beside_outage(x, kw.get("message_mask"))).numpy())
        return sent

    ctrl.inner.act = inner
    ctrl.act = outer
    return rec


def _table(df: pd.DataFrame) -> str:
    fmt = lambda x: f"{x:.4f}" if isinstance(x, float) else str(x)  # noqa: E731
    return "\n".join(["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
                     + ["| " + " | ".join(fmt(x) for x in r) + " |" for r in df.itertuples(index=False)])


def _evaluate(feeder, ctrl, env_config, days):
    from gridrl.evaluate import evaluate

    return evaluate(feeder, ctrl, split="val", days=days, voltage_days=days, env_config=env_config)


def analyse(feeder_name: str, runs: list[str], condition: str, envelope: dict | None,
            days: list[int] | None = None, outage: str | None = None,
            env: dict | None = None) -> tuple[str, pd.DataFrame]:
    from gridrl.control import make_controller
    from gridrl.env import EnvConfig
    from gridrl.evaluate import check_days
    from gridrl.grid.feeder import load_feeder
    from gridrl.marl.run import deployed, open_run
    from gridrl.robustness import CONDITIONS

    feeder = load_feeder(feeder_name)
    description, changes = CONDITIONS[condition].label, dict(CONDITIONS[condition].env or {})
    if env:  # a condition of a suite's own (its [env] change), on top of the named one
        changes = {**changes, **env}
        description += ", " + ", ".join(f"{k} = {v}" for k, v in env.items())
    if outage is not None:  # these agents' inverters out all day (the worst-outage conditions, for them)
        out_agents = tuple(outage.split(","))
        missing = [a for a in out_agents if a not in feeder.agents]
        if missing:
            raise SystemExit(f"--outage {', '.join(missing)}: not an agent of {feeder_name} "
                             f"(agents: {', '.join(feeder.agents)})")
        changes, description = {**changes, "outage_agents": out_agents}, f"{description}, {outage} out"
    base = EnvConfig(**changes)
    days = check_days(feeder, "val", days)
    droop = make_controller("droop", feeder, env_config=base)
    droop.name = "droop-ieee1547-b"
    ev_b = _evaluate(feeder, droop, base, days)
    v_min, v_max = feeder.v_min_pu, feeder.v_max_pu
    zone_of = feeder.bus_zone
    lines = [f"# {feeder_name}, {description}, validation days ({len(days)})\n",
             f"1547-B: controllable rate {ev_b.steps['controllable'].mean():.4f}, loss "
             f"{ev_b.days['energy_loss_mwh'].sum():.2f} MWh\n"]
    miss_rows = []
    for path in runs:
        run = open_run(path)
        env_cfg = run.evaluation_config(base)
        ctrl = deployed(run.policy(feeder=feeder), feeder, env_cfg, envelope=envelope, trained=run.env_config)
        ctrl.name = Path(path).name
        rec = _recording(ctrl)
        ev = _evaluate(feeder, ctrl, env_cfg, days)
        arr = {k: np.stack(v) for k, v in rec.items()}  # [T, B, N]
        agents = list(ctrl.agents)
        m = ctrl.config.margin_pu
        s, sb = ev.steps.set_index(["day", "step"]), ev_b.steps.set_index(["day", "step"])
        missed = s.index[(~s["controllable"]) & sb["controllable"]]
        both = s.index[(~s["controllable"]) & (~sb["controllable"])]
        only_b = s.index[s["controllable"] & (~sb["controllable"])]
        vol = ev.voltages[ev.voltages["monitored"]].set_index(["day", "step"])
        ag = ev.agents.set_index(["day", "step", "agent"])
        ag_b = ev_b.agents.set_index(["day", "step", "agent"])
        for day, step in missed:
            b = days.index(day)
            vs = vol.loc[(day, step)]
            out = vs[(vs["vm_pu"] > v_max) | (vs["vm_pu"] < v_min)]
            for _, r in out.iterrows():
                agent = zone_of.get(int(r["bus"]))
                i = agents.index(agent) if agent in agents else -1
                row = {"run": ctrl.name, "day": day, "step": step, "hour": step * 0.25, "bus": int(r["bus"]),
                       "vm_pu": float(r["vm_pu"]), "agent": agent}
                if i >= 0:
                    vmeas = float(arr["v_meas"][step, b, i])
                    row.update(v_meas=vmeas, raw=float(arr["raw"][step, b, i]), a_b=float(arr["a_b"][step, b, i]),
                               sent=float(arr["sent"][step, b, i]), handed=bool(arr["handed"][step, b, i]),
                               edge=("upper" if vmeas >= v_max - m else "lower" if vmeas <= v_min + m else "free"),
                               v_own_after=float(ag.loc[(day, step, agent), "vm_pu"]),
                               q_mvar=float(ag.loc[(day, step, agent), "q_mvar"]),
                               q_avail_mvar=float(ag.loc[(day, step, agent), "q_avail_mvar"]),
                               v_own_1547b=float(ag_b.loc[(day, step, agent), "vm_pu"]),
                               q_mvar_1547b=float(ag_b.loc[(day, step, agent), "q_mvar"]),
                               prev_sent=float(arr["sent"][step - 1, b, i]) if step else np.nan,
                               prev_v_meas=float(arr["v_meas"][step - 1, b, i]) if step else np.nan,
                               prev_v_own_after=float(ag.loc[(day, step - 1, agent), "vm_pu"]) if step else np.nan)
                bus_b = ev_b.voltages[(ev_b.voltages["day"] == day) & (ev_b.voltages["step"] == step)
                                      & (ev_b.voltages["bus"] == int(r["bus"]))]["vm_pu"]
                row["vm_pu_1547b"] = float(bus_b.iloc[0]) if len(bus_b) else np.nan
                miss_rows.append(row)
        # loss and reactive power against 1547-B, per hour of the day
        hourly = pd.DataFrame({"hour": ev.steps["hour"].to_numpy() // 1,
                               "d_loss_mwh": (ev.steps["loss_mw"].to_numpy() - ev_b.steps["loss_mw"].to_numpy()) * 0.25,
                               "q_mvarh": ev.steps["q_mvar"].to_numpy() * 0.25,
                               "q_mvarh_1547b": ev_b.steps["q_mvar"].to_numpy() * 0.25,
                               "q_abs_mvarh": ev.steps["q_abs_mvar"].to_numpy() * 0.25,
                               "q_abs_mvarh_1547b": ev_b.steps["q_abs_mvar"].to_numpy() * 0.25,
                               "d_tap": ev.steps["tap_pos"].to_numpy() - ev_b.steps["tap_pos"].to_numpy()})
        tap_steps = hourly.groupby("hour")["d_tap"].mean()
        by_hour = hourly.drop(columns="d_tap").groupby("hour").sum().join(tap_steps)
        upper = arr["v_meas"] >= v_max - m
        live = arr["qa"] > 0
        up = upper & live
        over = np.where(up, arr["a_b"] - arr["sent"], 0.0)  # > 0: absorbs more than 1547-B asks for
        over_mvar = (over * arr["qa"]).sum() * 0.25
        handed = arr["handed"].mean()
        lines += [f"## {ctrl.name}\n",
                  f"controllable rate {ev.steps['controllable'].mean():.4f}, loss {ev.days['energy_loss_mwh'].sum():.2f} "
                  f"MWh ({ev.days['energy_loss_mwh'].sum() - ev_b.days['energy_loss_mwh'].sum():+.2f} against 1547-B); "
                  f"steps out of band only under the policy {len(missed)}, under both {len(both)}, only under 1547-B "
                  f"{len(only_b)}; hand-over on {100 * handed:.2f} % of agent-steps; own measured voltage in the upper "
                  f"edge region on {100 * up.mean():.2f} % of agent-steps, where the policy's action was below 1547-B's "
                  f"(more absorbing) on {100 * (up & (arr['raw'] < arr['a_b'] - 1e-9)).mean():.2f} % and the action sent "
                  f"absorbed {over_mvar:.1f} Mvarh more than 1547-B's at the measured voltage.\n",
                  "Per hour against 1547-B: loss difference MWh, reactive energy Mvarh (net, positive injects; "
                  "and of |q|), the tap's mean position difference:\n",
                  "| hour | Δ loss MWh | Q policy | Q 1547-B | \\|Q\\| policy | \\|Q\\| 1547-B | Δ tap |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {int(h)} | {r.d_loss_mwh:+.2f} | {r.q_mvarh:.1f} | {r.q_mvarh_1547b:.1f} | {r.q_abs_mvarh:.1f} | "
                  f"{r.q_abs_mvarh_1547b:.1f} | {'—' if np.isnan(r.d_tap) else f'{r.d_tap:+.2f}'} |"
                  for h, r in by_hour.iterrows() if abs(r.d_loss_mwh) >= 0.05]
        lines.append("")
    misses = pd.DataFrame(miss_rows)
    if len(misses):
        lines += ["## Buses out of band only under the policy\n",
                  f"The first {min(len(misses), SHOWN)} of {len(misses)} bus-steps (all in the .csv beside this file):\n",
                  _table(misses.head(SHOWN)), ""]
    return "\n".join(lines) + "\n", misses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--feeder", default="ieee141")
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--condition", default="nominal")
    ap.add_argument("--envelope", default="{}", help="EnvelopeConfig fields as JSON")
    ap.add_argument("--outage", help="these agents' inverters out all day (comma-separated)")
    ap.add_argument("--env", default="{}", help="further [env] changes as JSON (e.g. a suite's custom condition)")
    ap.add_argument("--days", type=int, nargs="+", help="only these validation days (default: all)")
    ap.add_argument("--out", help="markdown file (default: print)")
    args = ap.parse_args()
    text, misses = analyse(args.feeder, args.runs, args.condition, json.loads(args.envelope), args.days,
                            args.outage, json.loads(args.env))
    if args.out:
        from gridrl.io import write_text

        write_text(args.out, text)
        if len(misses):
            write_text(Path(args.out).with_suffix(".csv"), misses.to_csv(index=False, float_format="%.6g"))
    else:
        print(text)


if __name__ == "__main__":
    main()
