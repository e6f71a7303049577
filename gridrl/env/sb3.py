"""Stable-Baselines3 adapter: the Gymnasium vector env (B scenarios × N agents) as an SB3 ``VecEnv``.

SB3's PPO, A2C, SAC … take a ``VecEnv``; :class:`VoltageControlSB3VecEnv` presents every agent
of every scenario as one of its ``B·N`` environments, so one SB3 policy is shared by all agents
(parameter sharing, as with PettingZoo + SuperSuit, without copying the feeder per agent).
SB3's conventions hold: auto-reset with the last observation in
``infos[k]["terminal_observation"]``, ``"TimeLimit.truncated"`` for the day's end, and
``infos[k]["episode"] = {"r", "l", "t"}`` (the agent's own return, steps, seconds) so SB3 logs
``rollout/ep_rew_mean`` without a ``VecMonitor``. ``seed(s)`` seeds the core at the next reset
with ``s`` (one core serves every sub-env; see :mod:`gridrl.env.seeding`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from stable_baselines3.common.vec_env import VecEnv

from gridrl.env.gymnasium import VoltageControlVectorEnv

__all__ = ["VoltageControlSB3VecEnv"]


class VoltageControlSB3VecEnv(VecEnv):
    """SB3 ``VecEnv`` over :class:`~gridrl.env.gymnasium.VoltageControlVectorEnv` (same arguments)."""

    def __init__(self, feeder, **kwargs):
        self.venv = VoltageControlVectorEnv(feeder, **kwargs)
        self.core = self.venv.core
        super().__init__(self.venv.num_envs, self.venv.single_observation_space,
                         self.venv.single_action_space)
        self._actions: np.ndarray | None = None
        self._length = np.zeros(self.num_envs, dtype=np.int64)
        self._t0 = time.perf_counter()

    def reset(self):
        seed = self._seeds[0] if self._seeds and self._seeds[0] is not None else None
        obs, _ = self.venv.reset(seed=seed)
        self._reset_seeds()
        self._reset_options()
        self._length[:] = 0
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        obs, rew, term, trunc, info = self.venv.step(self._actions)
        self._length += 1
        done = term | trunc
        infos: list[dict] = [{} for _ in range(self.num_envs)]
        if done.any():
            final = info["final_info"]
            elapsed = round(time.perf_counter() - self._t0, 6)
            for k in np.flatnonzero(done):
                infos[k] = {"terminal_observation": info["final_obs"][k],
                            "TimeLimit.truncated": bool(trunc[k]),
                            "episode": {"r": float(final["return"][k]), "l": int(self._length[k]),
                                        "t": elapsed},
                            "controllable_rate": float(final["controllable_rate"][k]),
                            "energy_loss_mwh": float(final["energy_loss_mwh"][k])}
            self._length[done] = 0
        return obs, rew.astype(np.float32), done, infos

    def close(self) -> None:
        return None

    # the sub-envs are agents of one batched core, not separate objects
    def get_attr(self, attr_name: str, indices=None) -> list:
        return [getattr(self.venv, attr_name)] * len(list(self._get_indices(indices)))

    def set_attr(self, attr_name: str, value, indices=None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list:
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result] * len(list(self._get_indices(indices)))

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False] * len(list(self._get_indices(indices)))

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None] * self.num_envs
