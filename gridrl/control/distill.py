"""A volt-var curve per agent fitted to the reactive power another controller gave at each voltage.

Given, for one agent, what a controller (a trained policy) did over many steps — the agent's own
bus voltage ``v`` under the controller's action, the reactive power it then gave ``q`` and the
headroom it had ``q_avail`` (both in fractions of the agent's nameplate apparent power ``s_max``)
— :func:`fit_agent_curve` finds the IEEE 1547-2018 curve of :mod:`gridrl.control.tuning`'s family
(four points, ``Q2 = Q3``, inside Category B's ranges and the inverters' reactive rating) whose
reactive power at those voltages is closest to the controller's.

**The objective.** Minimise the mean squared difference, over the recorded steps, between the
curve's reactive power at the recorded voltage, limited to the headroom as an inverter limits
it, ``clip(Q(v), −q_avail, q_avail)``, and the controller's ``q`` (both in fractions of
``s_max``). The voltage is the one *under* the controller's action (the voltage of the interval
the action held), so a curve through the recorded pairs has the controller's operating points
as its droop fixed points ``q = Q(v(q))``, which is where droop settles.

**Never weaker than 1547-B at the band's edge.** A deployed policy acts through the safety
envelope (:mod:`gridrl.env.envelope`): within ``margin`` of the band's edges its reactive power
is at least as corrective as IEEE 1547-B's at its own voltage. The curve distilled from it keeps
that rule as a constraint (``edges``): ``Q(v) ≤ Q_B(v)`` for ``v ≥ v_max − margin`` and
``Q(v) ≥ Q_B(v)`` for ``v ≤ v_min + margin``, checked on a 0.5 mV grid over both edge regions
and at the breakpoints. Without it the least-squares fit follows the policy's many in-band steps
and gives up the edges, where a droop settles and the controllable rate is decided. Curves that
break it rank behind every curve that keeps it (1547-B itself keeps it, so a feasible curve
always exists).

**The search.** The loss is piecewise smooth with kinks at the breakpoints and the headroom, in
7 parameters, and cheap (one vectorised evaluation scores a population on every step): the
family's standard members (IEEE 1547-A, -B) and a scrambled Sobol design of the unit cube, then
CMA-ES (:func:`~gridrl.control.tuning.cma_in_cube`) from each of the few best of them (the loss
has several basins); the best curve seen is the fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gridrl.control.droop import PRESETS, DroopCurve, curve_fraction, curve_table
from gridrl.control.tuning import TuneConfig, cma_in_cube, curve_from_unit, standard_points

__all__ = ["IMITATION_OBJECTIVE", "AgentFit", "edge_violation", "fit_agent_curve", "imitation_loss"]

IMITATION_OBJECTIVE = ("minimise the mean over the recorded steps of (clip(Q(v), -q_avail, q_avail) - q)^2, q the "
                       "policy's reactive power and q_avail its headroom (fractions of s_max), v the agent's own bus "
                       "voltage under the policy's action; Q an IEEE 1547-2018 four-point curve (Q2 = Q3) inside "
                       "Category B's ranges and the inverters' reactive rating, and (as the policy's safety "
                       "envelope) Q(v) <= Q_B(v) for v >= v_max - margin, Q(v) >= Q_B(v) for v <= v_min + margin, "
                       "Q_B the IEEE 1547-B default curve")
_GRID_PU = 0.0005
_INFEASIBLE = 100.0  # added to the loss of a curve that breaks the edge rule (losses are below 4)


@dataclass(frozen=True)
class AgentFit:
    """One agent's fitted curve with its mean squared error and that of the best constant
    (zero-slope) fit, ``var(q)``, for an R²-like reading: ``1 − mse / var``."""

    curve: DroopCurve
    mse: float
    var: float
    evaluations: int
    edge_violation: float = 0.0


def imitation_loss(curves: list[DroopCurve], vm_pu: np.ndarray, q: np.ndarray, q_avail: np.ndarray) -> np.ndarray:
    """``[C]`` mean squared error of each curve against the recorded ``q`` (all ``[T]``, fractions
    of ``s_max``; see the module docstring)."""
    v_tab, q_tab = curve_table(curves)
    frac = curve_fraction(vm_pu[None, :], v_tab[:, None, :], q_tab[:, None, :])  # [C, T]
    pred = np.clip(frac, -q_avail[None, :], q_avail[None, :])
    return ((pred - q[None, :]) ** 2).mean(axis=1)


def edge_violation(curves: list[DroopCurve], edges: tuple[float, float]) -> np.ndarray:
    """``[C]`` how far (in fractions of ``s_max``) each curve is less corrective than IEEE 1547-B
    in the edge regions ``v ≤ edges[0]`` and ``v ≥ edges[1]`` (0: never)."""
    low, high = edges
    b = PRESETS["ieee1547-b"]
    lo_v = np.arange(low, 0.5, -_GRID_PU)[::-1]
    hi_v = np.arange(high, 1.5, _GRID_PU)
    lo_v = np.union1d(lo_v, [x for x in b.v_pu if x <= low])
    hi_v = np.union1d(hi_v, [x for x in b.v_pu if x >= high])
    v_tab, q_tab = curve_table(curves)
    grid = np.concatenate([lo_v, hi_v])
    v_all = np.union1d(grid, v_tab[(v_tab <= low) | (v_tab >= high)])
    f = curve_fraction(v_all[None, :], v_tab[:, None, :], q_tab[:, None, :])      # [C, V]
    f_b = b(v_all)[None, :]
    short = np.where(v_all[None, :] >= high, f - f_b, np.where(v_all[None, :] <= low, f_b - f, 0.0))
    return np.clip(short, 0.0, None).max(axis=1)


def fit_agent_curve(vm_pu: np.ndarray, q: np.ndarray, q_avail: np.ndarray, *, space: TuneConfig,
                    edges: tuple[float, float] | None = None, design: int = 256, starts: int = 4,
                    generations: int = 80, max_steps: int = 8192) -> AgentFit:
    """The curve of the family inside ``space`` (its ranges and ``q_limit``) closest to the
    recorded ``q`` at voltages ``vm_pu`` with headroom ``q_avail`` (``[T]`` each; see the module
    docstring). ``edges``: ``(v_min + margin, v_max − margin)``, the envelope's edge regions
    where the curve must be at least as corrective as 1547-B (``None``: no such rule).
    ``design``: Sobol points before CMA-ES; ``starts``: CMA-ES runs, from the best
    ``starts`` of those; ``generations``: at most this many generations each; ``max_steps``: the
    search scores a seeded random sample of this many steps when more were recorded (the error
    reported is over every step)."""
    from scipy.stats import qmc

    vm_pu, q, q_avail = (np.asarray(x, dtype=np.float64) for x in (vm_pu, q, q_avail))
    full = (vm_pu, q, q_avail)
    if len(q) > max_steps:  # the search scores a fixed random sample of the steps; the fit's error is on all
        keep = np.sort(np.random.default_rng(space.seed).choice(len(q), max_steps, replace=False))
        vm_pu, q, q_avail = vm_pu[keep], q[keep], q_avail[keep]
    points = standard_points(space) + list(qmc.Sobol(7, scramble=True, seed=space.seed).random(design))
    best_u, best, count = None, np.inf, 0

    def score(us: list[np.ndarray]) -> np.ndarray:
        nonlocal best_u, best, count
        curves = [curve_from_unit(u, space) for u in us]
        losses = imitation_loss(curves, vm_pu, q, q_avail)
        if edges is not None:
            short = edge_violation(curves, edges)
            losses = np.where(short > 1e-6, _INFEASIBLE + short, losses)
        count += len(us)
        i = int(np.argmin(losses))
        if losses[i] < best:
            best_u, best = np.array(us[i]), float(losses[i])
        return losses

    first = score(points)
    # CMA-ES from each of the best starts: the loss has several basins (a reactive bias can stand
    # in for a ramp over the voltages seen), and one run settles in the nearest
    for i in np.argsort(first, kind="stable")[:starts]:
        es = cma_in_cube(points[i], space)
        for _ in range(generations):
            gen = [np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0) for x in es.ask()]
            es.tell(gen, score(gen).tolist())
            if es.stop():
                break
    curve = curve_from_unit(best_u, space)
    return AgentFit(curve=curve, mse=float(imitation_loss([curve], *full)[0]), var=float(full[1].var()),
                    evaluations=count, edge_violation=0.0 if edges is None else float(edge_violation([curve], edges)[0]))
