"""One transferable policy trained on several feeders at once (``gridrl train --feeders a,b,c``).

:class:`FeederMix` has the learner interface the train driver asks for (``iterate``,
``state_dict`` / ``load_state_dict``, ``policy``, ``critic``, ``communication_training``,
``env_steps``, ``iteration``). It holds one learner of the run's algorithm per feeder — each with
its own training environment, rollout buffer, reward scales and (dmpo) dynamics models, since
those are the feeder's — and makes them share what a transferable run deploys: the policy (actor
and observation statistics), the neighbourhood critic where the learner has one (cppo's critic
reads a feeder's whole state and stays per feeder) and one optimizer over all of it.

Iterations take the feeders in turn (iteration k trains on feeder k mod F): each iteration
collects one episode in every scenario of that feeder's environment and updates the shared
networks, bound to that feeder's agent graph and per-agent tables (:mod:`gridrl.marl.transfer`).
Every feeder thus gets the same number of iterations, and each learner's learning rate decays
over its 1/F share of the budget, so all decay together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from gridrl.marl.nets import NeighbourhoodNet
from gridrl.marl.transfer import feeder_features

__all__ = ["FeederMix"]


class FeederMix:
    """Learners of class ``cls`` on ``envs`` (one per feeder) sharing one transferable policy.

    config: the learner's config (``transfer = true``); seed: every learner's; total_steps: the
    run's budget, split evenly between the feeders.
    """

    def __init__(self, cls, envs: Sequence, config, *, seed: int, total_steps: int, device: str = "cpu"):
        if not getattr(config, "transfer", False):
            raise ValueError("training on several feeders needs a feeder-agnostic policy: set transfer = true "
                             "(gridrl train --transfer)")
        share = math.ceil(total_steps / len(envs))
        self.sites = [cls(env, config, seed=seed, total_steps=share, device=device) for env in envs]
        self.features = [feeder_features(env.feeder) for env in envs]
        self.feeders = [env.feeder.name for env in envs]
        first = self.sites[0]
        self.policy = first.policy
        self.shared_critic = isinstance(first.critic, NeighbourhoodNet)
        for site in self.sites[1:]:
            site.policy = first.policy
            if self.shared_critic:
                site.critic = first.critic
        params, seen = [], set()
        for site in self.sites:
            for p in [*site.policy.actor.parameters(), *site.critic.parameters()]:
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        optimizer = torch.optim.Adam(params, lr=config.lr, eps=1e-5, fused=True)
        for site in self.sites:
            site.optimizer = optimizer
        self.optimizer = optimizer
        # the shared statistics start from every feeder's first states, not only the first feeder's
        for k, site in enumerate(self.sites[1:], 1):
            self.bind(k)
            site._warm_up_statistics()
        self.bind(0)
        self.iteration = 0
        self.env_steps = 0

    @property
    def bound(self) -> int:
        """The feeder the shared policy acts on now (its index in ``feeders``)."""
        return self._bound

    @property
    def critic(self) -> torch.nn.Module:
        return self.sites[self._bound].critic

    @property
    def communication_training(self) -> float:
        return self.sites[self._bound].communication_training

    def bind(self, k: int) -> None:
        """Point the shared policy (and critic) at feeder ``k``."""
        site = self.sites[k]
        self.policy.bind(site.graph, agents=site.env.agents, features=self.features[k])
        if self.shared_critic:
            site.critic.bind(site.graph)
        self._bound = k

    def iterate(self) -> dict[str, float]:
        """One iteration of the next feeder's learner (see the module docstring)."""
        k = self.iteration % len(self.sites)
        self.bind(k)
        stats = self.sites[k].iterate()
        self.iteration += 1
        self.env_steps += int(stats["iteration_steps"])
        stats["feeder_index"] = float(k)
        return stats

    def rng_state(self) -> dict[str, Any]:
        """The training environments' generators (for the checkpoint)."""
        return {"feeders": [site.env.rng_state() for site in self.sites]}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        for site, s in zip(self.sites, state["feeders"]):
            site.env.set_rng_state(s)

    def state_dict(self) -> dict[str, Any]:
        return {"sites": [site.state_dict() for site in self.sites], "iteration": self.iteration,
                "env_steps": self.env_steps, "feeders": list(self.feeders)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, (site, s) in enumerate(zip(self.sites, state["sites"])):
            self.bind(k)
            site.load_state_dict(s)
        self.bind(0)
        self.iteration = int(state["iteration"])
        self.env_steps = int(state["env_steps"])
