"""Multi-agent PPO on gridrl with Ray RLlib: the PettingZoo env, one policy shared by all agents, seeded.

RLlib builds its env copies from a creator; gridrl's creator passes RLlib's ``worker_index`` so
that every copy (and every env runner) draws its own days even though RLlib resets them all with
one seed (see ``gridrl.env.seeding``). Every agent maps to the policy ``"shared"``. The reward
is the environment's default (bowl barrier, losses, a small |q| cost); episodes are 8 hours from
random training days and times. Afterwards the policy's deterministic actions (the Gaussian's
mean) are rolled out on the test days beside no control and IEEE 1547-B droop, and their day
returns compared.

    python examples/rllib_ppo.py --minutes 10
    python examples/rllib_ppo.py --iterations 2 --no-eval
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

import gridrl
from gridrl.env import EnvConfig

TRAIN_ENV = {"start_hour": None, "episode_hours": 8.0}


def env_creator(ctx):
    """RLlib env creator: ``ctx`` (an ``EnvContext``) carries ``feeder``, ``env`` (EnvConfig
    fields) and RLlib's ``worker_index``; the copies a runner builds count themselves apart."""
    from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv

    return ParallelPettingZooEnv(gridrl.parallel_env(ctx.get("feeder", "ieee33"), config=EnvConfig(**ctx.get("env", {})),
                                                     worker_index=getattr(ctx, "worker_index", 0)))


def build(feeder: str = "ieee33", *, seed: int = 0, num_envs: int = 4, batch: int = 2048):
    """The PPO algorithm (RLlib's new API stack), one shared policy, in this process."""
    import ray
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.tune.registry import register_env

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    register_env("gridrl", env_creator)
    config = (PPOConfig()
              .environment("gridrl", env_config={"feeder": feeder, "env": TRAIN_ENV})
              .env_runners(num_env_runners=0, num_envs_per_env_runner=num_envs)
              .multi_agent(policies={"shared"}, policy_mapping_fn=lambda agent_id, *args, **kwargs: "shared")
              .rl_module(rl_module_spec=MultiRLModuleSpec(rl_module_specs={"shared": RLModuleSpec(
                  model_config={"fcnet_hiddens": [64, 64]})}))
              .training(gamma=0.5, lambda_=0.9, lr=3e-4, train_batch_size_per_learner=batch,
                        minibatch_size=min(512, batch), num_epochs=4)
              .debugging(seed=seed))
    return config.build_algo()


def module_policy(algo):
    """The shared RLModule's deterministic action (its Gaussian's mean, clipped) as a callable
    obs [B, N, D] → actions [B, N]."""
    module = algo.get_module("shared")

    def policy(obs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = module.forward_inference({"obs": obs.reshape(-1, obs.shape[-1])})
        mean = out["action_dist_inputs"][:, 0]
        return mean.reshape(obs.shape[0], obs.shape[1]).clamp(-1.0, 1.0)

    policy.hops, policy.communication = 0, 0.0
    return policy


def day_returns(feeder: str, act, *, split: str = "test") -> float:
    """Mean over the split's days of the day's return (all agents' default rewards, midnight to
    midnight) under ``act`` (obs → actions, or a controller with ``act(obs, env=...)``)."""
    f = gridrl.load_feeder(feeder)
    days = f.days(split)
    env = gridrl.make_env(f, split=split, num_envs=len(days), days=days, config=EnvConfig(day_sampling="cycle"))
    obs = env.reset(days=days)
    for _ in range(env.episode_steps):
        a = act.act(obs, env=env) if hasattr(act, "act") else act(obs)
        obs, _, done, _ = env.step(a)
    return float(env.episode_metrics()["return"].mean())


def train(feeder: str = "ieee33", *, iterations: int = 100, minutes: float | None = None, seed: int = 0,
          num_envs: int = 4, batch: int = 2048, log=print) -> dict:
    """Train; returns ``algo``, ``policy`` (see :func:`module_policy`), ``history`` and ``seconds``."""
    t0 = time.perf_counter()
    algo = build(feeder, seed=seed, num_envs=num_envs, batch=batch)
    history = []
    for it in range(iterations):
        if minutes is not None and time.perf_counter() - t0 > 60 * minutes:
            break
        result = algo.train()
        runners = result.get("env_runners", {})
        rec = {"iteration": it, "seconds": time.perf_counter() - t0,
               "steps": runners.get("num_env_steps_sampled_lifetime", np.nan),
               "episode_return_mean": runners.get("episode_return_mean", np.nan)}
        history.append(rec)
        if log is not None:
            log(f"iteration {it}: {rec['seconds']:.0f} s, {rec['steps']} env steps, "
                f"episode return {rec['episode_return_mean']:.3f}")
    return {"algo": algo, "policy": module_policy(algo), "history": history, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--feeder", default="ieee33")
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-eval", action="store_true")
    args = ap.parse_args()
    result = train(args.feeder, iterations=args.iterations, minutes=args.minutes, seed=args.seed)
    print(f"trained for {result['seconds']:.0f} s")
    if args.no_eval:
        return
    f = gridrl.load_feeder(args.feeder)
    for name, act in (("rllib-ppo", result["policy"]), ("none", gridrl.make_controller("none", f)),
                      ("droop", gridrl.make_controller("droop", f))):
        print(f"{name:>10}: mean test-day return {day_returns(args.feeder, act):.3f}")


if __name__ == "__main__":
    main()
