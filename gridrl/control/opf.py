"""``opf``: the centralized optimum with full information, step by step.

At every step, for each of the B scenarios, find the agents' actions ``a ∈ [-1, 1]^N`` that

    minimize   loss_mw(a)
    subject to v_min ≤ vm_pu(a) ≤ v_max   on every monitored bus,
               loading_pct(a) ≤ 100        on every rated line and transformer,

with the exact AC power flow of the feeder (the batched solver the environment uses). Where no
admissible action brings every bus into the band, the worst violation is minimized first and the
losses second; such steps are flagged ``infeasible``. Reactive power limits ``|q| ≤ sqrt(s_max²
− p²)`` are the action bounds. The substation tap changer's position is given (the
environment's AVR sets it, ``StepPlant.tap_pos``), not optimised: the optimum is the best the
inverters can do around the tap the feeder has.

Thermal limits (feeders whose lines and transformers have ratings, :mod:`gridrl.grid.branches`):
branches loaded above ``thermal_watch_pct`` at the current iterate enter the QP as linearized
rows ``loading + ∇loading·d ≤ 100 − thermal_margin_pct`` (one adjoint solve each); the merit's
violation is the larger of the worst band violation (p.u.) and the worst overload (fraction of the
rating). Reactive power can only trim a branch's current, so an overload driven by active power
(PV feeding back at noon on mv-urban) usually cannot be removed: those steps are minimized and
flagged ``infeasible`` like an unreachable band.

Method: a trust-region SQP with an exact ℓ∞ penalty (Fletcher's Sℓ∞QP), vectorized over the B
scenarios. Why this and not a general NLP solver call per step:

- The problem is small and smooth and, on a distribution feeder, close to a convex QP: voltages
  are nearly linear in reactive power and losses nearly quadratic (``Qᵀ R Q`` with ``R`` the
  resistive part of the bus impedance matrix). An SQP step with that physical curvature
  (:class:`~gridrl.control.plant.PlantDerivatives`) and exact first derivatives lands next to the
  optimum at once.
- First derivatives are analytic, from the power-flow Jacobian at the current point (one sparse
  block factorization per scenario, no fill on a radial feeder; :mod:`gridrl.grid.sensitivity`),
  and only those the step needs are solved for: the loss gradient by one adjoint solve, the
  voltage sensitivities of the band rows the QP holds by one adjoint solve each, and the
  linearized voltage change of a candidate step by one forward solve. The whole ``[n_mon, N]``
  voltage Jacobian (one solve per inverter) is formed only when the linearized band cannot be met.
  Forward differences of the batched power flow, which this replaced, cost a power flow of ``B·N``
  scenarios per iteration (minutes per step on a feeder with hundreds of inverters);
  ``experiments/bench_opf.py`` measures both.
- The curvature model starts from the physical ``Qᵀ R Q`` and is corrected along the way by
  damped BFGS updates on the Lagrangian (loss plus band multipliers): on LV feeders with large PV
  injections the physical model can be off by a factor of two along the direction that trades
  reactive power between neighbouring inverters, and the pure physical model then converges
  linearly (or stops early, microwatts above the optimum).
- Each QP subproblem (N variables, the band linearized, box bounds with the trust region) is
  strictly convex and is solved exactly by DAQP (a dual active-set method), warm-started from the
  previous active set. The band enters by constraint generation: the rows out of band or active
  last time first, then the rows most violated by the QP's solution (checked on every monitored
  bus by one forward solve), until none is — thousands of monitored buses cost a handful of rows. When the linearized band cannot be met, a linear
  program (HiGHS via ``scipy.optimize.linprog``) finds the smallest uniform widening of the band
  that can, and the QP is solved in the widened band: this is what makes "minimum worst
  violation, then minimum loss" exact rather than a soft penalty.
- Globalization: a step is accepted when the merit ``loss + μ·violation`` falls by a fraction
  of what the model predicted; otherwise the trust region shrinks. A scenario stops when the
  model predicts less than ``tol_mw`` of improvement; one still running after ``max_iter``
  iterations keeps its best point and is flagged ``unsettled``. Every accepted point is an exact
  AC power flow of the feeder: the derivatives only choose the steps.

The band is tightened by ``band_margin_pu`` inside the solver so that the final linearization
error cannot leave a bus a hair outside the band. Steps warm-start from the previous step's
optimum and active set. ``tests/test_control.py`` checks the result against droop and no control
on random steps, and against pandapower's interior-point OPF (``pandapower.runopp``) on a few.

Communication (``communication``, floats per agent per step): the central controller needs every
load's P and Q and every inverter's available PV power each step (uplink), and sends one setpoint
to each agent (downlink); the static grid model is not counted. That total is divided by N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import daqp
import numba
import numpy as np
import torch
from scipy.linalg import cho_solve, cholesky
from scipy.optimize import linprog

from gridrl.control.base import Controller
from gridrl.control.plant import ActionMap, FirstOrder, PlantDerivatives, StepPlant, plant_from_env


@dataclass(frozen=True, kw_only=True)
class OpfOptions:
    """Settings of the per-step optimal power flow.

    max_iter: SQP iterations per step; scenarios still improving then are flagged ``unsettled``.
    tol_mw: a scenario has converged when the model predicts less improvement than this (MW).
    band_margin_pu: the solver keeps voltages this far inside the band.
    penalty_mw_per_pu: weight μ of the worst band violation in the merit function (MW per p.u.);
        far above any loss-voltage trade-off so that the band comes first.
    infeasible_tol_pu: a step whose final worst violation of the band (p.u.) or of a thermal limit
        (fraction of the rating) exceeds this is flagged ``infeasible``.
    thermal_limits: respect the rated branches' loading (no effect on feeders without ratings).
    thermal_watch_pct: branches loaded above this (%) at an iterate enter its QP.
    thermal_margin_pct: the solver keeps loadings this far under 100 %.
    """

    max_iter: int = 30
    tol_mw: float = 1e-7
    band_margin_pu: float = 1e-6
    penalty_mw_per_pu: float = 1e3
    infeasible_tol_pu: float = 1e-6
    thermal_limits: bool = True
    thermal_watch_pct: float = 90.0
    thermal_margin_pct: float = 1e-4


@dataclass(frozen=True)
class OpfSolution:
    """Result of one batched OPF: ``[B, N]`` actions and ``[B]`` diagnostics.

    active: ``[B, N + n_mon]`` the QP's last active set per scenario (DAQP's ``sense`` flags:
    0 inactive, 1 at the upper, 3 at the lower limit; the N action bounds, then the monitored
    buses' band), to warm-start the next step.
    """

    actions: np.ndarray
    loss_mw: np.ndarray
    violation_pu: np.ndarray   # worst distance outside the (true) band, 0 when in band
    overload: np.ndarray       # worst loading above 100 % as a fraction of the rating, 0 when none (or no ratings)
    infeasible: np.ndarray
    unsettled: np.ndarray
    iterations: np.ndarray
    active: np.ndarray


def solve_opf(plant: StepPlant, model: PlantDerivatives, a0: np.ndarray | None = None,
              options: OpfOptions = OpfOptions(), active0: np.ndarray | None = None) -> OpfSolution:
    """Optimal actions for every scenario of ``plant`` (see the module docstring).

    model: the feeder's derivatives and loss curvature.
    a0: ``[B, N]`` starting actions (default zeros); active0: ``[B, N + n_mon]`` a previous
    active set (:attr:`OpfSolution.active`) to start the QPs from.
    """
    o = options
    batch, n = plant.batch, plant.amap.n_agents
    mon = model.monitored
    lo_v, hi_v = plant.v_min_pu + o.band_margin_pu, plant.v_max_pu - o.band_margin_pu
    mu = o.penalty_mw_per_pu

    a = np.zeros((batch, n)) if a0 is None else np.clip(np.asarray(a0, dtype=np.float64), -1.0, 1.0)
    res = plant.solve(a)
    if not np.all(res.converged):  # a warm start that does not solve: start from q = 0
        bad = ~np.asarray(res.converged)
        a[bad] = 0.0
        res = plant.solve(a)
    vm, loss = res.vm_pu[:, mon], np.asarray(res.loss_mw, dtype=np.float64)
    v = res.v.copy()
    ok = np.asarray(res.converged, dtype=bool)
    flows = model.flows if o.thermal_limits else None
    rho = (np.ones(batch) if plant.tap_pos is None
           else np.broadcast_to(plant.pf.tap_changer.ratio(plant.tap_pos), (batch,)).astype(np.float64))
    load = flows.loading_pct(v, rho) if flows is not None else np.zeros((batch, 0))
    over = _overload(load)
    viol = np.maximum(_violation(vm, lo_v, hi_v), over)
    merit = loss + mu * viol
    active_set = (np.zeros((batch, n + mon.size), dtype=np.int32) if active0 is None
                  else np.array(active0, dtype=np.int32))

    radius = np.full(batch, 2.0)
    running = ok.copy()
    iterations = np.zeros(batch, dtype=np.int64)
    curv = np.empty((batch, n, n))           # the model's curvature, BFGS-corrected as the SQP moves
    have_curv = np.zeros(batch, dtype=bool)
    factored = n >= _FACTOR_FROM_AGENTS
    chol = np.empty((batch, n, n) if factored else (batch, 0, 0))   # its Cholesky factor U (curv = UᵀU),
    have_chol = np.zeros(batch, dtype=bool)                          # kept up to date where True
    prev_a = np.full((batch, n), np.nan)      # where the last derivatives were taken ...
    prev_g = np.zeros((batch, n))             # ... the loss gradient there
    band: list = [None] * batch               # ... and the band rows active in its QP: rows, J rows, λ
    none_hot = (np.zeros(0, dtype=np.int64), np.zeros((0, n)), np.zeros(0))
    heat: list = [none_hot] * batch           # ... and the thermal rows active in it: branches, rows, λ

    for _ in range(o.max_iter):
        idx = np.flatnonzero(running)
        if idx.size == 0:
            break
        k = idx.size
        steps = np.zeros((k, n))
        pred = np.zeros(k)
        usable = np.ones(k, dtype=bool)
        for g0 in range(0, k, model.group):
            grp = idx[g0:g0 + model.group]
            lin = model.linearize(plant, grp, v[grp])
            grad, fine = lin.grad, lin.ok
            usable[g0:g0 + grp.size] = fine   # a singular Jacobian (voltage collapse): no step
            fresh = grp[~have_curv[grp]]
            if fresh.size:
                curv[fresh] = _with_ridge(model.hessian(plant.q_avail_mvar[fresh]))
                have_curv[fresh] = True
                have_chol[fresh] = False
            # learn the curvature from the gradient of the Lagrangian along the step just taken
            at = np.flatnonzero(fine & ~np.isnan(prev_a[grp, 0]) & (prev_a[grp] != a[grp]).any(axis=1))
            if at.size:
                moved = grp[at]
                y = grad[at] - prev_g[moved]
                for j, b in zip(at, moved):
                    rows, j_rows, lam = band[b]
                    if rows.size:
                        y[np.searchsorted(at, j)] += (lin.voltage_rows(j, rows) - j_rows).T @ lam
                    hot, th_rows, th_lam = heat[b]
                    if hot.size:  # a thermal limit's curvature (|I| bends) enters the same way
                        y[np.searchsorted(at, j)] += (lin.loading_rows(j, hot, float(rho[b])) - th_rows).T @ th_lam
                curv[moved], plus, minus, changed = _damped_bfgs(curv[moved], a[moved] - prev_a[moved], y)
                for b, x_plus, x_minus in zip(moved[changed], plus[changed], minus[changed]):
                    have_chol[b] = have_chol[b] and _cholesky_rank2(chol[b], x_plus, x_minus)
            for b in grp[fine & ~have_chol[grp]] if factored else ():
                try:
                    chol[b] = cholesky(curv[b], lower=False, check_finite=False)
                    have_chol[b] = True
                except np.linalg.LinAlgError:  # left to DAQP, which regularizes
                    pass
            lo_box = np.maximum(-1.0 - a[grp], -radius[grp, None])
            hi_box = np.minimum(1.0 - a[grp], radius[grp, None])
            t_model = np.zeros(grp.size)
            for j, b in enumerate(grp):
                if fine[j]:
                    hot = np.flatnonzero(load[b] > o.thermal_watch_pct)
                    thermal = (lin.loading_rows(j, hot, float(rho[b])), 100.0 - o.thermal_margin_pct - load[b, hot]
                               ) if hot.size else None
                    steps[g0 + j], t_model[j], active_set[b], rows, j_rows, lam, th_lam = _subproblem(
                        curv[b], chol[b] if have_chol[b] else None, grad[j], lin, j, vm[b], lo_v, hi_v,
                        lo_box[j], hi_box[j], active_set[b], thermal)
                    on = np.flatnonzero(th_lam)
                    heat[b] = (hot[on], thermal[0][on], th_lam[on]) if on.size else none_hot
                    if t_model[j] < 0:  # the thermal rows could not be met: the overload is not modelled away
                        t_model[j] = max(-t_model[j], over[b])
                    band[b] = (rows, j_rows, lam)
            prev_a[grp], prev_g[grp] = a[grp], grad
            d = steps[g0:g0 + grp.size]
            pred[g0:g0 + grp.size] = mu * (viol[grp] - t_model) - (
                np.einsum("bi,bi->b", grad, d) + 0.5 * np.einsum("bi,bij,bj->b", d, curv[grp], d))
        iterations[idx] += 1
        done = ~usable | (pred <= o.tol_mw) | (radius[idx] < 1e-9)
        running[idx[done]] = False
        go = ~done
        if not go.any():
            continue
        tid = idx[go]
        trial_a = np.clip(a[tid] + steps[go], -1.0, 1.0)
        tr = plant.solve(trial_a, tid, v_init=v[tid])
        t_vm, t_loss = tr.vm_pu[:, mon], np.asarray(tr.loss_mw, dtype=np.float64)
        t_load = flows.loading_pct(tr.v, rho[tid]) if flows is not None else np.zeros((tid.size, 0))
        t_over = _overload(t_load)
        t_viol = np.maximum(_violation(t_vm, lo_v, hi_v), t_over)
        t_merit = np.where(np.asarray(tr.converged, dtype=bool), t_loss + mu * t_viol, np.inf)
        accept = t_merit <= merit[tid] - 1e-4 * pred[go]
        acc = tid[accept]
        a[acc], vm[acc], loss[acc], viol[acc], merit[acc] = (trial_a[accept], t_vm[accept], t_loss[accept],
                                                             t_viol[accept], t_merit[accept])
        v[acc] = tr.v[accept]
        load[acc], over[acc] = t_load[accept], t_over[accept]
        size = np.abs(steps[go]).max(axis=1)
        radius[tid] = np.where(accept, np.where(size >= 0.9 * radius[tid], np.minimum(2 * radius[tid], 2.0), radius[tid]),
                               0.25 * size)

    true_viol = _violation(vm, plant.v_min_pu, plant.v_max_pu)
    return OpfSolution(actions=a, loss_mw=loss, violation_pu=true_viol, overload=over,
                       infeasible=ok & (np.maximum(true_viol, over) > o.infeasible_tol_pu), unsettled=running | ~ok,
                       iterations=iterations, active=active_set)


def _overload(load_pct: np.ndarray) -> np.ndarray:
    """``[B]`` worst loading above 100 % as a fraction of the rating (0 when none)."""
    if load_pct.shape[-1] == 0:
        return np.zeros(load_pct.shape[0])
    return np.maximum(load_pct.max(axis=-1) - 100.0, 0.0) / 100.0


def _violation(vm: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``[B]`` worst distance outside ``[lo, hi]`` over the buses (0 when all inside)."""
    if vm.shape[-1] == 0:
        return np.zeros(vm.shape[0])
    return np.maximum(np.maximum(vm - hi, lo - vm).max(axis=-1), 0.0)


_UPPER, _LOWER = 1, 3          # DAQP's sense flags: active at the upper / lower limit
_ALL_ROWS_UP_TO = 256          # up to this many candidate band rows go to the QP at once
_ADD_PER_ROUND = 64            # rows added per round of constraint generation
_PRIMAL_TOL = 1e-10            # constraints met to this (DAQP's primal tolerance)
_WARM_ROUNDS = 8               # active-set rounds of the warm-started QP before DAQP takes over
_FACTOR_FROM_AGENTS = 128      # from this many agents on, QPs start on a kept Cholesky factor (below,
                               # DAQP's O(N³) setup costs less than the rounds' Python overhead)


def _subproblem(hess, chol, grad, lin: FirstOrder, j: int, vm, lo_v, hi_v, lo_box, hi_box, active, thermal=None
                ) -> tuple[np.ndarray, float, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The SQP step ``d``, the model's worst band violation after it, the QP's active set, and
    the band rows active in it (positions in ``vm``) with their Jacobian rows and multipliers.

    minimize ½ dᵀHd + gᵀd  s.t.  lo_v ≤ vm + J d ≤ hi_v,  lo_box ≤ d ≤ hi_box,
    with the band widened by the least uniform amount that makes it feasible if necessary.
    ``hess`` must be positive definite, ``chol`` its upper Cholesky factor (or None); ``lin`` is
    the first-order model (scenario ``j`` of it);
    ``active`` ``[N + n_mon]`` warm-starts the QP (DAQP sense flags, see :class:`OpfSolution`).
    ``thermal``: ``(rows [K, N], room [K])``, linearized loadings that must stay ``≤ room``;
    when the QP cannot meet them they are dropped and the model's violation comes back
    negative (the caller replaces it by the current overload). The last element returned is
    the thermal rows' multipliers ``[K]`` (zeros when dropped).

    The band enters by constraint generation without ever forming the whole Jacobian: the QP is
    solved with the rows that were active last time or are out of band now (one adjoint solve
    per row), the linearized voltage change of its solution is checked on every monitored bus
    (one forward solve), the most violated rows are added, until none is — then the solution is
    that of the full QP (its optimum satisfies the constraints it was not given). Only when the
    linearized band cannot be met at all does the whole Jacobian come in
    (:func:`_subproblem_dense`, which finds the least widening).
    """
    n = grad.size
    up_all, low_all = hi_v - vm, lo_v - vm
    warm = np.array(active[n:])
    work = np.flatnonzero((warm != 0) | (up_all < 0) | (low_all > 0))
    j_w = lin.voltage_rows(j, work)
    sense_box = active[:n]
    k_th = 0 if thermal is None else thermal[1].size
    while True:
        rows_a, up, lo = j_w, np.concatenate([hi_box, up_all[work]]), np.concatenate([lo_box, low_all[work]])
        sense = np.concatenate([sense_box, warm[work]])
        if k_th:
            rows_a = np.vstack([j_w, thermal[0]])
            up, lo = np.concatenate([up, thermal[1]]), np.concatenate([lo, np.full(k_th, -1e30)])
            sense = np.concatenate([sense, np.zeros(k_th, dtype=sense.dtype)])
        d, sense_out, lam = _qp(hess, grad, rows_a, up, lo, sense, chol)
        if d is None and k_th:
            out = _subproblem(hess, chol, grad, lin, j, vm, lo_v, hi_v, lo_box, hi_box, active)
            return (out[0], -max(out[1], 1e-300), *out[2:6], np.zeros(k_th))
        if d is None:
            return (*_subproblem_dense(hess, grad, lin.jacobian(j), vm, lo_v, hi_v, lo_box, hi_box, active),
                    np.zeros(k_th))
        sense_box = sense_out[:n]
        warm = np.zeros_like(warm)
        warm[work] = sense_out[n:n + work.size]
        dv = lin.voltage_change(j, d)
        grown = _with_most_violated(work, np.maximum(dv - up_all, low_all - dv))
        if grown is None:
            break
        work = grown
        j_w = lin.voltage_rows(j, work)
    lam_rows = lam[n:n + work.size]
    on = np.flatnonzero(lam_rows)
    return (d, 0.0, np.concatenate([sense_box, warm]).astype(np.int32), work[on], j_w[on], lam_rows[on],
            lam[n + work.size:].copy())


def _subproblem_dense(hess, grad, jac, vm, lo_v, hi_v, lo_box, hi_box, active
                      ) -> tuple[np.ndarray, float, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_subproblem` from the whole voltage Jacobian ``jac [n_mon, N]``, for the steps whose
    linearized band cannot be met: the least uniform widening is a linear program over every
    row the box can move.

    Rows the box cannot carry out of the band (``vm ± Σ|J|·reach`` inside it) cannot bind and are
    left out. A feeder with thousands of monitored buses may keep thousands of candidates, of
    which a few bind, while a dense QP solver's setup costs rows × N²; there the band enters by
    constraint generation: the QP is solved with the rows that were active last time or are out
    of band now, every candidate is checked at its solution, the most violated are added, until
    none is violated — then the solution is that of the full QP (its optimum satisfies the
    constraints it was not given).
    """
    n = grad.size
    cand, j_c, up_c, low_c, warm = _candidates(jac, vm, lo_v, hi_v, lo_box, hi_box, active)
    if cand.size <= _ALL_ROWS_UP_TO:
        work = np.arange(cand.size)
    else:
        work = np.flatnonzero((warm != 0) | (up_c < 0) | (low_c > 0))     # positions in cand
    t = widen = 0.0
    sense_box = active[:n]
    while True:
        d, sense_out, lam = _qp(hess, grad, j_c[work], np.concatenate([hi_box, up_c[work] + widen]),
                                np.concatenate([lo_box, low_c[work] - widen]),
                                np.concatenate([sense_box, warm[work]]))
        if d is None:
            if widen > 0.0:        # the LP's widened band and the QP disagree (rounding): take the LP's step
                d, sense_out, lam = lp_d, np.zeros(n + work.size, dtype=np.int32), np.zeros(n + work.size)
                break
            # the linearized band cannot be met inside the box: least uniform widening t (an LP
            # over every candidate row)
            lp = _least_widening(j_c, up_c, low_c, lo_box, hi_box)
            if lp is None:  # numerically degenerate: no step this iteration
                worst = float(max(0.0, np.max(-up_c, initial=0.0), np.max(low_c, initial=0.0)))
                return np.zeros(n), worst, active, np.zeros(0, dtype=np.int64), np.zeros((0, n)), np.zeros(0)
            t, lp_d = lp
            widen = t + 1e-10
            jd = j_c @ lp_d
            work = np.union1d(work, np.flatnonzero((jd > up_c) | (jd < low_c)))
            continue
        sense_box = sense_out[:n]
        warm = np.zeros_like(warm)
        warm[work] = sense_out[n:]
        if work.size == cand.size:
            break
        jd = j_c @ d
        grown = _with_most_violated(work, np.maximum(jd - up_c - widen, low_c - widen - jd))
        if grown is None:
            break
        work = grown
    out = np.zeros_like(active)
    out[:n] = sense_box
    out[n + cand] = warm
    lam_rows = lam[n:]
    on = np.flatnonzero(lam_rows)
    return d, t, out, cand[work[on]], j_c[work[on]], lam_rows[on]


def _with_most_violated(work: np.ndarray, excess: np.ndarray) -> np.ndarray | None:
    """One round of constraint generation: the working rows ``work`` plus the rows outside it
    that the step violates most (``excess`` beyond its bound > 1e-9; at most ``_ADD_PER_ROUND``,
    worst first), or ``None`` when no row outside it is violated."""
    excess = excess.copy()
    excess[work] = 0.0
    worst = np.flatnonzero(excess > 1e-9)
    if worst.size == 0:
        return None
    return np.union1d(work, worst[np.argsort(excess[worst])[::-1][:_ADD_PER_ROUND]])


@numba.njit(cache=True)
def _candidates(jac, vm, lo_v, hi_v, lo_box, hi_box, active):
    """Band rows the box can carry out of the band: positions in ``vm``, their J rows, the room
    to the upper and lower limit (``hi_v − vm``, ``lo_v − vm``) and their warm-start flags."""
    n_mon, n = jac.shape
    reach = np.empty(n)
    for j in range(n):
        reach[j] = max(hi_box[j], -lo_box[j])
    keep = np.empty(n_mon, dtype=np.int64)
    m = 0
    for r in range(n_mon):
        swing = 0.0
        for j in range(n):
            swing += abs(jac[r, j]) * reach[j]
        if vm[r] + swing > hi_v or vm[r] - swing < lo_v:
            keep[m] = r
            m += 1
    cand = keep[:m].copy()
    j_c = np.empty((m, n))
    up_c = np.empty(m)
    low_c = np.empty(m)
    warm = np.empty(m, dtype=np.int32)
    for q in range(m):
        r = cand[q]
        j_c[q] = jac[r]
        up_c[q] = hi_v - vm[r]
        low_c[q] = lo_v - vm[r]
        warm[q] = active[n + r]
    return cand, j_c, up_c, low_c, warm


def _least_widening(j_c, up_c, low_c, lo_box, hi_box) -> tuple[float, np.ndarray] | None:
    """The least ``t ≥ 0`` with ``low − t ≤ J d ≤ up + t`` for some ``d`` in the box (an LP,
    HiGHS), and that ``d``; ``None`` if the LP solver fails."""
    n, m = lo_box.size, up_c.size
    a_ub = np.hstack([np.vstack([j_c, -j_c]), -np.ones((2 * m, 1))])
    b_ub = np.concatenate([up_c, -low_c])
    bounds = [(lo, hi) for lo, hi in zip(lo_box, hi_box)] + [(0.0, None)]
    lp = linprog(np.r_[np.zeros(n), 1.0], A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if lp.status != 0:
        return None
    return float(lp.x[-1]), lp.x[:n]


def _qp(h, g, a, upper, lower, sense, chol=None) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """``min ½ dᵀHd + gᵀd s.t. lower ≤ [d; A d] ≤ upper`` exactly, warm-started from the active
    set ``sense``: by :func:`_qp_warm` on ``H``'s upper Cholesky factor ``chol`` if given and it
    settles, else by DAQP (a dual active-set method: the optimum of a strictly convex QP up to
    rounding). Returns ``d``, the active set and the multipliers (``Hd + g + [I; A]ᵀλ = 0``),
    or ``(None, sense, 0)`` if the constraints cannot be met."""
    a = np.ascontiguousarray(a) if a.size else np.zeros((0, g.size))
    if chol is not None:
        fast = _qp_warm(h, chol, g, a, upper, lower, sense)
        if fast is not None:
            return fast
    # DAQP in variables x = d / s with unit curvature on the diagonal: its tolerances are absolute,
    # and on a feeder whose agents' reactive capability spans orders of magnitude (mv-rural:
    # 0.008 to 2.4 MVAr) the raw curvature's condition number (1.7e7 at a noon step) made it
    # report "optimal" for a step that raises the model; scaled, the same QP has condition 4e3
    n = g.size
    s = 1.0 / np.sqrt(np.diag(h))
    h_s, g_s, a_s = h * s[:, None] * s[None, :], g * s, a * s[None, :]
    up_s, lo_s = np.array(upper, dtype=np.float64), np.array(lower, dtype=np.float64)
    up_s[:n] /= s
    lo_s[:n] /= s
    x, _, flag, info = daqp.solve(h_s, g_s, a_s, up_s, lo_s, sense, primal_tol=_PRIMAL_TOL)
    if flag < 0 and np.any(sense):  # a stale warm start can stall the active-set method: start cold
        x, _, flag, info = daqp.solve(h_s, g_s, a_s, up_s, lo_s, np.zeros_like(sense), primal_tol=_PRIMAL_TOL)
    if flag < 0:
        return None, sense, np.zeros(sense.size)
    lam = np.array(info["lam"], dtype=np.float64)
    lam[:n] /= s   # back to d: H d + g + [I; A]ᵀλ = 0
    return s * x, np.where(lam > 0, _UPPER, np.where(lam < 0, _LOWER, 0)).astype(np.int32), lam


def _qp_warm(h, chol, g, a, upper, lower, sense) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """:func:`_qp` by a primal-dual active-set iteration from the warm start on ``H = UᵀU``
    (``chol`` = U), or ``None`` when it does not reach a verified optimum within a few rounds
    (the caller then asks DAQP).

    Why: DAQP's setup factorizes and inverts ``H`` in plain loops, O(N³) per call, which on a
    feeder with hundreds of agents costs far more than the solve itself (SQP steps from a warm
    start change the active set by a few constraints at most). Here the factor is made once per
    step and follows the BFGS updates at O(N²) each (:func:`_cholesky_rank2`), and each round
    solves the equality-constrained QP of the current active set through its Schur complement
    (k pairs of triangular solves for k active constraints). The answer is returned only
    if it satisfies the optimality conditions of the whole QP — stationarity, every constraint met
    to the primal tolerance, multipliers of the right sign — which for a strictly convex QP means
    it is the optimum DAQP would find, up to rounding.
    """
    n, m = g.size, a.shape[0]
    fac = (chol.T, True)                  # Uᵀ is lower triangular and Fortran-ordered: no copy
    h_g = cho_solve(fac, g, check_finite=False)
    side = np.where(lower == upper, _UPPER, np.asarray(sense)).astype(np.int32)
    for _ in range(_WARM_ROUNDS):
        act = np.flatnonzero(side)
        c_t = np.zeros((n, act.size))
        bounds = act[act < n]
        c_t[bounds, np.arange(bounds.size)] = 1.0
        c_t[:, bounds.size:] = a[act[act >= n] - n].T
        h_c = cho_solve(fac, c_t, check_finite=False) if act.size else c_t     # H⁻¹ Cᵀ
        target = np.where(side[act] == _UPPER, upper[act], lower[act])
        try:
            lam_a = np.linalg.solve(c_t.T @ h_c, -(target + c_t.T @ h_g)) if act.size else np.zeros(0)
        except np.linalg.LinAlgError:     # dependent active constraints: DAQP handles those
            return None
        d = -(h_g + h_c @ lam_a)
        lam = np.zeros(n + m)
        lam[act] = lam_a
        val = np.concatenate([d, a @ d])
        new = np.where(val > upper + _PRIMAL_TOL, _UPPER, np.where(val < lower - _PRIMAL_TOL, _LOWER, 0))
        keep = ((side == _UPPER) & (lam >= 0)) | ((side == _LOWER) & (lam <= 0)) | ((side != 0) & (lower == upper))
        new[keep] = side[keep]
        if np.array_equal(new, side):
            scale = np.abs(g).max() + np.abs(h @ d).max() + 1e-300
            if np.abs(h @ d + g + c_t @ lam_a).max() > 1e-9 * scale:
                return None
            return d, np.where(lam > 0, _UPPER, np.where(lam < 0, _LOWER, 0)).astype(np.int32), lam
        side = new.astype(np.int32)
    return None


def _with_ridge(hess: np.ndarray) -> np.ndarray:
    """``[B, N, N]`` curvatures made positive definite (an inverter at the slack bus or one with
    no reactive power available adds a zero row) by a ridge of 1e-6 of their mean diagonal."""
    n = hess.shape[-1]
    ridge = 1e-6 * np.maximum(np.einsum("bii->b", hess) / max(n, 1), 1e-12)
    return hess + ridge[:, None, None] * np.eye(n)


def _damped_bfgs(h: np.ndarray, s: np.ndarray, y: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Powell's damped BFGS update of the curvatures ``h [M, N, N]`` by the steps ``s [M, N]`` and
    the changes ``y [M, N]`` of the Lagrangian's gradient along them; each stays positive
    definite (Nocedal & Wright, procedure 18.2). Returns the new curvatures, the update as
    ``+ plus plusᵀ − minus minusᵀ`` (``[M, N]`` each) and ``[M]`` whether it was applied."""
    hs = np.einsum("bij,bj->bi", h, s)
    shs = np.einsum("bi,bi->b", s, hs)
    sy = np.einsum("bi,bi->b", s, y)
    theta = np.where(sy >= 0.2 * shs, 1.0, 0.8 * shs / np.where(shs - sy > 0, shs - sy, 1.0))
    r = theta[:, None] * y + (1.0 - theta[:, None]) * hs
    sr = np.einsum("bi,bi->b", s, r)
    ok = (shs > 0) & (sr > 0)
    shs, sr = np.where(ok, shs, 1.0), np.where(ok, sr, 1.0)
    update = r[:, :, None] * r[:, None, :] / sr[:, None, None] - hs[:, :, None] * hs[:, None, :] / shs[:, None, None]
    plus = r / np.sqrt(sr)[:, None]
    minus = hs / np.sqrt(shs)[:, None]
    return h + np.where(ok[:, None, None], update, 0.0), plus, minus, ok


@numba.njit(cache=True)
def _cholesky_rank2(u, plus, minus) -> bool:
    """In place: the upper Cholesky factor ``u`` of ``H`` becomes that of ``H + plus plusᵀ − minus
    minusᵀ`` (a BFGS update), by a rank-one update then a rank-one downdate, O(N²) each (Golub &
    Van Loan, §6.5.4). False when the downdate meets a non-positive pivot: ``u`` is then spoiled
    and must be factorized afresh."""
    n = u.shape[0]
    for sign, vec in ((1.0, plus), (-1.0, minus)):
        x = vec.copy()
        for k in range(n):
            ukk = u[k, k]
            r2 = ukk * ukk + sign * x[k] * x[k]
            if not r2 > 0.0:
                return False
            r = math.sqrt(r2)
            c = r / ukk
            s = x[k] / ukk
            u[k, k] = r
            for i in range(k + 1, n):
                u[k, i] = (u[k, i] + sign * s * x[i]) / c
                x[i] = c * x[i] - s * u[k, i]
    return True


class OptimalPowerFlow(Controller):
    """The centralized optimum: :func:`solve_opf` on the pending step of every scenario."""

    name = "opf"
    information = "the whole feeder's loads and PV of the interval, exactly (oracle)"
    hops = -1

    def __init__(self, feeder, *, options: OpfOptions = OpfOptions()) -> None:
        super().__init__()
        self.feeder = feeder
        self.options = options
        self.n_agents = len(feeder.agents)
        n_load = int(feeder.net.load.in_service.sum())
        self.communication = float(2 * n_load + len(feeder.inverters) + self.n_agents) / self.n_agents
        self._pf = feeder.power_flow()
        self._amap = ActionMap(feeder, self._pf)
        self._model = PlantDerivatives(feeder, self._pf, self._amap)
        self.last_solution: OpfSolution | None = None

    def reset(self) -> None:
        super().reset()
        self.last_solution = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **{k: getattr(self.options, k) for k in ("max_iter", "tol_mw", "band_margin_pu")}}

    def solve(self, plant: StepPlant, a0: np.ndarray | None = None,
              active0: np.ndarray | None = None) -> OpfSolution:
        """Optimal actions for the step ``plant`` describes (warm-started from ``a0`` and the
        active set ``active0`` of a previous solution, if given)."""
        return solve_opf(plant, self._model, a0, self.options, active0)

    def act(self, obs: Any, *, env: Any = None) -> torch.Tensor:
        """Optimal actions ``[B, N]`` for the pending step (needs ``env`` for its physics)."""
        if env is None:
            raise ValueError("opf optimizes the pending step's physics: call act(obs, env=env)")
        plant = plant_from_env(env, self._pf, self._amap)
        last = self.last_solution
        warm = last is not None and last.actions.shape[0] == plant.batch
        sol = self.solve(plant, last.actions if warm else None, last.active if warm else None)
        self.last_solution = sol
        self.last_info = {"unsettled": sol.unsettled, "infeasible": sol.infeasible}
        return torch.as_tensor(sol.actions, dtype=torch.float64)
