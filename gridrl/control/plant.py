"""The physics of one pending step as the rule-based controllers see it.

A :class:`StepPlant` holds the loads and PV output of the B scenarios of the step about to be
taken and solves the feeder's batched power flow for any set of agent actions, without touching
the environment: droop's fixed point and the optimal power flow call it many times per step.
Actions map to reactive power as in the environment: action ``a`` of an agent sets
``q_mvar = a · q_avail_mvar`` at each of its inverters, ``q_avail = sqrt(s_max² − p²)``
(:func:`gridrl.grid.inverters.q_avail_mvar`, which also knows the inverters' capability at
night).

:func:`loss_hessian` is the physical curvature of line losses in the actions, used by the OPF
as its quadratic model: with bus injections ``S`` near nominal voltage the injected currents are
about ``conj(S)``, so losses are about ``Pᵀ R P + Qᵀ R Q`` with ``R = Re(Z_bus)`` (the
resistive part of the inverse of the admittance matrix with the slack removed).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from gridrl.grid.inverters import q_avail_mvar


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
        # sgens that are not inverters keep the reactive power the net gives them
        self.sgen_q_base_mvar = feeder.net.sgen.q_mvar.reindex(pf.sgen_index).to_numpy(dtype=np.float64)
        self.incidence = feeder.agent_incidence  # [N, n_inv]: sums over an agent's inverters

    def sgen_q_mvar(self, actions: np.ndarray, q_avail_mvar: np.ndarray) -> np.ndarray:
        """``[M, n_sgen]`` reactive power of every sgen for actions ``[M, N]`` and the inverters'
        available reactive power ``[M, n_inv]`` (sgens that are no inverter keep the net's q)."""
        out = np.repeat(self.sgen_q_base_mvar[None, :], actions.shape[0], axis=0)
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
        q = self.amap.sgen_q_mvar(actions, self.q_avail_mvar[rows])
        return self.pf.solve(self.load_p_mw[rows], self.load_q_mvar[rows], self.sgen_p_mw[rows], q, v_init=v_init)


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
                     v_max_pu=env.v_max_pu)


def resistance_matrix(feeder) -> tuple[np.ndarray, float]:
    """``(R, base_mva)``: ``R [n_inv, n_inv]`` = Re(Z_bus) between the inverters' buses (p.u. on
    the net's ``base_mva``), from pandapower's own admittance matrix of the feeder."""
    import pandapower as pp

    net = copy.deepcopy(feeder.net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pp.runpp(net, lightsim2grid=False)
    ppci = net._ppc["internal"]
    ybus = ppci["Ybus"].toarray()
    ref = set(int(r) for r in ppci["ref"])
    keep = np.array([i for i in range(ybus.shape[0]) if i not in ref])
    z = np.linalg.inv(ybus[np.ix_(keep, keep)])
    pos = np.full(ybus.shape[0], -1)
    pos[keep] = np.arange(len(keep))
    lookup = np.asarray(net._pd2ppc_lookups["bus"])
    rows = pos[lookup[feeder.inverters["bus"].to_numpy(dtype=np.int64)]]
    r = np.zeros((len(rows), len(rows)))
    ok = rows >= 0  # an inverter at the slack bus changes no loss
    r[np.ix_(ok, ok)] = z.real[np.ix_(rows[ok], rows[ok])]
    return r, float(ppci["baseMVA"])


def loss_hessian(r_inv: np.ndarray, base_mva: float, amap: ActionMap, q_avail_mvar: np.ndarray) -> np.ndarray:
    """``[B, N, N]`` curvature of the loss (MW) in the actions: ``2 Dᵀ R D / base_mva`` with
    ``D [n_inv, N]`` the MVAr each inverter injects per unit action of its agent."""
    m = q_avail_mvar[:, :, None] * r_inv[None, :, :] * q_avail_mvar[:, None, :]   # [B, n_inv, n_inv]
    k = amap.incidence.T                                                       # [n_inv, N]
    return 2.0 * (k.T @ m @ k) / base_mva
