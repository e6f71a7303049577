"""The cost of measuring before acting: environment steps with ``observation = "measured"`` (one
extra batched power flow per step: the start-of-interval measurement) against
``"previous_step"`` (the observation is the solved interval itself), interleaved so that both see
the same machine load.

    python experiments/bench_measure.py [--out reports/robustness/measure_cost.md]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import gridrl
from gridrl.env import EnvConfig, make_env


def step_seconds(feeder, observation: str, *, num_envs: int, steps: int) -> float:
    env = make_env(feeder, num_envs=num_envs, seed=0,
                   config=EnvConfig(start_hour=6.0, episode_hours=12.0, observation=observation))
    g = torch.Generator().manual_seed(0)
    actions = [2 * torch.rand(num_envs, env.n_agents, generator=g) - 1 for _ in range(steps)]
    env.step(actions[0])  # warm
    t0 = time.perf_counter()
    for a in actions[1:]:
        env.step(a)
    return (time.perf_counter() - t0) / (steps - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="reports/robustness/measure_cost.md")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    lines = ["# The cost of measuring before acting", "",
             "Wall time of one batched environment step (B scenarios, random actions, 6:00–18:00), "
             "measured model (one extra power flow per step) against the previous-step observation, "
             f"interleaved, median of {args.repeats} repeats; load average at start "
             f"{os.getloadavg()[0]:.1f} (a shared 2-core machine).", "",
             "`python experiments/bench_measure.py`", "",
             "| feeder | B | previous step ms | measured ms | ratio |", "|:---|---:|---:|---:|---:|"]
    for name, B in (("ieee33", 64), ("ieee141", 64)):
        feeder = gridrl.load_feeder(name)
        t = {"previous_step": [], "measured": []}
        for _ in range(args.repeats):
            for mode in t:
                t[mode].append(step_seconds(feeder, mode, num_envs=B, steps=25))
        med = {k: sorted(v)[len(v) // 2] for k, v in t.items()}
        lines.append(f"| {name} | {B} | {1e3 * med['previous_step']:.2f} | {1e3 * med['measured']:.2f} | "
                     f"{med['measured'] / med['previous_step']:.2f} |")
        print(lines[-1], flush=True)
    from gridrl.io import write_text

    write_text(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
