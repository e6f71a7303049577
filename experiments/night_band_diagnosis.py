"""Where trained policies leave the band with night-time reactive power, beside the optimum.

    python experiments/night_band_diagnosis.py --feeder ieee69 --runs RUN... [--split val]
        [--out reports/robustness/ieee69-night-val/diagnosis.md]

Evaluates, on the feeder's validation days (the default; never choose anything on test days)
with ``q_at_night = true``, the optimum (``opf``), the tuned droop fitted with night-time
reactive power and each run as deployed (safety envelope, hand-over), and writes one markdown
report: per controller the controllable rate and its out-of-band steps by time of day, split into
sags (the lowest monitored voltage below the band) and swells (the highest above it); the buses
most often out of band; and the reactive power the controllers give at night (steps without PV),
in all night steps and in the steps the policy leaves the band while the optimum does not.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import gridrl
from gridrl.control import make_controller
from gridrl.env import EnvConfig
from gridrl.evaluate import check_days, evaluate

#: the periods of the day the out-of-band steps are counted in (start hour, end hour, name)
PERIODS = ((0, 6, "night 0–6 h"), (6, 10, "morning 6–10 h"), (10, 16, "midday 10–16 h"),
           (16, 20, "evening 16–20 h"), (20, 24, "night 20–24 h"))


def _run_controller(run_dir: str, feeder, env: EnvConfig):
    from gridrl.marl.run import deployed, open_run

    run = open_run(run_dir)
    run.check_feeder(feeder)
    cfg = run.evaluation_config(env)
    ctrl = deployed(run.policy(name=Path(run_dir).name, feeder=feeder), feeder, cfg, trained=run.env_config)
    ctrl.name = Path(run_dir).name
    return ctrl, cfg


def _period(hour: pd.Series) -> pd.Series:
    out = pd.Series("", index=hour.index)
    for lo, hi, name in PERIODS:
        out[(hour >= lo) & (hour < hi)] = name
    return out


def diagnose(feeder, controllers, *, split: str, v_min: float, v_max: float) -> tuple[list[str], dict]:
    """The report's lines, and per controller its per-step table (for the comparisons)."""
    days = check_days(feeder, split, None)
    steps, lines = {}, []
    rows = ["| controller | rate | sag steps | swell steps | " + " | ".join(p[2] for p in PERIODS)
            + " | night Q, mean Mvar (steps without PV) | worst buses (out-of-band bus-steps) |",
            "|:---|---:|---:|---:|" + "---:|" * len(PERIODS) + "---:|:---|"]
    for label, (ctrl, env) in controllers.items():
        ev = evaluate(feeder, ctrl, split=split, days=days, voltage_days=days, env_config=env)
        s = ev.steps.assign(period=lambda d: _period(d["hour"]), night=lambda d: d["pv_p_mw"] <= 0.0,
                            sag=lambda d: d["v_min_pu"] < v_min, swell=lambda d: d["v_max_pu"] > v_max)
        steps[label] = s
        out = s[~s["controllable"]]
        per = out.groupby("period").apply(lambda g: f"{int(g['sag'].sum())} / {int(g['swell'].sum())}",
                                          include_groups=False)
        v = ev.voltages[ev.voltages["monitored"]]
        bad = v[(v["vm_pu"] < v_min) | (v["vm_pu"] > v_max)].groupby("bus").size().sort_values(ascending=False)
        worst = ", ".join(f"{b} ({n})" for b, n in bad.head(4).items()) or "–"
        rate = float(s["controllable"].mean())
        rows.append(f"| {label} | {rate:.4f} | {int(out['sag'].sum())} | {int(out['swell'].sum())} | "
                    + " | ".join(per.get(p[2], "0 / 0") for p in PERIODS)
                    + f" | {s.loc[s['night'], 'q_mvar'].mean():+.3f} | {worst} |")
    lines += [f"{feeder.name}, {len(days)} {split} days, reactive power at night; out-of-band steps per period as "
              f"sags / swells (a step counts as a sag when its lowest monitored voltage is below {v_min:g} p.u., "
              f"a swell when its highest is above {v_max:g}); night Q: the inverters' summed reactive power "
              f"(+ injects) in steps without PV.", "", *rows, ""]
    if "opf" in steps:
        opf = steps["opf"].set_index(["day", "step"])
        lines += ["Steps a controller leaves the band while the optimum keeps it: how many, how many of them "
                  "at night (no PV), the mean lowest voltage there and the summed reactive power (Mvar) the "
                  "controller and the optimum gave in them.", "",
                  "| controller | steps (opf in band) | at night | lowest voltage p.u. | Q controller | Q opf |",
                  "|:---|---:|---:|---:|---:|---:|"]
        for label, s in steps.items():
            if label == "opf":
                continue
            s = s.set_index(["day", "step"])
            miss = s[~s["controllable"] & opf["controllable"]]
            if miss.empty:
                lines.append(f"| {label} | 0 | – | – | – | – |")
                continue
            lines.append(f"| {label} | {len(miss)} | {int(miss['night'].sum())} | {miss['v_min_pu'].mean():.4f} | "
                         f"{miss['q_mvar'].mean():+.3f} | {opf.loc[miss.index, 'q_mvar'].mean():+.3f} |")
        lines.append("")
    return lines, steps


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--feeder", default="ieee69")
    p.add_argument("--runs", nargs="*", default=[])
    p.add_argument("--split", default="val", choices=("val", "test"))
    p.add_argument("--no-opf", action="store_true", help="leave the optimum out")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    feeder = gridrl.load_feeder(args.feeder)
    env = EnvConfig(q_at_night=True)
    controllers = {}
    if not args.no_opf:
        controllers["opf"] = (make_controller("opf", feeder), env)
    controllers["droop-tuned"] = (make_controller("droop", feeder, preset="tuned", env_config=env), env)
    for run in args.runs:
        controllers[Path(run).name] = _run_controller(run, feeder, env)
    v_min, v_max = (float(env.v_min_pu or feeder.v_min_pu), float(env.v_max_pu or feeder.v_max_pu))
    lines, _ = diagnose(feeder, controllers, split=args.split, v_min=v_min, v_max=v_max)
    cmd = "python experiments/night_band_diagnosis.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    text = "\n".join([f"`{cmd}`", "", *lines])
    if args.out:
        from gridrl.io import write_text

        write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
