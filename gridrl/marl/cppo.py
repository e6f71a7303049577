"""CPPO: decentralized actors, one centralized critic (MAPPO-style centralized training).

The actors are DPPO's — agent *i* acts on its κ-hop neighbourhood, so execution stays
decentralized — but the critic is one network on the environment's global state
(``env.state()``: every bus voltage and injection, every inverter), predicting the return of the
*global* reward (the sum of all local rewards), and every agent's policy advantage is that one
global advantage. Training therefore needs every agent's measurements at one place (counted in
:attr:`CPPO.communication_training`); acting does not.

Only the critic differs from :mod:`gridrl.marl.dppo`, whose collect → advantages → update loop
this reuses: the methods below are dppo's critic hooks, each computing from what it is handed —
what the critic reads (the state, stored with every step), predicts (the global return) and how
its one advantage becomes every agent's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gridrl.marl.dppo import DPPO, DppoConfig
from gridrl.marl.gae import gae
from gridrl.marl.nets import StateValue
from gridrl.marl.normalize import RunningNorm
from gridrl.marl.ppo import shared_floats

__all__ = ["CPPO", "CppoConfig"]


@dataclass(frozen=True, kw_only=True)
class CppoConfig(DppoConfig):
    """DPPO's settings (see :class:`~gridrl.marl.dppo.DppoConfig`; ``hops`` is the actors' κ).

    critic_hidden: as dppo's, the width of the critic's hidden layers — here the two layers of
        the critic on the global state — with its own default, 128 (``None``: the actor's
        ``hidden``). critic_message_dim: refused: this critic sends no messages.
    training: ``shared`` only: a centralized critic is centralized training.
    """

    critic_hidden: int | None = 128

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.critic_message_dim is not None:
            problems.append(f"critic_message_dim does not apply to cppo (its critic reads the global state and "
                            f"sends no messages), got {self.critic_message_dim}; leave it out")
        if self.training != "shared":
            problems.append(f"cppo trains with a centralized critic, so training = {self.training!r} does not "
                            f"apply; use dppo, ippo or dmpo for decentralized training")
        return problems


class CPPO(DPPO):
    """Decentralized κ-hop actors trained against one centralized value of the global return."""

    algo = "cppo"
    Config = CppoConfig

    def _make_critic(self) -> torch.nn.Module:
        self.state_norm = RunningNorm(self.env.state_dim)
        return StateValue(self.env.state_dim, hidden=self.cfg.critic_hidden or self.cfg.hidden)

    def _value_shape(self) -> tuple[int, ...]:
        return ()

    def _critic_fields(self):
        return {"state": ((self.env.state_dim,), torch.float32)}

    def _critic_step(self, x, delivered):
        state = self.env.state().to(self.device)
        return {"state": state, "value": self.critic(self.state_norm(state))}

    def _values(self, x, delivered, inputs):
        """The values of a minibatch from its global states (``inputs["state"]``)."""
        return self.critic(self.state_norm(inputs["state"]))

    def _critic_reward(self, reward: torch.Tensor) -> torch.Tensor:
        return reward.sum(-1, keepdim=True)

    def _advantages(self, last_value: torch.Tensor, *, standardize: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One GAE on the global reward, standardised (if ``standardize``) over the active
        feeder steps; every agent's policy advantage is the global one."""
        buf = self.buffer
        scale = self.reward_scale.scale.to(torch.float32)[0]
        values = buf["value"]
        next_values = torch.cat([values[1:], last_value[None]], 0)
        adv, returns = gae(buf["reward"].sum(-1) / scale, values, next_values, terminal=buf["terminal"],
                           end=buf["end"], gamma=self.cfg.gamma, lam=self.cfg.gae_lambda)
        if standardize:
            a = adv[buf["active"]]
            adv = (adv - a.mean()) / (a.std() + 1e-8)
        return adv[..., None].expand(-1, -1, self.env.n_agents), returns

    def _update_statistics(self) -> None:
        super()._update_statistics()
        self.state_norm.update(self.buffer["state"][self.buffer["active"]])

    def _warm_up_statistics(self) -> None:
        super()._warm_up_statistics()
        self.state_norm.update(self.env.state().to(self.device))

    def _communication(self, *, real_steps: float, update_stats: dict[str, float]) -> dict[str, float]:
        """Training traffic of one iteration, floats per agent: locally the actor's messages at
        every collected step and, in the update, again with their gradients back; globally
        every agent's observation to the critic's place and the global advantage back at every
        step, the gradient of the shared actor weights and the two scalars of the clip and the
        early stop at every gradient step and the pooled observation statistics (see
        :meth:`DPPO._communication`)."""
        g, D = self.graph, self.env.obs_dim
        actor = g.relay_floats(self.cfg.message_dim)
        local = real_steps * actor + 2.0 * actor * update_stats["update/samples"]
        shared = (real_steps * (D + 1.0) + (shared_floats(self.policy.actor) + 2.0) * update_stats["update/steps"]
                  + 3.0 * D)
        return {"comm/train_local_floats": local, "comm/train_global_floats": shared}

    @property
    def communication_training(self) -> float:
        """Actor messages to the κ-hop neighbourhood, every agent's observation to the critic's
        place, and the global advantage back to every agent."""
        return self.graph.relay_floats(self.cfg.message_dim) + self.env.obs_dim + 1.0

    def state_dict(self):
        return {**super().state_dict(), "state_norm": self.state_norm.state_dict()}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.state_norm.load_state_dict(state["state_norm"])
