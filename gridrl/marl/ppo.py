"""Pieces every PPO-style learner here uses the same way (each unit-tested): Gaussian
log-probabilities, the clipped surrogate with its diagnostics, the learning-rate schedule,
episode statistics from the environment's ``info`` and the wall-clock split of an iteration."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["Stopwatch", "clipped_surrogate", "episode_stats", "gaussian_log_prob", "linear_lr", "ppo_problems",
           "shared_floats", "weighted_mean"]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Log-density of ``x`` under independent Gaussians (elementwise, broadcasting)."""
    return -0.5 * ((x - mean) * torch.exp(-log_std)) ** 2 - log_std - _LOG_SQRT_2PI


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantage: torch.Tensor, clip: float, *,
                      weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped policy loss (to minimise), the approximate KL(old ‖ new) and the share of
    clipped ratios, all averaged over every element — or, with ``weight`` (same shape, ≥ 0),
    weighted averages (a model-based learner gives imagined samples it does not trust weight 0)."""
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    loss = torch.maximum(-advantage * ratio, -advantage * ratio.clamp(1.0 - clip, 1.0 + clip))
    with torch.no_grad():
        approx_kl = (ratio - 1.0) - log_ratio  # Schulman's low-variance estimator
        clip_fraction = ((ratio - 1.0).abs() > clip).float()
    return weighted_mean(loss, weight), weighted_mean(approx_kl, weight), weighted_mean(clip_fraction, weight)


def weighted_mean(x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``x.mean()``, or ``Σ weight·x / Σ weight`` (0 when every weight is 0)."""
    if weight is None:
        return x.mean()
    return (x * weight).sum() / weight.sum().clamp(min=1e-12)


def linear_lr(lr: float, lr_end: float, done_fraction: float) -> float:
    """Linear decay from ``lr`` to ``lr_end`` over training (``done_fraction`` in [0, 1])."""
    f = min(max(float(done_fraction), 0.0), 1.0)
    return lr + (lr_end - lr) * f


def episode_stats(episodes: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Means over the episodes that ended (the ``info["episode"]`` dicts of a rollout, NaN for
    scenarios that did not end at that step): return, controllable rate, energy loss (MWh per
    episode) and the share of episodes that ended on a diverged power flow."""
    keys = {"return": "episode_return", "controllable_rate": "controllable_rate",
            "energy_loss_mwh": "energy_loss_mwh", "diverged": "diverged_share"}
    out: dict[str, float] = {}
    if not episodes:
        return out
    for key, name in keys.items():
        v = torch.cat([e[key].reshape(-1).cpu() for e in episodes]).to(torch.float64)
        v = v[~torch.isnan(v)]
        if len(v):
            out[f"train/{name}"] = float(v.mean())
    return out


def shared_floats(*modules: torch.nn.Module) -> int:
    """Floats of the weights all agents share when training shares them: every parameter of
    ``modules`` but the per-agent embeddings (``…embed``) and log standard deviations (what
    every gradient step must sum over all agents)."""
    return sum(p.numel() for module in modules for name, p in module.named_parameters()
               if not name.endswith(("embed", "log_std")))


class Stopwatch:
    """Wall-clock seconds per named phase (``env``, ``act``, ``update``) of one iteration."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t


def ppo_problems(cfg: Any) -> list[str]:
    """Everything wrong with the PPO settings every learner here shares."""
    problems = []
    if not 0.0 <= cfg.gamma <= 1.0:
        problems.append(f"gamma must lie in [0, 1], got {cfg.gamma}")
    if not 0.0 <= cfg.gae_lambda <= 1.0:
        problems.append(f"gae_lambda must lie in [0, 1], got {cfg.gae_lambda}")
    for name in ("clip", "target_kl", "lr", "max_grad_norm"):
        if getattr(cfg, name) <= 0:
            problems.append(f"{name} must be > 0, got {getattr(cfg, name)}")
    for name in ("lr_end", "vf_coef", "ent_coef"):
        if getattr(cfg, name) < 0:
            problems.append(f"{name} must be ≥ 0, got {getattr(cfg, name)}")
    for name in ("epochs", "minibatches", "hidden", "message_dim", "embed_dim"):
        if getattr(cfg, name) < 1:
            problems.append(f"{name} must be ≥ 1, got {getattr(cfg, name)}")
    if cfg.log_std_min > cfg.log_std_init:
        problems.append(f"log_std_min ({cfg.log_std_min}) must not exceed log_std_init ({cfg.log_std_init})")
    return problems
