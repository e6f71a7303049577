"""Throughput of the TorchRL adapter against the batched core it wraps, in one process.

Both step the same feeder at the same batch with the same uniform random actions, auto-resetting
finished episodes (the core by ``reset_done``, TorchRL by ``step_and_maybe_reset``); rounds
alternate core and adapter so that a change in the machine's other load hits both alike, and the
best round of each counts. Writes ``reports/bench/torchrl.md`` and prints the ratio.

    python experiments/bench_torchrl.py --feeder ieee33 --num-envs 64
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

import gridrl
from gridrl.env.torchrl import VoltageControlTorchRLEnv
from gridrl.io import write_text


def core_round(env, actions: torch.Tensor) -> float:
    env.reset()
    t0 = time.perf_counter()
    for a in actions:
        _, _, done, _ = env.step(a)
        if bool(done.any()):
            env.reset_done()
    return time.perf_counter() - t0


def torchrl_round(env: VoltageControlTorchRLEnv, actions: torch.Tensor) -> float:
    td = env.reset()
    t0 = time.perf_counter()
    for a in actions:
        td.set(("agents", "action"), a.unsqueeze(-1))
        _, td = env.step_and_maybe_reset(td)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--feeder", default="ieee33")
    ap.add_argument("--num-envs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=192, help="steps per round (96 = one day)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default="reports/bench/torchrl.md")
    args = ap.parse_args()

    feeder = gridrl.load_feeder(args.feeder)
    core = gridrl.make_env(feeder, num_envs=args.num_envs, seed=0)
    wrapped = VoltageControlTorchRLEnv(feeder, num_envs=args.num_envs, seed=0)
    g = torch.Generator().manual_seed(0)
    actions = 2 * torch.rand(args.steps, args.num_envs, core.n_agents, generator=g) - 1
    core_round(core, actions[:8])  # warm both (first solves compile nothing, but fill caches)
    torchrl_round(wrapped, actions[:8])
    t_core, t_trl = [], []
    for _ in range(args.rounds):
        t_core.append(core_round(core, actions))
        t_trl.append(torchrl_round(wrapped, actions))
    fs = args.steps * args.num_envs
    core_rate, trl_rate = fs / min(t_core), fs / min(t_trl)
    ratio = trl_rate / core_rate
    text = (f"# TorchRL adapter throughput\n\n"
            f"`python experiments/bench_torchrl.py --feeder {args.feeder} --num-envs {args.num_envs} "
            f"--steps {args.steps} --rounds {args.rounds}` on {platform.node() or 'this machine'} "
            f"({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end), "
            f"torch {torch.__version__}, gridrl threads policy default.\n\n"
            f"| env | feeder-steps/s (best of {args.rounds}) |\n|:---|---:|\n"
            f"| core `VoltageControlEnv` | {core_rate:,.0f} |\n"
            f"| `VoltageControlTorchRLEnv` (step_and_maybe_reset) | {trl_rate:,.0f} |\n\n"
            f"Ratio TorchRL / core: **{ratio:.2f}** (target ≥ 0.50).\n")
    write_text(Path(args.out), text)
    print(text)


if __name__ == "__main__":
    main()
