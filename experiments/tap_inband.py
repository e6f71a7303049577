"""No control on every test day of the SimBench feeders, tap fixed at the net's position vs AVR.

    python experiments/tap_inband.py --out reports/tap_changer.md

Per feeder and tap setting: the controllable rate (share of steps with every monitored bus in
band), violation bus-hours, tap operations per day, energy loss and its parts, max loading and
overload branch-hours, from :func:`gridrl.evaluate.evaluate` with ``controller = none``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import gridrl
from gridrl.control import make_controller
from gridrl.env import EnvConfig
from gridrl.evaluate import evaluate


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--feeders", default="mv-rural,mv-urban,mvlv-rural")
    p.add_argument("--split", default="test")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    rows = []
    for name in args.feeders.split(","):
        feeder = gridrl.load_feeder(name)
        tc = feeder.power_flow().tap_changer
        for mode in ("fixed", "avr"):
            ev = evaluate(feeder, make_controller("none", feeder), split=args.split,
                          env_config=EnvConfig(tap_control=mode), num_envs=24)
            d = ev.days
            rows.append(f"| {name} | {mode} | {len(d)} | {d.controllable_rate.mean():.4f} | "
                        f"{d.violation_bus_hours.sum():.1f} | {d.tap_operations.mean():.2f} | "
                        f"{ev.steps.tap_pos.min():g}…{ev.steps.tap_pos.max():g} | "
                        f"{d.energy_loss_mwh.sum():.2f} | {d.line_loss_mwh.sum():.2f} | "
                        f"{d.trafo_load_loss_mwh.sum():.2f} | {d.trafo_noload_loss_mwh.sum():.2f} | "
                        f"{d.max_loading_pct.max():.1f} | {d.overload_branch_hours.sum():.1f} |")
            print(rows[-1], flush=True)
        rows.append(f"| | *{tc.describe()}* | | | | | | | | | | | |")
    command = "python experiments/tap_inband.py " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
    text = "\n".join([
        "# No control with the substation tap fixed and under AVR",
        "",
        f"`{command.strip()}`; AVR at its defaults (setpoint 1.0 p.u., deadband ±0.01 p.u., delay 1 step).",
        "",
        "| feeder | tap | days | controllable rate | violation bus-h | tap ops/day | tap range | "
        "loss MWh | lines | trafo load | trafo no-load | max loading % | overload branch-h |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
