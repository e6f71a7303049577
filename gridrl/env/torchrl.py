"""TorchRL adapter: the batched core as an ``EnvBase`` with ``batch_size=[B]``.

One :class:`VoltageControlTorchRLEnv` is B scenarios × N agents stepped together by the core
(:class:`~gridrl.env.core.VoltageControlEnv`): torch tensors in and out, no per-agent copies.
Keys follow TorchRL's multi-agent convention (as its VMAS and PettingZoo wrappers):

* ``("agents", "observation")`` ``[B, N, obs_dim]`` float32 (layout ``obs_names``; units and
  ranges ``obs_spec()``), ``("agents", "action")`` ``[B, N, 1]`` in [-1, 1] (share of the
  inverters' available reactive power; clipped by the core), ``("agents", "reward")``
  ``[B, N, 1]`` float32 (local rewards);
* ``done``, ``terminated`` (power flow diverged), ``truncated`` (the episode's day ended)
  ``[B, 1]`` bool, shared by the agents of a scenario;
* ``("metrics", "controllable")`` ``[B, 1]`` bool (every monitored bus in band at this step)
  and ``("metrics", "loss_mw")`` ``[B, 1]`` float32 (NaN when diverged), so a training loop can
  report the official figures without a second rollout;
* with ``include_state=True``: ``state`` ``[B, state_dim]`` float32, the global state for
  centralized critics (MAPPO).

Resets: ``reset()`` starts new episodes everywhere; a partial reset (``"_reset"`` mask, as
``step_and_maybe_reset`` and ``rollout(break_when_any_done=False)`` send) restarts the
finished scenarios, which must be exactly those marked. Seeding follows
:mod:`gridrl.env.seeding`: built without ``seed`` the env is a copy with its own key, and
``set_seed(s)`` seeds the core with ``copy_seed(s, key)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Composite, Categorical, Unbounded
from torchrl.envs import EnvBase

from gridrl.env.config import EnvConfig
from gridrl.env.core import EnvError, VoltageControlEnv
from gridrl.env.seeding import copy_key, copy_seed
from gridrl.env.spec import CoreLayout

__all__ = ["VoltageControlTorchRLEnv"]


class VoltageControlTorchRLEnv(CoreLayout, EnvBase):
    """B voltage-control scenarios as one TorchRL environment (see the module docstring).

    Build from a feeder (name or :class:`~gridrl.grid.feeder.Feeder`):
    ``VoltageControlTorchRLEnv("ieee33", num_envs=64)``; the other arguments are
    :func:`gridrl.env.make_env`'s, plus ``copy_index`` / ``worker_index``
    (:mod:`gridrl.env.seeding`) and ``include_state``. The core is ``env.core``.
    """

    def __init__(self, feeder, *, num_envs: int = 64, split: str = "train", seed: int | None = None,
                 config: EnvConfig | None = None, days: Sequence[int] | None = None,
                 copy_index: int | None = None, worker_index: int | None = None,
                 include_state: bool = False, device: str | torch.device = "cpu"):
        if isinstance(feeder, str):
            from gridrl.grid.feeder import load_feeder

            feeder = load_feeder(feeder)
        self._key, base = copy_key(seed=seed, copy_index=copy_index, worker_index=worker_index)
        core = VoltageControlEnv(feeder, num_envs=num_envs, seed=copy_seed(base, self._key),
                                 split=split, days=days, config=config)
        super().__init__(batch_size=torch.Size([num_envs]), device=device)
        self.core = core
        self.include_state = bool(include_state)
        self.n_agents = core.n_agents
        self.agents = list(core.agents)
        self._agents_shape = torch.Size([num_envs, core.n_agents])
        B, N, D = num_envs, core.n_agents, core.obs_dim
        obs = {"agents": Composite(observation=Unbounded(shape=(B, N, D), dtype=torch.float32,
                                                         device=self.device),
                                   shape=(B, N), device=self.device),
               "metrics": Composite(controllable=Categorical(2, shape=(B, 1), dtype=torch.bool,
                                                             device=self.device),
                                    loss_mw=Unbounded(shape=(B, 1), dtype=torch.float32,
                                                      device=self.device),
                                    shape=(B,), device=self.device)}
        if self.include_state:
            obs["state"] = Unbounded(shape=(B, core.state_dim), dtype=torch.float32, device=self.device)
        self.observation_spec = Composite(obs, shape=(B,), device=self.device)
        self.action_spec = Composite(
            agents=Composite(action=Bounded(-1.0, 1.0, shape=(B, N, 1), dtype=torch.float32,
                                            device=self.device), shape=(B, N), device=self.device),
            shape=(B,), device=self.device)
        self.reward_spec = Composite(
            agents=Composite(reward=Unbounded(shape=(B, N, 1), dtype=torch.float32, device=self.device),
                             shape=(B, N), device=self.device),
            shape=(B,), device=self.device)
        flag = lambda: Categorical(2, shape=(B, 1), dtype=torch.bool, device=self.device)  # noqa: E731
        self.done_spec = Composite(done=flag(), terminated=flag(), truncated=flag(), shape=(B,),
                                   device=self.device)

    # -- EnvBase hooks -----------------------------------------------------------------------
    def _observation(self, obs: torch.Tensor, controllable: torch.Tensor, loss_mw: torch.Tensor) -> dict:
        out = {"agents": TensorDict({"observation": obs}, batch_size=self._agents_shape, device=self.device),
               "metrics": {"controllable": controllable, "loss_mw": loss_mw}}
        if self.include_state:
            out["state"] = self.core.state()
        return out

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        mask = None if tensordict is None else tensordict.get("_reset", None)
        B = self.batch_size[0]
        if mask is None or bool(mask.all()):
            obs = self.core.reset()
        else:
            rows = mask.reshape(B).cpu()
            done = self.core.done
            if bool((rows & ~done).any()):
                bad = (rows & ~done).nonzero(as_tuple=True)[0].tolist()
                raise EnvError(f"partial reset of running scenario(s) {bad[:8]}: the core restarts "
                               f"finished scenarios only; call reset() without a mask to restart all")
            obs = self.core.reset_done()
        false = torch.zeros(B, 1, dtype=torch.bool)
        nan = torch.full((B, 1), torch.nan, dtype=torch.float32)
        td = self._observation(obs, false, nan)
        td.update(done=false, terminated=false.clone(), truncated=false.clone())
        return TensorDict(td, batch_size=self.batch_size, device=self.device)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        a = tensordict.get(("agents", "action"))
        if a.shape[-1] == 1:
            a = a.squeeze(-1)
        obs, reward, done, info = self.core.step(a.detach())
        converged = info["converged"]
        td = self._observation(obs, info["controllable"].unsqueeze(-1),
                               info["loss_mw"].to(torch.float32).unsqueeze(-1))
        td["agents"].set("reward", reward.unsqueeze(-1))
        done = done.unsqueeze(-1)
        td.update(done=done, terminated=done & ~converged.unsqueeze(-1),
                  truncated=done & converged.unsqueeze(-1))
        return TensorDict(td, batch_size=self.batch_size, device=self.device)

    def _set_seed(self, seed: int | None) -> None:
        if seed is not None:
            self.core.reset(seed=copy_seed(seed, self._key))
