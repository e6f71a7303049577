"""Environments: the batched torch core and its adapters for RL libraries.

``make_env`` builds a :class:`VoltageControlEnv` (B scenarios × N agents, torch tensors batch
first); ``parallel_env`` builds a PettingZoo ``ParallelEnv`` over one scenario. Both take a
feeder name or a :class:`~gridrl.grid.feeder.Feeder`, and an :class:`EnvConfig`. The other
adapters live in their own modules, each importing its library only there:
:mod:`gridrl.env.torchrl` (TorchRL ``EnvBase``, batch ``[B]``), :mod:`gridrl.env.gymnasium`
(vector env of B·N agents, centralized single-agent env), :mod:`gridrl.env.sb3` (SB3 ``VecEnv``);
:mod:`gridrl.env.seeding` states how copies are seeded apart, :mod:`gridrl.env.spec` what the
observations and rewards mean and measure.
"""

from __future__ import annotations

from collections.abc import Sequence

from gridrl.env.config import EnvConfig

# torch loads with the environment itself, not with its configuration: a comparison config or a
# report can name an EnvConfig without paying for torch.
_LAZY = {"EnvError": "gridrl.env.core", "VoltageControlEnv": "gridrl.env.core",
         "BARRIERS": "gridrl.env.rewards", "barrier": "gridrl.env.rewards",
         "VoltageControlParallelEnv": "gridrl.env.pettingzoo"}

__all__ = ["BARRIERS", "EnvConfig", "EnvError", "VoltageControlEnv", "VoltageControlParallelEnv", "barrier",
           "make_env", "parallel_env"]


def _feeder(feeder_or_name):
    if isinstance(feeder_or_name, str):
        from gridrl.grid.feeder import load_feeder

        return load_feeder(feeder_or_name)
    return feeder_or_name


def make_env(feeder_or_name, *, split: str = "train", num_envs: int = 1, seed: int = 0,
             days: Sequence[int] | None = None, config: EnvConfig | None = None,
             device: str = "cpu", chunk: int | None = None) -> VoltageControlEnv:
    """The batched environment: ``num_envs`` episodes on days of ``split`` (or of ``days``);
    ``chunk``: its physics solved that many scenarios at a time (the same numbers; see
    :class:`VoltageControlEnv`)."""
    from gridrl.env.core import VoltageControlEnv

    return VoltageControlEnv(_feeder(feeder_or_name), num_envs=num_envs, seed=seed, split=split,
                             days=days, config=config, device=device, chunk=chunk)


def parallel_env(feeder_or_name, *, split: str = "train", seed: int | None = None,
                 config: EnvConfig | None = None, days: Sequence[int] | None = None,
                 copy_index: int | None = None, worker_index: int | None = None,
                 strict_actions: bool = True, render_mode: str | None = None):
    """A PettingZoo ``ParallelEnv`` over one scenario (see :class:`VoltageControlParallelEnv`).

    Without ``seed`` the env is a *copy* that draws apart from every other copy even when all
    are reset with one seed (``copy_index``, ``worker_index``: :mod:`gridrl.env.seeding`); with
    ``seed`` it is a reproducible instance. ``strict_actions=False`` only clips actions.
    """
    from gridrl.env.pettingzoo import VoltageControlParallelEnv

    return VoltageControlParallelEnv(_feeder(feeder_or_name), split=split, seed=seed,
                                     config=config, days=days, copy_index=copy_index,
                                     worker_index=worker_index, strict_actions=strict_actions,
                                     render_mode=render_mode)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gridrl.env' has no attribute {name!r}")
