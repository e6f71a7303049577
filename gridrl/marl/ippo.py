"""IPPO: independent PPO, every agent alone — DPPO at κ = 0.

Agent *i*'s actor and critic read only its own observation, its critic predicts only its own
local reward's return and its policy advantage is its own local advantage: no messages, no
neighbour's reward. It is the lower bound of what communication buys: DPPO differs from it only
in κ. Everything else — shared weights with an agent embedding, per-agent reward scaling,
the collect → advantages → update loop — is :mod:`gridrl.marl.dppo`'s, read there.
"""

from __future__ import annotations

from dataclasses import dataclass

from gridrl.marl.dppo import DPPO, DppoConfig

__all__ = ["IPPO", "IppoConfig"]


@dataclass(frozen=True, kw_only=True)
class IppoConfig(DppoConfig):
    """DPPO's settings (see :class:`~gridrl.marl.dppo.DppoConfig`) with ``hops`` fixed at 0."""

    hops: int = 0

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.hops != 0:
            problems.append(f"ippo has no neighbours (hops = 0), got hops = {self.hops}; use dppo for hops ≥ 1")
        return problems


class IPPO(DPPO):
    """Independent learners: :class:`~gridrl.marl.dppo.DPPO` with κ = 0."""

    algo = "ippo"
    Config = IppoConfig
