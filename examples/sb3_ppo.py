"""Parameter-shared PPO on gridrl with Stable-Baselines3: every agent of every scenario is one of
SB3's vectorised environments, all served by one batched core.

``VoltageControlSB3VecEnv`` presents B scenarios × N agents as B·N environments, so SB3's
``PPO("MlpPolicy", ...)`` trains one policy shared by all agents on their own observations
(κ = 0), and ``VecNormalize`` scales observations and rewards. The reward is gridrl's learners'
default (losses plus a steep penalty outside a band 0.005 p.u. inside the feeder's) on 8-hour
episodes. The trained policy is scored with ``gridrl.score`` beside IEEE 1547-B droop.

    python examples/sb3_ppo.py --timesteps 200000
    python examples/sb3_ppo.py --timesteps 3000 --no-score
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecNormalize

import gridrl
from gridrl.env import EnvConfig
from gridrl.env.sb3 import VoltageControlSB3VecEnv


def train_config(feeder: str, margin_pu: float = 0.005) -> EnvConfig:
    f = gridrl.load_feeder(feeder)
    return EnvConfig(start_hour=None, episode_hours=8.0, barrier="courant_beltrami", voltage_weight=1000.0,
                     loss_weight_per_mw=10.0, q_weight_per_mvar=0.001,
                     v_min_pu=f.v_min_pu + margin_pu, v_max_pu=f.v_max_pu - margin_pu)


def train(feeder: str = "ieee33", *, timesteps: int = 200_000, num_envs: int = 16, n_steps: int = 32,
          seed: int = 0, verbose: int = 0) -> dict:
    """Train; ``timesteps`` counts agent-steps (B·N per batched step). Returns ``model``,
    ``policy`` (deterministic callable obs [B, N, D] → actions [B, N] for ``gridrl.score``) and
    ``seconds``."""
    t0 = time.perf_counter()
    venv = VoltageControlSB3VecEnv(feeder, num_envs=num_envs, seed=seed, config=train_config(feeder))
    env = VecNormalize(venv, gamma=0.5)
    model = PPO("MlpPolicy", env, n_steps=n_steps, batch_size=min(4096, n_steps * env.num_envs), n_epochs=4,
                gamma=0.5, gae_lambda=0.9, learning_rate=3e-4, seed=seed, verbose=verbose,
                policy_kwargs={"net_arch": [64, 64]}, device="cpu")
    model.learn(total_timesteps=timesteps)
    env.training = False

    def policy(obs: torch.Tensor) -> np.ndarray:
        x = env.normalize_obs(obs.reshape(-1, obs.shape[-1]).numpy())
        actions, _ = model.predict(x, deterministic=True)
        return np.clip(actions.reshape(obs.shape[0], obs.shape[1]), -1.0, 1.0)

    policy.hops, policy.communication = 0, 0.0
    return {"model": model, "policy": policy, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="ieee33-v0")
    ap.add_argument("--timesteps", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-score", action="store_true")
    args = ap.parse_args()
    from gridrl.score import CallablePolicy, get_task, score

    task = get_task(args.task)
    result = train(task.feeder, timesteps=args.timesteps, seed=args.seed, verbose=1)
    print(f"trained for {result['seconds']:.0f} s")
    if args.no_score:
        return
    for ctrl in (CallablePolicy(result["policy"], name="sb3-ppo"), "droop", "none"):
        m, _ = score(task, ctrl)
        print(f"{m['controller']:>18} on {task.name}: controllable rate {m['controllable_rate']:.4f}, "
              f"energy loss {m['energy_loss_mwh']:.2f} MWh")


if __name__ == "__main__":
    main()
