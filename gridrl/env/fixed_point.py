"""The damped fixed point on which a volt-var rule settles within one interval.

An inverter with a volt-var function keeps reading its own voltage while the interval runs, and
its reactive power moves until the voltage it causes asks for the reactive power it sends. Both
the ``droop`` controller and the safety envelope's settled rules model that state the same way:
``a ← a + α (target(a) − a)`` per agent, where ``target`` solves the pending interval's power
flow for the actions ``a`` and reads the rule at the voltages it gives. ``α`` is per agent: it
halves when the agent's correction changes sign (an overshoot: steep curves on weak feeders do)
down to ``min_damping``, and grows by 1.5× back to ``damping`` after a correction of the same sign.
A scenario has settled when its largest correction is below ``tol``.

Two ways to iterate a batch of scenarios (``freeze``): the droop controller stops iterating a
scenario once it has settled, so a batch costs the sum of its scenarios' iterations (each
iteration solves only the scenarios still moving); the envelope moves every scenario until all
have settled (its target reads the whole batch's physics at once).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["FixedPointOptions", "damped_fixed_point"]


@dataclass(frozen=True, kw_only=True)
class FixedPointOptions:
    """Settings of the within-interval fixed-point iteration.

    damping: initial and largest step ``α`` of ``a ← a + α (target − a)``; per agent, it halves
        when the agent's correction changes sign (down to ``min_damping``) and grows by 1.5×
        after a correction of the same sign.
    min_damping: smallest step.
    tol: a scenario has settled when ``max |target − a| < tol`` (action units, i.e. fractions of
        the available reactive power).
    max_iter: iteration cap per step; scenarios not settled by then are reported unsettled.
    """

    damping: float = 0.5
    min_damping: float = 0.02
    tol: float = 1e-4
    max_iter: int = 200

    def __post_init__(self) -> None:
        if not 0 < self.min_damping <= self.damping <= 1:
            raise ValueError(f"need 0 < min_damping ≤ damping ≤ 1, got {self.min_damping}, {self.damping}")
        if self.tol <= 0 or self.max_iter < 1:
            raise ValueError(f"need tol > 0 and max_iter ≥ 1, got {self.tol}, {self.max_iter}")


def damped_fixed_point(a: np.ndarray, target: Callable[[np.ndarray, np.ndarray], np.ndarray],
                       options: FixedPointOptions = FixedPointOptions(), *, freeze: bool = True
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Settle actions ``a [B, N]`` (float64; a copy is moved) on ``target(a_rows, rows) -> [R, N]``,
    the rule's actions at the physics of actions ``a_rows`` of scenarios ``rows`` (non-finite
    entries: a solve that did not converge; those agents hold their actions). With ``freeze``
    a settled scenario stops (``target`` is then called with the scenarios still moving only);
    without, every scenario moves until all have settled (``rows`` is always the whole batch).
    Returns the actions and ``[B]`` bool: which scenarios settled within ``max_iter``."""
    o = options
    a = np.array(a, dtype=np.float64)
    batch = a.shape[0]
    alpha = np.full(a.shape, o.damping)
    prev = np.zeros(a.shape)                                              # last correction
    settled = np.zeros(batch, dtype=bool)
    rows = np.arange(batch)
    for _ in range(o.max_iter):
        step = np.asarray(target(a[rows], rows), dtype=np.float64) - a[rows]
        step = np.where(np.isfinite(step), step, 0.0)
        done = np.abs(step).max(axis=1) < o.tol
        settled[rows[done]] = True
        if not freeze and done.all():
            break
        overshot = step * prev[rows] < 0
        alpha[rows] = np.where(overshot, np.maximum(alpha[rows] / 2, o.min_damping),
                               np.minimum(alpha[rows] * 1.5, o.damping))
        prev[rows] = step
        if freeze:
            rows, step = rows[~done], step[~done]
            if not len(rows):
                break
        a[rows] = np.clip(a[rows] + alpha[rows] * step, -1.0, 1.0)
    return a, settled
