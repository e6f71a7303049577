"""PettingZoo ``ParallelEnv`` adapter: one scenario of the batched core, dicts keyed by agent.

Each agent observes the same vector as in :class:`~gridrl.env.core.VoltageControlEnv`
(float32, layout ``obs_names``, units and ranges in ``obs_spec()``) and acts with a
``Box(-1, 1, (1,))`` action: the share of its inverters' available reactive power (values
outside [-1, 1] are clipped, as in the core). Rewards are the local rewards. The end of the
episode's day is a *truncation* (time ran out) for every agent; a power flow that did not
converge is a *termination* for every agent. Once an episode is over, ``agents`` is empty until
``reset``. ``state()`` returns the global state for centralized critics.

**Strict actions.** ``step`` takes one action per live agent, each one number (shape ``(1,)``
or a scalar). A missing or unknown agent, an action of another shape, or NaN is one
:class:`~gridrl.env.core.EnvError` that lists every problem. ``strict_actions=False`` keeps only
the clipping: a missing agent acts 0 (no reactive power) and an action's first element is used.

**Seeding.** Copies built without a ``seed`` draw apart even when a library resets them all
with one seed; see :mod:`gridrl.env.seeding` for the rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from gymnasium import spaces
from pettingzoo import ParallelEnv

from gridrl.env.config import EnvConfig
from gridrl.env.core import EnvError, VoltageControlEnv
from gridrl.env.seeding import copy_key, copy_seed

# per-step info handed to every agent (scalars of the global metrics)
_INFO_KEYS = ("converged", "controllable", "out_of_band_share", "dv_mean_pu", "dv_max_pu",
              "loss_mw", "q_abs_mvar")


class VoltageControlParallelEnv(ParallelEnv):
    """A PettingZoo parallel environment over one voltage-control scenario.

    Build with :func:`gridrl.env.parallel_env`. ``reset(seed=...)`` reseeds everything (day
    draws and faults): an env built with ``seed`` gives equal episodes for equal seeds; envs
    built without one are copies that stay apart (:mod:`gridrl.env.seeding`). ``render_mode``
    ``"ansi"`` renders one line per step (time, voltage range, loss).
    """

    metadata = {"name": "gridrl_voltage_control_v0", "render_modes": ["ansi"], "is_parallelizable": True}

    def __init__(self, feeder, *, split: str = "train", seed: int | None = None,
                 config: EnvConfig | None = None, days: Sequence[int] | None = None,
                 copy_index: int | None = None, worker_index: int | None = None,
                 strict_actions: bool = True, render_mode: str | None = None):
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise EnvError(f"unknown render_mode {render_mode!r} (use None or 'ansi')")
        self._key, base = copy_key(seed=seed, copy_index=copy_index, worker_index=worker_index)
        self.core = VoltageControlEnv(feeder, num_envs=1, seed=copy_seed(base, self._key),
                                      split=split, days=days, config=config)
        self.render_mode = render_mode
        self.strict_actions = bool(strict_actions)
        self.possible_agents: list[str] = list(self.core.agents)
        self.agents: list[str] = []
        self._index = {a: i for i, a in enumerate(self.possible_agents)}
        self._last_info: dict | None = None
        d = self.core.obs_dim
        self.observation_spaces = {a: spaces.Box(-np.inf, np.inf, (d,), np.float32)
                                   for a in self.possible_agents}
        self.action_spaces = {a: spaces.Box(-1.0, 1.0, (1,), np.float32)
                              for a in self.possible_agents}
        self.state_space = spaces.Box(-np.inf, np.inf, (self.core.state_dim,), np.float32)

    @property
    def copy_key(self) -> tuple[int, ...]:
        """This copy's key (``()`` for an env built with an explicit seed); see
        :mod:`gridrl.env.seeding`."""
        return self._key

    # -- spaces: the same cached object every call (PettingZoo's seeding relies on it) -------
    def observation_space(self, agent: str) -> spaces.Box:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Box:
        return self.action_spaces[agent]

    @property
    def obs_names(self) -> list[str]:
        return self.core.obs_names

    def obs_spec(self):
        """The observation layout as a table: name, feature, unit, description, typical range
        (see :func:`gridrl.env.spec.obs_spec`)."""
        from gridrl.env.spec import obs_spec

        return obs_spec(self.core)

    # -- episode -----------------------------------------------------------------------------
    def reset(self, seed: int | None = None, options: dict | None = None):
        """Start an episode; ``options={"day": d}`` picks the day instead of drawing one."""
        day = (options or {}).get("day")
        obs = self.core.reset(seed=None if seed is None else copy_seed(seed, self._key),
                              days=None if day is None else [int(day)])
        self.agents = list(self.possible_agents)
        self._last_info = None
        infos = {a: {"day": int(self.core.episode_metrics()["day"][0])} for a in self.agents}
        return self._obs_dict(obs), infos

    def step(self, actions: dict):
        if not self.agents:
            raise RuntimeError("the episode is over; call reset() before step()")
        a = self._actions(actions)
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
        self._last_info = shared
        return obs_d, rew, terms, truncs, infos

    def _actions(self, actions) -> torch.Tensor:
        """``[1, N]`` actions from the dict, checked (strict) or only read (lenient)."""
        if not isinstance(actions, dict):
            raise EnvError(f"actions must be a dict keyed by agent, got {type(actions).__name__}")
        a = torch.zeros(1, len(self.possible_agents), dtype=torch.float64)
        problems = []
        unknown = [k for k in actions if k not in self._index]
        if unknown:
            problems.append(f"unknown agent(s) {', '.join(map(repr, unknown[:5]))}")
        missing = [k for k in self.agents if k not in actions]
        if missing and self.strict_actions:
            shown = ", ".join(map(repr, missing[:5])) + (" …" if len(missing) > 5 else "")
            problems.append(f"no action for {len(missing)} live agent(s) {shown}")
        bad_shape = []
        for agent, act in actions.items():
            if agent not in self._index:
                continue
            x = np.asarray(act, dtype=np.float64)
            if x.size == 0 or (self.strict_actions and x.shape not in ((1,), ())):
                bad_shape.append(f"{agent!r} {x.shape}")
                continue
            a[0, self._index[agent]] = float(x.reshape(-1)[0])
        if bad_shape:
            problems.append("action shape must be (1,), got " + ", ".join(bad_shape[:5]))
        if problems:
            hint = "" if not self.strict_actions or unknown else (
                " (strict_actions=False gives a missing agent 0 and uses an action's first element)")
            raise EnvError("step(actions): " + "; ".join(problems) + hint)
        return a

    def _obs_dict(self, obs: torch.Tensor) -> dict[str, np.ndarray]:
        x = obs[0].numpy()
        return {a: x[self._index[a]].copy() for a in self.agents or self.possible_agents}

    def state(self) -> np.ndarray:
        """Global state ``[state_dim]`` (float32): every bus's voltage and net power, every
        inverter's p, q and q limit, time of day (see ``VoltageControlEnv.state``)."""
        return self.core.state()[0].numpy().copy()

    def render(self, mode: str | None = None) -> str | None:
        """Render the last step: ``"ansi"`` gives one text line (day, step, voltage range,
        loss); ``None`` (no ``render_mode`` set) renders nothing. ``mode`` overrides
        ``render_mode`` for this call (the older Gym signature that RLlib calls)."""
        mode = self.render_mode if mode is None else mode
        if mode is None:
            return None
        if mode != "ansi":
            raise EnvError(f"unknown render mode {mode!r} (gridrl renders 'ansi' text)")
        info = self._last_info
        ep = self.core.episode_metrics()
        head = f"{self.core.feeder.name} day {int(ep['day'][0])} step {int(ep['steps'][0])}"
        if info is None:
            return head + ": reset"
        return (f"{head}: |v-1| max {info['dv_max_pu']:.4f} pu, out of band "
                f"{info['out_of_band_share']:.1%}, loss {info['loss_mw']:.4f} MW")

    def close(self) -> None:
        return None


def _scalar(x: torch.Tensor):
    v = x.item()
    return bool(v) if isinstance(v, bool) else float(v)
