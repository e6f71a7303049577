"""Running normalisation of observations and per-agent reward scaling, saved with checkpoints.

Observation features span four orders of magnitude (voltage deviations of 0.01 p.u. beside zone
injections of 10 MW) and the ``pad`` layout fills zones smaller than the largest with zeros.
:class:`RunningNorm` keeps one mean and variance per feature column, shared by all agents (so a
voltage of 0.96 p.u. reads the same at every agent and the band stays where it is), counting only
the entries that are real: padding neither drags the mean towards zero nor shrinks the variance,
and it stays exactly zero after normalisation.

Rewards are small and heavy-tailed, and their per-agent means differ up to 11× on SimBench
feeders. :class:`ReturnScale` divides each agent's reward by the running standard deviation of
its own discounted return (the reward scaling of Engstrom et al., 2020, per agent), so every
critic learns targets of order one. Learners that sum advantages across agents multiply by the
scale again first (see :mod:`gridrl.marl.dppo`), so scaling never reweights the objective.

Statistics are float64 buffers of ``torch.nn.Module``\\ s: they travel in ``state_dict`` with
the checkpoint and are frozen at evaluation (``update`` is only called by learners).
"""

from __future__ import annotations

import torch

__all__ = ["ReturnScale", "RunningNorm", "observation_masks"]


def _merge(mean, var, count, b_mean, b_var, b_count):
    """Chan et al.'s parallel update of (mean, var, count) with a batch's moments."""
    total = count + b_count
    delta = b_mean - mean
    safe = total.clamp(min=1.0)
    new_mean = mean + delta * b_count / safe
    m2 = var * count + b_var * b_count + delta ** 2 * count * b_count / safe
    return new_mean, m2 / safe, total


class RunningNorm(torch.nn.Module):
    """``(x − mean) / sqrt(var + eps)`` per feature column, from running masked statistics.

    valid: ``[N, D]`` bool, the entries that carry a measurement (False: padding), or ``None``
        (all real). Invalid entries are ignored by the statistics and output as 0.
    keep: ``[D]`` bool, columns passed through unchanged (0/1 masks, already of order one).
    clip: normalised values are clipped to ``±clip``.
    per_agent: keep statistics per agent and column (``[N, D]``; needs ``valid``) instead of per
        column: for quantities whose scale differs from agent to agent by nature, such as the
        zone losses a dynamics model predicts (a 40-bus zone loses far more than a 1-bus zone).
    """

    def __init__(self, dim: int, *, valid: torch.Tensor | None = None, keep: torch.Tensor | None = None,
                 clip: float = 10.0, eps: float = 1e-8, per_agent: bool = False):
        super().__init__()
        if per_agent and valid is None:
            raise ValueError("per_agent statistics need the valid mask [N, D] (it gives N)")
        self.dim = int(dim)
        self.clip = float(clip)
        self.eps = float(eps)
        self.per_agent = bool(per_agent)
        shape = tuple(valid.shape) if per_agent else (dim,)
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("valid", None if valid is None else valid.to(torch.bool).clone())
        self.register_buffer("keep", torch.zeros(dim, dtype=torch.bool) if keep is None else keep.to(torch.bool).clone())

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold a batch ``[..., N, D]`` (or ``[..., D]`` without ``valid``) into the statistics."""
        x = x.to(self.mean.device, torch.float64)
        if self.per_agent:
            x = x.reshape(-1, *self.valid.shape)
            w = self.valid.to(torch.float64)                     # [N, D]
            n = x.shape[0] * w
            b_mean = x.mean(0) * w
            b_var = x.var(0, unbiased=False) * w
        elif self.valid is None:
            x = x.reshape(-1, self.dim)
            n = torch.full((self.dim,), float(x.shape[0]), dtype=torch.float64, device=x.device)
            b_mean = x.mean(0)
            b_var = x.var(0, unbiased=False)
        else:
            x = x.reshape(-1, *self.valid.shape)
            w = self.valid.to(torch.float64)                     # [N, D]
            n = x.shape[0] * w.sum(0)                            # [D]
            s = (x * w).sum((0, 1))
            b_mean = s / n.clamp(min=1.0)
            b_var = (((x - b_mean) ** 2) * w).sum((0, 1)) / n.clamp(min=1.0)
        self.mean, self.var, self.count = _merge(self.mean, self.var, self.count, b_mean, b_var, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(x.dtype)
        std = torch.sqrt(self.var + self.eps).to(x.dtype)
        mean = torch.where(self.keep, torch.zeros_like(mean), mean)
        std = torch.where(self.keep, torch.ones_like(std), std)
        y = ((x - mean) / std).clamp(-self.clip, self.clip)
        if self.valid is not None:
            y = y * self.valid.to(x.dtype)
        return y

    def observation_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of the observations, in their own units (``[D]``, or
        ``[N, D]`` per agent)."""
        return self.mean, torch.sqrt(self.var + self.eps)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Back from normalised values to the original units (a model's normalised outputs);
        invalid entries come back as 0."""
        mean = torch.where(self.keep, torch.zeros_like(self.mean), self.mean).to(y.dtype)
        std = torch.where(self.keep, torch.ones_like(self.var), torch.sqrt(self.var + self.eps)).to(y.dtype)
        x = y * std + mean
        if self.valid is not None:
            x = x * self.valid.to(y.dtype)
        return x


class ReturnScale(torch.nn.Module):
    """Per-agent reward scale: the running standard deviation of each agent's discounted return.

    ``update(reward [B, N], done [B])`` advances the discounted return of every scenario and
    agent and folds it into the per-agent variance; ``scale`` is ``[N]``. Rewards are divided by
    it (no mean is subtracted: that would change which actions are best under discounting).
    """

    def __init__(self, n_agents: int, *, gamma: float, eps: float = 1e-8):
        super().__init__()
        self.gamma = float(gamma)
        self.eps = float(eps)
        self.register_buffer("var", torch.ones(n_agents, dtype=torch.float64))
        self.register_buffer("count", torch.zeros(n_agents, dtype=torch.float64))
        # running returns of the current episodes; not saved: learners checkpoint between
        # iterations, and every iteration starts new episodes
        self.ret = torch.zeros(0, n_agents, dtype=torch.float64)

    @torch.no_grad()
    def update(self, reward: torch.Tensor, done: torch.Tensor, active: torch.Tensor | None = None) -> None:
        """One environment step: ``reward [B, N]``; ``done [B]`` ends returns after this step;
        ``active [B]`` (optional) leaves frozen scenarios out."""
        r = reward.to(self.var.device, torch.float64)
        if self.ret.shape != r.shape:
            self.ret = torch.zeros_like(r)
        self.ret = self.ret * self.gamma + r
        rows = self.ret if active is None else self.ret[active.to(self.var.device)]
        if len(rows):
            n = torch.full_like(self.var, float(rows.shape[0]))
            zero = torch.zeros_like(self.var)
            # the return's second moment about zero: the scale is that of the return itself
            _, self.var, self.count = _merge(zero, self.var, self.count, zero, (rows ** 2).mean(0), n)
        self.ret[done.to(self.var.device)] = 0.0

    def reset(self) -> None:
        """Forget the running returns (every scenario starts a new episode)."""
        self.ret = torch.zeros_like(self.ret)

    @property
    def scale(self) -> torch.Tensor:
        """``[N]`` float64: divide rewards by this."""
        return torch.sqrt(self.var + self.eps)


def observation_masks(env) -> tuple[torch.Tensor, torch.Tensor]:
    """``valid [N, D]`` and ``keep [D]`` for :class:`RunningNorm` from an environment's layout.

    ``valid`` is False for the padding of zones smaller than the largest (``pad`` layout: the
    four features of a zone slot are real exactly where its mask feature is 1); ``keep`` marks
    the mask features themselves.
    """
    names = env.obs_names
    valid = torch.ones(env.n_agents, len(names), dtype=torch.bool)
    keep = torch.zeros(len(names), dtype=torch.bool)
    for c, name in enumerate(names):
        base, _, rest = name.partition("[")
        if base in ("dv_pu", "p_mw", "q_mvar", "mask") and rest:
            valid[:, c] = env.zone_mask[:, int(rest.rstrip("]"))]
            keep[c] = base == "mask"
    return valid, keep
