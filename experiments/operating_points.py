"""The operating point of every shipped feeder: yearly load and voltages without control.

For each feeder, every 15-minute step of the year (366 days) is solved with the inverters at
q = 0 by gridrl's batched power flow (which agrees with pandapower to 1e-6 p.u.; the feeder tests
re-check single steps with ``pandapower.runpp``), and the script reports the load the profiles
give (coincident yearly peak against the nominal load, load factor = mean / peak), the lowest and
highest monitored bus voltage of the year with their time, and how often and on how many test
days the band is left in each direction. Writes ``reports/operating_points.md``.

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
    return "\n".join(lines)


def main(names: list[str]) -> None:
    rows = []
    for name in names or gridrl.list_feeders():
        t0 = time.perf_counter()
        rows.append(year_without_control(gridrl.load_feeder(name)))
        print(f"{name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    command = "python experiments/operating_points.py" + "".join(f" {n}" for n in names)
    report = to_markdown(rows, command)
    print(report)
    if not names:
        write_text(Path(__file__).resolve().parents[1] / "reports" / "operating_points.md", report)


if __name__ == "__main__":
    main(sys.argv[1:])
