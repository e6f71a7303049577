"""Does a droop curve read once on the measured voltage oscillate? On one feeder's validation days:
the tuned droop settled to its fixed point within each interval (``droop:tuned``), the same curve
read once at each agent's own measured voltage (the residual's base alone: a residual policy
whose own part is zero), undamped and damped (``--damping``: the base moves that share of the
way from the agent's reactive power now to the curve; :mod:`gridrl.env.residual`), and trained
runs (residual or from scratch) as a comparison deploys them, each also with its whole action
smoothed (``--smoothing``: the envelope's ``smoothing``, :mod:`gridrl.env.envelope`). Per controller: controllable rate, energy loss, and how much the agents' actions (share of
the available reactive power) swing from one interval to the next: the mean |Δa| over agent-steps
with headroom, and the share of agent-steps that reverse a move of more than 0.05 with a move of
more than 0.05 (a period-2 swing: a_t − a_{t−1} and a_{t+1} − a_t of opposite signs).

    python experiments/residual_oscillation.py --feeder ieee33 --runs RUN... [--smoothing 0.5 0.3] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gridrl.control import make_controller
from gridrl.control.tuning import residual_curve
from gridrl.env import EnvConfig
from gridrl.env.residual import ResidualBase
from gridrl.evaluate import evaluate
from gridrl.grid.feeder import load_feeder
from gridrl.marl.run import deployed, open_run

SWING = 0.05


class OneShot:
    """The residual's base alone: the curve read once at each agent's own measured voltage."""

    hops, communication = 0, 0.0
    information = "own voltage at the start of the interval (read once)"

    def __init__(self, base: ResidualBase):
        self.base, self.name = base, "droop-tuned-" + ("once" if base.damping == 1 else f"damped-{base.damping:g}")

    def act(self, obs, *, env=None):
        return self.base(torch.as_tensor(obs))


def swings(agents: pd.DataFrame) -> tuple[float, float]:
    """Mean |Δa| and the share of period-2 swings over agent-steps with headroom (see the module docstring)."""
    a = np.where(agents["q_avail_mvar"] > 0, agents["q_mvar"] / agents["q_avail_mvar"].clip(lower=1e-12), np.nan)
    df = agents.assign(a=a).sort_values(["day", "agent", "step"])
    d = df.groupby(["day", "agent"])["a"].diff()
    nxt = d.groupby([df["day"], df["agent"]]).shift(-1)
    live = d.notna() & nxt.notna()
    flip = live & (d.abs() > SWING) & (nxt.abs() > SWING) & (d * nxt < 0)
    return float(d[live].abs().mean()), float(flip.sum() / max(live.sum(), 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--feeder", default="ieee33")
    ap.add_argument("--runs", nargs="*", default=[])
    ap.add_argument("--damping", type=float, nargs="*", default=[1.0, 0.5, 0.3])
    ap.add_argument("--smoothing", type=float, nargs="*", default=[], help="also each run with its action smoothed so")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    feeder = load_feeder(args.feeder)
    days = feeder.days("val")
    env_config = EnvConfig()
    curve = residual_curve(feeder, "droop:tuned")
    names = _obs_names(feeder, env_config)
    controllers = [("droop:tuned (settled)", make_controller("droop", feeder, preset="tuned", env_config=env_config),
                    env_config)]
    for a in args.damping:
        label = "droop:tuned read once" + (f", damped {a:g}" if a < 1 else "") + " (residual base alone)"
        controllers.append((label, OneShot(ResidualBase("droop:tuned", curve, names, damping=a)), env_config))
    for r in args.runs:
        run = open_run(r)
        cfg = run.evaluation_config()
        for a in [1.0, *args.smoothing]:
            label = Path(r).name + (f", smoothed {a:g}" if a < 1 else "")
            controllers.append((label, deployed(run.policy(), feeder, cfg, envelope={"smoothing": a}), cfg))
    rows = []
    for label, ctrl, cfg in controllers:
        t0 = time.perf_counter()
        ev = evaluate(feeder, ctrl, split="val", days=days, env_config=cfg, voltage_days=days)
        dmean, flips = swings(ev.agents)
        steps = ev.days["steps"].sum()
        rows.append({"controller": label,
                     "controllable rate": float((ev.days["controllable_rate"] * ev.days["steps"]).sum() / steps),
                     "loss MWh": float(ev.days["energy_loss_mwh"].sum()), "mean abs Δa": dmean,
                     "period-2 swings": flips, "seconds": round(time.perf_counter() - t0, 1)})
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|:---|" + "---:|" * (len(head) - 1)]
    fmt = {"controllable rate": "{:.4f}", "loss MWh": "{:.2f}", "mean abs Δa": "{:.4f}", "period-2 swings": "{:.4f}",
           "seconds": "{:.1f}"}
    lines += ["| " + " | ".join(v if isinstance(v, str) else fmt[k].format(v) for k, v in r.items()) + " |"
              for r in rows]
    text = (f"{feeder.name}, {len(days)} validation days (`python experiments/residual_oscillation.py --feeder "
            f"{feeder.name} --runs …`); curve v_pu = {curve['v_pu']}, q = {curve['q']}\n\n" + "\n".join(lines) + "\n")
    print(text)
    if args.out:
        from gridrl.io import write_text

        write_text(args.out, text)


def _obs_names(feeder, env_config) -> list[str]:
    from gridrl.env import make_env

    return list(make_env(feeder, split="val", num_envs=1, config=env_config).obs_names)


if __name__ == "__main__":
    main()
