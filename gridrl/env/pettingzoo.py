"""PettingZoo ``ParallelEnv`` adapter: one scenario of the batched core, dicts keyed by agent.

Each agent observes the same vector as in :class:`~gridrl.env.core.VoltageControlEnv`
(float32, layout ``obs_names``) and acts with a ``Box(-1, 1, (1,))`` action: the share of its
inverters' available reactive power (values outside [-1, 1] are clipped, as in the core). Rewards are the local rewards. The end of the episode's
day is a *truncation* (time ran out) for every agent; a power flow that did not converge is a
*termination* for every agent. Once an episode is over, ``agents`` is empty until ``reset``.
``state()`` returns the global state for centralized critics.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from gymnasium import spaces
from pettingzoo import ParallelEnv

from gridrl.env.config import EnvConfig
from gridrl.env.core import VoltageControlEnv

# per-step info handed to every agent (scalars of the global metrics)
_INFO_KEYS = ("converged", "controllable", "out_of_band_share", "dv_mean_pu", "dv_max_pu",
              "loss_mw", "q_abs_mvar")


class VoltageControlParallelEnv(ParallelEnv):
    """A PettingZoo parallel environment over one voltage-control scenario.

    Build with :func:`gridrl.env.parallel_env`. ``reset(seed=...)`` reseeds everything (day
    draws and faults), so equal seeds give equal episodes.
    """

    metadata = {"name": "gridrl_voltage_control_v0", "render_modes": [], "is_parallelizable": True}

    def __init__(self, feeder, *, split: str = "train", seed: int = 0,
                 config: EnvConfig | None = None, days: Sequence[int] | None = None):
        self.core = VoltageControlEnv(feeder, num_envs=1, seed=seed, split=split, days=days,
                                      config=config)
        self.render_mode = None
        self.possible_agents: list[str] = list(self.core.agents)
        self.agents: list[str] = []
        self._index = {a: i for i, a in enumerate(self.possible_agents)}
        d = self.core.obs_dim
        self.observation_spaces = {a: spaces.Box(-np.inf, np.inf, (d,), np.float32)
                                   for a in self.possible_agents}
        self.action_spaces = {a: spaces.Box(-1.0, 1.0, (1,), np.float32)
                              for a in self.possible_agents}
        self.state_space = spaces.Box(-np.inf, np.inf, (self.core.state_dim,), np.float32)

    # -- spaces: the same cached object every call (PettingZoo's seeding relies on it) -------
    def observation_space(self, agent: str) -> spaces.Box:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Box:
        return self.action_spaces[agent]

    @property
    def obs_names(self) -> list[str]:
        return self.core.obs_names

    # -- episode -----------------------------------------------------------------------------
    def reset(self, seed: int | None = None, options: dict | None = None):
        """Start an episode; ``options={"day": d}`` picks the day instead of drawing one."""
        day = (options or {}).get("day")
        obs = self.core.reset(seed=seed, days=None if day is None else [int(day)])
        self.agents = list(self.possible_agents)
        infos = {a: {"day": int(self.core._day[0])} for a in self.agents}
        return self._obs_dict(obs), infos

    def step(self, actions: dict):
        if not self.agents:
            raise RuntimeError("the episode is over; call reset() before step()")
        a = torch.zeros(1, len(self.possible_agents), dtype=torch.float64)
        for agent, act in actions.items():
            if agent not in self._index:
                raise KeyError(f"unknown agent {agent!r}")
            a[0, self._index[agent]] = float(np.asarray(act, dtype=np.float64).reshape(-1)[0])
        obs, reward, done, info = self.core.step(a)
        converged = bool(info["converged"][0])
        ended = bool(done[0])
        term = ended and not converged
        trunc = ended and converged
        shared = {k: _scalar(info[k][0]) for k in _INFO_KEYS}
        if ended and "episode" in info:
            shared["episode"] = {k: _scalar(v[0]) for k, v in info["episode"].items()}
        agents = self.agents
        obs_d = self._obs_dict(obs)
        rew = {a: float(reward[0, self._index[a]]) for a in agents}
        terms = {a: term for a in agents}
        truncs = {a: trunc for a in agents}
        infos = {a: dict(shared) for a in agents}
        if ended:
            self.agents = []
        return obs_d, rew, terms, truncs, infos

    def _obs_dict(self, obs: torch.Tensor) -> dict[str, np.ndarray]:
        x = obs[0].numpy()
        return {a: x[self._index[a]].copy() for a in self.agents or self.possible_agents}

    def state(self) -> np.ndarray:
        """Global state ``[state_dim]`` (float32): every bus's voltage and net power, every
        inverter's p, q and q limit, time of day (see ``VoltageControlEnv.state``)."""
        return self.core.state()[0].numpy().copy()

    def render(self) -> None:
        return None

    def close(self) -> None:
        return None


def _scalar(x: torch.Tensor):
    v = x.item()
    return bool(v) if isinstance(v, bool) else float(v)
