"""Batched AC power flow compiled once per feeder.

This module owns :class:`BatchedPowerFlow`, the solver every environment step goes through, and
:func:`reference_solve`, the same scenarios run through ``pandapower.runpp`` one by one.

How it works. The feeder is compiled from pandapower's own internal model: one ``runpp`` (with
``lightsim2grid=False, numba=False``) on a copy of the net whose loads and static generators are zeroed gives
the bus admittance matrix ``Ybus``, the pandapower→internal bus lookup and every constant
injection that is not a load or sgen (storage, wards, ...). Transformers, taps, phase shifts,
shunts, switches and out-of-service elements therefore act exactly as in pandapower. Slack
(``ext_grid``) voltages come from the net.

Each solve runs the Z-bus (current-injection) fixed point on the PQ buses ``L`` with slack ``s``::

    Y_LL V_L = conj(S_L / V_L) - Y_Ls V_s      ⇒   V_L ← V_nl + Y_LL⁻¹ conj(S_L / V_L)

with ``V_nl = -Y_LL⁻¹ Y_Ls V_s`` the no-load voltage. ``Y_LL`` is factorized once (sparse LU
under a minimum-degree ordering: no fill at all on a radial feeder); every iteration of every
scenario reuses the factors through a forward and a backward substitution, run by a compiled
kernel with the scenario as the innermost, vectorized loop, chunks of scenarios spread over the
cores. Scenarios that have met the tolerance stop updating, so a scenario's result never depends
on the rest of its batch. Scenarios the fixed point cannot solve (heavily stressed ones) are
retried with Newton–Raphson on the same ``Ybus``; those that still fail come back with
``converged=False``, the rest of the batch solved.

Tap changer. ``BatchedPowerFlow.tap_changer`` is the substation transformer's on-load tap
changer when the slack reaches the network through it alone (mv-rural, mv-urban, mvlv-rural),
else an ideal source regulator (:mod:`gridrl.grid.tapchanger`). ``solve(..., tap_pos=[B])``
solves each scenario at its own tap without recompiling: a tap is exactly a factor ``ρ`` on the
slack voltage as the network sees it, so the kernel scales the no-load voltage per scenario.
Behind a regulated transformer the HV (slack) bus still reports the slack voltage; the result's
``v`` keeps ``ρ·V_s`` there, consistent with the branch model compiled at the net's tap (losses,
currents and sensitivities computed from ``v`` are those of the real tap).
``tests/test_tapchanger.py`` checks random taps against pandapower.

Sign conventions: loads consume (positive ``load_p_mw`` draws power), static generators inject
(positive ``sgen_q_mvar`` raises voltage). All powers are the elements' actual powers: element
``scaling`` columns in the net are *not* re-applied.

Torch: torch tensors in give torch tensors out on the same device. On the CPU the compiled kernel
works on the tensors' memory directly; on CUDA (or when ``torch_method="dense"``) a dense Z-bus
variant of the same iteration runs in torch on the device, for feeders up to
``dense_max_bus`` buses. Larger feeders on CUDA are solved on the CPU and copied back.
"""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numba
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from gridrl.threads import apply_numba

log = logging.getLogger(__name__)

__all__ = ["PowerFlowOptions", "PowerFlowResult", "BatchedPowerFlow", "kernel_compiled", "reference_solve"]

Array = Any  # numpy.ndarray or torch.Tensor, matching the inputs of the solve


@dataclass(frozen=True, kw_only=True)
class PowerFlowOptions:
    """Settings of :class:`BatchedPowerFlow`.

    tol_pu: a scenario has converged when no bus voltage moved by more than this (complex
        magnitude, p.u.) in the last fixed-point iteration. The iteration contracts, so the
        remaining error is below ``tol_pu`` as well; 1e-9 keeps results within 1e-6 p.u. of
        pandapower with a wide margin and costs one or two iterations more than 1e-8.
    max_iter: cap on fixed-point iterations per scenario; at nominal loading feeders need 5–15.
    fallback: retry scenarios the fixed point did not solve with Newton–Raphson.
    newton_max_iter: cap on Newton–Raphson iterations per retried scenario.
    newton_tol_pu: Newton–Raphson has converged when the largest power mismatch (p.u. of the
        net's ``sn_mva``) falls below this, or when its last step moved no voltage by more than
        ``tol_pu`` (very stiff branches put a rounding floor of ~1e-10 p.u. under the mismatch).
    chunk: scenarios per work unit of the compiled kernel; 0 picks one so that a unit's state
        stays in the core's cache and both cores get work.
    torch_method: how torch tensors are solved. ``"auto"``: the compiled kernel for CPU tensors,
        the dense torch iteration on other devices (up to ``dense_max_bus`` buses); ``"kernel"``:
        always the compiled kernel (CUDA tensors go through host memory); ``"dense"``: always the
        dense torch iteration.
    dense_max_bus: the dense torch iteration stores an n×n impedance matrix; above this many
        buses it is refused and the kernel is used instead.
    """

    tol_pu: float = 1e-9
    max_iter: int = 60
    fallback: bool = True
    newton_max_iter: int = 30
    newton_tol_pu: float = 1e-9
    chunk: int = 0
    torch_method: Literal["auto", "kernel", "dense"] = "auto"
    dense_max_bus: int = 1000

    def __post_init__(self):
        problems = []
        if not self.tol_pu > 0:
            problems.append(f"tol_pu must be > 0, got {self.tol_pu}")
        if self.max_iter < 1:
            problems.append(f"max_iter must be >= 1, got {self.max_iter}")
        if self.newton_max_iter < 1:
            problems.append(f"newton_max_iter must be >= 1, got {self.newton_max_iter}")
        if not self.newton_tol_pu > 0:
            problems.append(f"newton_tol_pu must be > 0, got {self.newton_tol_pu}")
        if self.chunk < 0:
            problems.append(f"chunk must be >= 0 (0 = automatic), got {self.chunk}")
        if self.torch_method not in ("auto", "kernel", "dense"):
            problems.append(f"torch_method must be 'auto', 'kernel' or 'dense', got {self.torch_method!r}")
        if problems:
            raise ValueError("invalid PowerFlowOptions: " + "; ".join(problems))


@dataclass(frozen=True)
class PowerFlowResult:
    """Solution of a batch of B scenarios; numpy arrays or torch tensors like the inputs.

    vm_pu, va_degree: ``[B, n_bus]`` bus voltages in ``net.bus.index`` order; NaN for buses that
        are out of service or not connected to a slack.
    loss_mw: ``[B]`` active losses of all branches (lines, transformers, impedances); bus shunts
        are not branches and are not counted.
    converged: ``[B]`` bool. Values of scenarios that did not converge are the last iterate and
        must not be trusted.
    iterations: ``[B]`` int, fixed-point iterations plus Newton–Raphson iterations if the
        scenario needed the fallback.
    v: ``[B, n_bus]`` complex voltages (p.u.), same order; pass as ``v_init`` to warm-start.
        Behind a regulated substation transformer the slack bus holds ``ρ·V_s`` here (see the
        module docstring), ``vm_pu``/``va_degree`` its true voltage.
    p_slack_mw, q_slack_mvar: ``[B]`` total injection of the ext_grid(s), generator convention.
        Power balance: ``p_slack_mw = Σ load_p_mw − Σ sgen_p_mw + loss_mw`` (+ bus shunts and
        other constant injections of the net, if it has any).
    """

    vm_pu: Array
    va_degree: Array
    loss_mw: Array
    converged: Array
    iterations: Array
    v: Array
    p_slack_mw: Array
    q_slack_mvar: Array


@dataclass(frozen=True)
class BranchModel:
    """pandapower's branch table of the compiled net (``net._ppc["branch"]``, external numbering).

    branch: the ppc branch matrix (complex; pandapower's ``idx_brch`` columns).
    base_mva: the system base.
    bus_lookup: pandapower bus index → ppc bus row (``net._pd2ppc_lookups["bus"]``).
    n_ppc_bus: rows of the ppc bus table.
    element_ranges: element table → ``(first, end)`` rows of its branches
        (``net._pd2ppc_lookups["branch"]``, e.g. ``{"line": (0, 147), "trafo": (147, 149)}``).
    """

    branch: np.ndarray
    base_mva: float
    bus_lookup: np.ndarray
    n_ppc_bus: int
    element_ranges: dict


@dataclass(frozen=True)
class InternalModel:
    """The compiled net as the solver sees it (read-only; for derived computations such as
    :mod:`gridrl.grid.sensitivity`).

    ybus: ``[n_all, n_all]`` sparse bus admittance matrix (p.u., bus shunts included) in internal
        order: the ``n_pq`` PQ buses in elimination order, then the slack buses.
    n_pq: number of PQ buses; base_mva: the system base.
    bus_row, load_row, sgen_row: internal row of each bus / load / sgen in ``net`` index order
        (−1: out of service or not connected).
    gs: ``[n_all]`` bus-shunt conductance (p.u.); s_other: ``[n_all]`` constant injections that
        are not loads or sgens (p.u., generator convention).
    """

    ybus: sp.csr_matrix
    n_pq: int
    base_mva: float
    bus_row: np.ndarray
    load_row: np.ndarray
    sgen_row: np.ndarray
    gs: np.ndarray
    s_other: np.ndarray


class BatchedPowerFlow:
    """AC power flow of one pandapower net, compiled once, solving batches of scenarios.

    ``net`` is not modified. Raises ``NotImplementedError`` at compile time for what the solver
    does not model: in-service voltage-controlled generators (``gen``, PV buses), voltage-dependent
    (ZIP) loads and FACTS devices.
    """

    bus_index: np.ndarray
    load_index: np.ndarray
    sgen_index: np.ndarray

    def __init__(self, net, *, options: PowerFlowOptions = PowerFlowOptions()):
        self.options = options
        self._compile(net)
        self._dense_cache: dict = {}

    # ------------------------------------------------------------------------------------------
    # compile
    # ------------------------------------------------------------------------------------------

    def _compile(self, net) -> None:
        import pandapower as pp

        _check_supported(net)
        self.bus_index = net.bus.index.to_numpy()
        self.load_index = net.load.index.to_numpy()
        self.sgen_index = net.sgen.index.to_numpy()

        # pandapower's model with loads and sgens zeroed: Ybus plus every other constant injection
        work = copy.deepcopy(net)
        for table in ("load", "sgen"):
            work[table]["p_mw"] = 0.0
            work[table]["q_mvar"] = 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # numba=False: the same Ybus from pandapower's numpy code; its numba variant would
            # JIT-compile (about 10 s, in every new process) for this one solve
            pp.runpp(work, lightsim2grid=False, numba=False)
        ppci = work._ppc["internal"]
        # pandapower's branch model in its external bus numbering, for per-branch quantities
        # (e.g. the environment's split of losses between zones) without another runpp
        self.branch_model = BranchModel(branch=work._ppc["branch"].copy(), base_mva=float(work._ppc["baseMVA"]),
                                        bus_lookup=np.asarray(work._pd2ppc_lookups["bus"]).copy(),
                                        n_ppc_bus=int(work._ppc["bus"].shape[0]),
                                        element_ranges={k: (int(a), int(b)) for k, (a, b) in
                                                        work._pd2ppc_lookups.get("branch", {}).items()})
        if len(ppci["pv"]):
            raise NotImplementedError(
                "the net has voltage-controlled (PV) buses, e.g. from gen or xward elements; "
                "BatchedPowerFlow solves PQ buses only — model them as sgen")
        ref = np.asarray(ppci["ref"], dtype=np.int64)
        pq = np.asarray(ppci["pq"], dtype=np.int64)
        base_mva = float(ppci["baseMVA"])
        bus = ppci["bus"]
        n_all = bus.shape[0]
        ybus = sp.csc_matrix(ppci["Ybus"])

        # minimum-degree ordering of the PQ block, then a pivot-free LU in that order
        a = ybus[pq][:, pq].tocsc()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            order_lu = spla.splu(a, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                                 options=dict(SymmetricMode=True))
        perm = np.argsort(order_lu.perm_c)
        a = a[perm][:, perm].tocsc()
        lu = spla.splu(a, permc_spec="NATURAL", diag_pivot_thresh=0.0, options=dict(SymmetricMode=True))
        n_pq = len(pq)
        if not (np.array_equal(lu.perm_r, np.arange(n_pq)) and np.array_equal(lu.perm_c, np.arange(n_pq))):
            raise RuntimeError("sparse LU reordered a pre-ordered admittance matrix; cannot compile")
        self._lu = lu

        # internal order: PQ buses in elimination order, then the slack buses
        internal = np.concatenate([pq[perm], ref])
        pos = np.full(n_all, -1, dtype=np.int64)
        pos[internal] = np.arange(n_all)
        self._n_pq = n_pq
        self._n_all = n_all
        self._base_mva = base_mva

        lower = sp.tril(lu.L, k=-1, format="csr")
        upper = sp.triu(lu.U, k=1, format="csr")
        diag = lu.U.diagonal()
        self._L = _csr_parts(lower)
        self._U = _csr_parts(upper)
        dinv = 1.0 / diag
        self._dinv = (np.ascontiguousarray(dinv.real), np.ascontiguousarray(dinv.imag))

        y_int = ybus[internal][:, internal].tocsr()
        y_int.sort_indices()
        self._Y = _csr_parts(y_int)
        self._ybus_internal = y_int

        vs = bus[ref, 7] * np.exp(1j * np.deg2rad(bus[ref, 8]))  # VM, VA of the slack buses
        self.tap_changer = self._find_tap_changer(net, work, ybus, ref, bus)
        self._v_slack = vs
        v_nl = lu.solve(-(ybus[pq[perm]][:, ref] @ vs))
        self._v_nl = v_nl
        self._v_flat = np.concatenate([v_nl, vs])

        s_other = -(bus[internal, 2] + 1j * bus[internal, 3]) / base_mva  # PD, QD: gen convention
        self._p_other = np.ascontiguousarray(s_other.real)
        self._q_other = np.ascontiguousarray(s_other.imag)
        self._gs = np.ascontiguousarray(bus[internal, 4] / base_mva)  # GS: bus shunt conductance

        lookup = np.asarray(work._pd2ppc_lookups["bus"], dtype=np.int64)
        ppci_of_bus = lookup[self.bus_index]
        row = np.where((ppci_of_bus >= 0) & (ppci_of_bus < n_all), ppci_of_bus, -1)
        self._bus_row = np.where(row >= 0, pos[np.maximum(row, 0)], -1).astype(np.int64)
        self._load_row = _element_rows(net.load, lookup, pos, n_all)
        self._sgen_row = _element_rows(net.sgen, lookup, pos, n_all)
        # one pandapower bus column per internal PQ row: where a warm start is read from
        col = np.full(n_all, -1, dtype=np.int64)
        has = self._bus_row >= 0
        col[self._bus_row[has]] = np.flatnonzero(has)
        self._init_col = col[:n_pq].copy()
        # pandapower buses on the slack rows: behind a regulated transformer they keep the slack
        # voltage (the solver holds them at ρ·V_s, see gridrl.grid.tapchanger)
        on_slack = np.flatnonzero(self._bus_row >= n_pq)
        self._slack_cols = on_slack
        self._slack_cols_v = vs[self._bus_row[on_slack] - n_pq]

    def _find_tap_changer(self, net, work, ybus, ref, bus):
        """The substation transformer's tap changer if the slack reaches the network through it
        alone (then a tap is exactly a slack-voltage factor), else the ideal source regulator."""
        from gridrl.grid.tapchanger import find_tap_changer, source_regulator

        lookup = np.asarray(work._pd2ppc_lookups["bus"], dtype=np.int64)
        tc = find_tap_changer(net, lookup, ref)
        if tc is not None:
            lv = set(lookup[net.trafo.loc[list(tc.trafo_index), "lv_bus"].to_numpy(dtype=np.int64)].tolist())
            rows = sp.csr_matrix(ybus)[ref]
            reach = set(rows.indices.tolist()) - set(ref.tolist())
            if reach <= lv and not np.any(bus[ref, 4]):  # no other branch, no shunt on the slack bus
                return tc
            log.info("the slack bus also feeds branches other than the substation transformers: "
                     "no tap changer is modelled there")
        return source_regulator(net)

    # ------------------------------------------------------------------------------------------
    # properties
    # ------------------------------------------------------------------------------------------

    @property
    def n_bus(self) -> int:
        return len(self.bus_index)

    @property
    def n_load(self) -> int:
        return len(self.load_index)

    @property
    def n_sgen(self) -> int:
        return len(self.sgen_index)

    def internal_model(self) -> InternalModel:
        """The admittance matrix and index maps the solver works with (see :class:`InternalModel`)."""
        return InternalModel(ybus=self._ybus_internal, n_pq=self._n_pq, base_mva=self._base_mva,
                             bus_row=self._bus_row, load_row=self._load_row, sgen_row=self._sgen_row,
                             gs=self._gs, s_other=self._p_other + 1j * self._q_other)

    def __repr__(self) -> str:
        return (f"BatchedPowerFlow({self.n_bus} buses, {self._n_pq} PQ buses internally, "
                f"{self.n_load} loads, {self.n_sgen} sgens)")

    # ------------------------------------------------------------------------------------------
    # solve
    # ------------------------------------------------------------------------------------------

    def solve(self, load_p_mw, load_q_mvar, sgen_p_mw, sgen_q_mvar, *, v_init=None,
              tap_pos=None) -> PowerFlowResult:
        """Solve B scenarios at once.

        load_p_mw, load_q_mvar: ``[B, n_load]``, columns in ``net.load.index`` order (consumption).
        sgen_p_mw, sgen_q_mvar: ``[B, n_sgen]``, columns in ``net.sgen.index`` order (injection).
        A 1-D array ``[n]`` is the same values for every scenario; if all four are 1-D, B = 1.
        Columns of out-of-service elements are ignored; element ``scaling`` is not applied.
        v_init: optional ``[B, n_bus]`` complex start (e.g. ``previous_result.v``); NaN entries
            fall back to the no-load voltage.
        tap_pos: optional ``[B]`` (or one) position of :attr:`tap_changer` per scenario, within
            its range; ``None`` keeps the net's position (for the source regulator: neutral).
        numpy in → numpy out; any torch tensor in → float64/complex128 torch tensors out on its device.
        Raises ``ValueError`` naming the argument for wrong shapes or NaN/inf values; never for
        physics (non-convergence is reported in ``converged``).
        """
        torch_in = _torch_device(load_p_mw, load_q_mvar, sgen_p_mw, sgen_q_mvar, v_init)
        if torch_in is not None:
            return self._solve_torch(load_p_mw, load_q_mvar, sgen_p_mw, sgen_q_mvar, v_init, torch_in, tap_pos)
        args = self._prepare(load_p_mw, load_q_mvar, sgen_p_mw, sgen_q_mvar, v_init)
        return self._solve_numpy(*args, self._rho(tap_pos, args[0].shape[0]))

    def _rho(self, tap_pos, b: int) -> np.ndarray | None:
        """``[b]`` slack-voltage factors of the tap positions (None: all at the net's position)."""
        if tap_pos is None:
            return None
        if type(tap_pos).__module__.startswith("torch"):
            tap_pos = tap_pos.detach().cpu().numpy()
        t = np.asarray(tap_pos, dtype=np.float64)
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, b)):
            raise ValueError(f"tap_pos must have shape [{b}] or be one number, got {list(t.shape)}")
        tc = self.tap_changer
        if not np.isfinite(t).all() or (t < tc.tap_min).any() or (t > tc.tap_max).any():
            raise ValueError(f"tap_pos must lie in the tap range {tc.tap_min}…{tc.tap_max}")
        return np.ascontiguousarray(np.broadcast_to(tc.ratio(t), (b,)), dtype=np.float64)

    def _prepare(self, load_p_mw, load_q_mvar, sgen_p_mw, sgen_q_mvar, v_init):
        arrays = {"load_p_mw": (load_p_mw, self.n_load), "load_q_mvar": (load_q_mvar, self.n_load),
                  "sgen_p_mw": (sgen_p_mw, self.n_sgen), "sgen_q_mvar": (sgen_q_mvar, self.n_sgen)}
        out = {}
        for name, (x, n) in arrays.items():
            x = np.asarray(x, dtype=np.float64)
            if x.ndim not in (1, 2) or x.shape[-1] != n:
                raise ValueError(f"{name} must have shape [B, {n}] or [{n}], got {list(x.shape)}")
            if not np.isfinite(x).all():
                raise ValueError(f"{name} contains NaN or inf values")
            out[name] = x
        batch = {x.shape[0] for x in out.values() if x.ndim == 2}
        if len(batch) > 1:
            raise ValueError("batch sizes differ: " + ", ".join(
                f"{k} {list(v.shape)}" for k, v in out.items()))
        b = batch.pop() if batch else 1
        for name, x in out.items():
            out[name] = np.ascontiguousarray(np.broadcast_to(x, (b, x.shape[-1])))
        if v_init is not None:
            v_init = np.asarray(v_init)
            if v_init.shape != (b, self.n_bus) and v_init.shape != (self.n_bus,):
                raise ValueError(f"v_init must have shape [{b}, {self.n_bus}], got {list(v_init.shape)}")
            if np.isinf(v_init).any():
                raise ValueError("v_init contains inf values")
            v_init = np.ascontiguousarray(np.broadcast_to(v_init.astype(np.complex128), (b, self.n_bus)))
        return out["load_p_mw"], out["load_q_mvar"], out["sgen_p_mw"], out["sgen_q_mvar"], v_init

    def _chunk(self, batch: int) -> int:
        if self.options.chunk:
            return self.options.chunk
        # the inner loops run over a unit's scenarios: long enough to vectorize well, short
        # enough that a small feeder's state stays in cache; at least one unit per thread
        cb = 64 if self._n_all <= 400 else 32 if self._n_all <= 1500 else 16
        threads = numba.get_num_threads()
        while cb > 8 and -(-batch // cb) < threads:
            cb //= 2
        return cb

    def _solve_numpy(self, lp, lq, gp, gq, v_init, rho=None) -> PowerFlowResult:
        b = lp.shape[0]
        scaled = rho is not None
        rho_k = rho if scaled else np.ones(b)
        o = self.options
        out_v = np.empty((b, self.n_bus), dtype=np.complex128)
        out_vm = np.empty((b, self.n_bus))
        loss = np.empty(b)
        p_slack = np.empty(b)
        q_slack = np.empty(b)
        iters = np.empty(b, dtype=np.int64)
        conv = np.empty(b, dtype=np.bool_)
        has_init = v_init is not None
        init = v_init if has_init else np.empty((1, 1), dtype=np.complex128)
        # one signature for every caller (numba types read-only and writable arrays apart):
        # the kernel compiles once and its on-disk cache holds one entry
        lp, lq, gp, gq, init = (_read_only(x) for x in (lp, lq, gp, gq, init))
        apply_numba()  # the thread policy, in whichever thread calls (see gridrl.threads)
        # chunks are handed out one at a time, so a core busy with other work simply takes fewer
        with _first_launch_notice(), numba.parallel_chunksize(1):
            _zbus_kernel(
                *self._L, *self._U, *self._dinv,
                np.ascontiguousarray(self._v_nl.real), np.ascontiguousarray(self._v_nl.imag),
                np.ascontiguousarray(self._v_slack.real), np.ascontiguousarray(self._v_slack.imag),
                self._p_other, self._q_other, self._gs, *self._Y,
                self._load_row, self._sgen_row, self._bus_row, self._init_col,
                lp, lq, gp, gq, has_init, init, _read_only(rho_k), 1.0 / self._base_mva,
                o.tol_pu ** 2, o.max_iter, self._chunk(b),
                out_v, out_vm, loss, p_slack, q_slack, iters, conv)
        base = self._base_mva
        loss *= base
        p_slack *= base
        q_slack *= base
        if o.fallback and not conv.all():
            for k in np.flatnonzero(~conv):
                self._newton_one(k, lp, lq, gp, gq, out_v, out_vm, loss, p_slack, q_slack, iters, conv,
                                 rho_k[k])
        va = np.angle(out_v, deg=True)
        if scaled and self.tap_changer.kind == "transformer" and len(self._slack_cols):
            # the HV side of the regulated transformer stays at the slack voltage
            out_vm[:, self._slack_cols] = np.abs(self._slack_cols_v)
            va[:, self._slack_cols] = np.angle(self._slack_cols_v, deg=True)
        return PowerFlowResult(vm_pu=out_vm, va_degree=va, loss_mw=loss, converged=conv,
                               iterations=iters, v=out_v, p_slack_mw=p_slack, q_slack_mvar=q_slack)

    # ------------------------------------------------------------------------------------------
    # Newton–Raphson fallback (one scenario at a time, sparse)
    # ------------------------------------------------------------------------------------------

    def _injection(self, lp, lq, gp, gq) -> np.ndarray:
        """Specified injection of one scenario, internal order, p.u., generator convention."""
        s = self._p_other + 1j * self._q_other
        inv = 1.0 / self._base_mva
        for rows, p, q, sign in ((self._load_row, lp, lq, -1.0), (self._sgen_row, gp, gq, 1.0)):
            ok = rows >= 0
            np.add.at(s, rows[ok], sign * (p[ok] + 1j * q[ok]) * inv)
        return s

    def _newton_one(self, k, lp, lq, gp, gq, out_v, out_vm, loss, p_slack, q_slack, iters, conv, rho=1.0):
        s = self._injection(lp[k], lq[k], gp[k], gq[k])
        o = self.options
        v, n_it, ok = _newton(self._ybus_internal, self._n_pq, s, self._v_flat * rho,
                              o.newton_max_iter, o.newton_tol_pu, o.tol_pu)
        iters[k] += n_it
        if not ok:
            return
        n_pq = self._n_pq
        s_net = v * np.conj(self._ybus_internal @ v)
        s_net[:n_pq] = s[:n_pq]  # converged: the specified injections, as in the kernel
        base = self._base_mva
        loss[k] = (s_net.real.sum() - (self._gs * np.abs(v) ** 2).sum()) * base
        slack = s_net[n_pq:] - s[n_pq:]
        p_slack[k] = slack.real.sum() * base
        q_slack[k] = slack.imag.sum() * base
        rows = self._bus_row
        vb = np.where(rows >= 0, v[np.maximum(rows, 0)], np.nan + 0j)
        out_v[k] = vb
        out_vm[k] = np.abs(vb)
        conv[k] = True

    # ------------------------------------------------------------------------------------------
    # torch
    # ------------------------------------------------------------------------------------------

    def _solve_torch(self, lp, lq, gp, gq, v_init, device, tap_pos=None) -> PowerFlowResult:
        import torch

        method = self.options.torch_method
        if method == "auto":
            method = "kernel" if device.type == "cpu" else "dense"
        if method == "dense" and self._n_all > self.options.dense_max_bus:
            method = "kernel"

        def host(x):
            if isinstance(x, torch.Tensor):
                return x.detach().to("cpu").numpy()
            return x

        if method == "kernel":
            args = self._prepare(host(lp), host(lq), host(gp), host(gq), None if v_init is None else host(v_init))
            res = self._solve_numpy(*args, self._rho(host(tap_pos), args[0].shape[0]))
            return PowerFlowResult(**{f: torch.from_numpy(getattr(res, f)).to(device)
                                      for f in PowerFlowResult.__dataclass_fields__})
        return self._solve_dense_torch(lp, lq, gp, gq, v_init, device, tap_pos)

    def _dense(self, device):
        """Dense impedance matrix and friends on ``device`` (built once per device)."""
        import torch

        key = str(device)
        if key not in self._dense_cache:
            n_pq = self._n_pq
            z = np.linalg.inv(self._lu.L.toarray() @ self._lu.U.toarray()) if n_pq else np.zeros((0, 0))
            t = lambda x: torch.as_tensor(np.ascontiguousarray(x), device=device)
            self._dense_cache[key] = dict(
                zt=t(z.T.astype(np.complex128)),
                y_slack=t(self._ybus_internal[n_pq:].toarray().astype(np.complex128)),
                v_nl=t(self._v_nl.astype(np.complex128)),
                v_s=t(self._v_slack.astype(np.complex128)),
                s_other=t(self._p_other + 1j * self._q_other),
                gs=t(self._gs),
                load_row=t(self._load_row), sgen_row=t(self._sgen_row),
                bus_row=t(self._bus_row), init_col=t(self._init_col))
        return self._dense_cache[key]

    def _solve_dense_torch(self, lp, lq, gp, gq, v_init, device, tap_pos=None) -> PowerFlowResult:
        import torch

        d = self._dense(device)
        names = ("load_p_mw", "load_q_mvar", "sgen_p_mw", "sgen_q_mvar")
        sizes = (self.n_load, self.n_load, self.n_sgen, self.n_sgen)
        xs = []
        for name, x, n in zip(names, (lp, lq, gp, gq), sizes):
            x = torch.as_tensor(x, dtype=torch.float64, device=device)
            if x.ndim not in (1, 2) or x.shape[-1] != n:
                raise ValueError(f"{name} must have shape [B, {n}] or [{n}], got {list(x.shape)}")
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"{name} contains NaN or inf values")
            xs.append(x)
        batch = {x.shape[0] for x in xs if x.ndim == 2}
        if len(batch) > 1:
            raise ValueError("batch sizes differ: " + ", ".join(f"{k} {list(x.shape)}" for k, x in zip(names, xs)))
        b = batch.pop() if batch else 1
        lp, lq, gp, gq = (x.expand(b, x.shape[-1]) for x in xs)
        inv = 1.0 / self._base_mva
        n_pq = self._n_pq
        s = d["s_other"].expand(b, -1).clone()
        for rows, p, q, sign in ((d["load_row"], lp, lq, -inv), (d["sgen_row"], gp, gq, inv)):
            ok = rows >= 0
            s.index_add_(1, rows[ok], torch.complex(p[:, ok], q[:, ok]) * sign)
        s_pq = s[:, :n_pq]
        host_tap = tap_pos.detach().cpu().numpy() if isinstance(tap_pos, torch.Tensor) else tap_pos
        rho_np = self._rho(host_tap, b)
        rho = torch.ones(b, dtype=torch.float64, device=device) if rho_np is None else torch.as_tensor(rho_np, device=device)
        v_nl = d["v_nl"][None, :] * rho[:, None]
        v_s = d["v_s"][None, :] * rho[:, None]
        v = v_nl.clone()
        if v_init is not None:
            vi = torch.as_tensor(v_init, device=device).to(torch.complex128).expand(b, self.n_bus)
            cols = d["init_col"]
            has = cols >= 0
            start = vi[:, cols.clamp(min=0)]
            good = has & ~torch.isnan(start.real) & ~torch.isnan(start.imag)
            v = torch.where(good, start, v)
        tol2 = self.options.tol_pu ** 2
        active = torch.ones(b, dtype=torch.bool, device=device)
        conv = torch.zeros(b, dtype=torch.bool, device=device)
        iters = torch.zeros(b, dtype=torch.int64, device=device)
        for _ in range(self.options.max_iter):
            current = torch.conj(s_pq / v)
            v_new = v_nl + current @ d["zt"]
            diff = v_new - v
            dv = (diff.real ** 2 + diff.imag ** 2)
            dv_max = dv.max(dim=1).values if n_pq else torch.zeros(b, dtype=torch.float64, device=device)
            v = torch.where(active[:, None], v_new, v)
            iters += active
            finite = torch.isfinite(dv.sum(dim=1))
            newly = active & (dv_max <= tol2)
            conv |= newly
            active &= ~newly & finite
            if not bool(active.any()):
                break
        v_all = torch.cat([v, v_s], dim=1)
        s_net = torch.cat([s_pq, v_all[:, n_pq:] * torch.conj(v_all @ d["y_slack"].T)], dim=1)
        vm2 = v_all.real ** 2 + v_all.imag ** 2
        loss = (s_net.real.sum(dim=1) - (vm2 * d["gs"]).sum(dim=1)) * self._base_mva
        slack = (s_net[:, n_pq:] - s[:, n_pq:]).sum(dim=1) * self._base_mva
        rows = d["bus_row"]
        nan = torch.tensor(complex(float("nan"), float("nan")), dtype=torch.complex128, device=device)
        out_v = torch.where(rows >= 0, v_all[:, rows.clamp(min=0)], nan)
        p_slack, q_slack = slack.real.clone(), slack.imag.clone()
        if self.options.fallback and not bool(conv.all()):
            bad = torch.nonzero(~conv).flatten().tolist()
            host = [x.detach().cpu().numpy() for x in (lp, lq, gp, gq)]
            ov, ovm = out_v.cpu().numpy().copy(), out_v.abs().cpu().numpy()
            lo, ps, qs = loss.cpu().numpy().copy(), p_slack.cpu().numpy().copy(), q_slack.cpu().numpy().copy()
            it, cv = iters.cpu().numpy().copy(), conv.cpu().numpy().copy()
            for k in bad:
                self._newton_one(k, *host, ov, ovm, lo, ps, qs, it, cv, float(rho[k]))
            t = lambda x: torch.as_tensor(x, device=device)
            out_v, loss, p_slack, q_slack, iters, conv = t(ov), t(lo), t(ps), t(qs), t(it), t(cv)
        vm = torch.sqrt(out_v.real ** 2 + out_v.imag ** 2)
        va = torch.rad2deg(torch.atan2(out_v.imag, out_v.real))
        if rho_np is not None and self.tap_changer.kind == "transformer" and len(self._slack_cols):
            cols = torch.as_tensor(self._slack_cols, device=device)
            vm[:, cols] = torch.as_tensor(np.abs(self._slack_cols_v), device=device)
            va[:, cols] = torch.as_tensor(np.angle(self._slack_cols_v, deg=True), device=device)
        return PowerFlowResult(vm_pu=vm, va_degree=va, loss_mw=loss, converged=conv, iterations=iters,
                               v=out_v, p_slack_mw=p_slack, q_slack_mvar=q_slack)


# ----------------------------------------------------------------------------------------------
# reference: pandapower, one scenario at a time
# ----------------------------------------------------------------------------------------------


def reference_solve(net, load_p_mw, load_q_mvar, sgen_p_mw, sgen_q_mvar, *, init: str = "auto",
                    tap_changer=None, tap_pos=None, **runpp_kwargs) -> PowerFlowResult:
    """The same scenarios as :meth:`BatchedPowerFlow.solve`, through ``pandapower.runpp`` (numpy).

    Each scenario sets the elements' ``p_mw``/``q_mvar`` (with ``scaling`` = 1, so the values are
    the actual powers as in the batched solver) on a copy of ``net`` and runs
    ``runpp(lightsim2grid=False, init=init, **runpp_kwargs)``. Scenarios pandapower cannot solve
    come back NaN with ``converged=False``; ``iterations`` is pandapower's iteration count.
    With ``tap_changer`` (a :class:`~gridrl.grid.tapchanger.TapChanger`) and ``tap_pos [B]``, each
    scenario sets that tap: ``tap_pos`` of its transformers, or for a source regulator the slack
    voltage times the regulator's ratio.
    """
    import pandapower as pp

    net = copy.deepcopy(net)
    arrays = [np.atleast_2d(np.asarray(x, dtype=np.float64)) for x in (load_p_mw, load_q_mvar, sgen_p_mw, sgen_q_mvar)]
    b = max(a.shape[0] for a in arrays)
    lp, lq, gp, gq = (np.broadcast_to(a, (b, a.shape[1])) for a in arrays)
    net.load["scaling"] = 1.0
    net.sgen["scaling"] = 1.0
    n_bus = len(net.bus)
    out = {f: np.full((b, n_bus), np.nan) for f in ("vm_pu", "va_degree")}
    loss, p_slack, q_slack = (np.full(b, np.nan) for _ in range(3))
    conv = np.zeros(b, dtype=bool)
    iters = np.zeros(b, dtype=np.int64)
    taps = None if tap_pos is None else np.broadcast_to(np.asarray(tap_pos, dtype=np.float64), (b,))
    vm_ext = net.ext_grid["vm_pu"].to_numpy(dtype=np.float64).copy()
    for k in range(b):
        if taps is not None and tap_changer.kind == "transformer":
            net.trafo.loc[list(tap_changer.trafo_index), "tap_pos"] = taps[k]
        elif taps is not None:
            net.ext_grid["vm_pu"] = vm_ext * float(tap_changer.ratio(taps[k]))
        net.load["p_mw"] = lp[k]
        net.load["q_mvar"] = lq[k]
        net.sgen["p_mw"] = gp[k]
        net.sgen["q_mvar"] = gq[k]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pp.runpp(net, lightsim2grid=False, init=init, **runpp_kwargs)
        except Exception:  # pandapower signals non-convergence by raising
            continue
        conv[k] = True
        iters[k] = int(net._ppc.get("iterations", 0) or 0)
        out["vm_pu"][k] = net.res_bus.vm_pu.to_numpy()
        out["va_degree"][k] = net.res_bus.va_degree.to_numpy()
        loss[k] = sum(float(net[f"res_{t}"].pl_mw.sum()) for t in ("line", "trafo", "trafo3w", "impedance")
                      if f"res_{t}" in net and len(net[f"res_{t}"]))
        p_slack[k] = float(net.res_ext_grid.p_mw.sum())
        q_slack[k] = float(net.res_ext_grid.q_mvar.sum())
    v = out["vm_pu"] * np.exp(1j * np.deg2rad(out["va_degree"]))
    return PowerFlowResult(vm_pu=out["vm_pu"], va_degree=out["va_degree"], loss_mw=loss, converged=conv,
                           iterations=iters, v=v, p_slack_mw=p_slack, q_slack_mvar=q_slack)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _check_supported(net) -> None:
    problems = []
    if len(net.ext_grid) == 0 or not net.ext_grid.in_service.any():
        problems.append("the net has no in-service ext_grid (slack)")
    if len(net.gen) and net.gen.in_service.any():
        raise NotImplementedError(
            f"the net has {int(net.gen.in_service.sum())} in-service voltage-controlled generator(s) "
            "(net.gen); BatchedPowerFlow solves PQ buses only — model them as sgen or take them out of service")
    zip_cols = [c for c in ("const_z_p_percent", "const_i_p_percent", "const_z_q_percent",
                            "const_i_q_percent", "const_z_percent", "const_i_percent") if c in net.load]
    if zip_cols and len(net.load):
        live = net.load[net.load.in_service]
        zip_loads = live.index[(live[zip_cols].fillna(0.0).abs() > 0).any(axis=1)]
        if len(zip_loads):
            raise NotImplementedError(
                f"load(s) {list(zip_loads[:10])} have constant-impedance/current parts ({', '.join(zip_cols)}); "
                "BatchedPowerFlow models constant-power loads only — set those columns to 0")
    for table in ("svc", "tcsc", "ssc", "vsc"):
        if table in net and len(net[table]) and net[table].in_service.any():
            raise NotImplementedError(f"the net has in-service {table} elements, which BatchedPowerFlow does not model")
    if problems:
        raise ValueError("; ".join(problems))


def _csr_parts(m: sp.csr_matrix):
    m = sp.csr_matrix(m)
    m.sort_indices()
    return (m.indptr.astype(np.int64), m.indices.astype(np.int64),
            np.ascontiguousarray(m.data.real), np.ascontiguousarray(m.data.imag))


def _element_rows(table, lookup, pos, n_all) -> np.ndarray:
    """Internal bus row of each element, -1 if out of service or on a dead bus."""
    if len(table) == 0:
        return np.zeros(0, dtype=np.int64)
    ppci = lookup[table.bus.to_numpy(dtype=np.int64)]
    ok = table.in_service.to_numpy(dtype=bool) & (ppci >= 0) & (ppci < n_all)
    return np.where(ok, pos[np.where(ok, ppci, 0)], -1).astype(np.int64)


def kernel_compiled() -> bool:
    """Whether the power-flow kernel runs without compiling first: already loaded in this
    process, or a current build in numba's on-disk cache (``cache=True``)."""
    if _zbus_kernel.signatures:
        return True
    try:
        return bool(_zbus_kernel._cache._cache_file._load_index())
    except Exception:  # numba's internals moved: report "not compiled", which only adds a message
        return False


@contextmanager
def _first_launch_notice():
    """Say (at INFO, which the CLI shows) when the kernel is about to compile, and how long it
    took. numba keeps the build on disk, so this happens once per install and source change."""
    global _kernel_ready
    if _kernel_ready:  # a flag: the dispatcher's signature list costs ~0.3 ms to build
        yield
        return
    cached = kernel_compiled()
    if not cached:
        log.info("compiling the power-flow kernel (first use only: numba caches it on disk)")
    start = time.perf_counter()
    yield
    _kernel_ready = True
    log.log(logging.DEBUG if cached else logging.INFO, "power-flow kernel %s in %.1f s",
            "loaded from numba's cache" if cached else "compiled", time.perf_counter() - start)


_kernel_ready = False  # set after the kernel's first launch in this process


def _read_only(x: np.ndarray) -> np.ndarray:
    """A read-only view of ``x`` (the caller's array keeps its own flags)."""
    view = x.view()
    view.flags.writeable = False
    return view


def _torch_device(*xs):
    for x in xs:
        if type(x).__module__.startswith("torch"):
            return x.device
    return None


def _newton(y: sp.csr_matrix, n_pq: int, s: np.ndarray, v: np.ndarray, max_iter: int, tol: float,
            step_tol: float):
    """Polar Newton–Raphson on internal rows ``[0, n_pq)`` (PQ), the rest fixed (slack).

    Returns (v, iterations, converged). Stops, unconverged, on a singular Jacobian or NaN.
    """
    pq = np.arange(n_pq)
    vm = np.abs(v)
    va = np.angle(v)
    step = np.inf
    for it in range(max_iter + 1):
        i = y @ v
        mis = v * np.conj(i) - s
        f = np.concatenate([mis.real[:n_pq], mis.imag[:n_pq]])
        if not np.isfinite(f).all():
            return v, it, False
        if np.abs(f).max(initial=0.0) < tol or step < step_tol:
            return v, it, True
        if it == max_iter:
            break
        diag_v = sp.diags(v)
        diag_vn = sp.diags(v / np.abs(v))
        ds_dvm = diag_v @ np.conj(y @ diag_vn) + sp.diags(np.conj(i)) @ diag_vn
        ds_dva = 1j * diag_v @ np.conj(sp.diags(i) - y @ diag_v)
        ds_dva = ds_dva.tocsr()[pq][:, pq]
        ds_dvm = ds_dvm.tocsr()[pq][:, pq]
        jac = sp.bmat([[ds_dva.real, ds_dvm.real], [ds_dva.imag, ds_dvm.imag]], format="csc")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                dx = spla.spsolve(jac, -f)
        except Exception:  # singular Jacobian: physics, not a bug
            return v, it, False
        if not np.isfinite(dx).all():
            return v, it, False
        va[:n_pq] += dx[:n_pq]
        vm[:n_pq] += dx[n_pq:]
        v_new = vm * np.exp(1j * va)
        step = np.abs(v_new - v).max(initial=0.0)
        v = v_new
    return v, max_iter, False


# ----------------------------------------------------------------------------------------------
# the compiled kernel
# ----------------------------------------------------------------------------------------------


@numba.njit(parallel=True, cache=True, nogil=True, error_model="numpy", fastmath={"contract", "arcp", "nsz"})
def _zbus_kernel(lp_, lj_, lr_, li_, up_, uj_, ur_, ui_, dr_, di_,
                 v0r, v0i, vsr, vsi, p_other, q_other, gs, yp_, yj_, yr_, yi_,
                 load_row, sgen_row, bus_row, init_col,
                 load_p, load_q, sgen_p, sgen_q, has_init, init, rho, inv_base,
                 tol2, max_iter, cb,
                 out_v, out_vm, out_loss, out_p, out_q, out_iter, out_conv):
    """Z-bus fixed point for chunks of ``cb`` scenarios; state laid out [bus, scenario]."""
    n_batch = load_p.shape[0]
    n_pq = v0r.shape[0]
    n_all = p_other.shape[0]
    n_bus = bus_row.shape[0]
    n_chunks = (n_batch + cb - 1) // cb
    for c in numba.prange(n_chunks):
        b0 = c * cb
        m = min(cb, n_batch - b0)
        P = np.empty((n_all, m))
        Q = np.empty((n_all, m))
        Vr = np.empty((n_all, m))
        Vi = np.empty((n_all, m))
        Wr = np.empty((n_pq, m))
        Wi = np.empty((n_pq, m))
        dv = np.empty(m)
        ds = np.empty(m)
        rh = np.empty(m)
        for b in range(m):
            rh[b] = rho[b0 + b]
        act = np.ones(m, dtype=np.bool_)
        conv = np.zeros(m, dtype=np.bool_)
        its = np.zeros(m, dtype=np.int64)

        # specified injections (p.u., generator convention)
        for i in range(n_all):
            for b in range(m):
                P[i, b] = p_other[i]
                Q[i, b] = q_other[i]
        for j in range(load_row.shape[0]):
            r = load_row[j]
            if r >= 0:
                for b in range(m):
                    P[r, b] -= load_p[b0 + b, j] * inv_base
                    Q[r, b] -= load_q[b0 + b, j] * inv_base
        for j in range(sgen_row.shape[0]):
            r = sgen_row[j]
            if r >= 0:
                for b in range(m):
                    P[r, b] += sgen_p[b0 + b, j] * inv_base
                    Q[r, b] += sgen_q[b0 + b, j] * inv_base

        # start: warm start where given, else the no-load voltage
        for i in range(n_pq):
            col = init_col[i]
            for b in range(m):
                Vr[i, b] = v0r[i] * rh[b]
                Vi[i, b] = v0i[i] * rh[b]
                if has_init and col >= 0:
                    x = init[b0 + b, col]
                    if x.real == x.real and x.imag == x.imag:
                        Vr[i, b] = x.real
                        Vi[i, b] = x.imag
        for k in range(n_all - n_pq):
            for b in range(m):
                Vr[n_pq + k, b] = vsr[k] * rh[b]
                Vi[n_pq + k, b] = vsi[k] * rh[b]

        for it in range(max_iter):
            # forward substitution with the injected currents conj(S / V)
            for i in range(n_pq):
                for b in range(m):
                    vr = Vr[i, b]
                    vi = Vi[i, b]
                    inv = 1.0 / (vr * vr + vi * vi)
                    Wr[i, b] = (P[i, b] * vr + Q[i, b] * vi) * inv
                    Wi[i, b] = (P[i, b] * vi - Q[i, b] * vr) * inv
                for k in range(lp_[i], lp_[i + 1]):
                    j = lj_[k]
                    ar = lr_[k]
                    ai = li_[k]
                    for b in range(m):
                        xr = Wr[j, b]
                        xi = Wi[j, b]
                        Wr[i, b] -= ar * xr - ai * xi
                        Wi[i, b] -= ar * xi + ai * xr
            # backward substitution, voltage update, step size
            for b in range(m):
                dv[b] = 0.0
                ds[b] = 0.0
            for i in range(n_pq - 1, -1, -1):
                for k in range(up_[i], up_[i + 1]):
                    j = uj_[k]
                    ar = ur_[k]
                    ai = ui_[k]
                    for b in range(m):
                        xr = Wr[j, b]
                        xi = Wi[j, b]
                        Wr[i, b] -= ar * xr - ai * xi
                        Wi[i, b] -= ar * xi + ai * xr
                er = dr_[i]
                ei = di_[i]
                v0 = v0r[i]
                v1 = v0i[i]
                for b in range(m):
                    xr = Wr[i, b] * er - Wi[i, b] * ei
                    xi = Wr[i, b] * ei + Wi[i, b] * er
                    Wr[i, b] = xr
                    Wi[i, b] = xi
                    nr = xr + v0 * rh[b]
                    ni = xi + v1 * rh[b]
                    e = (nr - Vr[i, b]) ** 2 + (ni - Vi[i, b]) ** 2
                    dv[b] = max(dv[b], e)
                    ds[b] += e
                    a = act[b]
                    Vr[i, b] = nr if a else Vr[i, b]
                    Vi[i, b] = ni if a else Vi[i, b]
            left = 0
            for b in range(m):
                if act[b]:
                    its[b] = it + 1
                    if dv[b] <= tol2:
                        act[b] = False
                        conv[b] = True
                    elif not math.isfinite(ds[b]):
                        act[b] = False
                    else:
                        left += 1
            if left == 0:
                break

        # Branch losses = all injections into the network minus bus-shunt consumption. At PQ
        # buses the injection is the specified one (the scenario has converged), at the slack
        # buses it is V conj(Y V): only the slack rows of Y are needed.
        loss = np.zeros(m)
        ps = np.zeros(m)
        qs = np.zeros(m)
        for i in range(n_pq):
            g = gs[i]
            for b in range(m):
                loss[b] += P[i, b] - g * (Vr[i, b] ** 2 + Vi[i, b] ** 2)
        for i in range(n_pq, n_all):
            for b in range(m):
                dv[b] = 0.0  # reused: real and imaginary part of (Y V)_i
                ds[b] = 0.0
            for k in range(yp_[i], yp_[i + 1]):
                j = yj_[k]
                ar = yr_[k]
                ai = yi_[k]
                for b in range(m):
                    dv[b] += ar * Vr[j, b] - ai * Vi[j, b]
                    ds[b] += ar * Vi[j, b] + ai * Vr[j, b]
            g = gs[i]
            for b in range(m):
                vr = Vr[i, b]
                vi = Vi[i, b]
                s_re = vr * dv[b] + vi * ds[b]
                loss[b] += s_re - g * (vr * vr + vi * vi)
                ps[b] += s_re - P[i, b]
                qs[b] += vi * dv[b] - vr * ds[b] - Q[i, b]
        for b in range(m):
            out_loss[b0 + b] = loss[b]
            out_p[b0 + b] = ps[b]
            out_q[b0 + b] = qs[b]

        for k in range(n_bus):
            r = bus_row[k]
            for b in range(m):
                if r >= 0:
                    out_v[b0 + b, k] = complex(Vr[r, b], Vi[r, b])
                    out_vm[b0 + b, k] = math.sqrt(Vr[r, b] ** 2 + Vi[r, b] ** 2)
                else:
                    out_v[b0 + b, k] = complex(np.nan, np.nan)
                    out_vm[b0 + b, k] = np.nan
        for b in range(m):
            out_iter[b0 + b] = its[b]
            out_conv[b0 + b] = conv[b]
