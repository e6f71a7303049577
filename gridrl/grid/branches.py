"""Branch quantities of solved power flows: the split of losses and thermal loading.

:class:`BranchFlows` is compiled once from the branch table of a
:class:`~gridrl.grid.powerflow.BatchedPowerFlow` (pandapower's own branch model: the same ``Y``
the solver uses) and, from the complex voltages of a batch of solutions (``PowerFlowResult.v``,
with the slack held at ``ρ·V_s`` behind a regulated transformer, see
:mod:`gridrl.grid.tapchanger`), returns per scenario:

- ``trafo_load_loss_mw``: the transformers' series (copper) losses, ``Re(y_s)·|V_f/t − V_t|²``;
- ``trafo_noload_loss_mw``: their magnetizing (iron) losses, the rest of what flows into a
  transformer branch; nearly constant (∝ |V|²): no controller can remove it;
- ``line_loss_mw`` (computed by the caller as total minus transformers): lines and every other
  branch;
- ``loading_pct [B, n_rated]``: as pandapower's ``res_line.loading_percent`` (the larger end
  current over ``max_i_ka·df·parallel``) and ``res_trafo.loading_percent`` (the larger of
  ``i·vn·√3/sn_mva`` over both windings, over ``parallel·df``), for the branches that have a
  rating. pandapower's converters write ``max_i_ka = 99999`` for lines without one (the
  MATPOWER and Baran–Wu cases): those, and lines with no or a non-positive ``max_i_ka``, are
  unrated. A net without any rated branch reports NaN loadings; results say "–" rather than
  invent a rating.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BranchFlows", "UNRATED_MAX_I_KA"]

UNRATED_MAX_I_KA = 9999.0  # a line rating at or above this (kA) is a converter's placeholder


class BranchFlows:
    """Loss split and loadings of one compiled feeder (see the module docstring)."""

    def __init__(self, pf, net) -> None:
        from pandapower.pypower.idx_brch import BR_R, BR_STATUS, BR_X, F_BUS, SHIFT, T_BUS, TAP
        from pandapower.pypower.makeYbus import branch_vectors

        model = pf.branch_model
        br = model.branch
        base = model.base_mva
        ytt, yff, yft, ytf = branch_vectors(br, br.shape[0])
        rep = np.full(model.n_ppc_bus, -1)
        rep[model.bus_lookup[pf.bus_index]] = np.arange(len(pf.bus_index))
        fp = rep[br[:, F_BUS].real.astype(np.int64)]
        tp = rep[br[:, T_BUS].real.astype(np.int64)]
        live = (br[:, BR_STATUS].real > 0) & (fp >= 0) & (tp >= 0)
        ranges = model.element_ranges
        vn = net.bus.vn_kv.to_numpy(dtype=np.float64)
        kA = base / np.sqrt(3.0)  # |I| p.u. × this / vn_kv = kA

        rows, kind, elem, i_max_f, i_max_t = [], [], [], [], []
        if "line" in ranges and len(net.line):
            a, _ = ranges["line"]
            line = net.line
            i_max = (line.max_i_ka * line.df * line.parallel).to_numpy(dtype=np.float64)
            rated = (line.max_i_ka.to_numpy(dtype=np.float64) < UNRATED_MAX_I_KA) & (i_max > 0)
            for j in np.flatnonzero(rated & live[a:a + len(line)]):
                rows.append(a + j), kind.append("line"), elem.append(int(line.index[j]))
                i_max_f.append(i_max[j] * vn[fp[a + j]] / kA), i_max_t.append(i_max[j] * vn[tp[a + j]] / kA)
        self._trafo_rows = np.zeros(0, dtype=np.int64)
        self._tap_rows = np.zeros(0, dtype=bool)
        if "trafo" in ranges and len(net.trafo):
            a, _ = ranges["trafo"]
            tr = net.trafo
            on = np.flatnonzero(live[a:a + len(tr)])
            self._trafo_rows = a + on
            regulated = set(pf.tap_changer.trafo_index) if pf.tap_changer.kind == "transformer" else set()
            self._tap_rows = np.array([int(tr.index[j]) in regulated for j in on], dtype=bool)
            # rated current per winding, p.u. of the system base at that winding's bus
            s_max = (tr.sn_mva * tr.parallel * tr.df).to_numpy(dtype=np.float64)
            for j in on:
                rows.append(a + j), kind.append("trafo"), elem.append(int(tr.index[j]))
                i_max_f.append(s_max[j] / tr.vn_hv_kv.iloc[j] * vn[fp[a + j]] / base)
                i_max_t.append(s_max[j] / tr.vn_lv_kv.iloc[j] * vn[tp[a + j]] / base)
        rows = np.asarray(rows, dtype=np.int64)
        self.rated_kind = np.asarray(kind, dtype=object)
        self.rated_element = np.asarray(elem, dtype=np.int64)
        self.n_rated = len(rows)
        self.has_ratings = bool((self.rated_kind == "line").any()) or bool(len(net.trafo) and len(self._trafo_rows))
        self._r_f, self._r_t = fp[rows], tp[rows]
        self._r_y = (yff[rows], yft[rows], ytf[rows], ytt[rows])
        self._r_inv_max = (1.0 / np.asarray(i_max_f, dtype=np.float64), 1.0 / np.asarray(i_max_t, dtype=np.float64))
        # HV-side currents of the regulated transformers scale with ρ (see gridrl.grid.tapchanger)
        tap_of_rated = np.zeros(len(rows), dtype=bool)
        if len(self._trafo_rows):
            pos = {int(r): k for k, r in enumerate(rows)}
            for r, tap in zip(self._trafo_rows, self._tap_rows):
                tap_of_rated[pos[int(r)]] = tap
        self._r_tap = tap_of_rated

        t_rows = self._trafo_rows
        self._t_f, self._t_t = fp[t_rows], tp[t_rows]
        self._t_y = (yff[t_rows], yft[t_rows], ytf[t_rows], ytt[t_rows])
        tap = br[t_rows, TAP].real
        tap = np.where(tap == 0, 1.0, tap) * np.exp(1j * np.deg2rad(br[t_rows, SHIFT].real))
        self._t_inv_tap = 1.0 / tap
        self._t_gs = (1.0 / (br[t_rows, BR_R].real + 1j * br[t_rows, BR_X].real)).real
        self._base = base

    @property
    def has_trafos(self) -> bool:
        return len(self._trafo_rows) > 0

    def transformer_losses(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(load_loss_mw, noload_loss_mw)``, each ``[B]``, from voltages ``v [B, n_bus]``."""
        if not self.has_trafos:
            z = np.zeros(v.shape[0])
            return z, z.copy()
        vf, vt = v[:, self._t_f], v[:, self._t_t]
        yff, yft, ytf, ytt = self._t_y
        i_f = yff * vf + yft * vt
        i_t = ytf * vf + ytt * vt
        total = (vf * np.conj(i_f) + vt * np.conj(i_t)).real
        dv = vf * self._t_inv_tap - vt
        series = self._t_gs * (dv.real ** 2 + dv.imag ** 2)
        return series.sum(axis=1) * self._base, (total - series).sum(axis=1) * self._base

    def loading_pct(self, v: np.ndarray, rho: np.ndarray | None = None) -> np.ndarray:
        """``[B, n_rated]`` loading (%) of the rated branches (order: :attr:`rated_kind`,
        :attr:`rated_element`); ``rho [B]``: the tap changer's slack factor of each scenario."""
        vf, vt = v[:, self._r_f], v[:, self._r_t]
        yff, yft, ytf, ytt = self._r_y
        i_f = np.abs(yff * vf + yft * vt)
        i_t = np.abs(ytf * vf + ytt * vt)
        if rho is not None and self._r_tap.any():
            i_f[:, self._r_tap] *= np.asarray(rho, dtype=np.float64)[:, None]
        return 100.0 * np.maximum(i_f * self._r_inv_max[0], i_t * self._r_inv_max[1])

    def loading_derivatives(self, v: np.ndarray, branches: np.ndarray, rho: float = 1.0
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Derivatives of the loadings of rated branches ``branches [K]`` (positions in
        :attr:`rated_element`) at one solved point ``v [n_bus]``: ``bus_cols [K, 2]`` (from, to),
        ``d_theta [K, 2]`` and ``d_vm [K, 2]`` (% per rad, % per p.u.), taken at the end whose
        loading is the larger (the one pandapower reports)."""
        k = np.asarray(branches, dtype=np.int64)
        f, t = self._r_f[k], self._r_t[k]
        vf, vt = v[f], v[t]
        yff, yft, ytf, ytt = (y[k] for y in self._r_y)
        i_f = yff * vf + yft * vt
        i_t = ytf * vf + ytt * vt
        sf = 100.0 * self._r_inv_max[0][k] * np.where(self._r_tap[k], rho, 1.0)
        st = 100.0 * self._r_inv_max[1][k]
        from_end = np.abs(i_f) * sf >= np.abs(i_t) * st
        cur = np.where(from_end, i_f, i_t)
        a = np.where(from_end, yff, ytf)           # dI/dV_f
        b = np.where(from_end, yft, ytt)           # dI/dV_t
        u = np.conj(cur) / np.maximum(np.abs(cur), 1e-300) * np.where(from_end, sf, st)
        d_theta = np.stack([(u * a * 1j * vf).real, (u * b * 1j * vt).real], axis=1)
        d_vm = np.stack([(u * a * vf / np.abs(vf)).real, (u * b * vt / np.abs(vt)).real], axis=1)
        return np.stack([f, t], axis=1), d_theta, d_vm
