"""Generating units by type: which static generators of a net are PV, wind, hydro, biomass or storage.

A feeder's agents are PV inverters by default; every other unit runs at its own profile and
power factor (see :class:`gridrl.grid.spec.UnitsSpec`). The type of a static generator is read
from the net itself, in this order:

1. the spec's own table ``[units] types = {"<sgen type>" = "wind"}`` (a user's net with its own
   vocabulary);
2. the sgen's ``type`` column, in pandapower's and SimBench's words: ``PV``, ``PV_MV`` → pv;
   ``WP``, ``Wind_MV``, ``Wind_HV`` → wind; ``Hydro_MV`` → hydro; ``Biomass_MV`` → biomass;
   ``Battery``, ``Storage`` … → storage (case and separators are ignored);
3. the name of its SimBench profile: ``PV1``–``PV8`` → pv, ``WP1``–``WP12`` → wind, ``BM1``–``BM5``
   → biomass, ``Hydro1``–``Hydro3`` → hydro; ``lv_rural1`` … ``lv_urban6`` → pv. The last are the
   aggregated generation of the LV grids under an MV bus (SimBench's sgen type ``lv_RES``); the
   LV grids of SimBench hold PV only, and these profiles are PV-shaped: zero from dusk to dawn
   in all of 2016, peak 0.574–0.603, correlation 0.85–0.99 with ``PV3``. ``mv_*`` and ``hv_*``
   profiles (aggregated MV/HV generation, wind included) are ``other``.
4. else ``other``.

Elements of ``net.storage`` are storage units too; the batched power flow holds them at their
nominal set-point, as pandapower does.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

__all__ = ["UNIT_TYPES", "unit_power_factor", "unit_table", "unit_type"]

#: Every unit type a feeder spec may name (``other``: a unit none of the rules recognise).
UNIT_TYPES = ("pv", "wind", "hydro", "biomass", "storage", "other")

_BY_TYPE = {
    "pv": "pv", "pvmv": "pv", "pvhv": "pv", "pvlv": "pv", "photovoltaic": "pv", "solar": "pv",
    "wp": "wind", "wind": "wind", "windmv": "wind", "windhv": "wind", "windpower": "wind",
    "hydro": "hydro", "hydromv": "hydro", "hydrohv": "hydro",
    "biomass": "biomass", "biomassmv": "biomass", "biomasshv": "biomass", "bm": "biomass",
    "storage": "storage", "battery": "storage", "bess": "storage", "ess": "storage",
}
_BY_PROFILE = ((re.compile(r"^pv\d+$"), "pv"), (re.compile(r"^wp\d+$"), "wind"),
               (re.compile(r"^bm\d+$"), "biomass"), (re.compile(r"^hydro\d+$"), "hydro"),
               (re.compile(r"^lv_(rural|semiurb|urban)\d+$"), "pv"))


def unit_type(sgen_type, profile=None, *, overrides: dict[str, str] | None = None) -> str:
    """The unit type (one of :data:`UNIT_TYPES`) of a static generator with pandapower ``type``
    ``sgen_type`` and SimBench profile name ``profile`` (see the module docstring)."""
    raw = "" if sgen_type is None or (isinstance(sgen_type, float) and np.isnan(sgen_type)) else str(sgen_type)
    if overrides and raw in overrides:
        return overrides[raw]
    key = re.sub(r"[^a-z]", "", raw.lower())
    if key in _BY_TYPE:
        return _BY_TYPE[key]
    prof = "" if profile is None or (isinstance(profile, float) and np.isnan(profile)) else str(profile).lower()
    for pattern, kind in _BY_PROFILE:
        if pattern.match(prof):
            return kind
    return "other"


def unit_table(net, *, overrides: dict[str, str] | None = None, agents: pd.Index | None = None) -> pd.DataFrame:
    """Every in-service generating unit of ``net``: its element (``sgen`` or ``storage``), index,
    bus, ``unit_type``, rated ``p_mw`` and ``q_mvar`` (generator convention; the power factor they
    run at), and whether it is an agent's inverter (sgen indices in ``agents``)."""
    rows = []
    sgen = net.sgen[net.sgen.in_service]
    prof = sgen["profile"] if "profile" in sgen else pd.Series(None, index=sgen.index, dtype=object)
    for i, r in sgen.iterrows():
        rows.append({"element": "sgen", "index": int(i), "bus": int(r.bus),
                     "unit_type": unit_type(r.get("type"), prof.at[i], overrides=overrides),
                     "p_mw": float(r.p_mw) * float(r.get("scaling", 1.0)), "q_mvar": float(r.q_mvar),
                     "agent": agents is not None and i in agents})
    if "storage" in net and len(net.storage):
        for i, r in net.storage[net.storage.in_service].iterrows():
            rating = float(r.get("sn_mva", np.nan))
            rows.append({"element": "storage", "index": int(i), "bus": int(r.bus), "unit_type": "storage",
                         "p_mw": rating if rating > 0 else abs(float(r.p_mw)), "q_mvar": float(r.q_mvar),
                         "agent": False})
    return pd.DataFrame(rows, columns=["element", "index", "bus", "unit_type", "p_mw", "q_mvar", "agent"])


def unit_power_factor(sgen: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """How a unit that is not an agent sets its reactive power: ``q = q_fixed + p · q_per_mw``,
    each ``[n_sgen]`` in ``sgen``'s row order. A unit runs at the power factor of its nominal
    ``p_mw`` and ``q_mvar`` (``q_per_mw = q_mvar / p_mw``, generator convention: negative absorbs),
    so its reactive power follows its profile; one with no nominal active power keeps its
    ``q_mvar``."""
    p = sgen["p_mw"].to_numpy(dtype=np.float64)
    q = sgen["q_mvar"].to_numpy(dtype=np.float64)
    has_p = p != 0.0
    q_per_mw = np.divide(q, p, out=np.zeros_like(q), where=has_p)
    return np.where(has_p, 0.0, q), q_per_mw
