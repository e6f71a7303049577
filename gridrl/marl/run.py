"""Trained run directories as controllers: read one, check it fits a feeder, rebuild its policy.

A run directory (``gridrl train … --out RUN_DIR``) is a controller like ``droop`` wherever one is
accepted: :func:`load_policy` for Python users, ``gridrl evaluate RUN_DIR`` and run directories
in ``gridrl compare`` / comparison TOML files. The run's observation settings (zone layout,
forecasts, step length) are applied to the environment it is evaluated in — the policy reads
nothing else — while the voltage band, the reward and the fault settings stay those of the
evaluation, so it is judged exactly as the rule-based controllers beside it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from gridrl.errors import CheckpointError
from gridrl.marl.checkpoint import checkpoint_hash, read_checkpoint

__all__ = ["OBSERVATION_FIELDS", "Run", "evaluation_env_config", "load_policy", "open_run"]

# what the policy's inputs depend on: carried from training to evaluation
OBSERVATION_FIELDS = ("zone_layout", "forecast_steps", "forecast_noise_rel", "step_minutes")


@dataclass(frozen=True)
class Run:
    """A run directory and its checkpoint (see :mod:`gridrl.marl.checkpoint`)."""

    path: Path
    checkpoint: dict[str, Any]

    @property
    def header(self) -> dict[str, Any]:
        return self.checkpoint["header"]

    @property
    def algo(self) -> str:
        return self.header["algo"]

    @property
    def feeder(self) -> str:
        return self.header["feeder"]

    @cached_property
    def hash(self) -> str:
        """The checkpoint file's hash: part of every evaluation cell's identity."""
        return checkpoint_hash(self.path)

    @property
    def env_config(self):
        """The :class:`~gridrl.env.EnvConfig` the run was trained in."""
        from gridrl.env import EnvConfig

        d = dict(self.header["env_config"])
        d["outage_agents"] = tuple(d.get("outage_agents", ()))
        return EnvConfig(**d)

    def evaluation_config(self, base=None):
        """``base`` (default: the default :class:`EnvConfig`) with this run's observation
        settings: the environment to evaluate its policy in."""
        return evaluation_env_config(self.env_config, base)

    def check_feeder(self, feeder) -> None:
        """Refuse (one line) a feeder other than the one the run was trained on."""
        if feeder.name != self.feeder:
            raise CheckpointError(f"run {self.path} was trained on feeder {self.feeder!r}, not {feeder.name!r}; "
                                  f"evaluate it on {self.feeder} or train a run on {feeder.name}")
        if feeder.spec.content_hash() != self.header["feeder_hash"]:
            raise CheckpointError(f"run {self.path} was trained on another version of feeder {self.feeder!r} "
                                  f"(its spec or operating point changed since); train the run again")

    def policy(self, *, device: str | torch.device = "cpu", name: str | None = None):
        """The trained :class:`~gridrl.marl.policy.Policy`, deterministic, on ``device``: the
        best validated one when the run validated, else the last."""
        from gridrl.marl.graph import Neighbourhood
        from gridrl.marl.nets import ACTOR_SETTINGS, build_actor
        from gridrl.marl.normalize import RunningNorm
        from gridrl.marl.policy import Policy

        h, cfg = self.header, self.header["learner_config"]
        n, d = len(h["agents"]), len(h["obs_names"])
        graph = Neighbourhood(h["hop_distance"].numpy(), int(cfg["hops"]))
        # a header without "training" is from before the training modes: its run shared weights
        actor = build_actor(d, graph, **{k: cfg[k] for k in ACTOR_SETTINGS if k in cfg})
        norm = RunningNorm(d, valid=torch.ones(n, d, dtype=torch.bool), per_agent=cfg.get("training") == "decentralized")
        policy = Policy(actor, norm, graph, agents=h["agents"], obs_names=h["obs_names"],
                        name=name or self.path.name or self.algo)
        try:
            policy.load_state_dict(self.checkpoint.get("selected") or self.checkpoint["learner"]["policy"])
        except (KeyError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"{self.path}: the policy in its checkpoint does not match its header "
                                  f"({first[:120]}); train the run again") from None
        return policy.to(device).eval()


def open_run(run_dir: str | Path) -> Run:
    """Read a run directory's checkpoint (a :class:`CheckpointError` if it cannot be used)."""
    return Run(Path(run_dir), read_checkpoint(run_dir))


def load_policy(run_dir: str | Path, *, device: str | torch.device = "cpu", name: str | None = None):
    """The trained policy of a run directory: the controller protocol, deterministic actions.

    ``policy.act(obs)`` needs no environment; evaluate it in an environment built with the
    run's observation settings (:func:`evaluation_env_config`).
    """
    return open_run(run_dir).policy(device=device, name=name)


def evaluation_env_config(trained, base=None):
    """``base`` (default: the default :class:`EnvConfig`) with the observation settings of the
    training config ``trained`` (:data:`OBSERVATION_FIELDS`)."""
    from gridrl.env import EnvConfig

    base = base or EnvConfig()
    return dataclasses.replace(base, **{k: getattr(trained, k) for k in OBSERVATION_FIELDS})
