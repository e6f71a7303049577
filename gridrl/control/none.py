"""``none``: no reactive power control, every inverter at unity power factor (q = 0)."""

from __future__ import annotations

from typing import Any

import torch

from gridrl.control.base import Controller


class NoControl(Controller):
    """q = 0 at every inverter: the uncontrolled feeder every other controller is measured against."""

    name = "none"
    information = "nothing"
    hops = 0
    communication = 0.0

    def __init__(self, feeder) -> None:
        super().__init__()
        self.n_agents = len(feeder.agents)

    def act(self, obs: Any, *, env: Any = None) -> torch.Tensor:
        """Zeros ``[B, N]``; ``B`` from the environment, else from the observation's first axis."""
        batch = env.num_envs if env is not None else _batch_size(obs)
        self.last_info = {}
        return torch.zeros(batch, self.n_agents, dtype=torch.float64)


def _batch_size(obs: Any) -> int:
    if isinstance(obs, dict):
        obs = next(iter(obs.values()))
    return int(obs.shape[0])
