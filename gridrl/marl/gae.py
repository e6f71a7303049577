"""Generalized advantage estimation (Schulman et al., 2016) over any trailing shape.

Per-agent GAE is the same recursion run on ``[T, B, N]`` instead of ``[T, B]``; the caller
decides what a value is (agent *i*'s extended value over its neighbourhood, or one centralized
value) and what an advantage is summed over afterwards.

Episode ends come in two kinds and are kept apart: a *terminal* step (the power flow diverged:
nothing follows, the next value is 0) and a *cut* (the episode reached its length, or the
rollout stops: the next state exists and its value is bootstrapped). The λ-recursion stops at
both.
"""

from __future__ import annotations

import torch

__all__ = ["gae"]


def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, *, terminal: torch.Tensor,
        end: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and λ-returns.

    rewards, values, next_values: ``[T, ...]``; ``values[t] = V(s_t)``, ``next_values[t] =
        V(s_{t+1})`` (for the last step of an episode, the value of its final observation).
    terminal: ``[T, ...]`` (broadcastable) bool: ``s_{t+1}`` is terminal, its value counts 0.
    end: ``[T, ...]`` bool: step t is the last of its episode or of the rollout; the recursion
        does not look past it.
    Returns ``(advantages, returns)`` with ``returns = advantages + values``.
    """
    if not rewards.shape == values.shape == next_values.shape:
        raise ValueError(f"rewards, values and next_values must share one shape, got "
                         f"{list(rewards.shape)}, {list(values.shape)}, {list(next_values.shape)}")
    not_terminal = (~terminal.to(torch.bool)).to(rewards.dtype).expand_as(rewards)
    carry_on = (~end.to(torch.bool)).to(rewards.dtype).expand_as(rewards)
    delta = rewards + gamma * next_values * not_terminal - values
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        last = delta[t] + gamma * lam * carry_on[t] * last
        adv[t] = last
    return adv, adv + values
