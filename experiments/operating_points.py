"""The operating point of every shipped feeder: yearly load and voltages without control.

For each feeder, every 15-minute step of the year (366 days) is solved with the inverters at
q = 0 by gridrl's batched power flow (which agrees with pandapower to 1e-6 p.u.; the feeder tests
re-check single steps with ``pandapower.runpp``), and the script reports the load the profiles
give (coincident yearly peak against the nominal load, load factor = mean / peak), the lowest and
highest monitored bus voltage of the year with their time, and how often and on how many test
days the band is left in each direction; on feeders with a substation tap changer, the same year
again with the tap changer regulating (the environment's AVR). Writes ``reports/operating_points.md``.

    .venv/bin/python experiments/operating_points.py [feeder ...]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import gridrl
from gridrl.io import write_text

CHUNK = 512  # steps per batched solve (mvlv-rural: 5,479 buses)


def year_without_control(feeder) -> dict:
    """Yearly load figures and monitored voltage extremes of ``feeder`` with every inverter at q = 0."""
    prof = feeder.profiles
    pf = feeder.power_flow()
    mon = np.asarray(feeder.monitored)
    n = prof.n_steps
    vmin, vmax = np.empty(n), np.empty(n)
    ok = np.empty(n, dtype=bool)
    for start in range(0, n, CHUNK):
        t = np.arange(start, min(n, start + CHUNK))
        sgen_p = prof.sgen_p_mw[t]
        res = pf.solve(prof.load_p_mw[t], prof.load_q_mvar[t], sgen_p, np.zeros_like(sgen_p))
        vm = np.asarray(res.vm_pu)[:, mon]
        vmin[t], vmax[t], ok[t] = vm.min(axis=1), vm.max(axis=1), np.asarray(res.converged)
    stats = feeder.load_stats()
    nominal = float(feeder.net.load.loc[feeder.net.load.in_service, "p_mw"].sum())
    under, over = vmin < feeder.v_min_pu, vmax > feeder.v_max_pu
    test_days = feeder.days("test")

    def per_day(flag: np.ndarray) -> int:
        return int(flag.reshape(-1, prof.steps_per_day)[test_days].any(axis=1).sum())

    def when(k: int) -> str:
        return (prof.start + pd.Timedelta(minutes=int(k) * prof.step_minutes)).strftime("%d %b %H:%M")

    return {
        "feeder": feeder.name,
        "load_peak": feeder.spec.profiles.load_peak,
        "nominal_load_mw": nominal,
        "load_peak_mw": stats["load_peak_mw"],
        "peak_of_nominal": stats["load_peak_mw"] / nominal,
        "load_factor": stats["load_factor"],
        "pv_peak_mw": float(feeder.inverters.p_peak_mw.sum()),
        "agents": len(feeder.agents),
        "other_units": ", ".join(f"{k} {c['mw'] - c['agent_mw']:.3g}" for k, c in feeder.capacity_by_type().items()
                                 if c["units"] > c["agents"]) or "–",
        "v_min_pu": float(vmin[ok].min()), "v_min_at": when(np.flatnonzero(ok)[vmin[ok].argmin()]),
        "v_max_pu": float(vmax[ok].max()), "v_max_at": when(np.flatnonzero(ok)[vmax[ok].argmax()]),
        "steps_under_pct": 100 * float(under[ok].mean()), "steps_over_pct": 100 * float(over[ok].mean()),
        "test_days_under": per_day(under), "test_days_over": per_day(over),
        "test_days": len(test_days), "diverged_steps": int((~ok).sum()),
    }


def year_with_avr(feeder, *, chunk_days: int = 64) -> dict:
    """The same year without inverter control, but with the substation's on-load tap changer
    regulating its MV busbar (the environment's default AVR, its tap a state carried from step to
    step, each day starting where the AVR settles under its first operating point): monitored
    voltage extremes, steps out of the band and tap operations per day. Empty for a feeder
    without a substation tap changer."""
    import torch

    from gridrl.control.none import NoControl
    from gridrl.env import EnvConfig, make_env

    days = feeder.days("all")
    cfg = EnvConfig(start_hour=0.0, episode_hours=24.0, day_sampling="cycle")
    probe = make_env(feeder, split="all", num_envs=1, days=days[:1], config=cfg)
    if probe.tap_changer is None:
        return {}
    ctrl = NoControl(feeder)
    mon = np.asarray(probe.monitored.cpu(), dtype=bool)
    vmin, vmax, ops, ok = [], [], [], []
    for start in range(0, len(days), chunk_days):
        chunk = days[start:start + chunk_days]
        env = make_env(feeder, split="all", num_envs=len(chunk), days=chunk, config=cfg)
        obs = env.reset(days=chunk)
        lo, hi, conv = [], [], []
        for _ in range(env.episode_steps):
            with torch.no_grad():
                obs, _, done, info = env.step(ctrl.act(obs, env=env))
            vm = np.asarray(info["vm_pu"].cpu(), dtype=np.float64)[:, mon]
            lo.append(vm.min(axis=1))
            hi.append(vm.max(axis=1))
            conv.append(np.asarray(info["converged"].cpu(), dtype=bool))
            if bool(done.all()):
                break
        vmin.append(np.stack(lo, axis=1))
        vmax.append(np.stack(hi, axis=1))
        ok.append(np.stack(conv, axis=1))
        ops.append(np.asarray(env.episode_metrics()["tap_operations"].cpu(), dtype=np.float64))
    vmin, vmax, ok, ops = np.concatenate(vmin), np.concatenate(vmax), np.concatenate(ok), np.concatenate(ops)
    test = np.isin(days, feeder.days("test"))
    under, over = (vmin < feeder.v_min_pu) & ok, (vmax > feeder.v_max_pu) & ok
    return {"avr_v_min_pu": float(vmin[ok].min()), "avr_v_max_pu": float(vmax[ok].max()),
            "avr_steps_under_pct": 100 * float(under[ok].mean()), "avr_steps_over_pct": 100 * float(over[ok].mean()),
            "avr_test_days_under": int(under[test].any(axis=1).sum()),
            "avr_test_days_over": int(over[test].any(axis=1).sum()),
            "avr_tap_operations_per_day": float(ops.mean()), "avr_diverged_steps": int((~ok).sum())}


def to_markdown(rows: list[dict], command: str) -> str:
    head = ("| feeder | loads | nominal load MW | yearly peak MW (of nominal) | load factor | agents | "
            "agents' PV peak MW | other units MW | "
            "min v p.u. (when) | max v p.u. (when) | steps < 0.95 % | steps > 1.05 % | "
            "test days under / over |")
    lines = ["# Operating points: the year without control", "", f"Command: `{command}`", "",
             "Every 15-minute step of 2016 solved with every agent's inverter at q = 0 and every other unit "
             "(wind, hydro, biomass: not agents, see `gridrl feeders show`) at its own profile and power factor; "
             "monitored buses only. With every inverter at q = 0 the night setting (`q_at_night`) does not "
             "matter here. "
             "`loads = nominal`: the profiles are scaled so that the coincident yearly peak of the total load "
             "equals the case's nominal (design) load; `profiles`: SimBench's own scaling. Load factor = mean / "
             "peak of the total load. Under / over: test days (of 73) with at least one step below 0.95 / above "
             "1.05 p.u.", "", head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        lines.append(
            f"| {r['feeder']} | {r['load_peak']} | {r['nominal_load_mw']:.3f} | {r['load_peak_mw']:.3f} "
            f"({r['peak_of_nominal']:.0%}) | {r['load_factor']:.3f} | {r['agents']} | {r['pv_peak_mw']:.2f} | "
            f"{r['other_units']} | "
            f"{r['v_min_pu']:.4f} ({r['v_min_at']}) | {r['v_max_pu']:.4f} ({r['v_max_at']}) | "
            f"{r['steps_under_pct']:.2f} | {r['steps_over_pct']:.2f} | "
            f"{r['test_days_under']} / {r['test_days_over']} |")
    diverged = [f"{r['feeder']}: {r['diverged_steps']}" for r in rows if r["diverged_steps"]]
    lines += ["", f"Steps whose power flow did not converge: {', '.join(diverged) or 'none'}.", ""]
    avr = [r for r in rows if "avr_v_max_pu" in r]
    if avr:
        head = ("| feeder | min v p.u. | max v p.u. | steps < 0.95 % | steps > 1.05 % | test days under / over | "
                "tap operations per day |")
        lines += ["## With the substation's tap changer regulating", "",
                  "The same year, inverters still at q = 0, with the on-load tap changer of the HV/MV transformer "
                  "under automatic voltage regulation of its MV busbar (the environment's default AVR: setpoint, "
                  "deadband and delay of `gridrl.EnvConfig`; each day starts where the AVR settles under the day's first operating point). The table "
                  "above holds the tap where the net puts it (mv-urban: −1, the others: 0).", "",
                  head, "|" + "---|" * head.count(" | ") + "---|"]
        for r in avr:
            lines.append(f"| {r['feeder']} | {r['avr_v_min_pu']:.4f} | {r['avr_v_max_pu']:.4f} | "
                         f"{r['avr_steps_under_pct']:.2f} | {r['avr_steps_over_pct']:.2f} | "
                         f"{r['avr_test_days_under']} / {r['avr_test_days_over']} | "
                         f"{r['avr_tap_operations_per_day']:.2f} |")
        bad = [f"{r['feeder']}: {r['avr_diverged_steps']}" for r in avr if r["avr_diverged_steps"]]
        lines += ["", f"Steps whose power flow did not converge: {', '.join(bad) or 'none'}.", ""]
    return "\n".join(lines)


def main(names: list[str]) -> None:
    rows = []
    for name in names or gridrl.list_feeders():
        t0 = time.perf_counter()
        feeder = gridrl.load_feeder(name)
        rows.append({**year_without_control(feeder), **year_with_avr(feeder)})
        print(f"{name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    command = "python experiments/operating_points.py" + "".join(f" {n}" for n in names)
    report = to_markdown(rows, command)
    print(report)
    if not names:
        write_text(Path(__file__).resolve().parents[1] / "reports" / "operating_points.md", report)


if __name__ == "__main__":
    main(sys.argv[1:])
