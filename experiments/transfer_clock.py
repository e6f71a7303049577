"""Does a transferable policy's time of day drive what it does on a feeder it never saw (issue 25)?

    python experiments/transfer_clock.py --feeder ieee141 --runs /work/runs/transfer/loo-ieee141-dppo-seed{0,2} --hold 7,15

On the feeder's **validation** days, each run's policy deployed as the comparisons deploy it, once
as it is and once per ``--hold`` hour with its clock inputs (``sin_time``, ``cos_time``) held at
that hour all day — everything else it reads unchanged. Prints the energy loss and its part
between 09:00 and 12:00 (the hours ieee141's zero-shot seed 2 loses in), beside no control. A
probe, not a controller: holding the clock is no deployment option.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from gridrl.control import make_controller
from gridrl.grid.feeder import load_feeder
from gridrl.marl.run import deployed, open_run
from transfer_diagnose import rollout


def day_loss(feeder, ctrl, days, config, hold: float | None, *, learned: bool = True) -> tuple[float, np.ndarray]:
    """Energy loss (MWh) of ``ctrl`` over whole ``days`` and per hour of day, its clock inputs
    held at hour ``hold`` (``None``: as they are); ``learned``: a run's controller, which reads
    the step's message mask."""
    def held(x, names):
        x[..., names.index("sin_time")] = math.sin(2 * math.pi * hold / 24)
        x[..., names.index("cos_time")] = math.cos(2 * math.pi * hold / 24)
        return x

    r = rollout(feeder, ctrl, days, config, learned=learned, seen=None if hold is None else held)
    energy = r["loss_mw"].sum(1) * r["hours"]                                   # [T] MWh
    hourly = np.bincount((np.arange(len(energy)) * r["hours"]).astype(int) % 24, weights=energy, minlength=24)
    return float(energy.sum()), hourly


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--feeder", required=True)
    ap.add_argument("--runs", type=Path, nargs="+", required=True)
    ap.add_argument("--hold", default="7,15", help="hours to hold the clock inputs at, comma-separated")
    args = ap.parse_args(argv)
    feeder = load_feeder(args.feeder)
    days = [int(d) for d in feeder.days("val")]
    holds = [None] + [float(h) for h in args.hold.split(",") if h]
    config = open_run(args.runs[0]).evaluation_config()
    total, hourly = day_loss(feeder, make_controller("none", feeder), days, config, None, learned=False)
    print(f"{args.feeder}, {len(days)} validation days; energy loss MWh (09:00-12:00)")
    print(f"none: {total:.3f} ({hourly[9:12].sum():.3f})")
    for path in args.runs:
        run = open_run(path)
        policy = run.policy(name=path.name, feeder=feeder)
        for hold in holds:
            ctrl = deployed(policy, feeder, run.evaluation_config(), trained_on=run.feeders, trained=run.env_config)
            total, hourly = day_loss(feeder, ctrl, days, run.evaluation_config(), hold)
            print(f"{path.name}, clock {'as it is' if hold is None else f'held at {hold:g}:00'}: {total:.3f} "
                  f"({hourly[9:12].sum():.3f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
