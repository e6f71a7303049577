"""What the numbers an agent sees and earns mean: observation layout, units, typical ranges,
reward components, and an optional observation normaliser.

* :func:`obs_spec` — one row per observation entry of an environment (``obs_names`` order):
  ``index, name, feature, slot, unit, description`` and, for the shipped feeders, the measured
  typical range of that feature (``p01, p50, p99``);
* :func:`reward_spec` — the measured per-step ranges of each reward component per feeder and
  controller (``none``, IEEE 1547-B ``droop``, ``random`` uniform actions);
* :func:`obs_loc_scale` and :class:`NormalizedObservation` — per-entry mean and standard
  deviation from a short seeded rollout on the env's own days, and a wrapper of the batched core
  that returns ``(obs − loc) / scale`` (TorchRL users pass the same ``loc``/``scale`` to
  ``ObservationNorm``).

The ranges come from ``gridrl/env/scales.json``, which ``experiments/bench_scales.py`` measures
(and which it renders as ``docs/scales.md``); nothing here is typed in by hand.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import numpy as np
import pandas as pd
import torch

__all__ = ["FEATURES", "CoreLayout", "NormalizedObservation", "feature_of", "obs_loc_scale", "obs_spec",
           "reward_spec", "scales"]

# feature → (unit, description); a name is "feature" or "feature[slot]"
FEATURES: dict[str, tuple[str, str]] = {
    "dv_pu": ("p.u.", "voltage deviation vm_pu − 1 at zone bus [z] (z = 0: the agent's own bus, "
                      "then the zone's other buses in bus order)"),
    "p_mw": ("MW", "net active power at zone bus [z], generation − consumption (injection +)"),
    "q_mvar": ("MVAr", "net reactive power at zone bus [z], generation − consumption (injection +)"),
    "mask": ("1", "1 where zone bus [z] exists, 0 for padding up to the feeder's largest zone"),
    "dv_own_pu": ("p.u.", "vm_pu − 1 at the agent's own bus (zone_layout='pool')"),
    "dv_min_pu": ("p.u.", "lowest vm_pu − 1 in the zone (pool)"),
    "dv_mean_pu": ("p.u.", "mean vm_pu − 1 over the zone (pool)"),
    "dv_max_pu": ("p.u.", "highest vm_pu − 1 in the zone (pool)"),
    "p_zone_mw": ("MW", "net active power summed over the zone (pool)"),
    "q_zone_mvar": ("MVAr", "net reactive power summed over the zone (pool)"),
    "inv_p_mw": ("MW", "PV output of the agent's inverters"),
    "inv_q_mvar": ("MVAr", "reactive power of the agent's inverters at the measured step (+ injects)"),
    "inv_q_avail_mvar": ("MVAr", "reactive limit sqrt(s_max² − p²) of the agent's inverters: "
                                 "action 1 gives this much"),
    "sin_time": ("1", "sin(2π · time of day / 24 h)"),
    "cos_time": ("1", "cos(2π · time of day / 24 h)"),
    "pv_forecast_mw": ("MW", "available PV of the agent's inverters [j] steps ahead (forecast)"),
    "load_forecast_mw": ("MW", "load P of the agent's zone [j] steps ahead (forecast)"),
}


def feature_of(name: str) -> tuple[str, int | None]:
    """``"dv_pu[3]"`` → ``("dv_pu", 3)``; ``"sin_time"`` → ``("sin_time", None)``."""
    if name.endswith("]") and "[" in name:
        base, slot = name[:-1].split("[", 1)
        return base, int(slot)
    return name, None


@lru_cache(maxsize=1)
def scales() -> dict:
    """The measured scales shipped with gridrl (``gridrl/env/scales.json``), or ``{}``."""
    try:
        text = resources.files("gridrl.env").joinpath("scales.json").read_text()
    except FileNotFoundError:
        return {}
    return json.loads(text)


def obs_spec(env) -> pd.DataFrame:
    """One row per observation entry of ``env`` (a core, or an adapter's ``.core``).

    Columns ``index, name, feature, slot, unit, description, p01, p50, p99``; the percentiles are
    the shipped measurement for this feeder and feature (pooled over agents, real zone buses
    and steps, uniform random actions on training days; NaN for a feeder or feature not
    measured).
    """
    env = getattr(env, "core", env)
    measured = scales().get("feeders", {}).get(env.feeder.name, {}).get("obs", {})
    rows = []
    for i, name in enumerate(env.obs_names):
        feature, slot = feature_of(name)
        unit, text = FEATURES.get(feature, ("", "see VoltageControlEnv's docstring"))
        p = measured.get(feature, {})
        rows.append({"index": i, "name": name, "feature": feature, "slot": slot, "unit": unit,
                     "description": text, "p01": p.get("p01", np.nan), "p50": p.get("p50", np.nan),
                     "p99": p.get("p99", np.nan)})
    return pd.DataFrame(rows)


def reward_spec(feeder: str | None = None) -> pd.DataFrame:
    """Measured per-step, per-agent reward components (the shipped ``scales.json``).

    One row per feeder × controller × component (``voltage``, ``loss``, ``q`` — weighted costs
    as the reward subtracts them — and ``reward``, the local reward itself) with ``p01, p50,
    p99, mean`` over agents and steps, plus ``episode_return`` (mean over days of the day's
    summed reward of all agents). ``feeder`` restricts the rows.
    """
    rows = []
    for name, data in scales().get("feeders", {}).items():
        if feeder is not None and name != feeder:
            continue
        for ctrl, comps in data.get("reward", {}).items():
            ret = comps.get("episode_return", np.nan)
            for comp, p in comps.items():
                if comp == "episode_return":
                    continue
                rows.append({"feeder": name, "controller": ctrl, "component": comp, **p,
                             "episode_return": ret})
    return pd.DataFrame(rows, columns=["feeder", "controller", "component", "p01", "p50", "p99",
                                       "mean", "episode_return"])


def obs_loc_scale(env, *, scenarios: int = 8, seed: int = 0, min_std: float = 1e-6):
    """``(loc, scale)`` ``[obs_dim]`` float32 tensors: mean and standard deviation of every
    observation entry over a seeded rollout of uniform random actions on ``scenarios`` whole
    episodes of ``env``'s own days and config (a separate core: ``env`` is not touched).

    Entries that do not vary (padding) and the 0/1 zone masks get ``loc 0, scale 1`` and pass
    unchanged.
    """
    from gridrl.env.core import VoltageControlEnv

    core = getattr(env, "core", env)
    probe = VoltageControlEnv(core.feeder, num_envs=scenarios, seed=seed, split="all",
                              days=core.day_pool.tolist(), config=core.config)
    g = torch.Generator().manual_seed(seed)
    obs = [probe.reset()]
    for _ in range(probe.episode_steps):
        a = 2 * torch.rand(scenarios, probe.n_agents, generator=g, dtype=torch.float64) - 1
        o, _, done, _ = probe.step(a)
        obs.append(o)
        if bool(done.all()):
            break
    x = torch.stack(obs).reshape(-1, probe.obs_dim).to(torch.float64)
    loc, std = x.mean(0), x.std(0)
    flat = std < min_std
    flat |= torch.tensor([feature_of(n)[0] == "mask" for n in probe.obs_names])
    loc = torch.where(flat, 0.0, loc)
    scale = torch.where(flat, 1.0, std)
    return loc.to(torch.float32), scale.to(torch.float32)


class NormalizedObservation:
    """The batched core with observations ``(obs − loc) / scale`` (see :func:`obs_loc_scale`).

    Everything else (rewards, info, ``pending``, ``peek``, attributes) passes through to the
    wrapped core; ``loc``/``scale`` are fixed at construction, so the same observation always
    maps to the same input.
    """

    def __init__(self, env, *, loc: torch.Tensor | None = None, scale: torch.Tensor | None = None,
                 scenarios: int = 8, seed: int = 0):
        self.env = env
        if loc is None or scale is None:
            loc, scale = obs_loc_scale(env, scenarios=scenarios, seed=seed)
        self.loc, self.scale = loc.to(torch.float32), scale.to(torch.float32)

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.loc) / self.scale

    def reset(self, *args, **kwargs) -> torch.Tensor:
        return self.normalize(self.env.reset(*args, **kwargs))

    def reset_done(self) -> torch.Tensor:
        return self.normalize(self.env.reset_done())

    def step(self, actions):
        obs, reward, done, info = self.env.step(actions)
        return self.normalize(obs), reward, done, info

    def __getattr__(self, name):
        return getattr(self.env, name)


class CoreLayout:
    """What every library adapter over one batched core (``self.core``, seeded as copy
    ``self._key`` of :mod:`gridrl.env.seeding`) tells about its layout, in one place."""

    @property
    def obs_names(self) -> list[str]:
        return self.core.obs_names

    @property
    def copy_key(self) -> tuple[int, ...]:
        """This copy's key (``()`` for an env built with an explicit seed)."""
        return self._key

    def obs_spec(self) -> pd.DataFrame:
        """The observation layout as a table (see :func:`obs_spec`)."""
        return obs_spec(self.core)
