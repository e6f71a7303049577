"""Training throughput: environment feeder-steps per second *including learning*, and where the
time goes.

One learner (default: dppo on ieee141 with the default training configuration) runs whole
iterations — collect one episode in every scenario, then update — and the benchmark reports
feeder steps per second end to end and the split between the environment, acting (policy and
critic forward passes during collection) and updating. Noise on a shared machine is cancelled
by timing competitors in the same process, interleaved round by round with the iterations:

- the environment alone, stepping the same batch with random actions for as many steps as one
  iteration collects (the ceiling: training can never be faster);
- a MAPDN-style pandapower step (``pandapower.runpp`` on the net per step, as
  :func:`gridrl.env.bench.bench_pandapower_steps` does): what a pandapower environment alone
  manages, before any learning.

Each round times one iteration and one env-only episode; medians over rounds are reported, with
the ratios. :func:`run_train_bench` returns a flat dict; :func:`to_markdown` renders it.
``experiments/bench_train.py`` and ``gridrl bench train`` are thin wrappers.
"""

from __future__ import annotations

import time

import numpy as np
import torch

__all__ = ["TARGET_STEPS_PER_S", "run_train_bench", "to_markdown"]

TARGET_STEPS_PER_S = 2000.0


def run_train_bench(feeder: str = "ieee141", *, algo: str = "dppo", num_envs: int | None = None, rounds: int = 5,
                    pandapower_steps: int = 24, threads: int | None = None, seed: int = 0,
                    overrides: dict | None = None) -> dict:
    """Time ``rounds`` training iterations of ``algo`` on ``feeder`` (after one warm-up) against
    the environment alone and a pandapower step, in this process.

    num_envs: scenarios per iteration (default: the training default). threads: thread count
    for this measurement (``None``: gridrl's thread policy). overrides: training-config keys
    (``gridrl train --config``'s format, e.g. ``{"env": {"zone_layout": "pool"}}``).
    """
    import dataclasses
    from contextlib import nullcontext

    from gridrl.env import make_env
    from gridrl.env.bench import _load_average, bench_pandapower_steps
    from gridrl.grid.feeder import load_feeder
    from gridrl.marl.train import _with_band, learner_class, resolve_train_config
    from gridrl.threads import describe, using

    fd = load_feeder(feeder)
    cfg = resolve_train_config(dict(overrides or {}), source="benchmark overrides", overrides={"algo": algo})
    if num_envs is not None:
        cfg = dataclasses.replace(cfg, num_envs=int(num_envs))
    cfg = _with_band(cfg, fd)
    before = _load_average()
    with nullcontext() if threads is None else using(threads):
        env = make_env(fd, split="train", num_envs=cfg.num_envs, seed=seed, config=cfg.env)
        learner = learner_class(algo)(env, cfg.learner, seed=seed, total_steps=10 ** 9)
        alone = make_env(fd, split="train", num_envs=cfg.num_envs, seed=seed + 1, config=cfg.env)
        gen = torch.Generator().manual_seed(seed)
        learner.iterate()  # warm-up: first touches of every kernel and allocation
        _env_alone(alone, gen)
        rows = []
        for _ in range(rounds):
            t = time.perf_counter()
            stats = learner.iterate()
            wall = time.perf_counter() - t
            alone_s, alone_steps = _env_alone(alone, gen)
            rows.append({"wall_s": wall, "steps": stats["iteration_steps"], "env_s": stats["time/env_s"],
                         "act_s": stats["time/act_s"], "update_s": stats["time/update_s"],
                         "model_s": stats.get("time/model_s", 0.0), "imagine_s": stats.get("time/imagine_s", 0.0),
                         "alone_s": alone_s, "alone_steps": alone_steps, "epochs": stats["loss/epochs"]})
        torch_threads = torch.get_num_threads()
    pp = bench_pandapower_steps(fd, steps=pandapower_steps, seed=seed)
    med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    train_sps = med["steps"] / med["wall_s"]
    alone_sps = med["alone_steps"] / med["alone_s"]
    return {
        "feeder": fd.name, "algo": algo, "n_agents": env.n_agents, "num_envs": cfg.num_envs,
        "episode_steps": env.episode_steps, "hops": getattr(cfg.learner, "hops", None),
        "hidden": cfg.learner.hidden, "epochs": cfg.learner.epochs, "minibatches": cfg.learner.minibatches,
        "epochs_run": med["epochs"],
        "rounds": rounds, "threads": describe() if threads is None else f"{threads} (set for this run)",
        "torch_threads": torch_threads,
        "iteration_s": med["wall_s"], "iteration_steps": med["steps"],
        "train_steps_per_s": train_sps, "env_alone_steps_per_s": alone_sps,
        "pp_steps_per_s": pp["pp_steps_per_s"], "pp_step_ms": pp["pp_step_ms"],
        "env_share": med["env_s"] / med["wall_s"], "act_share": med["act_s"] / med["wall_s"],
        "update_share": med["update_s"] / med["wall_s"],
        "model_share": med["model_s"] / med["wall_s"], "imagine_share": med["imagine_s"] / med["wall_s"],
        "train_vs_env_alone": train_sps / alone_sps, "train_vs_pandapower": train_sps / pp["pp_steps_per_s"],
        "target_steps_per_s": TARGET_STEPS_PER_S,
        "load_average_before": before, "load_average_after": _load_average(),
    }


def _env_alone(env, gen: torch.Generator) -> tuple[float, int]:
    """One episode in every scenario with uniform random actions: seconds and feeder steps."""
    t = time.perf_counter()
    env.reset()
    for _ in range(env.episode_steps):
        env.step(2 * torch.rand(env.num_envs, env.n_agents, generator=gen) - 1)
    return time.perf_counter() - t, env.num_envs * env.episode_steps


def to_markdown(r: dict, *, command: str) -> str:
    """The benchmark as a markdown report."""
    import os
    import platform

    ok = "meets" if r["train_steps_per_s"] >= r["target_steps_per_s"] else "misses"
    lines = [
        "# Training throughput",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, threads {r['threads']} (torch uses "
        f"{r['torch_threads']}), load average {r['load_average_before']} before and {r['load_average_after']} after. "
        f"Medians over {r['rounds']} rounds; each round times one training iteration and then the environment "
        f"alone on as many steps, in this process, so a busy machine slows both alike and the ratios hold.",
        "",
        f"{r['algo']} on {r['feeder']} ({r['n_agents']} agents, κ = {r['hops']}), B = {r['num_envs']} scenarios × "
        f"{r['episode_steps']} steps per iteration; networks {r['hidden']} wide, {r['epochs']} epochs × "
        f"{r['minibatches']} minibatches per update (the KL stop may end an update early: median "
        f"{r['epochs_run']:g} epochs run).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| one iteration (collect + update) | {r['iteration_s']:.2f} s for {r['iteration_steps']:,.0f} feeder-steps |",
        f"| **feeder-steps / s, training end to end** | **{r['train_steps_per_s']:,.0f}** |",
        f"| time in the environment / acting / updating | {100 * r['env_share']:.0f} % / {100 * r['act_share']:.0f} % / "
        f"{100 * r['update_share']:.0f} % |",
        f"| feeder-steps / s, environment alone (same B, random actions) | {r['env_alone_steps_per_s']:,.0f} |",
        f"| training ÷ environment alone | {r['train_vs_env_alone']:.3f} |",
        f"| feeder-steps / s, MAPDN-style pandapower step | {r['pp_steps_per_s']:.1f} ({r['pp_step_ms']:.1f} ms) |",
        f"| training ÷ pandapower step | {r['train_vs_pandapower']:,.0f}× |",
        "",
        f"Target: ≥ {r['target_steps_per_s']:,.0f} feeder-steps/s end to end on 2 cores under the thread policy: "
        f"this run {ok} it.",
    ]
    return "\n".join(lines)
