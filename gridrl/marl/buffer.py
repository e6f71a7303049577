"""Rollout storage: named tensors ``[T, B, …]`` preallocated once, filled step by step.

A learner declares its fields (observations ``[N, D]``, actions ``[N]``, the message
delivery of each neighbour pair ``[P]``, a global state ``[S]``, …) and stores one environment
step at a time; updates read them flattened to ``[T·B, …]`` samples, each sample one feeder
step with all of its agents (a neighbourhood needs its neighbours). Message masks are kept per
neighbour pair, never as ``[B, N, N]``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

__all__ = ["RolloutBuffer", "minibatch_indices"]


class RolloutBuffer:
    """``steps × num_envs`` samples of the named ``fields`` (name → (shape, dtype))."""

    def __init__(self, steps: int, num_envs: int, fields: Mapping[str, tuple[tuple[int, ...], torch.dtype]], *,
                 device: str | torch.device = "cpu"):
        self.steps, self.num_envs = int(steps), int(num_envs)
        self.data = {name: torch.zeros((self.steps, self.num_envs, *shape), dtype=dtype, device=device)
                     for name, (shape, dtype) in fields.items()}

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.data[name]

    def store(self, t: int, **values: torch.Tensor) -> None:
        """Write step ``t`` of the given fields (each ``[B, …]``)."""
        for name, v in values.items():
            self.data[name][t] = v

    def flat(self, name: str) -> torch.Tensor:
        """Field ``name`` as ``[T·B, …]`` samples (a view)."""
        x = self.data[name]
        return x.reshape(self.steps * self.num_envs, *x.shape[2:])


def minibatch_indices(n: int, count: int, *, generator: torch.Generator, where: torch.Tensor | None = None
                      ) -> Iterator[torch.Tensor]:
    """Indices ``0 … n−1`` (those where ``where [n]`` is True), shuffled by ``generator`` and split
    into ``count`` minibatches of (nearly) equal size; empty minibatches are skipped."""
    idx = torch.arange(n)
    if where is not None:
        idx = idx[where.cpu()]
    idx = idx[torch.randperm(len(idx), generator=generator, device=generator.device).cpu()]
    yield from (chunk for chunk in idx.tensor_split(max(1, int(count))) if len(chunk))
