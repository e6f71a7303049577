"""``opf``: the centralized optimum with full information, step by step.

At every step, for each of the B scenarios, find the agents' actions ``a ∈ [-1, 1]^N`` that

    minimize   loss_mw(a)
    subject to v_min ≤ vm_pu(a) ≤ v_max   on every monitored bus,

with the exact AC power flow of the feeder (the batched solver the environment uses). Where no
admissible action brings every bus into the band, the worst violation is minimized first and the
losses second; such steps are flagged ``infeasible``. Reactive power limits ``|q| ≤ sqrt(s_max²
− p²)`` are the action bounds.

Method: a trust-region SQP with an exact ℓ∞ penalty (Fletcher's Sℓ∞QP), vectorized over the B
scenarios. Why this and not a general NLP solver call per step:

- The problem is small and smooth and, on a distribution feeder, close to a convex QP: voltages
  are nearly linear in reactive power and losses nearly quadratic (``Qᵀ R Q`` with ``R`` the
  resistive part of the bus impedance matrix). An SQP step with that physical curvature
  (:func:`~gridrl.control.plant.loss_hessian`) and exact first derivatives lands next to the
  optimum at once; two to five iterations reach 1e-7 MW.
- First derivatives come from the batched power flow itself: the N forward-difference
  perturbations of all B scenarios are one batched solve of ``B·N`` scenarios, so derivatives
  are exact to the solver's tolerance (the known curvature removes the forward-difference
  bias of the loss gradient) for any net pandapower models, transformers included.
- Each QP subproblem (N variables, the band linearized, box bounds with the trust region) is
  strictly convex and is solved exactly as a least-distance problem through non-negative least
  squares (Lawson & Hanson, the same core as SLSQP). When the linearized band cannot be met, a
  linear program (HiGHS via ``scipy.optimize.linprog``) finds the smallest uniform widening of
  the band that can, and the QP is solved in the widened band: this is what makes "minimum worst
  violation, then minimum loss" exact rather than a soft penalty.
- Globalization: a step is accepted when the merit ``loss + μ·violation`` falls by a fraction
  of what the model predicted; otherwise the trust region shrinks. A scenario stops when the
  model predicts less than ``tol_mw`` of improvement; one still running after ``max_iter``
  iterations keeps its best point and is flagged ``unsettled``.

The band is tightened by ``band_margin_pu`` inside the solver so that the final linearization
error cannot leave a bus a hair outside the band. Steps warm-start from the previous step's
optimum. ``tests/test_control.py`` checks the result against droop and no control on random
steps, and against pandapower's interior-point OPF (``pandapower.runopp``) on a few.

Communication (``communication``, floats per agent per step): the central controller needs every
load's P and Q and every inverter's available PV power each step (uplink), and sends one setpoint
to each agent (downlink); the static grid model is not counted. That total is divided by N.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linprog, nnls

from gridrl.control.base import Controller
from gridrl.control.plant import ActionMap, StepPlant, loss_hessian, plant_from_env, resistance_matrix


@dataclass(frozen=True, kw_only=True)
class OpfOptions:
    """Settings of the per-step optimal power flow.

    max_iter: SQP iterations per step; scenarios still improving then are flagged ``unsettled``.
    tol_mw: a scenario has converged when the model predicts less improvement than this (MW).
    fd_step: forward-difference step in action units for the derivatives.
    band_margin_pu: the solver keeps voltages this far inside the band.
    penalty_mw_per_pu: weight μ of the worst band violation in the merit function (MW per p.u.);
        far above any loss-voltage trade-off so that the band comes first.
    infeasible_tol_pu: a step whose final worst violation of the band exceeds this is flagged
        ``infeasible``.
    """

    max_iter: int = 30
    tol_mw: float = 1e-7
    fd_step: float = 1e-3
    band_margin_pu: float = 1e-6
    penalty_mw_per_pu: float = 1e3
    infeasible_tol_pu: float = 1e-6


@dataclass(frozen=True)
class OpfSolution:
    """Result of one batched OPF: ``[B, N]`` actions and ``[B]`` diagnostics."""

    actions: np.ndarray
    loss_mw: np.ndarray
    violation_pu: np.ndarray   # worst distance outside the (true) band, 0 when in band
    infeasible: np.ndarray
    unsettled: np.ndarray
    iterations: np.ndarray


def solve_opf(plant: StepPlant, hessian: np.ndarray, a0: np.ndarray | None = None,
              options: OpfOptions = OpfOptions()) -> OpfSolution:
    """Optimal actions for every scenario of ``plant`` (see the module docstring).

    hessian: ``[B, N, N]`` model curvature of the loss in the actions (positive semi-definite).
    a0: ``[B, N]`` starting actions (default zeros).
    """
    o = options
    batch, n = plant.batch, plant.amap.n_agents
    mon = np.asarray(plant.monitored, dtype=bool)
    lo_v, hi_v = plant.v_min_pu + o.band_margin_pu, plant.v_max_pu - o.band_margin_pu
    mu, h = o.penalty_mw_per_pu, o.fd_step

    a = np.zeros((batch, n)) if a0 is None else np.clip(np.asarray(a0, dtype=np.float64), -1.0, 1.0)
    res = plant.solve(a)
    if not np.all(res.converged):  # a warm start that does not solve: start from q = 0
        bad = ~np.asarray(res.converged)
        a[bad] = 0.0
        res = plant.solve(a)
    vm, loss = res.vm_pu[:, mon], np.asarray(res.loss_mw, dtype=np.float64)
    ok = np.asarray(res.converged, dtype=bool)
    viol = _violation(vm, lo_v, hi_v)
    merit = loss + mu * viol

    ridge = 1e-6 * np.maximum(np.einsum("bii->b", hessian) / max(n, 1), 1e-12)
    chol = np.linalg.cholesky(hessian + ridge[:, None, None] * np.eye(n))
    l_inv = np.linalg.inv(chol)                       # [B, N, N], once per step
    radius = np.full(batch, 2.0)
    active = ok.copy()
    iterations = np.zeros(batch, dtype=np.int64)
    eye = np.eye(n)

    for _ in range(o.max_iter):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        k = idx.size
        # derivatives of every active scenario in one batched solve of k·N perturbed scenarios
        pert = np.repeat(a[idx], n, axis=0) + h * np.tile(eye, (k, 1))
        fd = plant.solve(pert, np.repeat(idx, n))
        fd_ok = np.asarray(fd.converged, dtype=bool).reshape(k, n).all(axis=1)
        jac = (fd.vm_pu[:, mon].reshape(k, n, -1) - vm[idx, None, :]).transpose(0, 2, 1) / h   # [k, n_mon, N]
        diag = np.einsum("bii->bi", hessian[idx])
        grad = (np.asarray(fd.loss_mw).reshape(k, n) - loss[idx, None]) / h - 0.5 * h * diag

        steps = np.zeros((k, n))
        pred = np.zeros(k)
        for j, b in enumerate(idx):
            if not fd_ok[j]:
                continue
            lo_box = np.maximum(-1.0 - a[b], -radius[b])
            hi_box = np.minimum(1.0 - a[b], radius[b])
            d, t_model = _subproblem(l_inv[b], grad[j], jac[j], vm[b], lo_v, hi_v, lo_box, hi_box)
            steps[j] = d
            pred[j] = mu * (viol[b] - t_model) - (grad[j] @ d + 0.5 * d @ hessian[b] @ d)
        iterations[idx] += 1
        done = ~fd_ok | (pred <= o.tol_mw) | (radius[idx] < 1e-9)
        active[idx[done]] = False
        go = ~done
        if not go.any():
            continue
        tid = idx[go]
        trial_a = np.clip(a[tid] + steps[go], -1.0, 1.0)
        tr = plant.solve(trial_a, tid)
        t_vm, t_loss = tr.vm_pu[:, mon], np.asarray(tr.loss_mw, dtype=np.float64)
        t_viol = _violation(t_vm, lo_v, hi_v)
        t_merit = np.where(np.asarray(tr.converged, dtype=bool), t_loss + mu * t_viol, np.inf)
        accept = t_merit <= merit[tid] - 1e-4 * pred[go]
        acc = tid[accept]
        a[acc], vm[acc], loss[acc], viol[acc], merit[acc] = (trial_a[accept], t_vm[accept], t_loss[accept],
                                                             t_viol[accept], t_merit[accept])
        size = np.abs(steps[go]).max(axis=1)
        radius[tid] = np.where(accept, np.where(size >= 0.9 * radius[tid], np.minimum(2 * radius[tid], 2.0), radius[tid]),
                               0.25 * size)

    true_viol = _violation(vm, plant.v_min_pu, plant.v_max_pu)
    return OpfSolution(actions=a, loss_mw=loss, violation_pu=true_viol,
                       infeasible=ok & (true_viol > o.infeasible_tol_pu), unsettled=active | ~ok,
                       iterations=iterations)


def _violation(vm: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``[B]`` worst distance outside ``[lo, hi]`` over the buses (0 when all inside)."""
    if vm.shape[-1] == 0:
        return np.zeros(vm.shape[0])
    return np.maximum(np.maximum(vm - hi, lo - vm).max(axis=-1), 0.0)


def _subproblem(l_inv, grad, jac, vm, lo_v, hi_v, lo_box, hi_box) -> tuple[np.ndarray, float]:
    """The SQP step ``d`` and the model's worst band violation after it.

    minimize ½ dᵀHd + gᵀd  s.t.  lo_v ≤ vm + J d ≤ hi_v,  lo_box ≤ d ≤ hi_box,
    with the band widened by the least uniform amount that makes it feasible if necessary.
    """
    n = grad.size
    eye = np.eye(n)
    c = np.vstack([jac, -jac, eye, -eye])
    b_v = np.concatenate([hi_v - vm, vm - lo_v])
    b_box = np.concatenate([hi_box, -lo_box])
    d = _qp(l_inv, grad, c, np.concatenate([b_v, b_box]))
    if d is not None:
        return d, 0.0
    # the linearized band cannot be met inside the box: least uniform widening t (an LP)
    m = jac.shape[0]
    a_ub = np.hstack([np.vstack([jac, -jac]), -np.ones((2 * m, 1))])
    bounds = [(lo, hi) for lo, hi in zip(lo_box, hi_box)] + [(0.0, None)]
    lp = linprog(np.r_[np.zeros(n), 1.0], A_ub=a_ub, b_ub=b_v, bounds=bounds, method="highs")
    if lp.status != 0:  # numerically degenerate: no step this iteration
        return np.zeros(n), float(max(0.0, np.max(-b_v)))
    t = float(lp.x[-1])
    d = _qp(l_inv, grad, c, np.concatenate([b_v + t + 1e-10, b_box]))
    if d is None:
        d = lp.x[:n]
    return d, t


def _qp(l_inv: np.ndarray, grad: np.ndarray, c: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """Solve ``min ½ dᵀ L Lᵀ d + gᵀd s.t. c d ≤ b`` exactly (given ``L⁻¹``), or ``None`` if infeasible.

    With ``y = Lᵀd + L⁻¹g`` it is the least-distance problem ``min |y| s.t. G y ≤ h``, solved by
    non-negative least squares on its dual (Lawson & Hanson, ch. 23).
    """
    n = grad.size
    w = l_inv @ grad
    g_mat = c @ l_inv.T                                # c L⁻ᵀ
    h = b + g_mat @ w
    e = np.vstack([-g_mat.T, -h[None, :]])             # min ‖E u − f‖, u ≥ 0
    f = np.zeros(n + 1)
    f[-1] = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        u, _ = nnls(e, f, maxiter=50 * e.shape[1])
    r = e @ u - f
    if np.linalg.norm(r) < 1e-10 or -r[-1] < 1e-12:
        return None
    y = -r[:-1] / r[-1]
    return l_inv.T @ (y - w)


class OptimalPowerFlow(Controller):
    """The centralized optimum: :func:`solve_opf` on the pending step of every scenario."""

    name = "opf"
    hops = -1

    def __init__(self, feeder, *, options: OpfOptions = OpfOptions()) -> None:
        super().__init__()
        self.feeder = feeder
        self.options = options
        self.n_agents = len(feeder.agents)
        n_load = int(feeder.net.load.in_service.sum())
        self.communication = float(2 * n_load + len(feeder.inverters) + self.n_agents) / self.n_agents
        self._r, self._base_mva = resistance_matrix(feeder)
        self._pf = feeder.power_flow()
        self._amap = ActionMap(feeder, self._pf)
        self._last: np.ndarray | None = None
        self.last_solution: OpfSolution | None = None

    def reset(self) -> None:
        super().reset()
        self._last = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **{k: getattr(self.options, k) for k in ("max_iter", "tol_mw", "band_margin_pu")}}

    def solve(self, plant: StepPlant, a0: np.ndarray | None = None) -> OpfSolution:
        """Optimal actions for the step ``plant`` describes."""
        hess = loss_hessian(self._r, self._base_mva, plant.amap, plant.q_avail_mvar)
        return solve_opf(plant, hess, a0, self.options)

    def act(self, obs: Any, *, env: Any = None) -> torch.Tensor:
        """Optimal actions ``[B, N]`` for the pending step (needs ``env`` for its physics)."""
        if env is None:
            raise ValueError("opf optimizes the pending step's physics: call act(obs, env=env)")
        plant = plant_from_env(env, self._pf, self._amap)
        a0 = self._last if self._last is not None and self._last.shape[0] == plant.batch else None
        sol = self.solve(plant, a0)
        self._last = sol.actions
        self.last_solution = sol
        self.last_info = {"unsettled": sol.unsettled, "infeasible": sol.infeasible}
        return torch.as_tensor(sol.actions, dtype=torch.float64)
