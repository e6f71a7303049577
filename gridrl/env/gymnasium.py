"""Gymnasium adapters: the batched core as a vector env of B scenarios × N agents, and one
scenario as a centralized single-agent env.

:class:`VoltageControlVectorEnv` is a ``gymnasium.vector.VectorEnv`` whose ``num_envs = B·N``
sub-environments are the agents of B scenarios, scenario-major (sub-env ``b·N + i`` is agent
``i`` of scenario ``b``). Every sub-env has the same spaces — observation ``Box(obs_dim)``
(layout ``obs_names``), action ``Box(-1, 1, (1,))`` — so one parameter-shared policy acts for
every agent, as SB3-style PPO over PettingZoo+SuperSuit does, without per-agent copies: one
``step`` is one batched core step. Rewards are the agents' local rewards; an episode's end is a
truncation for all agents of its scenario, a diverged power flow a termination.

Autoreset is ``SAME_STEP``: when a scenario's episode ends, ``step`` returns the first
observation of its next episode and puts the last one in ``infos["final_obs"]`` (an object array,
mask ``"_final_obs"``) and the episode's figures in ``infos["final_info"]`` (``return``: the
agent's own return, ``scenario_return``, ``controllable_rate``, ``energy_loss_mwh``, ``day``;
mask ``"_final_info"``). Actions must have shape ``(B·N, 1)`` or ``(B·N,)`` (an error names the
shape; ``strict_actions=False`` accepts any array of B·N numbers).

:class:`CentralizedEnv` is a ``gymnasium.Env`` over one scenario for single-agent (centralized)
algorithms: observation ``state()`` (every bus and inverter), action ``Box(-1, 1, (N,))`` in
``agents`` order, reward the sum of the local rewards.

Seeding follows :mod:`gridrl.env.seeding` (an env built without ``seed`` is a copy with its own
key; ``reset(seed=s)`` seeds the core with ``copy_seed(s, key)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

from gridrl.env.config import EnvConfig
from gridrl.env.core import EnvError, VoltageControlEnv
from gridrl.env.seeding import copy_key, copy_seed
from gridrl.env.spec import CoreLayout

__all__ = ["CentralizedEnv", "VoltageControlVectorEnv"]


def _load(feeder):
    if isinstance(feeder, str):
        from gridrl.grid.feeder import load_feeder

        return load_feeder(feeder)
    return feeder


class VoltageControlVectorEnv(CoreLayout, VectorEnv):
    """B scenarios × N agents as ``B·N`` Gymnasium sub-environments (see the module docstring)."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, feeder, *, num_envs: int = 16, split: str = "train", seed: int | None = None,
                 config: EnvConfig | None = None, days: Sequence[int] | None = None,
                 copy_index: int | None = None, worker_index: int | None = None,
                 strict_actions: bool = True):
        self._key, base = copy_key(seed=seed, copy_index=copy_index, worker_index=worker_index)
        self.core = VoltageControlEnv(_load(feeder), num_envs=num_envs, seed=copy_seed(base, self._key),
                                      split=split, days=days, config=config)
        self.num_scenarios = int(num_envs)
        self.n_agents = self.core.n_agents
        self.num_envs = self.num_scenarios * self.n_agents
        self.strict_actions = bool(strict_actions)
        d = self.core.obs_dim
        self.single_observation_space = spaces.Box(-np.inf, np.inf, (d,), np.float32)
        self.single_action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.observation_space = spaces.Box(-np.inf, np.inf, (self.num_envs, d), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (self.num_envs, 1), np.float32)
        self.render_mode = None
        self._returns = np.zeros(self.num_envs)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start new episodes in every scenario; ``options={"days": [...]}`` (one per scenario)
        fixes their days. Returns ``obs [B·N, obs_dim]`` and ``{}``."""
        if seed is not None and not isinstance(seed, int | np.integer):
            raise EnvError("reset(seed=...) takes one int: the B scenarios share one core whose "
                           "generators draw different days for each")
        days = (options or {}).get("days")
        obs = self.core.reset(seed=None if seed is None else copy_seed(int(seed), self._key), days=days)
        self._returns[:] = 0.0
        return self._flat(obs), {}

    def _flat(self, obs: torch.Tensor) -> np.ndarray:
        return obs.reshape(self.num_envs, -1).numpy()

    def _actions(self, actions) -> torch.Tensor:
        a = torch.as_tensor(np.asarray(actions, dtype=np.float32))
        ok = a.shape in ((self.num_envs, 1), (self.num_envs,))
        if not ok and not (not self.strict_actions and a.numel() == self.num_envs):
            raise EnvError(f"actions must have shape ({self.num_envs}, 1) or ({self.num_envs},) "
                           f"— one per agent of each scenario, scenario-major — got {tuple(a.shape)}")
        return a.reshape(self.num_scenarios, self.n_agents)

    def step(self, actions):
        obs, reward, done, info = self.core.step(self._actions(actions))
        rew = reward.reshape(-1).numpy().astype(np.float64)
        self._returns += rew
        ended = done.numpy()
        converged = info["converged"].numpy()
        term = np.repeat(ended & ~converged, self.n_agents)
        trunc = np.repeat(ended & converged, self.n_agents)
        infos: dict = {}
        if ended.any():
            mask = np.repeat(ended, self.n_agents)
            final = self._flat(obs).copy()
            final_obs = np.full(self.num_envs, None, dtype=object)
            for k in np.flatnonzero(mask):
                final_obs[k] = final[k]
            ep = info["episode"]
            per_env = lambda x: np.repeat(x.numpy(), self.n_agents)  # noqa: E731
            infos = {"final_obs": final_obs, "_final_obs": mask,
                     "final_info": {"return": np.where(mask, self._returns, np.nan), "_return": mask,
                                    "scenario_return": per_env(ep["return"]), "_scenario_return": mask,
                                    "controllable_rate": per_env(ep["controllable_rate"]),
                                    "_controllable_rate": mask,
                                    "energy_loss_mwh": per_env(ep["energy_loss_mwh"]),
                                    "_energy_loss_mwh": mask,
                                    "day": per_env(ep["day"]), "_day": mask},
                     "_final_info": mask}
            self._returns[mask] = 0.0
            obs = self.core.reset_done()
        return self._flat(obs), rew, term, trunc, infos

    def close_extras(self, **kwargs) -> None:
        return None


class CentralizedEnv(gym.Env):
    """One scenario as a single-agent Gymnasium env over the global state (see the module)."""

    metadata = {"render_modes": []}

    def __init__(self, feeder, *, split: str = "train", seed: int | None = None,
                 config: EnvConfig | None = None, days: Sequence[int] | None = None,
                 copy_index: int | None = None, worker_index: int | None = None):
        self._key, base = copy_key(seed=seed, copy_index=copy_index, worker_index=worker_index)
        self.core = VoltageControlEnv(_load(feeder), num_envs=1, seed=copy_seed(base, self._key),
                                      split=split, days=days, config=config)
        n = self.core.n_agents
        self.agents = list(self.core.agents)
        self.observation_space = spaces.Box(-np.inf, np.inf, (self.core.state_dim,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (n,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """``options={"day": d}`` picks the day instead of drawing one."""
        super().reset(seed=seed)
        day = (options or {}).get("day")
        self.core.reset(seed=None if seed is None else copy_seed(seed, self._key),
                        days=None if day is None else [int(day)])
        return self.core.state()[0].numpy(), {"day": int(self.core.episode_metrics()["day"][0])}

    def step(self, action):
        a = np.asarray(action, dtype=np.float32)
        if a.shape != self.action_space.shape:
            raise EnvError(f"action must have shape {self.action_space.shape} (one per agent, "
                           f"in env.agents order), got {a.shape}")
        _, reward, done, info = self.core.step(torch.as_tensor(a)[None])
        ended = bool(done[0])
        converged = bool(info["converged"][0])
        out = {k: float(info[k][0]) for k in ("controllable", "loss_mw", "out_of_band_share")}
        if ended:
            out["episode_metrics"] = {k: float(v[0]) for k, v in info["episode"].items()}
        return (self.core.state()[0].numpy(), float(reward.sum()), ended and not converged,
                ended and converged, out)
