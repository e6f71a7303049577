"""A trained policy: local observations (and which messages arrived) → actions. Nothing else.

:class:`Policy` has the controller protocol of :mod:`gridrl.control.base` (``name``, ``hops``,
``communication``, ``reset``, ``act``), so evaluation and comparisons run it like droop or the
optimum. Unlike the rule-based controllers it never reads the environment: ``act(obs)`` works
without one, and it has no handle through which it could call ``env.peek`` / ``env.pending``
(an oracle of the pending step that no inverter has). With message dropout the environment's
``info["message_mask"]`` of the step that produced ``obs`` is passed as ``message_mask``.

The learner that trained it (optimizers, buffers, losses) is a separate object; the policy holds
only the actor network, the frozen observation statistics and the agent graph. Besides the
statistics its input is normalised with, it keeps each agent's own (``own_statistics``: per agent
and feature, what that agent saw in training), which the deployment's hand-over tests against
(:mod:`gridrl.env.envelope`): in decentralized training they are the normaliser itself, with
shared weights a second, per-agent :class:`RunningNorm` that never feeds the actor. Actions are the
Gaussian mean (deterministic) unless ``deterministic=False``; they are clipped to [-1, 1].

A policy trained as a residual (``residual``: a :class:`~gridrl.env.residual.ResidualBase`) adds
its base, a droop curve at each agent's own measured voltage, to the Gaussian's mean
(:meth:`shift`): the action sent is ``clip(a_base(v_i) + a_policy_i, −1, 1)``. Learners that call
the actor themselves shift its mean with :meth:`shift` on the same raw observations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from gridrl.errors import GridrlError
from gridrl.marl.graph import Neighbourhood
from gridrl.marl.nets import GaussianActor
from gridrl.marl.normalize import RunningNorm
from gridrl.marl.transfer import TransferNorm

__all__ = ["Policy", "PolicyError"]


class PolicyError(GridrlError, ValueError):
    """Observations a policy cannot read (another feeder, another observation layout)."""


class Policy(torch.nn.Module):
    """Decentralized actor over κ-hop neighbourhoods, with the controller protocol.

    name: label in result tables; hops: κ; communication: floats each agent sends per step to
    act (its message, relayed to every agent within κ hops); agents, obs_names: what the
    observations must be (the environment's ``agents`` and ``obs_names``).
    agent_norm: per-agent statistics of the observations kept beside a pooled ``obs_norm`` (for
    the hand-over only; ``None`` when ``obs_norm`` is per agent already, or for a run trained
    before they were kept).
    """

    reads_messages = True  # evaluation passes info["message_mask"] as message_mask

    def __init__(self, actor: GaussianActor, obs_norm: RunningNorm, graph: Neighbourhood, *,
                 agents: Sequence[str], obs_names: Sequence[str], name: str = "policy",
                 agent_norm: RunningNorm | None = None, residual=None):
        super().__init__()
        self.actor = actor
        self.obs_norm = obs_norm
        self.agent_norm = None if obs_norm.per_agent else agent_norm
        self.graph = graph
        self.agents = list(agents)
        self.obs_names = list(obs_names)
        self.name = name
        self.hops = graph.hops
        self.communication = graph.relay_floats(actor.net.message_dim)
        self.residual = residual
        self.last_info: dict[str, Any] = {}

    def shift(self, mean: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """The Gaussian's mean ``mean [..., N]`` for raw observations ``obs [..., N, D]``: the
        actor's, plus the residual's base where the policy has one."""
        return mean if self.residual is None else mean + self.residual(obs).to(mean.dtype)

    @property
    def transferable(self) -> bool:
        """Whether the policy holds nothing per agent and reads feeder-agnostic inputs
        (:mod:`gridrl.marl.transfer`): it acts on any feeder it is bound to."""
        return isinstance(self.obs_norm, TransferNorm)

    def bind(self, graph: Neighbourhood, *, agents: Sequence[str], features) -> Policy:
        """Act on another feeder from now on: its agent graph ``graph``, its ``agents`` and its
        per-agent tables ``features`` (:func:`~gridrl.marl.transfer.feeder_features`). A
        transferable policy only; returns itself."""
        if not self.transferable:
            raise PolicyError(f"policy {self.name!r} is bound to the feeder it was trained on (agent embedding, "
                              f"per-agent action spread); train it with transfer = true to act on other feeders")
        self.actor.net.bind(graph)
        self.obs_norm.bind(features)
        self.graph = graph
        self.agents = list(agents)
        self.communication = graph.relay_floats(self.actor.net.message_dim)
        return self

    @property
    def own_statistics(self) -> RunningNorm | None:
        """Each agent's own observation statistics (``[N, D]`` mean and variance), or ``None``
        for a run trained before they were kept (only the pooled ``obs_norm`` then)."""
        return self.obs_norm if self.obs_norm.per_agent else self.agent_norm

    @torch.no_grad()
    def update_statistics(self, obs: torch.Tensor) -> None:
        """Fold real observations ``[..., N, D]`` into the normaliser and the per-agent statistics
        (learners call this; a deployed policy's statistics are frozen)."""
        self.obs_norm.update(obs)
        if self.agent_norm is not None:
            self.agent_norm.update(obs)

    def reset(self) -> None:
        """The policy carries nothing between steps; kept for the controller protocol."""
        self.last_info = {}

    def describe(self) -> dict[str, Any]:
        out = {"name": self.name, "hops": self.hops, "communication": self.communication}
        if self.residual is not None:
            out["residual"] = self.residual.record()
        return out

    def distribution(self, obs: torch.Tensor, delivered: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian ``mean [M, N]`` (the residual's base included) and ``log_std [N]`` for raw
        observations ``[M, N, D]``."""
        mean, log_std = self.actor(self.obs_norm(obs), delivered)
        return self.shift(mean, obs), log_std

    def act(self, obs: torch.Tensor, *, env: Any = None, message_mask: torch.Tensor | None = None,
            deterministic: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        """Actions ``[B, N]`` (float64, in [-1, 1]) for observations ``[B, N, D]``.

        env: accepted for the controller protocol and ignored: a trained policy never reads the
            environment. message_mask: ``info["message_mask"]`` ``[B, N, N]`` of the step that
            produced ``obs`` (``None``: every message arrived).
        """
        obs = self._check(obs)
        with torch.no_grad():
            mask = None if message_mask is None else torch.as_tensor(message_mask).to(obs.device)
            mean, log_std = self.distribution(obs, self.graph.delivered(mask))
            a = mean if deterministic else mean + log_std.exp() * torch.randn(
                mean.shape, generator=generator, device=mean.device)
        return a.clamp(-1.0, 1.0).to(torch.float64)

    def _check(self, obs) -> torch.Tensor:
        obs = torch.as_tensor(obs, dtype=torch.float32)
        if obs.ndim == 2:
            obs = obs[None]
        want = (len(self.agents), len(self.obs_names))
        if obs.ndim != 3 or tuple(obs.shape[1:]) != want:
            raise PolicyError(f"policy {self.name!r} reads observations [B, {want[0]}, {want[1]}] "
                              f"({want[0]} agents, {want[1]} features); got {list(obs.shape)} — evaluate it "
                              f"on the feeder and environment settings it was trained with")
        return obs.to(self.obs_norm.mean.device)

    def __repr__(self) -> str:
        return f"Policy({self.name!r}, agents={len(self.agents)}, hops={self.hops})"
