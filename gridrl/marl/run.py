"""Trained run directories as controllers: read one, check it fits a feeder, rebuild its policy.

A run directory (``gridrl train … --out RUN_DIR``) is a controller like ``droop`` wherever one is
accepted: :func:`load_policy` for Python users, ``gridrl evaluate RUN_DIR`` and run directories
in ``gridrl compare`` / comparison TOML files. The run's observation settings (the information
model, zone layout, forecasts and their noise, step length) are applied to the environment it is
evaluated in unless the evaluation's ``[env]`` sets one itself: then that setting holds for the
run too (an override is never silently ignored), or, where it would change the shape of what the
policy reads (zone layout, forecast steps), it is refused in one line. The voltage band, the
reward, the scenario and the fault settings are always the evaluation's, so the run is judged
exactly as the rule-based controllers beside it.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from gridrl.errors import CheckpointError
from gridrl.marl.checkpoint import checkpoint_hash, read_checkpoint

__all__ = ["OBSERVATION_FIELDS", "Run", "deployed", "evaluation_env_config", "information_label", "load_policy",
           "open_run", "trained_ratings"]

# what the policy's inputs depend on: carried from training to evaluation
OBSERVATION_FIELDS = ("observation", "zone_layout", "forecast_steps", "forecast_noise_rel", "step_minutes")
# of those, the ones that set the shape of the policy's input: an evaluation may not change them
SHAPE_FIELDS = ("zone_layout", "forecast_steps")
# of those, the ones every controller of an evaluation shares (its scenario): a run keeps its own
# only where no scenario is given
SCENARIO_FIELDS = ("step_minutes",)


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

    @property
    def transferable(self) -> bool:
        """Whether the run's policy is feeder-agnostic (``transfer = true``): it acts on any feeder."""
        return bool(self.header["learner_config"].get("transfer", False))

    @property
    def feeders(self) -> list[str]:
        """The feeders the run trained on (several for ``gridrl train --feeders``)."""
        return list(self.header.get("feeders") or [self.feeder])

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
        d.setdefault("observation", "previous_step")  # trained before the measured model
        d.setdefault("forecast_noise_rel", 0.0)        # the default then
        for k in ("load_scale_range", "pv_scale_range"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return EnvConfig(**d)

    def evaluation_config(self, base=None):
        """``base`` (default: the default :class:`EnvConfig`) with this run's observation
        settings where ``base`` leaves them at their defaults: the environment to evaluate its
        policy in. A :class:`CheckpointError` names a setting of ``base`` the policy cannot read."""
        return evaluation_env_config(self.env_config, base, run=str(self.path))

    def check_feeder(self, feeder) -> None:
        """Refuse (one line) a feeder other than the one the run was trained on, unless the run
        is transferable (it acts on any feeder)."""
        if self.transferable:
            return
        if feeder.name != self.feeder:
            raise CheckpointError(f"run {self.path} was trained on feeder {self.feeder!r}, not {feeder.name!r}; "
                                  f"evaluate it on {self.feeder} or train a run on {feeder.name}")
        if feeder.spec.content_hash() != self.header["feeder_hash"]:
            raise CheckpointError(f"run {self.path} was trained on another version of feeder {self.feeder!r} "
                                  f"(its spec or operating point changed since); train the run again")

    def residual(self):
        """The base of a run trained as a residual (:class:`~gridrl.env.residual.ResidualBase`,
        from the curve its checkpoint recorded), or ``None``. A :class:`CheckpointError` (one
        line) for a residual run whose curve is missing or unusable: its curve is never fitted
        again, since a new fit may differ from the one it trained on."""
        from gridrl.env.envelope import EnvelopeError
        from gridrl.env.residual import ResidualBase

        rec = self.header.get("residual")
        if rec is None:
            if self._configured_residual() is not None:
                raise CheckpointError(f"run {self.path} was trained as a residual on {self._configured_residual()} "
                                      f"but its checkpoint records no curve; train the run again")
            return None
        if not isinstance(rec, dict) or not isinstance(rec.get("base"), str) or "curve" not in rec:
            raise CheckpointError(f"run {self.path}: its checkpoint's residual record is damaged (no base curve); "
                                  f"train the run again")
        try:
            return ResidualBase(rec["base"], rec["curve"], self.header["obs_names"], damping=rec.get("damping", 1.0))
        except EnvelopeError as exc:
            raise CheckpointError(f"run {self.path}: {exc}; train the run again") from None

    def _configured_residual(self) -> str | None:
        """``residual`` of the run's ``config.json`` (``None`` without one)."""
        import json

        try:
            return json.loads((self.path / "config.json").read_text(encoding="utf-8"))["config"].get("residual")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def policy(self, *, device: str | torch.device = "cpu", name: str | None = None, feeder=None):
        """The trained :class:`~gridrl.marl.policy.Policy`, deterministic, on ``device``: the
        best validated one when the run validated, else the last. ``feeder``: the feeder a
        transferable run acts on (default: the first it trained on); a feeder-specific run acts
        on its own only (see :meth:`check_feeder`)."""
        from gridrl.marl.graph import Neighbourhood
        from gridrl.marl.nets import ACTOR_SETTINGS, build_actor
        from gridrl.marl.normalize import RunningNorm
        from gridrl.marl.policy import Policy

        h, cfg = self.header, self.header["learner_config"]
        if feeder is not None:
            self.check_feeder(feeder)
        if self.transferable:
            from gridrl.grid.feeder import load_feeder
            from gridrl.marl.transfer import TransferNorm, feeder_features

            feeder = feeder or load_feeder(self.feeders[0])
            agents, hop_distance = list(feeder.agents), feeder.hop_distance
            norm = TransferNorm(h["obs_names"]).bind(feeder_features(feeder))
            d = norm.dim
        else:
            agents, hop_distance = h["agents"], h["hop_distance"].numpy()
            n, d = len(agents), len(h["obs_names"])
            norm = RunningNorm(d, valid=torch.ones(n, d, dtype=torch.bool),
                               per_agent=cfg.get("training") == "decentralized")
        graph = Neighbourhood(hop_distance, int(cfg["hops"]))
        # a header without "training" is from before the training modes: its run shared weights
        actor = build_actor(d, graph, **{k: cfg[k] for k in ACTOR_SETTINGS if k in cfg})
        state = self.checkpoint.get("selected") or self.checkpoint.get("learner", {}).get("policy", {})
        # per-agent statistics beside a pooled normaliser: kept by runs trained since the hand-over used them
        own = (RunningNorm(d, valid=torch.ones(n, d, dtype=torch.bool), per_agent=True)
               if not self.transferable and "agent_norm.mean" in state else None)
        policy = Policy(actor, norm, graph, agents=agents, obs_names=h["obs_names"],
                        name=name or self.path.name or self.algo, agent_norm=own, residual=self.residual())
        try:
            policy.load_state_dict(state)
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


def evaluation_env_config(trained, base=None, *, run: str = "the run"):
    """``base`` (default: the default :class:`EnvConfig`) with the observation settings of the
    training config ``trained`` (:data:`OBSERVATION_FIELDS`) — except those ``base`` sets itself
    (differs from the default in): they apply to the run too. A :class:`CheckpointError` (one
    line, naming the setting) when ``base`` changes the shape of the policy's input, and when a
    given ``base`` leaves a scenario setting (:data:`SCENARIO_FIELDS`: the step length) at its
    default where the run was trained with another: the run would act with its own while the
    evaluation's other controllers act with the default (a table mixing step lengths)."""
    from gridrl.env import EnvConfig

    default = EnvConfig()
    given = base is not None
    base = base or default
    keep = {}
    for k in OBSERVATION_FIELDS:
        asked, trained_value = getattr(base, k), getattr(trained, k)
        if asked == getattr(default, k) or asked == trained_value:
            if given and k in SCENARIO_FIELDS and asked != trained_value:
                raise CheckpointError(f"env.{k}: {run} was trained with {k} = {trained_value!r} and would act with it "
                                      f"where the other controllers use {asked!r}; set [env] {k} = {trained_value!r} "
                                      f"to compare like with like")
            keep[k] = trained_value
        elif k in SHAPE_FIELDS:
            raise CheckpointError(f"env.{k} = {asked!r}: {run} was trained with {k} = {trained_value!r} and its "
                                  f"policy cannot read other observations; remove {k} from [env] or train a run "
                                  f"with it")
    return dataclasses.replace(base, **keep)


def information_label(config) -> str:
    """What a controller acting on observations of ``config`` knew, for result tables:
    ``measured`` (its own sensors now, neighbours' messages of the same instant),
    ``previous step`` (one interval old), plus ``+ oracle forecast (k, noise x)``."""
    label = "measured" if config.observation == "measured" else "previous step"
    if config.sensor_noise_pu > 0:
        label += f", sensor noise {config.sensor_noise_pu:g} p.u."
    if config.forecast_steps:
        label += f" + oracle forecast ({config.forecast_steps} step(s), noise {config.forecast_noise_rel:g})"
    return label


def deployed(policy, feeder, env_config, *, envelope=None, trained_on=None, trained=None):
    """A trained ``policy`` as it is deployed on ``feeder``: through the safety envelope
    (:mod:`gridrl.env.envelope`; ``envelope``: a mapping of
    :class:`~gridrl.env.envelope.EnvelopeConfig` fields, default on) with the hand-over to 1547-B
    droop where an agent's own observation leaves the policy's training statistics, labelled with
    what it knew (``env_config``: the environment it acts in, whose band the envelope keeps).
    The hand-over tests each agent's own training statistics; a run trained before they were
    kept uses the pooled ones, and its label says so. ``trained_on``: the names of the feeders
    the policy trained on (the ``unseen`` loss guard compares with them; default: ``feeder``);
    on a feeder outside them the loss guard is ``unseen`` unless ``envelope`` sets it (chosen on
    the left-out feeders' validation days, ``reports/transfer``), so a feeder-specific run, a
    transferable run on a feeder it trained on and an export act as without it.
    ``trained``: the run's training :class:`~gridrl.env.EnvConfig`, whose PV scale (and its range)
    gives the inverter ratings the policy saw (the hand-over outside them); without it there is no
    such hand-over, and the label says so."""
    import numpy as np

    from gridrl.config import from_dict
    from gridrl.env.envelope import EnvelopeConfig, SafetyEnvelope

    envelope = dict(envelope or {})
    if trained_on and feeder.name not in trained_on:
        envelope.setdefault("loss_guard", "unseen")
    cfg = from_dict(EnvelopeConfig, envelope, source="envelope")
    norm = policy.obs_norm
    if cfg.handover_statistics == "own":
        if policy.own_statistics is None:  # a run trained before per-agent statistics were kept
            cfg = dataclasses.replace(cfg, handover_statistics="pooled")
        else:
            norm = policy.own_statistics
    elif norm.per_agent:  # decentralized training keeps nothing pooled: its statistics are the agents' own
        cfg = dataclasses.replace(cfg, handover_statistics="own")
    ratings = None
    if trained is None:
        cfg = dataclasses.replace(cfg, rating_handover=False)
    elif cfg.rating_handover:
        ratings = trained_ratings(feeder, trained, agents=policy.agents)
    timeless = np.array([n not in ("sin_time", "cos_time") for n in policy.obs_names])
    mean, std = norm.observation_statistics()  # in the observations' units ([N, D] for a transferable policy)
    wrapped = SafetyEnvelope(policy, v_min_pu=env_config.v_min_pu or feeder.v_min_pu,
                             v_max_pu=env_config.v_max_pu or feeder.v_max_pu, config=cfg,
                             obs_mean=mean.cpu().numpy(), obs_std=std.cpu().numpy(),
                             obs_valid=None if norm.valid is None else norm.valid.cpu().numpy(),
                             obs_test=(~norm.keep.cpu()[:len(policy.obs_names)]).numpy() & timeless,
                             loss_sensitivity=_guarded_sensitivity(feeder, cfg.loss_guard, trained_on),
                             ratings_mva=ratings,
                             # the feeder's agent graph carries the outage alerts, whatever the policy's messages
                             neighbours=(feeder.hop_distance == 1 if list(policy.agents) == list(feeder.agents)
                                         else None))
    knew = information_label(env_config)
    if getattr(policy, "residual", None) is not None:
        knew += f"; {policy.residual.label}"
    label = wrapped.config.label_with(guarded=(wrapped.guarded_agents, len(policy.agents)))
    wrapped.information = f"{knew}; {label}"
    return wrapped


def _guarded_sensitivity(feeder, guard: str, trained_on):
    """Each agent's loss sensitivity where the loss guard ``guard`` holds it, 0 elsewhere
    (``None`` without a guard)."""
    if guard == "off":
        return None
    from gridrl.env.envelope import unseen_sensitivity
    from gridrl.grid.sensitivity import agent_loss_sensitivity

    own = agent_loss_sensitivity(feeder)
    if guard == "all":
        return own
    import numpy as np

    trained = [own if name == feeder.name else _training_sensitivity(name) for name in (trained_on or [feeder.name])]
    return unseen_sensitivity(own, np.concatenate(trained))


@functools.lru_cache(maxsize=16)
def _training_sensitivity(name: str):
    from gridrl.grid.feeder import load_feeder
    from gridrl.grid.sensitivity import agent_loss_sensitivity

    return agent_loss_sensitivity(load_feeder(name))


def trained_ratings(feeder, trained, *, agents):
    """``[N, 2]`` MVA: the lowest and highest summed rating of each agent's inverters that a policy
    trained in ``trained`` (an :class:`~gridrl.env.EnvConfig`) saw: ``feeder``'s own ratings times
    its PV scale, times the ends of the drawn PV scale's range where it had one."""
    import numpy as np

    low, high = trained.pv_scale_range or (1.0, 1.0)
    s_mva = feeder.inverters.groupby("agent")["s_max_mva"].sum().reindex(list(agents)).fillna(0.0).to_numpy()
    return np.stack([s_mva * trained.pv_scale * low, s_mva * trained.pv_scale * high], axis=1)
