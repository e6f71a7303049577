"""Feeder-agnostic inputs: what lets one policy act on every feeder, including one it never saw.

A feeder-specific policy (the default) reads observations laid out for its feeder and keeps a
learned embedding and an action spread per agent. A *transferable* policy (``transfer = true``
in the learner's config, ``gridrl train --transfer``) has neither: its weights hold nothing per
agent, and its inputs mean the same on every feeder:

- the zone is read through the ``pool`` layout (own, min, mean and max voltage, summed P and Q),
  which does not depend on how many buses a zone has;
- every power (zone P and Q, the inverters' P, Q and headroom, forecasts) is divided by the
  agent's own inverter rating ``s_max_mva``: per unit of what it controls, so a 5 kW and a
  2 MW inverter read alike;
- four local physical features a utility knows for each inverter from its network model, each
  normalised on its own feeder (no day of any split is read):

  ``z_rel``           electrical distance |Z| from the substation to the agent's bus, divided by
                      the largest among the feeder's agents (0 at the substation, 1 the farthest);
  ``r_over_x``        R / X of that path (how much P moves the voltage against Q), clipped to 10;
  ``rating_to_load``  the agent's rating over its zone's nominal load P, divided by the
                      feeder's mean of that ratio (1: a typical inverter of its feeder);
  ``zone_size_rel``   buses in the agent's zone over the feeder's mean zone size.

:class:`TransferNorm` applies this mapping and then the usual running normalisation
(:class:`~gridrl.marl.normalize.RunningNorm`, one mean and variance per feature shared by all
agents and all training feeders). It is *bound* to a feeder (:meth:`TransferNorm.bind`); the
bound per-agent tables are not saved with the policy, so a checkpoint holds nothing of the
feeders it trained on and loads onto any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gridrl.marl.normalize import RunningNorm

__all__ = ["STATIC_NAMES", "FeederFeatures", "TransferNorm", "feeder_features", "transfer_feature_names"]

STATIC_NAMES = ("z_rel", "r_over_x", "rating_to_load", "zone_size_rel")
_RATIO_CAP = 10.0


@dataclass(frozen=True)
class FeederFeatures:
    """One feeder's per-agent tables: ``rating_mva [N]`` (the agent's summed inverter ratings)
    and ``static [N, 4]`` (:data:`STATIC_NAMES`), in ``feeder.agents`` order."""

    feeder: str
    rating_mva: np.ndarray
    static: np.ndarray


def feeder_features(feeder) -> FeederFeatures:
    """The per-agent tables of ``feeder`` (see the module docstring), from its network model."""
    from gridrl.grid.distance import electrical_distance

    agents = list(feeder.agents)
    inv = feeder.inverters
    rating = inv.groupby("agent")["s_max_mva"].sum().reindex(agents).to_numpy(float)
    own_bus = inv.groupby("agent")["bus"].first().reindex(agents).to_numpy(np.int64)
    table = electrical_distance(feeder).table
    z = table["z_ohm"].reindex(own_bus).to_numpy(float)
    r = table["r_ohm"].reindex(own_bus).to_numpy(float)
    x = np.sqrt(np.clip(z ** 2 - r ** 2, 0.0, None))
    z_rel = z / max(float(np.nanmax(z)), 1e-12)
    r_over_x = np.clip(r / np.maximum(x, 1e-12), 0.0, _RATIO_CAP)
    zone = feeder.bus_zone.dropna()
    size = zone.value_counts().reindex(agents, fill_value=0).to_numpy(float)
    net = feeder.net
    load_zone = zone.reindex(net.load.bus.to_numpy()).to_numpy()
    load_p = _zone_sum(net.load.p_mw.to_numpy(float) * net.load.in_service.to_numpy(float), load_zone, agents)
    ratio = np.minimum(rating / np.maximum(load_p, 1e-9), _RATIO_CAP)
    static = np.stack([z_rel, r_over_x, ratio / max(float(ratio.mean()), 1e-12), size / max(float(size.mean()), 1e-12)],
                      axis=1)
    return FeederFeatures(feeder=feeder.name, rating_mva=rating, static=np.nan_to_num(static))


def _zone_sum(values: np.ndarray, keys: np.ndarray, agents: Sequence[str]) -> np.ndarray:
    """``values`` summed per agent in ``keys`` (entries of other or no agent are left out)."""
    pos = {a: i for i, a in enumerate(agents)}
    out = np.zeros(len(agents))
    for v, k in zip(values, keys):
        if k in pos:
            out[pos[k]] += v
    return out


def _is_power(name: str) -> bool:
    base = name.partition("[")[0]
    return base.endswith(("_mw", "_mvar"))


def transfer_feature_names(obs_names: Sequence[str]) -> list[str]:
    """The names of a transferable policy's inputs for raw observations ``obs_names``."""
    return [f"{n}/s_max" if _is_power(n) else n for n in obs_names] + list(STATIC_NAMES)


class TransferNorm(RunningNorm):
    """Raw observations ``[..., N, D]`` → feeder-agnostic features ``[..., N, D + 4]`` (powers per
    unit of the agent's rating, the static features appended), then running normalisation.

    obs_names: the raw observation layout (the ``pool`` zone layout). Bind to a feeder with
    :meth:`bind` before use; statistics are shared by every feeder it is bound to.
    """

    def __init__(self, obs_names: Sequence[str], *, clip: float = 10.0, eps: float = 1e-8):
        names = list(obs_names)
        if any(n.startswith(("dv_pu[", "mask[")) for n in names):
            raise ValueError("a transferable policy reads the 'pool' zone layout (the 'pad' layout depends on a "
                             "feeder's zone sizes): set env.zone_layout = 'pool'")
        super().__init__(len(names) + len(STATIC_NAMES), clip=clip, eps=eps)
        self.raw_dim = len(names)
        self.feature_names = transfer_feature_names(names)
        self.register_buffer("_power", torch.tensor([_is_power(n) for n in names]), persistent=False)
        self.register_buffer("_inv_rating", torch.ones(0, 1, dtype=torch.float64), persistent=False)
        self.register_buffer("_static", torch.zeros(0, len(STATIC_NAMES), dtype=torch.float64), persistent=False)
        self.feeder: str | None = None

    def bind(self, features: FeederFeatures) -> TransferNorm:
        """Read observations of ``features``'s feeder from now on; returns itself."""
        dev = self.mean.device
        self._inv_rating = torch.as_tensor(1.0 / np.maximum(features.rating_mva, 1e-9), dtype=torch.float64,
                                           device=dev)[:, None]
        self._static = torch.as_tensor(features.static, dtype=torch.float64, device=dev)
        self.feeder = features.feeder
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature-agnostic inputs of raw observations ``x [..., N, D]``, before normalisation."""
        if self.feeder is None:
            raise RuntimeError("TransferNorm is not bound to a feeder (call bind first)")
        scale = torch.where(self._power, self._inv_rating, 1.0).to(x.dtype)       # [N, D]
        static = self._static.to(x.dtype).expand(*x.shape[:-1], self._static.shape[-1])
        return torch.cat([x * scale, static], -1)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        super().update(self.features(x.to(torch.float64)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.features(x))

    def observation_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation ``[N, D]`` of the raw observations as the statistics see
        them on the bound feeder (the safety envelope's hand-over tests raw observations)."""
        scale = torch.where(self._power, self._inv_rating, 1.0)
        std = torch.sqrt(self.var + self.eps)
        return self.mean[:self.raw_dim] / scale, std[:self.raw_dim] / scale
