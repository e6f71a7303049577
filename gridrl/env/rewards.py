"""Voltage barrier functions: the cost of one bus voltage, the core of every agent's reward.

Each barrier maps bus voltages ``vm_pu`` (any shape, torch) to a non-negative-ish cost of the
same shape; the environment sums it over an agent's zone. With ``d = |v − 1|`` and the band
``[v_min_pu, v_max_pu]``:

``l1``
    ``d``. Pulls every voltage towards nominal, inside the band as much as outside.
``l2``
    ``2 d²``. Like ``l1`` but gentle near nominal and steep far from it.
``bowl``
    Inside the band ``0.04 − 0.01·N(v; 1, 0.1)`` (``N`` the normal density, so about 1e-4 at
    nominal and 0.0048 at 1 ± 0.05): nearly flat, so agents do not chase nominal voltage at the
    price of losses. Outside the band ``2·(d − δ) + bowl(δ)``, with ``δ`` the distance from
    nominal to the band edge on that side: a slope of 2 per p.u., continuous at the band edge.
``courant_beltrami``
    ``max(0, v − v_max)² + max(0, v_min − v)²``: zero inside the band, quadratic outside. Its
    values are small (1e-4 at 0.01 p.u. outside), so pair it with a large ``voltage_weight``.
"""

from __future__ import annotations

import math

import torch

BARRIERS = ("l1", "l2", "bowl", "courant_beltrami")

_BOWL_SIGMA = 0.1
_BOWL_PEAK = 1.0 / (_BOWL_SIGMA * math.sqrt(2.0 * math.pi))


def _bowl_inside(d: torch.Tensor | float):
    if isinstance(d, torch.Tensor):
        return 0.04 - 0.01 * _BOWL_PEAK * torch.exp(-0.5 * (d / _BOWL_SIGMA) ** 2)
    return 0.04 - 0.01 * _BOWL_PEAK * math.exp(-0.5 * (d / _BOWL_SIGMA) ** 2)


def barrier(vm_pu: torch.Tensor, kind: str, *, v_min_pu: float = 0.95,
            v_max_pu: float = 1.05) -> torch.Tensor:
    """Cost of each voltage in ``vm_pu`` under barrier ``kind`` (one of :data:`BARRIERS`)."""
    dv = vm_pu - 1.0
    if kind == "l1":
        return dv.abs()
    if kind == "l2":
        return 2.0 * dv * dv
    if kind == "courant_beltrami":
        return torch.relu(vm_pu - v_max_pu) ** 2 + torch.relu(v_min_pu - vm_pu) ** 2
    if kind == "bowl":
        d = dv.abs()
        upper = dv >= 0
        up, down = v_max_pu - 1.0, 1.0 - v_min_pu
        edge = torch.where(upper, up, down)
        outside = 2.0 * (d - edge) + torch.where(upper, _bowl_inside(up), _bowl_inside(down))
        return torch.where(d > edge, outside, _bowl_inside(d))
    raise ValueError(f"unknown barrier {kind!r} (use one of {', '.join(BARRIERS)})")
