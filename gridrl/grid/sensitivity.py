"""Sensitivities of bus voltages and branch losses to reactive injections, at a solved point.

This module owns :class:`InjectionSensitivity`: given the voltages of B solved power flows of a
feeder (:class:`~gridrl.grid.powerflow.BatchedPowerFlow` results), it returns for each scenario
``d vm_pu / d q_mvar`` of chosen buses and ``d loss_mw / d q_mvar`` for a reactive injection at
each of chosen static generators; and :func:`bus_impedance`, the bus impedance matrix between
chosen buses. Optimizers (the OPF's SQP) need the sensitivities at every iterate; a forward
difference costs one power flow per injection, this costs one sparse factorization per scenario
and a pair of triangular solves per injection.

How. At a solution of the power flow, the PQ buses' mismatch equations ``F(θ, |V|) = S_calc −
S_spec = 0`` (``S_calc = V ∘ conj(Y V)``, real and imaginary parts) hold; a change ``dq`` of the
specified reactive injection at bus r moves the solution by ``J [dθ; d|V|] = e_Q,r dq`` with ``J``
the polar Newton–Raphson Jacobian (the matrix pandapower's ``dSbus_dV`` builds). ``J`` has the
pattern of ``Y`` in 2×2 blocks (``(P_i, Q_i)`` by ``(θ_k, |V|_k)``), and the power flow's internal
bus order is already the minimum-degree elimination order of ``Y``: a block LU in that order,
without pivoting, makes no fill on a radial feeder. Its symbolic part (which entries exist, which
updates each elimination makes) is planned once per feeder; a compiled kernel factorizes each
scenario's Jacobian and runs every injection through the triangular solves, scenarios and
right-hand sides spread over the cores. Losses follow from the same solution: branch losses are
all injections minus bus-shunt consumption, the specified active injections do not move, so
``d loss = d P_slack − Σ 2 g_k |V_k| d|V_k|`` (``P_slack`` from the slack rows of ``Y``).

An optimizer seldom needs the whole ``[n_bus, n_sgen]`` matrix: :meth:`InjectionSensitivity.linearize`
keeps the factorization, and with it the loss gradient is one adjoint (transposed) solve, one row of
the voltage sensitivities (one bus against every injection) is one adjoint solve, and the voltage
change of a given injection pattern is one forward solve. On mvlv-rural (5,479 buses, 571
inverters) that is a few right-hand sides per SQP iteration instead of 571.

The derivatives are exact at the given voltages: they match central differences of the batched
power flow to the difference's own truncation error (``tests/test_sensitivity.py``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numba
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

__all__ = ["InjectionSensitivity", "Linearization", "agent_loss_sensitivity", "bus_impedance"]

_COLUMNS_PER_UNIT = 64   # right-hand sides per work unit of the compiled solve


@dataclass(frozen=True, eq=False)
class Linearization:
    """The factorized power-flow Jacobians of B solved scenarios (from
    :meth:`InjectionSensitivity.linearize`): ``ok [B]`` False where a Jacobian is singular; the
    rest is for the sensitivity's own solves."""

    blocks: np.ndarray     # [B, n_slots, 4] block LU factors
    ok: np.ndarray         # [B] bool
    loss_c: np.ndarray     # [B, n_pq, 2] d loss / d (θ, |V|) in p.u.

    @property
    def batch(self) -> int:
        return self.ok.shape[0]


class InjectionSensitivity:
    """``d vm_pu / d q_mvar`` and ``d loss_mw / d q_mvar`` of a feeder, compiled once.

    pf: the feeder's :class:`~gridrl.grid.powerflow.BatchedPowerFlow`.
    sgen_cols: columns of the solver's sgen table (``pf.sgen_index`` order) whose reactive power
        is varied; a unit of ``q_mvar`` at each. An sgen out of service or at a slack bus has
        sensitivity 0.
    bus_cols: columns of the solver's bus table (``pf.bus_index`` order) whose voltage magnitude
        is differentiated; slack buses have sensitivity 0, out-of-service buses NaN.
    max_floats: bound on the intermediate solution (floats) of one call; see :attr:`group`.
    """

    def __init__(self, pf, sgen_cols, bus_cols, *, max_floats: int = 20_000_000) -> None:
        m = pf.internal_model()
        self._n_pq = n_pq = m.n_pq
        self._base_mva = m.base_mva
        self._max_floats = int(max_floats)
        y = m.ybus.tocsr()
        y.sort_indices()
        n_all = y.shape[0]
        self._y = y
        self._gs = m.gs

        # internal rows that have no bus of their own (pandapower's auxiliary buses, e.g. the far
        # end of a line behind an open switch): no element connects there, so (Y V)_u = 0
        # recovers their voltage from the rest
        has_bus = np.zeros(n_all, dtype=bool)
        has_bus[m.bus_row[m.bus_row >= 0]] = True
        aux = np.flatnonzero(~has_bus)
        if np.any(m.s_other[aux] != 0):
            raise RuntimeError("an auxiliary bus of the compiled net carries a constant injection")
        self._aux = aux
        if aux.size:
            rest = np.flatnonzero(has_bus)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._aux_lu = spla.splu(y[aux][:, aux].tocsc())
            self._aux_coupling = y[aux][:, rest].tocsr()
            self._aux_rest = rest
        # one bus column per internal row that has one (switch-merged buses share a row)
        col_of_row = np.full(n_all, -1, dtype=np.int64)
        cols = np.flatnonzero(m.bus_row >= 0)
        col_of_row[m.bus_row[cols[::-1]]] = cols[::-1]
        self._col_of_row = col_of_row
        self._rows_with_bus = np.flatnonzero(has_bus)

        # the Jacobian has Y's pattern on the PQ buses in 2×2 blocks; its block LU in the internal
        # (elimination) order is planned once
        y_pq = y[:n_pq][:, :n_pq].tocsr()
        y_pq.sort_indices()
        self._sym = _BlockLU(y_pq.indptr, y_pq.indices, n_pq)
        coo = y_pq.tocoo()
        self._jr, self._jc = coo.row.astype(np.int64), coo.col.astype(np.int64)
        self._jy_re, self._jy_im = np.ascontiguousarray(coo.data.real), np.ascontiguousarray(coo.data.imag)
        self._slot = self._sym.slot_of(self._jr, self._jc)

        # slack rows of Y for the losses
        y_slack = y[n_pq:].tocoo()
        self._sr, self._sc, self._sy = y_slack.row.astype(np.int64) + n_pq, y_slack.col.astype(np.int64), y_slack.data

        # inputs: one right-hand side per chosen sgen (−1: out of service or at a slack bus)
        sgen_row = m.sgen_row[np.asarray(sgen_cols, dtype=np.int64)]
        self._in_row = np.where((sgen_row >= 0) & (sgen_row < n_pq), sgen_row, -1).astype(np.int64)
        self._n_sgen = len(sgen_row)
        # outputs: |V| rows of the chosen buses (−1: slack, −2: out of service)
        bus_row = m.bus_row[np.asarray(bus_cols, dtype=np.int64)]
        self._out_row = np.where(bus_row < 0, -2, np.where(bus_row >= n_pq, -1, bus_row))
        self._bus_rows = m.bus_row  # internal row of every bus column (for gradient_rows)
        self._n_bus_out = len(bus_row)

    @property
    def group(self) -> int:
        """How many scenarios one call should take at most: their intermediate solution stays
        under ``max_floats`` floats (callers with larger batches call once per group)."""
        per = (2 * self._n_pq + self._n_bus_out) * max(self._n_sgen, 1)
        return max(1, self._max_floats // max(per, 1))

    def __call__(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sensitivities at the solved voltages ``v`` ``[B, n_bus]`` (a result's ``v``).

        Returns ``dvm_dq [B, n_bus_out, n_sgen_in]`` (p.u. per MVAr), ``dloss_dq [B,
        n_sgen_in]`` (MW per MVAr), in the order of ``bus_cols`` and ``sgen_cols``, and ``ok
        [B]``: False where the Jacobian is singular (a point of voltage collapse; values NaN).
        """
        v = np.atleast_2d(np.asarray(v, dtype=np.complex128))
        with np.errstate(divide="ignore", invalid="ignore"):   # a collapsed voltage: flagged by ok
            return self._solve(v)

    def _solve(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lin = self._linearize(v)
        b, ok = v.shape[0], lin.ok
        sym = self._sym
        # 1 MVAr of reactive injection at each input sgen (p.u. on base_mva), one column each
        x = np.zeros((b, self._n_pq, 2, self._n_sgen))
        _block_solve(sym.l_ptr, sym.l_col, sym.u_ptr, sym.u_col, lin.blocks, ok, self._in_row, 1.0 / self._base_mva,
                     _COLUMNS_PER_UNIT, x)
        dloss = np.einsum("bnt,bntk->bk", lin.loss_c, x) * self._base_mva
        out_rows = self._out_row
        inside = np.flatnonzero(out_rows >= 0)
        if inside.size == out_rows.size:
            dvm_out = x[:, out_rows, 1, :]
        else:
            dvm_out = np.zeros((b, self._n_bus_out, self._n_sgen))
            dvm_out[:, inside, :] = x[:, out_rows[inside], 1, :]
            dvm_out[:, out_rows == -2, :] = np.nan
        dvm_out[~ok] = np.nan
        dloss[~ok] = np.nan
        return dvm_out, dloss, ok

    def linearize(self, v: np.ndarray) -> Linearization:
        """Factorize the Jacobians at the solved voltages ``v [B, n_bus]`` once, for
        :meth:`loss_gradient`, :meth:`voltage_rows` and :meth:`voltage_change`."""
        v = np.atleast_2d(np.asarray(v, dtype=np.complex128))
        with np.errstate(divide="ignore", invalid="ignore"):
            return self._linearize(v)

    def loss_gradient(self, lin: Linearization) -> np.ndarray:
        """``d loss_mw / d q_mvar [B, n_sgen]`` (NaN where not ``ok``): one adjoint solve per
        scenario, ``w = J⁻ᵀ c``, read at the inputs' reactive-power rows."""
        w = lin.loss_c.copy()
        self._solve_t(lin, np.arange(lin.batch), w)
        out = self._read_inputs(w)                                # p.u. loss per p.u. injection = MW per MVAr
        out[~lin.ok] = np.nan
        return out

    def voltage_rows(self, lin: Linearization, scenarios: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        """``[K, n_sgen]``: row ``outputs[k]`` (a position in ``bus_cols``) of ``d vm_pu / d q_mvar``
        in scenario ``scenarios[k]``: one adjoint solve per row. Rows of slack buses are 0, of
        buses out of service (or in a singular scenario) NaN."""
        scenarios = np.asarray(scenarios, dtype=np.int64)
        rows = self._out_row[np.asarray(outputs, dtype=np.int64)]
        w = np.zeros((scenarios.size, self._n_pq, 2))
        live = np.flatnonzero(rows >= 0)
        w[live, rows[live], 1] = 1.0
        self._solve_t(lin, scenarios, w)
        out = self._read_inputs(w) / self._base_mva
        out[rows == -2] = np.nan
        out[~lin.ok[scenarios]] = np.nan
        return out

    def gradient_rows(self, lin: Linearization, scenarios: np.ndarray, bus_cols: np.ndarray,
                      d_theta: np.ndarray, d_vm: np.ndarray) -> np.ndarray:
        """``[K, n_sgen]``: ``d f_k / d q_mvar`` of functions of the voltages given by their
        derivatives at a few buses: ``f_k`` in scenario ``scenarios[k]`` has ``d f_k / d θ`` and
        ``d f_k / d |V|`` equal to ``d_theta[k, e]`` and ``d_vm[k, e]`` at bus column
        ``bus_cols[k, e]`` (``pf.bus_index`` order; slack buses contribute nothing, they do not
        move). One adjoint solve per row — e.g. a branch current's row, for thermal limits."""
        scenarios = np.asarray(scenarios, dtype=np.int64)
        m = self._bus_rows
        rows = m[np.asarray(bus_cols, dtype=np.int64)]
        w = np.zeros((scenarios.size, self._n_pq, 2))
        k = np.repeat(np.arange(scenarios.size), rows.shape[1])
        r = rows.ravel()
        live = (r >= 0) & (r < self._n_pq)
        np.add.at(w[:, :, 0], (k[live], r[live]), np.asarray(d_theta).ravel()[live])
        np.add.at(w[:, :, 1], (k[live], r[live]), np.asarray(d_vm).ravel()[live])
        self._solve_t(lin, scenarios, w)
        out = self._read_inputs(w) / self._base_mva
        out[~lin.ok[scenarios]] = np.nan
        return out

    def voltage_change(self, lin: Linearization, dq_mvar: np.ndarray, scenarios: np.ndarray | None = None
                       ) -> np.ndarray:
        """``[K, n_bus_out]`` linearized change of ``vm_pu`` at ``bus_cols`` for reactive
        injections ``dq_mvar [K, n_sgen]`` (scenario ``scenarios[k]``, default k): one forward
        solve per row."""
        dq_mvar = np.atleast_2d(np.asarray(dq_mvar, dtype=np.float64))
        scenarios = np.arange(dq_mvar.shape[0]) if scenarios is None else np.asarray(scenarios, dtype=np.int64)
        x = np.zeros((dq_mvar.shape[0], self._n_pq, 2))
        live = np.flatnonzero(self._in_row >= 0)
        np.add.at(x[:, :, 1], (slice(None), self._in_row[live]), dq_mvar[:, live] / self._base_mva)
        sym = self._sym
        _block_solve_one(sym.l_ptr, sym.l_col, sym.u_ptr, sym.u_col, lin.blocks, lin.ok, scenarios, x)
        rows = self._out_row
        out = np.where(rows >= 0, x[:, np.maximum(rows, 0), 1], 0.0)
        out[:, rows == -2] = np.nan
        out[~lin.ok[scenarios]] = np.nan
        return out

    def _solve_t(self, lin: Linearization, scenarios: np.ndarray, w: np.ndarray) -> None:
        sym = self._sym
        _block_solve_t(sym.l_ptr, sym.l_col, sym.u_ptr, sym.u_col, lin.blocks, lin.ok, scenarios, w)

    def _read_inputs(self, w: np.ndarray) -> np.ndarray:
        """``[K, n_sgen]``: the reactive-power rows of adjoint solutions ``w [K, n_pq, 2]`` at the
        inputs (0 for inputs out of service or at a slack bus)."""
        rows = self._in_row
        return np.where(rows >= 0, w[:, np.maximum(rows, 0), 1], 0.0)

    def _linearize(self, v: np.ndarray) -> Linearization:
        b = v.shape[0]
        n_pq = self._n_pq
        vi = self._internal(v)                                   # [b, n_all]
        vm = np.abs(vi)
        cur = (self._y @ vi.T).T                                 # I = Y V

        # the polar Jacobian on Y's PQ pattern in 2×2 blocks, factorized in place
        sym = self._sym
        blocks = np.empty((b, sym.n_slots, 4))
        ok = np.ones(b, dtype=np.bool_)
        _jacobian_lu(np.ascontiguousarray(vi.real), np.ascontiguousarray(vi.imag), np.ascontiguousarray(cur.real),
                     np.ascontiguousarray(cur.imag), self._jr, self._jc, self._jy_re, self._jy_im, self._slot,
                     sym.l_ptr, sym.l_col, sym.upd_ptr, sym.upd_src, sym.upd_dst, blocks, ok)

        # losses: d P_slack − Σ 2 g |V| d|V| (p.u.), slack voltages fixed
        y_sv = vi[:, self._sr] * np.conj(self._sy * vi[:, self._sc])     # V_s conj(Y_sk V_k)
        pq = self._sc < n_pq
        c = np.zeros((b, n_pq, 2))
        c[:, :, 1] = -2.0 * self._gs[None, :n_pq] * vm[:, :n_pq]
        np.add.at(c[:, :, 0], (slice(None), self._sc[pq]), y_sv[:, pq].imag)
        np.add.at(c[:, :, 1], (slice(None), self._sc[pq]), y_sv[:, pq].real / vm[:, self._sc[pq]])
        return Linearization(blocks=blocks, ok=ok, loss_c=c)

    def _internal(self, v: np.ndarray) -> np.ndarray:
        """``[B, n_all]`` complex voltages in the solver's internal order."""
        vi = np.zeros((v.shape[0], self._y.shape[0]), dtype=np.complex128)
        rows = self._rows_with_bus
        vi[:, rows] = v[:, self._col_of_row[rows]]
        if self._aux.size:
            rhs = -(self._aux_coupling @ vi[:, self._aux_rest].T)
            vi[:, self._aux] = self._aux_lu.solve(np.ascontiguousarray(rhs)).T
        return vi


class _BlockLU:
    """The symbolic block LU of a sparse matrix in its given order (no pivoting), planned once.

    Entries of the factors are numbered ("slots"): the strictly lower entries of L row by row
    (``[0, n_l)``), then the n diagonal blocks of U, then the strictly upper entries of U row by
    row. For each strictly lower entry ``(i, k)`` the elimination subtracts ``l_ik · u_kj`` from
    entry ``(i, j)`` of row i for every ``j > k`` in row k of U: those (source, destination) slot
    pairs are listed in ``upd_src``/``upd_dst``, ``upd_ptr`` delimiting each lower entry's.
    """

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, n: int) -> None:
        import heapq

        lower: list[list[int]] = []
        upper: list[list[int]] = []
        for i in range(n):
            row = set(int(j) for j in indices[indptr[i]:indptr[i + 1]])
            row.add(i)
            heap = [j for j in row if j < i]
            heapq.heapify(heap)
            done: list[int] = []
            while heap:
                k = heapq.heappop(heap)
                done.append(k)
                for j in upper[k]:
                    if j not in row:
                        row.add(j)
                        if j < i:
                            heapq.heappush(heap, j)
            lower.append(done)
            upper.append(sorted(j for j in row if j > i))
        self.n = n
        self.l_ptr = np.concatenate([[0], np.cumsum([len(r) for r in lower])]).astype(np.int64)
        self.l_col = np.array([j for r in lower for j in r], dtype=np.int64)
        self.u_ptr = np.concatenate([[0], np.cumsum([len(r) for r in upper])]).astype(np.int64)
        self.u_col = np.array([j for r in upper for j in r], dtype=np.int64)
        self.n_l = int(self.l_ptr[-1])
        self.n_slots = self.n_l + n + int(self.u_ptr[-1])
        where = [dict() for _ in range(n)]
        for i in range(n):
            for p in range(self.l_ptr[i], self.l_ptr[i + 1]):
                where[i][int(self.l_col[p])] = p
            where[i][i] = self.n_l + i
            for p in range(self.u_ptr[i], self.u_ptr[i + 1]):
                where[i][int(self.u_col[p])] = self.n_l + n + p
        self._where = where
        src, dst, ptr = [], [], [0]
        for i in range(n):
            for k in lower[i]:
                for p in range(self.u_ptr[k], self.u_ptr[k + 1]):
                    src.append(self.n_l + n + p)
                    dst.append(where[i][int(self.u_col[p])])
                ptr.append(len(src))
        self.upd_ptr = np.array(ptr, dtype=np.int64)
        self.upd_src = np.array(src, dtype=np.int64)
        self.upd_dst = np.array(dst, dtype=np.int64)

    def slot_of(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Slots of the matrix entries ``(rows[m], cols[m])``."""
        return np.array([self._where[int(i)][int(j)] for i, j in zip(rows, cols)], dtype=np.int64)


def bus_impedance(pf, sgen_cols) -> np.ndarray:
    """``Z [k, k]`` (p.u., complex): the bus impedance matrix ``(Y_LL)⁻¹`` (slack buses removed)
    between the buses of the chosen sgens (``pf.sgen_index`` columns); rows and columns of an
    sgen out of service or at a slack bus are 0. One sparse factorization and k solves."""
    m = pf.internal_model()
    n_pq = m.n_pq
    rows = m.sgen_row[np.asarray(sgen_cols, dtype=np.int64)]
    live = np.flatnonzero((rows >= 0) & (rows < n_pq))
    z = np.zeros((len(rows), len(rows)), dtype=np.complex128)
    if not live.size:
        return z
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lu = spla.splu(m.ybus[:n_pq][:, :n_pq].tocsc(), permc_spec="NATURAL", diag_pivot_thresh=0.1,
                       options=dict(SymmetricMode=True))
    x = np.zeros((n_pq, live.size), dtype=np.complex128)
    x[lu.perm_r[rows[live]], np.arange(live.size)] = 1.0
    _substitute(*_csr_factors(lu), x)
    z[np.ix_(live, live)] = x[lu.perm_c[rows[live]]]
    return z


def _csr_factors(lu):
    """SuperLU's ``L`` and ``U`` as CSR parts for :func:`_substitute`.

    SuperLU's own solve takes milliseconds per right-hand side on a feeder of thousands of buses
    (its supernodal kernels suit dense fronts, not the unfilled factors of a radial net); the
    compiled substitution runs all right-hand sides at once at the cost of the factors' nonzeros.
    """
    low, up = lu.L.tocsr(), lu.U.tocsr()
    low.sort_indices()
    up.sort_indices()
    return (low.indptr.astype(np.int64), low.indices.astype(np.int64), low.data,
            up.indptr.astype(np.int64), up.indices.astype(np.int64), up.data)


@numba.njit(cache=True, nogil=True)
def _substitute(lp, lj, lx, up, uj, ux, x):
    """In place: ``x ← U⁻¹ L⁻¹ x`` for CSR triangular factors (diagonals stored); columns of ``x``
    are independent right-hand sides, the innermost (vectorized) loop."""
    n, k = x.shape
    for i in range(n):
        d = lx[lp[i]] * 0.0 + 1.0
        for p in range(lp[i], lp[i + 1]):
            j = lj[p]
            if j < i:
                a = lx[p]
                for c in range(k):
                    x[i, c] -= a * x[j, c]
            elif j == i:
                d = lx[p]
        if d != 1.0:
            for c in range(k):
                x[i, c] /= d
    for i in range(n - 1, -1, -1):
        d = ux[up[i]] * 0.0 + 1.0
        for p in range(up[i], up[i + 1]):
            j = uj[p]
            if j > i:
                a = ux[p]
                for c in range(k):
                    x[i, c] -= a * x[j, c]
            elif j == i:
                d = ux[p]
        for c in range(k):
            x[i, c] /= d


@numba.njit(parallel=True, cache=True, nogil=True)
def _jacobian_lu(vr, vi, ir, ii, jr, jc, yr, yi, slot, l_ptr, l_col, upd_ptr, upd_src, upd_dst, f, ok):
    """Each scenario's polar power-flow Jacobian, factorized in place.

    Entries (pandapower's ``dSbus_dV``, polar form) for ``Y_ik`` on the PQ pattern, with ``t =
    V_i conj(Y_ik V_k)``: ``dS_i/dθ_k = −j t (+ j S_i if i = k)``, ``dS_i/d|V_k| = t / |V_k|
    (+ S_i / |V_i| if i = k)``, ``S_i = V_i conj(I_i)``; the block of entry (i, k) is ``[[Re dS/dθ,
    Re dS/d|V|], [Im dS/dθ, Im dS/d|V|]]`` in slot ``slot[e]`` of :class:`_BlockLU`. Then a block LU
    without pivoting: L (unit diagonal) in the lower slots, U in the others, its diagonal blocks
    inverted. A scenario whose diagonal block becomes singular stops with ``ok[b] = False``."""
    n = l_ptr.shape[0] - 1
    n_l = l_ptr[n]
    for b in numba.prange(f.shape[0]):
        fb = f[b]
        fb[:, :] = 0.0
        for e in range(jr.shape[0]):
            i = jr[e]
            k = jc[e]
            ar = yr[e] * vr[b, k] - yi[e] * vi[b, k]          # Y_ik V_k
            ai = yr[e] * vi[b, k] + yi[e] * vr[b, k]
            tr = vr[b, i] * ar + vi[b, i] * ai                 # V_i conj(Y_ik V_k)
            ti = vi[b, i] * ar - vr[b, i] * ai
            vm_k = math.sqrt(vr[b, k] ** 2 + vi[b, k] ** 2)
            dar, dai = ti, -tr                                 # −j t
            dmr, dmi = tr / vm_k, ti / vm_k
            if i == k:
                sr = vr[b, i] * ir[b, i] + vi[b, i] * ii[b, i]   # S_i = V_i conj(I_i)
                si = vi[b, i] * ir[b, i] - vr[b, i] * ii[b, i]
                dar -= si
                dai += sr
                dmr += sr / vm_k
                dmi += si / vm_k
            p = slot[e]
            fb[p, 0] = dar
            fb[p, 1] = dmr
            fb[p, 2] = dai
            fb[p, 3] = dmi
        good = True
        for i in range(n):
            for p in range(l_ptr[i], l_ptr[i + 1]):
                d = n_l + l_col[p]                          # inverted diagonal block of row k
                a0, a1, a2, a3 = fb[p, 0], fb[p, 1], fb[p, 2], fb[p, 3]
                fb[p, 0] = a0 * fb[d, 0] + a1 * fb[d, 2]
                fb[p, 1] = a0 * fb[d, 1] + a1 * fb[d, 3]
                fb[p, 2] = a2 * fb[d, 0] + a3 * fb[d, 2]
                fb[p, 3] = a2 * fb[d, 1] + a3 * fb[d, 3]
                for q in range(upd_ptr[p], upd_ptr[p + 1]):
                    s = upd_src[q]
                    t = upd_dst[q]
                    fb[t, 0] -= fb[p, 0] * fb[s, 0] + fb[p, 1] * fb[s, 2]
                    fb[t, 1] -= fb[p, 0] * fb[s, 1] + fb[p, 1] * fb[s, 3]
                    fb[t, 2] -= fb[p, 2] * fb[s, 0] + fb[p, 3] * fb[s, 2]
                    fb[t, 3] -= fb[p, 2] * fb[s, 1] + fb[p, 3] * fb[s, 3]
            d = n_l + i
            a0, a1, a2, a3 = fb[d, 0], fb[d, 1], fb[d, 2], fb[d, 3]
            det = a0 * a3 - a1 * a2
            if not abs(det) > 1e-14 * (abs(a0) + abs(a1)) * (abs(a2) + abs(a3)):
                good = False
                break
            fb[d, 0] = a3 / det
            fb[d, 1] = -a1 / det
            fb[d, 2] = -a2 / det
            fb[d, 3] = a0 / det
        ok[b] = good


@numba.njit(parallel=True, cache=True, nogil=True)
def _block_solve(l_ptr, l_col, u_ptr, u_col, f, ok, rhs_row, scale, width, x):
    """``x[b] = f[b]⁻¹ e`` for the factors of :func:`_jacobian_lu`, with right-hand sides ``e`` that
    put ``scale`` in the second row of block ``rhs_row[c]`` (column c; none if −1). Work units
    are (scenario, ``width`` columns), so one scenario's columns spread over the cores too."""
    n = l_ptr.shape[0] - 1
    n_l = l_ptr[n]
    k_rhs = x.shape[3]
    n_chunks = (k_rhs + width - 1) // width
    for unit in numba.prange(f.shape[0] * n_chunks):
        b = unit // n_chunks
        c0 = (unit % n_chunks) * width
        c1 = min(c0 + width, k_rhs)
        if not ok[b]:
            continue
        fb = f[b]
        xb = x[b]
        for c in range(c0, c1):
            r = rhs_row[c]
            if r >= 0:
                xb[r, 1, c] = scale
        for i in range(n):                                  # forward: L y = e (unit diagonal)
            for p in range(l_ptr[i], l_ptr[i + 1]):
                k = l_col[p]
                m0, m1, m2, m3 = fb[p, 0], fb[p, 1], fb[p, 2], fb[p, 3]
                for c in range(c0, c1):
                    y0 = xb[k, 0, c]
                    y1 = xb[k, 1, c]
                    xb[i, 0, c] -= m0 * y0 + m1 * y1
                    xb[i, 1, c] -= m2 * y0 + m3 * y1
        for i in range(n - 1, -1, -1):                      # backward: U x = y
            for p in range(u_ptr[i], u_ptr[i + 1]):
                j = u_col[p]
                s = n_l + n + p
                m0, m1, m2, m3 = fb[s, 0], fb[s, 1], fb[s, 2], fb[s, 3]
                for c in range(c0, c1):
                    y0 = xb[j, 0, c]
                    y1 = xb[j, 1, c]
                    xb[i, 0, c] -= m0 * y0 + m1 * y1
                    xb[i, 1, c] -= m2 * y0 + m3 * y1
            d = n_l + i
            m0, m1, m2, m3 = fb[d, 0], fb[d, 1], fb[d, 2], fb[d, 3]
            for c in range(c0, c1):
                y0 = xb[i, 0, c]
                y1 = xb[i, 1, c]
                xb[i, 0, c] = m0 * y0 + m1 * y1
                xb[i, 1, c] = m2 * y0 + m3 * y1


@numba.njit(parallel=True, cache=True, nogil=True)
def _block_solve_one(l_ptr, l_col, u_ptr, u_col, f, ok, scen, x):
    """In place ``x[k] ← f[scen[k]]⁻¹ x[k]`` (one right-hand side ``[n, 2]`` each) for the factors of
    :func:`_jacobian_lu`; right-hand sides of singular scenarios are left as they are."""
    n = l_ptr.shape[0] - 1
    n_l = l_ptr[n]
    for k in numba.prange(x.shape[0]):
        b = scen[k]
        if not ok[b]:
            continue
        fb = f[b]
        xb = x[k]
        for i in range(n):                                  # forward: L y = e (unit diagonal)
            s0 = xb[i, 0]
            s1 = xb[i, 1]
            for p in range(l_ptr[i], l_ptr[i + 1]):
                j = l_col[p]
                s0 -= fb[p, 0] * xb[j, 0] + fb[p, 1] * xb[j, 1]
                s1 -= fb[p, 2] * xb[j, 0] + fb[p, 3] * xb[j, 1]
            xb[i, 0] = s0
            xb[i, 1] = s1
        for i in range(n - 1, -1, -1):                      # backward: U x = y
            s0 = xb[i, 0]
            s1 = xb[i, 1]
            for p in range(u_ptr[i], u_ptr[i + 1]):
                j = u_col[p]
                q = n_l + n + p
                s0 -= fb[q, 0] * xb[j, 0] + fb[q, 1] * xb[j, 1]
                s1 -= fb[q, 2] * xb[j, 0] + fb[q, 3] * xb[j, 1]
            d = n_l + i
            xb[i, 0] = fb[d, 0] * s0 + fb[d, 1] * s1
            xb[i, 1] = fb[d, 2] * s0 + fb[d, 3] * s1


@numba.njit(parallel=True, cache=True, nogil=True)
def _block_solve_t(l_ptr, l_col, u_ptr, u_col, f, ok, scen, x):
    """In place ``x[k] ← f[scen[k]]⁻ᵀ x[k]`` (the adjoint solve: ``Jᵀ = Uᵀ Lᵀ``, blocks transposed):
    first ``Uᵀ z = x`` from the top, then ``Lᵀ w = z`` from the bottom, both pushing each finished
    block into the rows that still need it."""
    n = l_ptr.shape[0] - 1
    n_l = l_ptr[n]
    for k in numba.prange(x.shape[0]):
        b = scen[k]
        if not ok[b]:
            continue
        fb = f[b]
        xb = x[k]
        for i in range(n):                                  # Uᵀ z = x: diagonal block stored inverted
            d = n_l + i
            s0 = xb[i, 0]
            s1 = xb[i, 1]
            z0 = fb[d, 0] * s0 + fb[d, 2] * s1
            z1 = fb[d, 1] * s0 + fb[d, 3] * s1
            xb[i, 0] = z0
            xb[i, 1] = z1
            for p in range(u_ptr[i], u_ptr[i + 1]):
                j = u_col[p]
                q = n_l + n + p
                xb[j, 0] -= fb[q, 0] * z0 + fb[q, 2] * z1
                xb[j, 1] -= fb[q, 1] * z0 + fb[q, 3] * z1
        for i in range(n - 1, -1, -1):                      # Lᵀ w = z (unit diagonal)
            w0 = xb[i, 0]
            w1 = xb[i, 1]
            for p in range(l_ptr[i], l_ptr[i + 1]):
                j = l_col[p]
                xb[j, 0] -= fb[p, 0] * w0 + fb[p, 2] * w1
                xb[j, 1] -= fb[p, 1] * w0 + fb[p, 3] * w1


def agent_loss_sensitivity(feeder, *, split: str = "train", step_mva: float = 0.01) -> np.ndarray:
    """``[N]`` (``feeder.agents`` order): ``d loss_mw / d q_mvar`` of each agent's reactive power
    (its inverters in proportion to their ratings; positive: injecting raises the losses) at the
    feeder's mean daytime operating point of ``split``'s days (loads, PV and the other units'
    output averaged over the steps whose PV produces), tap changer at the net's position.

    What reactive power costs an agent in losses on a typical sunny step: a property of the
    network and its usual loading that a utility knows for every inverter without a day of the
    validation or test split. One batched solve of N + 1 scenarios, a forward difference of
    ``step_mva`` of each agent's rating."""
    prof = feeder.profiles
    steps = np.concatenate([prof.day_steps(int(d)) for d in feeder.days(split)])
    steps = steps[np.asarray(prof.pv_p_mw[steps]).sum(axis=1) > 0]
    load_p, load_q, sgen_p = (np.asarray(a[steps], dtype=np.float64).mean(axis=0)
                              for a in (prof.load_p_mw, prof.load_q_mvar, prof.sgen_p_mw))
    agents = list(feeder.agents)
    inv = feeder.inverters
    col = feeder.net.sgen.index.get_indexer(inv.index)                    # sgen column of each inverter
    agent_of = np.asarray([agents.index(a) for a in inv["agent"]])
    rating = np.zeros(len(agents))
    np.add.at(rating, agent_of, inv["s_max_mva"].to_numpy(float))
    dq = np.zeros((len(agents) + 1, len(feeder.net.sgen)))
    dq[agent_of + 1, col] = step_mva * inv["s_max_mva"].to_numpy(float)
    b = dq.shape[0]
    res = feeder.power_flow().solve(np.tile(load_p, (b, 1)), np.tile(load_q, (b, 1)), np.tile(sgen_p, (b, 1)), dq)
    loss = np.asarray(res.loss_mw, dtype=np.float64)
    return (loss[1:] - loss[0]) / (step_mva * np.maximum(rating, 1e-12))
