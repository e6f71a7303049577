"""Replay of real episodes for a model-based learner: the last few iterations' rollouts, whole.

Each iteration of an on-policy learner runs one episode in each of its B scenarios; this keeps
the last ``capacity`` such blocks as ``[T + 1, B, N, D]`` observations (the final observation
included, so every step's next observation is at hand) with the actions, rewards and reward parts
of each step. Episodes are kept whole because a model-based learner needs more than transitions:
a rollout that branches from step t of a real episode replays the episode's exogenous inputs
(load, PV, time) of steps t + 1, t + 2, … (see :mod:`gridrl.marl.dmpo`).

A step is *valid* when its scenario was active and its power flow converged (after a diverged
step the observation only repeats). Some scenarios of every block (``holdout_every``) are
*held out*: their steps are never fitted, so the model's errors on them are honest.

Memory is ``capacity × (T + 1) × B × N × D`` floats: size ``capacity`` and B with the feeder
(the pool layout keeps D small on large feeders). The replay is part of a learner's
``state_dict``, so a resumed run replays what an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["EpisodeReplay"]

_STEP_FIELDS = ("action", "reward", "zone_loss_mw", "voltage_cost")


class EpisodeReplay:
    """A ring of ``capacity`` blocks of B episodes of T steps on N agents with D features.

    holdout_every: scenario b of every block is held out when ``b % holdout_every == 0``
        (0: none held out).
    """

    def __init__(self, capacity: int, steps: int, num_envs: int, n_agents: int, obs_dim: int, *,
                 holdout_every: int = 8, device: str | torch.device = "cpu"):
        C, T, B, N = int(capacity), int(steps), int(num_envs), int(n_agents)
        self.capacity, self.steps, self.num_envs = C, T, B
        self.obs = torch.zeros(C, T + 1, B, N, obs_dim, device=device)
        self.fields = {k: torch.zeros(C, T, B, N, device=device) for k in _STEP_FIELDS}
        self.valid = torch.zeros(C, T, B, dtype=torch.bool, device=device)
        held = torch.zeros(B, dtype=torch.bool, device=device)
        if holdout_every:
            held[::int(holdout_every)] = True
        self.held_out = held
        self.next_block = 0
        self.blocks = 0  # blocks filled so far (≤ capacity)

    def add(self, obs: torch.Tensor, valid: torch.Tensor, **fields: torch.Tensor) -> None:
        """Store one block: ``obs [T + 1, B, N, D]``, ``valid [T, B]`` and ``[T, B, N]`` tensors
        ``action``, ``reward``, ``zone_loss_mw``, ``voltage_cost``; the oldest block goes."""
        c = self.next_block
        self.obs[c] = obs
        self.valid[c] = valid
        for k in _STEP_FIELDS:
            self.fields[k][c] = fields[k]
        self.next_block = (c + 1) % self.capacity
        self.blocks = min(self.blocks + 1, self.capacity)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.fields[name]

    def transitions(self, *, held_out: bool) -> torch.Tensor:
        """``[K, 3]`` (block, step, scenario) of every valid stored step, in the training part
        or the held-out part."""
        mask = self.valid[:self.blocks] & (self.held_out if held_out else ~self.held_out)
        return mask.nonzero()

    def starts(self) -> torch.Tensor:
        """``[K, 3]`` every valid stored step of either part: where rollouts may branch."""
        return self.valid[:self.blocks].nonzero()

    def step(self, index: torch.Tensor, offset: int = 0) -> dict[str, torch.Tensor]:
        """Step ``t + offset`` of the transitions ``index [M, 3]``: ``obs``, ``next_obs`` and
        the step fields, plus ``valid [M]`` (False where the step lies past the episode's end
        or did not converge; its tensors are then those of the last step, never read)."""
        c, t, b = index.unbind(1)
        t = t + offset
        inside = t < self.steps
        tc = t.clamp(max=self.steps - 1)
        out = {"obs": self.obs[c, tc, b], "next_obs": self.obs[c, tc + 1, b],
               "valid": inside & self.valid[c, tc, b]}
        out.update({k: v[c, tc, b] for k, v in self.fields.items()})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"obs": self.obs[:self.blocks].clone(), "valid": self.valid[:self.blocks].clone(),
                **{k: v[:self.blocks].clone() for k, v in self.fields.items()},
                "next_block": self.next_block, "blocks": self.blocks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        n = int(state["blocks"])
        self.obs[:n] = state["obs"]
        self.valid[:n] = state["valid"]
        for k in _STEP_FIELDS:
            self.fields[k][:n] = state[k]
        self.next_block, self.blocks = int(state["next_block"]), n
