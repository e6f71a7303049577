"""The feeder's on-load tap changer: which transformer, its tap range, and what a tap does.

Every real distribution substation regulates its busbar voltage with an on-load tap changer
(OLTC) on the HV/MV transformer. :func:`find_tap_changer` finds it in a pandapower net: the
in-service two-winding transformer(s) whose HV side sits on the slack (``ext_grid``) bus, after
pandapower fuses buses joined by closed bus-bus switches. SimBench's substations have two such
transformers in parallel (mv-rural, mv-urban: bus 0 and bus 1 are one busbar); they are a
master-follower pair and always share one tap position. A feeder without one (the IEEE cases,
whose source is the feeder's first bus) can be given an ideal step-voltage regulator at the
source instead (:func:`source_regulator`).

What a tap does. pandapower models a ratio tap on the HV winding as the ideal ratio
``t = 1 + (tap_pos − tap_neutral)·tap_step_percent/100`` on the branch's HV end (on the LV
winding, its inverse). When the slack bus connects to the network only through the regulated
transformers, moving the tap from the position the solver was compiled at (``t0``) to ``t`` is
*exactly* the same as keeping ``t0`` and scaling the slack voltage by ``ρ = t0/t``: the branch
current on the MV side and the power through the transformer (and so its losses) are those of
the real tap; only the HV-side current is scaled by ``1/ρ``. :meth:`TapChanger.ratio` gives
``ρ`` for any tap position; :class:`~gridrl.grid.powerflow.BatchedPowerFlow` applies it per
scenario without recompiling anything. For the ideal source regulator ``ρ`` is the regulator's
ratio itself (``1 + (tap_pos − tap_neutral)·step/100``), and the source bus is on its load side.

Values missing from the net are filled with documented standard values:
:data:`STANDARD_OLTC` for transformers (±9 steps of 1.5 %: pandapower's standard HV/MV types
``25 MVA 110/20 kV``, ``63 MVA 110/10 kV`` … and SimBench's own HV/MV transformers), and
:data:`STANDARD_REGULATOR` for the source regulator (±10 % in 32 steps of 0.625 %, the
standard range of single-phase step-voltage regulators in IEEE Std C57.15).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

__all__ = ["TapChanger", "find_tap_changer", "source_regulator", "STANDARD_OLTC", "STANDARD_REGULATOR"]

# tap_min, tap_max, tap_neutral, tap_step_percent
STANDARD_OLTC = {"tap_min": -9, "tap_max": 9, "tap_neutral": 0, "tap_step_percent": 1.5}
STANDARD_REGULATOR = {"tap_min": -16, "tap_max": 16, "tap_neutral": 0, "tap_step_percent": 0.625}


@dataclass(frozen=True)
class TapChanger:
    """One tap changer of a feeder (for parallel transformers: the shared one).

    kind: ``"transformer"`` (an OLTC of the substation transformer(s) ``trafo_index``) or
        ``"regulator"`` (an ideal step-voltage regulator at the source bus).
    trafo_index: pandapower indices of the regulated transformers (empty for a regulator).
    bus: the regulated bus (pandapower index): the first transformer's LV bus (SimBench's
        substations with two busbars: busbar 1), or the source bus.
    tap_min, tap_max, tap_neutral: the tap range (integers); tap_pos0: the position in the net,
        the one the power flow is compiled at.
    tap_step_percent: voltage change per tap step, % of the winding's nominal voltage.
    side: the winding that carries the taps (``"hv"`` or ``"lv"``; ``"source"`` for a regulator).
    filled: names of the values taken from the standard because the net lacks them.
    """

    kind: Literal["transformer", "regulator"]
    trafo_index: tuple[int, ...]
    bus: int
    tap_min: int
    tap_max: int
    tap_neutral: int
    tap_pos0: int
    tap_step_percent: float
    side: Literal["hv", "lv", "source"]
    filled: tuple[str, ...] = ()

    def _t(self, tap_pos) -> np.ndarray:
        return 1.0 + (np.asarray(tap_pos, dtype=np.float64) - self.tap_neutral) * self.tap_step_percent / 100.0

    def ratio(self, tap_pos) -> np.ndarray:
        """``ρ``: the factor on the slack voltage that reproduces tap position(s) ``tap_pos``
        with the solver compiled at :attr:`tap_pos0` (1 at ``tap_pos0``)."""
        t, t0 = self._t(tap_pos), self._t(self.tap_pos0)
        if self.side == "hv":
            return t0 / t
        return t / t0  # LV-side taps and the source regulator raise the voltage with the tap

    @property
    def step_pu(self) -> float:
        """Approximate change of the regulated bus's voltage per tap step (p.u., > 0)."""
        return self.tap_step_percent / 100.0

    @property
    def raise_sign(self) -> int:
        """+1 when a higher tap raises the regulated voltage, −1 when it lowers it (HV taps)."""
        return -1 if self.side == "hv" else 1

    def describe(self) -> str:
        what = (f"transformer(s) {', '.join(map(str, self.trafo_index))}" if self.kind == "transformer"
                else "ideal source regulator")
        std = f"; standard values for {', '.join(self.filled)}" if self.filled else ""
        return (f"{what} at bus {self.bus}: taps {self.tap_min}…{self.tap_max} of "
                f"{self.tap_step_percent:g} % ({self.side} side), neutral {self.tap_neutral}, "
                f"in the net at {self.tap_pos0}{std}")


def _value(row, name: str, filled: list[str]):
    """``row[name]``, or the standard value (noted in ``filled``) where the net leaves it empty."""
    x = row.get(name)
    if x is None or pd.isna(x):
        filled.append(name)
        return STANDARD_OLTC[name]
    return x


def find_tap_changer(net, bus_lookup: np.ndarray, slack_ppc: np.ndarray) -> TapChanger | None:
    """The substation OLTC of ``net``, or None.

    bus_lookup: pandapower bus → ppc bus (``net._pd2ppc_lookups["bus"]`` after a power flow);
    slack_ppc: the ppc buses of the slack(s). A candidate is an in-service two-winding
    transformer whose HV bus is a slack bus. Candidates must agree on their tap range, step,
    side and position (a master-follower pair); otherwise ``ValueError`` says which differ.
    Phase-shifting taps and tap-dependent impedances are refused (``NotImplementedError``).
    """
    trafo = net.trafo
    if not len(trafo):
        return None
    hv_ppc = bus_lookup[trafo.hv_bus.to_numpy(dtype=np.int64)]
    cand = trafo[trafo.in_service.to_numpy(dtype=bool) & np.isin(hv_ppc, slack_ppc)]
    if not len(cand):
        return None
    specs = []
    for idx, row in cand.iterrows():
        filled: list[str] = []
        step_deg = row.get("tap_step_degree")
        if step_deg is not None and not pd.isna(step_deg) and step_deg != 0:
            raise NotImplementedError(f"transformer {idx} has a phase-shifting tap (tap_step_degree "
                                      f"{step_deg}); the tap changer models ratio taps only")
        dep = row.get("tap_dependency_table")
        if dep is not None and not pd.isna(dep) and bool(dep):
            raise NotImplementedError(f"transformer {idx} has tap-dependent impedances "
                                      "(tap_dependency_table); the tap changer models constant impedance")
        side = row.get("tap_side")
        if not isinstance(side, str) or side not in ("hv", "lv"):
            side = "hv"
            filled.append("tap_side")
        neutral = int(_value(row, "tap_neutral", filled))
        pos = row.get("tap_pos")
        pos = neutral if pos is None or pd.isna(pos) else int(round(pos))
        specs.append(dict(tap_min=int(_value(row, "tap_min", filled)), tap_max=int(_value(row, "tap_max", filled)),
                          tap_neutral=neutral, tap_pos0=pos,
                          tap_step_percent=float(_value(row, "tap_step_percent", filled)), side=side,
                          filled=tuple(filled), bus=int(row.lv_bus)))
    first = specs[0]
    for idx, s in zip(cand.index[1:], specs[1:]):
        diff = [k for k in ("tap_min", "tap_max", "tap_neutral", "tap_pos0", "tap_step_percent", "side")
                if s[k] != first[k]]
        if diff:
            raise ValueError(f"substation transformers {cand.index[0]} and {idx} are in parallel but differ in "
                             f"{', '.join(diff)}; give them the same tap changer (they move as one)")
    return TapChanger(kind="transformer", trafo_index=tuple(int(i) for i in cand.index), **first)


def source_regulator(net) -> TapChanger:
    """An ideal step-voltage regulator at the source bus (the first in-service ext_grid's bus)
    with :data:`STANDARD_REGULATOR`'s range; at its neutral tap it changes nothing."""
    eg = net.ext_grid[net.ext_grid.in_service]
    s = STANDARD_REGULATOR
    return TapChanger(kind="regulator", trafo_index=(), bus=int(eg.bus.iloc[0]), tap_min=s["tap_min"],
                      tap_max=s["tap_max"], tap_neutral=s["tap_neutral"], tap_pos0=s["tap_neutral"],
                      tap_step_percent=s["tap_step_percent"], side="source")
