"""The physics of one pending step as the rule-based controllers see it.

A :class:`StepPlant` holds the loads and PV output of the B scenarios of the step about to be
taken and solves the feeder's batched power flow for any set of agent actions, without touching
the environment: droop's fixed point and the optimal power flow call it many times per step.
Actions map to reactive power as in the environment: action ``a`` of an agent sets
``q_mvar = a · q_avail_mvar`` at each of its inverters, ``q_avail = sqrt(s_max² − p²)``
(:func:`gridrl.grid.inverters.q_avail_mvar`, which also knows the inverters' capability at
night).

:class:`PlantDerivatives` gives the OPF its local model of a step in action units: exact first
derivatives of the monitored voltages and of the losses at a solved point (from the power-flow
Jacobian, :class:`~gridrl.grid.sensitivity.InjectionSensitivity`), and the physical curvature of
the losses: with bus injections ``S`` near nominal voltage the injected currents are about
``conj(S)``, so losses are about ``Pᵀ R P + Qᵀ R Q`` with ``R = Re(Z_bus)`` (the resistive part of
the inverse of the admittance matrix with the slack removed). :func:`finite_difference` computes
the same first derivatives by perturbing every action (one power flow per agent), the way the OPF
used to; tests and ``experiments/bench_opf.py`` compare the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from gridrl.grid.branches import BranchFlows
from gridrl.grid.inverters import q_avail_mvar
from gridrl.grid.units import unit_power_factor
from gridrl.grid.sensitivity import InjectionSensitivity, Linearization, bus_impedance


class ActionMap:
    """Where each agent's action lands: inverter columns of the sgen table, agent of each inverter."""

    def __init__(self, feeder, pf) -> None:
        inv = feeder.inverters
        self.n_agents = len(feeder.agents)
        self.n_sgen = len(pf.sgen_index)
        self.n_load = len(pf.load_index)
        self.sgen_col = pd.Index(pf.sgen_index).get_indexer(inv.index).astype(np.int64)   # [n_inv]
        self.agent_of_inverter = np.array([feeder.agent_index(a) for a in inv["agent"]], dtype=np.int64)
        self.s_max_mva = inv["s_max_mva"].to_numpy(dtype=np.float64)
        # sgens that are not inverters run at their own power factor (q follows p at the net's q/p)
        self.sgen_q_fixed_mvar, self.sgen_q_per_mw = unit_power_factor(feeder.net.sgen.reindex(pf.sgen_index))
        self.sgen_q_base_mvar = feeder.net.sgen.q_mvar.reindex(pf.sgen_index).to_numpy(dtype=np.float64)
        self.incidence = feeder.agent_incidence  # [N, n_inv]: sums over an agent's inverters

    def sgen_q_mvar(self, actions: np.ndarray, q_avail_mvar: np.ndarray, sgen_p_mw: np.ndarray | None = None) -> np.ndarray:
        """``[M, n_sgen]`` reactive power of every sgen for actions ``[M, N]`` and the inverters'
        available reactive power ``[M, n_inv]``; sgens that are no inverter run at their power
        factor at active power ``sgen_p_mw [M, n_sgen]`` (without it: the net's nominal q)."""
        if sgen_p_mw is None:
            out = np.repeat(self.sgen_q_base_mvar[None, :], actions.shape[0], axis=0)
        else:
            out = self.sgen_q_fixed_mvar + np.asarray(sgen_p_mw, dtype=np.float64) * self.sgen_q_per_mw
        out[:, self.sgen_col] = actions[:, self.agent_of_inverter] * q_avail_mvar
        return out

    def agent_sum(self, per_inverter: np.ndarray) -> np.ndarray:
        """``[B, N]`` sums over each agent's inverters of ``[B, n_inv]`` values."""
        return per_inverter @ self.incidence.T


@dataclass(frozen=True, eq=False)
class StepPlant:
    """The pending step of B scenarios: its loads and PV, solvable for any actions.

    load_p_mw, load_q_mvar: ``[B, n_load]``; sgen_p_mw: ``[B, n_sgen]``; q_avail_mvar:
    ``[B, n_inv]`` available reactive power of each inverter (0 for an inverter that is out).
    monitored: ``[n_bus]`` bool, the buses the band applies to; v_min_pu, v_max_pu: the band.
    tap_pos: ``[B]`` the tap changer's position at this step (given, not optimised), or None for
        the net's position.
    """

    pf: object
    amap: ActionMap
    load_p_mw: np.ndarray
    load_q_mvar: np.ndarray
    sgen_p_mw: np.ndarray
    q_avail_mvar: np.ndarray
    monitored: np.ndarray
    v_min_pu: float
    v_max_pu: float
    tap_pos: np.ndarray | None = None

    @property
    def batch(self) -> int:
        return self.load_p_mw.shape[0]

    def solve(self, actions: np.ndarray, rows: np.ndarray | None = None, *, v_init: np.ndarray | None = None):
        """Power flow for actions ``[M, N]``; row ``m`` is scenario ``rows[m]`` (default: row m is
        scenario m); ``v_init [M, n_bus]`` warm-starts it. Returns the batched power flow's
        result (numpy)."""
        actions = np.asarray(actions, dtype=np.float64)
        if rows is None:
            rows = np.arange(actions.shape[0])
        q = self.amap.sgen_q_mvar(actions, self.q_avail_mvar[rows], self.sgen_p_mw[rows])
        tap = None if self.tap_pos is None else self.tap_pos[rows]
        return self.pf.solve(self.load_p_mw[rows], self.load_q_mvar[rows], self.sgen_p_mw[rows], q, v_init=v_init,
                             tap_pos=tap)


def plant_from_profiles(feeder, steps, *, pf=None, amap: ActionMap | None = None,
                        q_at_night: bool | None = None) -> StepPlant:
    """A :class:`StepPlant` for profile steps ``steps [B]`` straight from the feeder's profiles
    (no environment): loads and PV as recorded, every inverter in service, reactive capability
    at night as ``q_at_night`` says (default: the feeder's ``pv.q_at_night``)."""
    steps = np.asarray(steps, dtype=np.int64)
    pf = pf or feeder.power_flow()
    amap = amap or ActionMap(feeder, pf)
    prof = feeder.profiles
    pv = prof.pv_p_mw[steps]
    night = feeder.spec.pv.q_at_night if q_at_night is None else q_at_night
    q_avail = q_avail_mvar(pv, amap.s_max_mva, q_at_night=night)
    return StepPlant(pf=pf, amap=amap, load_p_mw=prof.load_p_mw[steps], load_q_mvar=prof.load_q_mvar[steps],
                     sgen_p_mw=prof.sgen_p_mw[steps], q_avail_mvar=q_avail, monitored=np.asarray(feeder.monitored),
                     v_min_pu=feeder.v_min_pu, v_max_pu=feeder.v_max_pu)


def plant_from_env(env, pf, amap: ActionMap) -> StepPlant:
    """A :class:`StepPlant` for the environment's pending step (``env.pending()``), solved with
    ``pf`` (the feeder's batched power flow); inverters of agents in outage get no reactive
    power, as in the environment."""
    pend = {k: np.asarray(v.detach().cpu()) if isinstance(v, torch.Tensor) else np.asarray(v)
            for k, v in env.pending().items()}
    q_avail = np.where(pend["outage"][:, amap.agent_of_inverter], 0.0, pend["q_avail_mvar"])
    return StepPlant(pf=pf, amap=amap, load_p_mw=pend["load_p_mw"], load_q_mvar=pend["load_q_mvar"],
                     sgen_p_mw=pend["sgen_p_mw"], q_avail_mvar=q_avail,
                     monitored=np.asarray(env.monitored.cpu(), dtype=bool), v_min_pu=env.v_min_pu,
                     v_max_pu=env.v_max_pu, tap_pos=pend.get("tap_pos") if getattr(env, "_avr", False) else None)


class PlantDerivatives:
    """The OPF's local model of a step, in action units, for one feeder (built once).

    ``first_order`` gives ``d vm_pu / d a`` of the monitored buses and ``d loss_mw / d a`` at a
    solved point, exact (power-flow Jacobian); ``hessian`` the curvature ``2 Dᵀ R D / base_mva``
    of the losses, with ``D [n_inv, N]`` the MVAr each inverter injects per unit action of its
    agent and ``R`` the resistive part of the bus impedance matrix between inverters.
    """

    def __init__(self, feeder, pf, amap: ActionMap, *, max_floats: int = 20_000_000) -> None:
        self.amap = amap
        self.monitored = np.flatnonzero(np.asarray(feeder.monitored, dtype=bool))
        self.sensitivity = InjectionSensitivity(pf, amap.sgen_col, self.monitored, max_floats=max_floats)
        # the loss form Qᵀ R Q only sees R's symmetric part; R itself is not symmetric where a
        # transformer shifts the phase (Y is not), and a QP solver may read one triangle only
        r = bus_impedance(pf, amap.sgen_col).real                              # [n_inv, n_inv]
        self.r_pu = 0.5 * (r + r.T)
        self.base_mva = pf.internal_model().base_mva
        self._k = sp.csr_matrix(amap.incidence.T)                              # [n_inv, N]
        self._one_each = amap.incidence.shape[0] == amap.incidence.shape[1] and np.array_equal(
            amap.incidence, np.eye(amap.n_agents))
        # thermal limits: the rated lines and transformers (None on a feeder without ratings)
        flows = BranchFlows(pf, feeder.net)
        self.flows = flows if flows.has_ratings else None

    @property
    def group(self) -> int:
        """Scenarios to differentiate together (bounded memory)."""
        return self.sensitivity.group

    def hessian(self, q_avail_mvar: np.ndarray) -> np.ndarray:
        """``[B, N, N]`` curvature of the loss (MW) in the actions for ``q_avail_mvar [B, n_inv]``."""
        m = q_avail_mvar[:, :, None] * self.r_pu[None, :, :] * q_avail_mvar[:, None, :]   # [B, n_inv, n_inv]
        return 2.0 * self._per_agent(self._per_agent(m).transpose(0, 2, 1)) / self.base_mva

    def first_order(self, plant: StepPlant, rows: np.ndarray, v: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``jac [M, n_mon, N]`` (p.u. per unit action), ``grad [M, N]`` (MW per unit action)
        and ``ok [M]`` (False: singular Jacobian, values NaN) of scenarios ``rows`` at their
        solved voltages ``v [M, n_bus]``; at most :attr:`group` scenarios at a time keep memory
        bounded."""
        dvm_dq, dloss_dq, ok = self.sensitivity(v)
        q = plant.q_avail_mvar[rows]
        return self._per_agent(dvm_dq * q[:, None, :]), self._per_agent(dloss_dq * q), ok

    def linearize(self, plant: StepPlant, rows: np.ndarray, v: np.ndarray) -> "FirstOrder":
        """The first-order model of scenarios ``rows`` at their solved voltages ``v [M, n_bus]``,
        without the full ``[n_mon, N]`` voltage Jacobian: one factorization per scenario, the
        loss gradient by one adjoint solve; voltage rows and voltage changes on demand
        (:class:`FirstOrder`). On a feeder with hundreds of agents of which few meet the band,
        that is a handful of solves per SQP iteration instead of one per inverter."""
        lin = self.sensitivity.linearize(v)
        q = plant.q_avail_mvar[rows]
        grad = self._per_agent(self.sensitivity.loss_gradient(lin) * q)
        return FirstOrder(model=self, lin=lin, q_avail_mvar=q, v=np.asarray(v), grad=grad, ok=lin.ok)

    def _per_agent(self, per_inverter: np.ndarray) -> np.ndarray:
        """Sum the last axis (inverters) per agent."""
        if self._one_each:
            return per_inverter
        shape = per_inverter.shape
        out = per_inverter.reshape(-1, shape[-1]) @ self._k
        return np.asarray(out).reshape(*shape[:-1], self._k.shape[1])  # also when no row is asked


@dataclass(frozen=True, eq=False)
class FirstOrder:
    """The OPF's first-order model of M scenarios (:meth:`PlantDerivatives.linearize`), in
    action units: ``grad [M, N]`` (MW per unit action, NaN where not ``ok``), ``ok [M]`` (False:
    singular Jacobian), and per scenario ``j`` (a position in the M) rows of the monitored
    voltages' Jacobian, the linearized voltage change of a step, or the whole Jacobian."""

    model: PlantDerivatives
    lin: Linearization
    q_avail_mvar: np.ndarray   # [M, n_inv]
    v: np.ndarray              # [M, n_bus]
    grad: np.ndarray
    ok: np.ndarray

    def voltage_rows(self, j: int, positions: np.ndarray) -> np.ndarray:
        """``[K, N]``: d vm_pu / d a of the monitored buses at ``positions`` (one adjoint solve each)."""
        positions = np.asarray(positions, dtype=np.int64)
        per_mvar = self.model.sensitivity.voltage_rows(self.lin, np.full(positions.size, j), positions)
        return self.model._per_agent(per_mvar * self.q_avail_mvar[j])

    def voltage_change(self, j: int, step: np.ndarray) -> np.ndarray:
        """``[n_mon]``: the linearized change of the monitored voltages for the action step
        ``step [N]`` (one forward solve)."""
        dq = np.asarray(step, dtype=np.float64)[self.model.amap.agent_of_inverter] * self.q_avail_mvar[j]
        return self.model.sensitivity.voltage_change(self.lin, dq[None], np.array([j]))[0]

    def loading_rows(self, j: int, branches: np.ndarray, rho: float = 1.0) -> np.ndarray:
        """``[K, N]``: d loading_pct / d a of the rated branches at positions ``branches`` (one
        adjoint solve each); ``rho``: the scenario's tap factor (see :mod:`gridrl.grid.tapchanger`)."""
        branches = np.asarray(branches, dtype=np.int64)
        cols, d_theta, d_vm = self.model.flows.loading_derivatives(self.v[j], branches, rho)
        per_mvar = self.model.sensitivity.gradient_rows(self.lin, np.full(branches.size, j), cols, d_theta, d_vm)
        return self.model._per_agent(per_mvar * self.q_avail_mvar[j])

    def jacobian(self, j: int) -> np.ndarray:
        """``[n_mon, N]``: the whole d vm_pu / d a (one solve per inverter)."""
        dvm_dq, _, _ = self.model.sensitivity(self.v[j:j + 1])
        return self.model._per_agent(dvm_dq[0] * self.q_avail_mvar[j][None, :])


def finite_difference(plant: StepPlant, actions: np.ndarray, rows: np.ndarray, *, step: float = 1e-3,
                      monitored: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``jac [M, n_mon, N]`` and ``grad [M, N]`` as :meth:`PlantDerivatives.first_order`, by
    forward differences of ``step`` in every action: the N perturbations of all M scenarios in one
    batched solve of ``M·N`` scenarios (no curvature correction: ``grad`` carries the difference's
    truncation error, about ``step/2`` times the loss curvature)."""
    actions = np.asarray(actions, dtype=np.float64)
    rows = np.asarray(rows, dtype=np.int64)
    mon = plant.monitored if monitored is None else monitored
    m, n = actions.shape
    base = plant.solve(actions, rows)
    pert = np.repeat(actions, n, axis=0) + step * np.tile(np.eye(n), (m, 1))
    fd = plant.solve(pert, np.repeat(rows, n))
    jac = (fd.vm_pu[:, mon].reshape(m, n, -1) - base.vm_pu[:, None, mon]).transpose(0, 2, 1) / step
    grad = (np.asarray(fd.loss_mw).reshape(m, n) - base.loss_mw[:, None]) / step
    return jac, grad
