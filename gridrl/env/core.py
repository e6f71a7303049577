"""The batched voltage-control environment: B scenarios × N agents stepped together, in torch.

One step of scenario b at profile time t:

1. loads and PV output of time t are set from the feeder's profiles (interpolated when the
   step is finer than the native 15 minutes), times the config's ``load_scale`` and
   ``pv_scale``;
2. each agent's action ``a ∈ [-1, 1]`` (clipped) sets the reactive power of *each* of its
   inverters to ``q_mvar = a · q_avail_mvar`` with ``q_avail_mvar = sqrt(s_max_mva² − p_mw²)``
   (:func:`gridrl.grid.inverters.q_avail_mvar`; 0 at night when the inverters have no
   ``q_at_night`` capability; an agent with several inverters drives them all with the same
   ``a``; an inverter that is out stays at 0);
3. the power flow of time t is solved for all scenarios at once, warm-started from the
   previous step's solution;
4. local rewards and global metrics of *that* solution are returned, with the observation of
   the next interval (see "What an agent knows" below);
5. the substation's tap changer, if the feeder has one (see below), reacts to that solution.

The tap changer. mv-rural, mv-urban and mvlv-rural have an HV/MV transformer at the slack
with an on-load tap changer (:mod:`gridrl.grid.tapchanger`); an IEEE feeder gets an ideal
source regulator with ``EnvConfig.source_regulator``. With ``tap_control = "avr"`` (the
default) an automatic voltage regulator holds the transformer's MV busbar at ``avr_v_set_pu``
± ``avr_deadband_pu``: after each solved step it compares the busbar's voltage with the band and,
once the voltage has been outside for ``avr_delay_steps`` consecutive steps, moves the tap one
step toward the setpoint for the *next* step. The tap position is therefore part of the
environment's state, per scenario: it starts each episode where the AVR settles under the
pre-episode operating point, it is in ``info["tap_pos"]``, in ``pending()`` and used by
``peek`` (so droop's fixed point and the OPF see the tap the step will have: for them it is
given, not a decision), and its moves count as ``tap_operations``. The agents' observations
do not include it: an inverter does not see the substation's tap, only its effect on the
voltages it measures. ``tap_control = "fixed"`` leaves the tap where the net puts it.

What an agent knows when it acts (``EnvConfig.observation``). By default (``"measured"``) an
observation is a measurement at the start of the interval about to be acted on: interval t+1's
loads and PV with the set-points of interval t still in force (each inverter holds its
``q_mvar``, clipped to its new headroom), solved as one extra batched power flow per step. The
agent reads its own buses' voltages, P and Q and its inverters' available power *now*; nothing
from the future unless the opt-in oracle forecast (``forecast_steps``) is asked for. With
``"previous_step"`` the observation is the solved interval t itself (one step old), as runs
trained before the measured model saw it.

Sign conventions are pandapower's: inverter (sgen) ``q_mvar > 0`` injects reactive power and
raises voltage; loads consume positive ``p_mw``/``q_mvar``. A bus's net ``p_mw``/``q_mvar`` in
observations is generation minus consumption at that bus (injection positive).

Episodes are explicit: a finished scenario (end of its episode, or a power flow that did not
converge) reports ``done`` and stays frozen — reward 0, observation repeated,
``info["active"]`` False — until :meth:`VoltageControlEnv.reset_done` starts a new episode in
it. Nothing in ``step`` raises for physics; a scenario whose power flow diverges ends with
``-divergence_penalty`` for every agent and ``info["converged"]`` False (its observation
repeats the last valid measurement, its per-step metrics are NaN) while the other scenarios go
on. The observation returned by ``reset`` is the feeder at the start of the episode's first
interval with every inverter at q = 0 (``"previous_step"``: the interval before it).

Every tensor that a public method returns is the caller's own: no later call writes into it,
and no two returned tensors share memory, so rollouts can be stored without cloning.

Randomness (day draws, start hours, outages, sensor noise, message dropout, forecast noise,
randomised operating points)
comes from separate generators spawned from ``seed``: the same seed and the same calls give the
same numbers bit for bit, and switching one fault on does not change the others' draws.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import fields

import numpy as np
import torch

from gridrl.env.config import EnvConfig
from gridrl.env.rewards import barrier
from gridrl.errors import GridrlError
from gridrl.grid.branches import BranchFlows
from gridrl.grid.inverters import q_avail_mvar
from gridrl.grid.units import unit_power_factor
from gridrl.threads import apply_torch

# per-step info entries a frozen (finished) scenario fills with NaN / False: shape, kind
_INFO_LIKE = {"converged": ("b", "bool"), "controllable": ("b", "bool"),
              "out_of_band_share": ("b", "f"), "dv_mean_pu": ("b", "f"), "dv_max_pu": ("b", "f"),
              "loss_mw": ("b", "f"), "q_abs_mvar": ("b", "f"), "vm_pu": ("bus", "f"),
              "q_mvar": ("inv", "f"), "p_mw": ("inv", "f"), "q_avail_mvar": ("inv", "f"),
              "zone_loss_mw": ("bn", "f"), "reward_voltage": ("bn", "f"),
              "reward_loss": ("bn", "f"), "reward_q": ("bn", "f"), "tap_pos": ("b", "f"),
              "line_loss_mw": ("b", "f"), "trafo_load_loss_mw": ("b", "f"),
              "trafo_noload_loss_mw": ("b", "f"), "max_loading_pct": ("b", "f"),
              "overloaded_branches": ("b", "f")}

_EPISODE_KEYS = ("steps", "controllable_rate", "energy_loss_mwh", "violation_bus_hours",
                 "q_energy_mvarh", "return", "diverged", "day", "line_loss_mwh", "trafo_load_loss_mwh",
                 "trafo_noload_loss_mwh", "overload_branch_hours", "max_loading_pct", "tap_operations")


def _concat_results(parts: list):
    """One power-flow result of a batch from the results of its chunks (torch), in order."""
    return type(parts[0])(**{f.name: None if getattr(parts[0], f.name) is None else
                             torch.cat([getattr(p, f.name) for p in parts]) for f in fields(parts[0])})


class EnvError(GridrlError, ValueError):
    """Input the environment cannot take: a bad split or day list, actions of the wrong shape or
    with NaN."""


class VoltageControlEnv:
    """B independent voltage-control episodes on one feeder, stepped together.

    Build with :func:`gridrl.env.make_env`. Agents are ``feeder.agents`` (order kept); the
    agent graph is ``adjacency`` / ``hop_distance``.

    ``chunk`` (C scenarios, default None: all B at once): the physics of every step, reset and
    peek — the power flows and the branch losses and loadings — runs over the batch C scenarios
    at a time, so their arrays scale with C instead of B. It changes no number:
    the solver stops updating a scenario once it has converged, so each scenario's solution is
    the one it gets in any batch, and every random draw is made for the whole batch as without
    chunks (``tests/test_chunking.py`` holds both to bit-identity).

    Observation of agent i (``obs[b, i]``, float32, layout in :attr:`obs_names`): only what its
    own sensors measure —

    * zone buses (``zone_layout="pad"``, Z = largest zone of the feeder): for z = 0 … Z−1 the
      four features ``dv_pu[z]`` (vm_pu − 1), net ``p_mw[z]``, net ``q_mvar[z]`` and
      ``mask[z]`` (1 for a real bus, 0 for padding), where z = 0 is the agent's own bus and
      the other zone buses follow in bus order; entries past the zone's end are all zero.
      Or (``"pool"``) ``dv_own_pu, dv_min_pu, dv_mean_pu, dv_max_pu, p_zone_mw,
      q_zone_mvar``;
    * its inverters (summed when several): ``inv_p_mw`` (PV output), ``inv_q_mvar`` (reactive
      power applied), ``inv_q_avail_mvar`` (the limit ``sqrt(s_max² − p²)``);
    * time of day of the solved step: ``sin_time``, ``cos_time``;
    * with ``forecast_steps = k``: ``pv_forecast_mw[1..k]`` (its inverters' available PV) and
      ``load_forecast_mw[1..k]`` (its zone's load P) for the next k steps.

    Nothing comes from other zones: neighbours' information reaches an agent only as messages
    on the learner's side (``info["message_mask"]`` says which arrive).

    Local reward of agent i (``reward[b, i]``, float32):
    ``−(voltage_weight·Σ_zone barrier(v) + loss_weight_per_mw·zone_loss_mw +
    q_weight_per_mvar·Σ|q_mvar|)``. Every monitored bus belongs to exactly one zone and every
    branch's loss is split between the zones it joins, so the sum of the local rewards is the
    global reward.
    """

    def __init__(self, feeder, *, num_envs: int = 1, seed: int = 0, split: str = "train",
                 days: Sequence[int] | None = None, config: EnvConfig | None = None,
                 device: str | torch.device = "cpu", chunk: int | None = None):
        cfg = config if config is not None else EnvConfig()
        apply_torch()  # the thread policy, once per process (see gridrl.threads)
        if num_envs < 1:
            raise EnvError(f"num_envs must be ≥ 1, got {num_envs}")
        if chunk is not None and chunk < 1:
            raise EnvError(f"chunk must be ≥ 1 scenarios (or None: the whole batch at once), got {chunk}")
        self.chunk = None if chunk is None else int(chunk)
        self.feeder = feeder
        self.config = cfg
        self.num_envs = int(num_envs)
        self.device = torch.device(device)
        if split not in ("train", "val", "test", "all"):
            raise EnvError(f"unknown split {split!r} (use 'train', 'val', 'test' or 'all')")
        self.split = split
        pool = list(feeder.days(split)) if days is None else [int(d) for d in days]
        n_days = feeder.profiles.n_days
        bad = [d for d in pool if not 0 <= d < n_days]
        if not bad and days is not None:
            self._check_split(feeder, split, pool)
        if bad or not pool:
            raise EnvError(f"days must be a non-empty list of day numbers in 0…{n_days - 1}"
                             + (f"; got {bad[:5]}" if bad else ""))
        self.day_pool = np.asarray(pool, dtype=np.int64)
        self.v_min_pu = float(cfg.v_min_pu if cfg.v_min_pu is not None else feeder.v_min_pu)
        self.v_max_pu = float(cfg.v_max_pu if cfg.v_max_pu is not None else feeder.v_max_pu)

        self.agents: list[str] = list(feeder.agents)
        self.n_agents = len(self.agents)
        unknown = sorted(set(cfg.outage_agents) - set(self.agents))
        if unknown:
            raise EnvError(f"outage_agents: no agent {', '.join(map(repr, unknown))} on feeder "
                             f"{feeder.name!r} (agents: {', '.join(self.agents[:8])}"
                             f"{' …' if self.n_agents > 8 else ''})")
        self.adjacency = torch.as_tensor(feeder.adjacency, dtype=torch.bool)
        self.hop_distance = torch.as_tensor(feeder.hop_distance, dtype=torch.int64)

        net = feeder.net
        self._pf = feeder.power_flow()
        self._build_maps(feeder, net)
        self._branch_model()
        self._flows = BranchFlows(self._pf, net)
        self._build_tap_changer(cfg)
        self._build_time(feeder, cfg)
        self._build_obs_layout(cfg)
        self.reset(seed=seed)

    # ---------------------------------------------------------------------------------------
    # construction: index maps, computed once so that the step has no Python loops
    # ---------------------------------------------------------------------------------------
    def _build_maps(self, feeder, net) -> None:
        bus_index = net.bus.index.to_numpy()
        self.bus_index = bus_index
        self.n_bus = len(bus_index)
        pos = {int(b): i for i, b in enumerate(bus_index)}
        T = lambda x, dt=torch.int64: torch.as_tensor(np.asarray(x), dtype=dt)  # noqa: E731

        self._load_bus = T([pos[int(b)] for b in net.load.bus])
        self._load_on = T(net.load.in_service.to_numpy(), torch.float64)
        self._load_sign = -self._load_on
        self._all_in_service = bool(net.load.in_service.all() and net.sgen.in_service.all())
        self._sgen_bus = T([pos[int(b)] for b in net.sgen.bus])
        self._sgen_on = T(net.sgen.in_service.to_numpy(), torch.float64)
        self.n_load, self.n_sgen = len(net.load), len(net.sgen)
        # units that are not agents run at their own power factor: q follows p at the net's q/p
        q_fixed, q_per_mw = unit_power_factor(net.sgen)
        self._sgen_q_fixed, self._sgen_q_per_mw = T(q_fixed, torch.float64), T(q_per_mw, torch.float64)

        inv = feeder.inverters
        self.n_inverters = len(inv)
        agent_pos = {a: i for i, a in enumerate(self.agents)}
        self.inverter_sgen_pos = T(net.sgen.index.get_indexer(inv.index))
        self.inverter_agent = T([agent_pos[a] for a in inv["agent"]])
        self.inverter_bus_pos = T([pos[int(b)] for b in inv["bus"]])
        # the scenario: more PV means more inverters of the same kind, so ratings scale with it
        cfg = self.config
        self.s_max_mva = T(inv["s_max_mva"].to_numpy(float) * cfg.pv_scale, torch.float64)
        self.q_at_night = bool(feeder.spec.pv.q_at_night if cfg.q_at_night is None else cfg.q_at_night)
        self._load_scale = float(cfg.load_scale)
        self._pv_scale = float(cfg.pv_scale)
        sgen_scale = np.ones(self.n_sgen)
        sgen_scale[net.sgen.index.get_indexer(inv.index)] = cfg.pv_scale
        self._sgen_scale = T(sgen_scale, torch.float64)
        is_inv = np.zeros(self.n_sgen)
        is_inv[net.sgen.index.get_indexer(inv.index)] = 1.0
        self._sgen_is_inv = T(is_inv, torch.float64)
        self._randomised = cfg.randomised
        self._pv = feeder.profiles.pv_p_mw
        own = np.full(self.n_agents, -1)
        for a, b in zip(self.inverter_agent.tolist(), self.inverter_bus_pos.tolist()):
            if own[a] < 0:
                own[a] = b
        self.agent_bus_pos = T(own)
        self._one_to_one = bool(self.n_inverters == self.n_agents and
                                torch.equal(self.inverter_agent, torch.arange(self.n_agents)))

        zone = feeder.bus_zone.reindex(bus_index).to_numpy()
        bus_agent = np.array([agent_pos.get(z, -1) if z is not None else -1 for z in zone])
        self._bus_agent = bus_agent
        members = [[] for _ in range(self.n_agents)]
        for i, a in enumerate(bus_agent):
            if a >= 0:
                members[a].append(i)
        zones = []
        for a, m in enumerate(members):
            rest = [b for b in m if b != own[a]]
            zones.append([own[a]] + rest)
        self.zone_size = T([len(z) for z in zones])
        Z = max(len(z) for z in zones)
        self.max_zone_buses = Z
        idx = np.full((self.n_agents, Z), self.n_bus)  # n_bus: the padding slot (always zero)
        for a, z in enumerate(zones):
            idx[a, :len(z)] = z
        self.zone_index = T(idx)
        self.zone_mask = self.zone_index < self.n_bus
        self._zone_flat = self.zone_index.reshape(-1)

        monitored = np.asarray(feeder.monitored, dtype=bool)
        self.monitored = T(monitored, torch.bool)
        self._mon_pos = T(np.flatnonzero(monitored))
        mz = np.flatnonzero(monitored & (bus_agent >= 0))
        self._mon_zone_pos = T(mz)
        self._mon_zone_agent = T(bus_agent[mz])
        self.n_monitored = int(monitored.sum())
        links = self.adjacency.clone()
        self._links = links | torch.eye(self.n_agents, dtype=torch.bool)
        self._edges = links.nonzero(as_tuple=True)

    def _branch_model(self) -> None:
        """Series/shunt admittances of every branch, to split line losses between zones.

        Taken from pandapower's own branch model (so transformers with taps and phase shifts
        count exactly as the power flow sees them). A branch that ends at an auxiliary bus of
        an open line switch carries only charging current; it is folded into an equivalent
        shunt at its connected end.
        """
        from pandapower.pypower.idx_brch import BR_STATUS, F_BUS, T_BUS
        from pandapower.pypower.makeYbus import branch_vectors

        model = self._pf.branch_model  # compiled once with the power flow: no second runpp
        br = model.branch
        base_mva = model.base_mva
        ytt, yff, yft, ytf = branch_vectors(br, br.shape[0])
        rep = np.full(model.n_ppc_bus, -1)
        rep[model.bus_lookup[self.bus_index]] = np.arange(self.n_bus)
        fp = rep[br[:, F_BUS].real.astype(np.int64)]
        tp = rep[br[:, T_BUS].real.astype(np.int64)]
        on = br[:, BR_STATUS].real > 0
        both = on & (fp >= 0) & (tp >= 0)
        f_only = on & (fp >= 0) & (tp < 0)
        t_only = on & (fp < 0) & (tp >= 0)
        # shunt-equivalent of a branch whose other end floats: its current there is zero
        y_f = yff[f_only] - yft[f_only] * ytf[f_only] / ytt[f_only]
        y_t = ytt[t_only] - ytf[t_only] * yft[t_only] / yff[t_only]
        i = lambda x: torch.as_tensor(np.ascontiguousarray(x), dtype=torch.int64)  # noqa: E731
        ba = self._bus_agent
        keep = np.flatnonzero(both)
        keep = keep[(ba[fp[keep]] >= 0) & (ba[tp[keep]] >= 0)]  # unenergized buses carry nothing
        self._br_f, self._br_t = i(fp[keep]), i(tp[keep])
        self._br_ft = torch.cat([self._br_f, self._br_t])
        # loss coefficients (see _zone_loss), halved: each end's zone takes one half
        coef = [yff[keep].real, ytt[keep].real, yft[keep].real + ytf[keep].real,
                yft[keep].imag - ytf[keep].imag]
        self._br_k = [torch.as_tensor(0.5 * base_mva * x, dtype=torch.float64)[:, None] for x in coef]
        self._br_agent_f, self._br_agent_t = i(ba[fp[keep]]), i(ba[tp[keep]])
        sh_pos = np.concatenate([fp[f_only], tp[t_only]])
        sh_g = np.concatenate([y_f.real, y_t.real])
        sh_keep = ba[sh_pos] >= 0
        self._sh_pos, self._sh_agent = i(sh_pos[sh_keep]), i(ba[sh_pos[sh_keep]])
        self._sh_g = torch.as_tensor(sh_g[sh_keep] * base_mva, dtype=torch.float64)

    def _build_tap_changer(self, cfg: EnvConfig) -> None:
        """The substation tap changer (or, if asked, a source regulator) and its AVR."""
        tc = self._pf.tap_changer
        if tc.kind == "regulator" and not cfg.source_regulator:
            tc = None
        self.tap_changer = tc
        self._avr = tc is not None and cfg.tap_control == "avr"
        if tc is None:
            return
        self._tap_bus = int(np.flatnonzero(self.bus_index == tc.bus)[0])
        if self._avr and not cfg.avr_deadband_pu > tc.step_pu / 2:
            raise EnvError(f"avr_deadband_pu ({cfg.avr_deadband_pu}) must exceed half a tap step "
                           f"({tc.step_pu / 2:g} p.u. on {self.feeder.name!r}), else the tap hunts")

    def _build_time(self, feeder, cfg: EnvConfig) -> None:
        prof = feeder.profiles
        self._prof = prof
        self.step_minutes = cfg.step_minutes
        self._sub = prof.step_minutes // cfg.step_minutes  # env steps per native step
        self.steps_per_day = prof.steps_per_day * self._sub
        self.episode_steps = cfg.steps_per_episode
        self.step_hours = cfg.step_minutes / 60.0

    def _build_obs_layout(self, cfg: EnvConfig) -> None:
        Z = self.max_zone_buses
        if cfg.zone_layout == "pad":
            names = [f"{x}[{z}]" for z in range(Z) for x in ("dv_pu", "p_mw", "q_mvar", "mask")]
        else:
            names = ["dv_own_pu", "dv_min_pu", "dv_mean_pu", "dv_max_pu", "p_zone_mw",
                     "q_zone_mvar"]
        names += ["inv_p_mw", "inv_q_mvar", "inv_q_avail_mvar", "sin_time", "cos_time"]
        k = cfg.forecast_steps
        names += [f"pv_forecast_mw[{j}]" for j in range(1, k + 1)]
        names += [f"load_forecast_mw[{j}]" for j in range(1, k + 1)]
        self.obs_names: list[str] = names
        self.obs_dim = len(names)
        self.state_dim = 3 * self.n_bus + 3 * self.n_inverters + 2
        if k:
            # zone load per agent = loads at the agent's zone buses
            la = torch.as_tensor(self._bus_agent, dtype=torch.int64)[self._load_bus]
            self._fc_load_keep = (la >= 0).nonzero(as_tuple=True)[0]
            self._fc_load_agent = la[self._fc_load_keep]

    # ---------------------------------------------------------------------------------------
    # randomness
    # ---------------------------------------------------------------------------------------
    def _seed(self, seed: int) -> None:
        self.seed = int(seed)
        ss = np.random.SeedSequence(self.seed)
        days, starts, outages, noise, drop, fc, scale = ss.spawn(7)
        self._rng_days = np.random.default_rng(days)
        self._rng_scale = np.random.default_rng(scale)
        self._rng_start = np.random.default_rng(starts)
        self._rng_outage = np.random.default_rng(outages)
        self._gen_noise, self._gen_drop, self._gen_fc = (
            torch.Generator().manual_seed(int(s.generate_state(1, np.uint64)[0] >> np.uint64(1)))
            for s in (noise, drop, fc))
        self._cycle = 0

    def rng_state(self) -> dict:
        """The state of every random generator (day and start draws, outages, noise, dropout,
        forecasts): with :meth:`set_rng_state`, a resumed training run draws what an
        uninterrupted one would have drawn. Plain Python values and byte tensors."""
        return {"seed": self.seed, "cycle": self._cycle,
                **{k: getattr(self, f"_rng_{k}").bit_generator.state for k in ("days", "start", "outage", "scale")},
                **{k: getattr(self, f"_gen_{k}").get_state() for k in ("noise", "drop", "fc")}}

    def set_rng_state(self, state: dict) -> None:
        """Restore generators saved by :meth:`rng_state`."""
        self.seed, self._cycle = int(state["seed"]), int(state["cycle"])
        for k in ("days", "start", "outage", "scale"):
            if k in state:  # "scale": saved by runs since randomised operating points exist
                getattr(self, f"_rng_{k}").bit_generator.state = state[k]
        for k in ("noise", "drop", "fc"):
            getattr(self, f"_gen_{k}").set_state(state[k])

    def _draw_days(self, n: int) -> np.ndarray:
        if self.config.day_sampling == "cycle":
            k = np.arange(self._cycle, self._cycle + n) % len(self.day_pool)
            self._cycle += n
            return self.day_pool[k]
        return self.day_pool[self._rng_days.integers(0, len(self.day_pool), size=n)]

    def _draw_starts(self, n: int) -> np.ndarray:
        start_hour = self.config.start_hour
        if start_hour is not None:
            return np.full(n, round(start_hour * 60 / self.step_minutes), dtype=np.int64)
        last = self.steps_per_day - self.episode_steps
        return self._rng_start.integers(0, last + 1, size=n)

    def _draw_scales(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each new episode's own load and PV multipliers (1.0 without ``*_scale_range``)."""
        out = []
        for rng in (self.config.load_scale_range, self.config.pv_scale_range):
            x = np.ones(n) if rng is None else self._rng_scale.uniform(rng[0], rng[1], size=n)
            out.append(torch.as_tensor(x, dtype=torch.float64))
        return out[0], out[1]

    def _draw_outages(self, n: int) -> torch.Tensor:
        out = torch.zeros(n, self.n_agents, dtype=torch.bool)
        if self.config.outage_prob > 0:
            out = torch.as_tensor(self._rng_outage.random((n, self.n_agents)) < self.config.outage_prob)
        for a in self.config.outage_agents:
            out[:, self.agents.index(a)] = True
        return out

    # ---------------------------------------------------------------------------------------
    # profiles
    # ---------------------------------------------------------------------------------------
    def _fine_index(self, offset: int = 0) -> np.ndarray:
        """Year-wide fine step index of each scenario's pending step (+ offset)."""
        return self._day * self.steps_per_day + self._start + self._k.numpy() + offset

    def _at(self, arr, g: np.ndarray) -> torch.Tensor:
        """Profile ``arr`` at fine step indices ``g`` (interpolated), as float64 torch."""
        g = np.clip(g, 0, len(arr) * self._sub - 1)
        t0 = g // self._sub
        x = arr[t0]
        if self._sub > 1:
            frac = (g % self._sub) / self._sub
            spd = self._prof.steps_per_day
            t1 = np.where((t0 + 1) % spd == 0, t0, np.minimum(t0 + 1, len(arr) - 1))
            x = x + frac[:, None] * (arr[t1] - x)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))

    def _exogenous(self, g: np.ndarray, rows=None) -> dict[str, torch.Tensor]:
        """Loads and generation at fine steps ``g`` of the scenarios ``rows`` (default: all),
        scaled to the config's scenario and to each episode's drawn operating point."""
        p = self._prof
        load_p, load_q, sgen_p = self._at(p.load_p_mw, g), self._at(p.load_q_mvar, g), self._at(p.sgen_p_mw, g)
        if self._load_scale != 1.0:
            load_p, load_q = load_p * self._load_scale, load_q * self._load_scale
        if self._pv_scale != 1.0:
            sgen_p = sgen_p * self._sgen_scale
        if self._randomised:
            ls, ps = (x if rows is None else x[rows] for x in (self._ep_load, self._ep_pv))
            load_p, load_q = load_p * ls[:, None], load_q * ls[:, None]
            sgen_p = sgen_p * (1.0 + (ps[:, None] - 1.0) * self._sgen_is_inv)
        return {"load_p_mw": load_p, "load_q_mvar": load_q, "sgen_p_mw": sgen_p,
                "pv_p_mw": torch.index_select(sgen_p, 1, self.inverter_sgen_pos)}

    def _s_max(self, rows=None) -> torch.Tensor:
        """Inverter ratings: ``[n_inverter]``, or ``[B, n_inverter]`` with randomised PV."""
        if not self._randomised:
            return self.s_max_mva
        ps = self._ep_pv if rows is None else self._ep_pv[rows]
        return self.s_max_mva * ps[:, None]

    def _q_avail(self, pv_p_mw: torch.Tensor, rows=None) -> torch.Tensor:
        return q_avail_mvar(pv_p_mw, self._s_max(rows), q_at_night=self.q_at_night)

    # ---------------------------------------------------------------------------------------
    # physics
    # ---------------------------------------------------------------------------------------
    def _chunks(self, n: int) -> list[slice]:
        """The rows of a batch of ``n`` scenarios in chunks of :attr:`chunk` (one chunk: all)."""
        size = self.chunk or max(n, 1)
        return [slice(i, i + size) for i in range(0, max(n, 1), size)]

    def _solve(self, exo: dict, q_inv: torch.Tensor, v_init) -> dict:
        """Power flow of the scenarios in ``exo`` with inverter reactive power ``q_inv``, the tap
        changer at ``exo["tap_pos"]`` (``[n]``; absent: the net's position).

        Adds ``sgen_q_mvar`` to ``exo``. Scenarios that did not converge carry NaN voltages,
        angles and losses; they never raise. Solved chunk by chunk (:attr:`chunk`): the solver
        stops updating a scenario once it has converged, so its result is the same in any batch.
        """
        sgen_q = self._sgen_q_fixed + exo["sgen_p_mw"] * self._sgen_q_per_mw
        sgen_q[:, self.inverter_sgen_pos] = q_inv
        exo["sgen_q_mvar"] = sgen_q
        if self._avr and "tap_pos" not in exo:
            # every solve of a feeder under AVR must say at which tap (the scenarios' state)
            raise RuntimeError("_solve needs exo['tap_pos'] (the rows' self._tap) when the tap changer regulates")
        tap = exo["tap_pos"] if self._avr else None
        per_row = v_init is not None and v_init.ndim == 2  # else one start for every scenario
        parts = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for s in self._chunks(len(sgen_q)):
                parts.append(self._pf.solve(exo["load_p_mw"][s], exo["load_q_mvar"][s], exo["sgen_p_mw"][s],
                                            sgen_q[s], v_init=v_init[s] if per_row else v_init,
                                            tap_pos=None if tap is None else tap[s]))
        res = parts[0] if len(parts) == 1 else _concat_results(parts)
        ok = torch.as_tensor(res.converged, dtype=torch.bool)
        vm = torch.as_tensor(res.vm_pu, dtype=torch.float64)
        va = torch.as_tensor(res.va_degree, dtype=torch.float64)
        loss = torch.as_tensor(res.loss_mw, dtype=torch.float64)
        v = getattr(res, "v", None)
        v = torch.polar(vm, torch.deg2rad(va)) if v is None else torch.as_tensor(v)
        ok = ok & torch.isfinite(loss)
        if not ok.all():
            bad = ~ok
            vm, va, loss, v = vm.clone(), va.clone(), loss.clone(), v.clone()
            vm[bad], va[bad], loss[bad], v[bad] = torch.nan, torch.nan, torch.nan, torch.nan
        return {"vm_pu": vm, "va_degree": va, "loss_mw": loss, "converged": ok, "v": v,
                "iterations": torch.as_tensor(res.iterations)}

    def _bus_injection(self, exo: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Net injection (generation − consumption) ``[B, n_bus]`` of P and Q at every bus."""
        B = exo["load_p_mw"].shape[0]
        p = torch.zeros(B, self.n_bus, dtype=torch.float64)
        q = torch.zeros(B, self.n_bus, dtype=torch.float64)
        if self._all_in_service:
            p.index_add_(1, self._sgen_bus, exo["sgen_p_mw"])
            p.index_add_(1, self._load_bus, exo["load_p_mw"], alpha=-1.0)
            q.index_add_(1, self._sgen_bus, exo["sgen_q_mvar"])
            q.index_add_(1, self._load_bus, exo["load_q_mvar"], alpha=-1.0)
        else:
            p.index_add_(1, self._sgen_bus, exo["sgen_p_mw"] * self._sgen_on)
            p.index_add_(1, self._load_bus, exo["load_p_mw"] * self._load_sign)
            q.index_add_(1, self._sgen_bus, exo["sgen_q_mvar"] * self._sgen_on)
            q.index_add_(1, self._load_bus, exo["load_q_mvar"] * self._load_sign)
        return p, q

    def _zone_loss(self, v: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` each zone's share of branch losses (MW) from complex voltages ``v``.

        A branch's loss ``Re(V_f·conj(I_f) + V_t·conj(I_t))`` is, with ``V_f = a + jb`` and
        ``V_t = c + jd``, ``g_ff(a² + b²) + g_tt(c² + d²) + k_c(ac + bd) + k_s(bc − ad)`` —
        real coefficients fixed at construction, no trigonometry in the step. Computed bus-major
        (``[branch, B]``) because row gathers are several times faster than column gathers.
        """
        nbr = len(self._br_f)
        v_t = v.T.contiguous()
        x = torch.view_as_real(torch.index_select(v_t, 0, self._br_ft))
        re, im = x[..., 0], x[..., 1]
        a, b, c, d = re[:nbr], im[:nbr], re[nbr:], im[nbr:]
        gff, gtt, kc, ks = self._br_k
        half = gff * (a * a + b * b) + gtt * (c * c + d * d) + kc * (a * c + b * d) + ks * (b * c - a * d)
        out = torch.zeros(self.n_agents, v.shape[0], dtype=torch.float64)
        out.index_add_(0, self._br_agent_f, half)
        out.index_add_(0, self._br_agent_t, half)
        if len(self._sh_pos):
            m = torch.index_select(v_t, 0, self._sh_pos).abs()
            out.index_add_(0, self._sh_agent, m * m * self._sh_g[:, None])
        return out.T

    def _to_agents(self, x_inv: torch.Tensor) -> torch.Tensor:
        """Sum a per-inverter quantity ``[B, n_inv]`` over each agent's inverters → ``[B, N]``."""
        if self._one_to_one:
            return x_inv
        out = torch.zeros(x_inv.shape[0], self.n_agents, dtype=x_inv.dtype)
        return out.index_add_(1, self.inverter_agent, x_inv)

    def _inverter_q(self, actions: torch.Tensor, q_avail: torch.Tensor, outage: torch.Tensor):
        if not self._one_to_one:
            actions = torch.index_select(actions, 1, self.inverter_agent)
            outage = torch.index_select(outage, 1, self.inverter_agent)
        q = actions * q_avail
        return torch.where(outage, 0.0, q) if outage.any() else q

    # ---------------------------------------------------------------------------------------
    # public API
    # ---------------------------------------------------------------------------------------
    def reset(self, seed: int | None = None, days: Sequence[int] | None = None) -> torch.Tensor:
        """Start new episodes in every scenario; returns observations ``[B, N, obs_dim]``.

        ``seed`` reseeds every generator (as at construction); ``days`` (length B) fixes each
        scenario's day instead of drawing from the pool. The first observation is the feeder
        one step before the episode starts, with every inverter at q = 0.
        """
        if seed is not None or not hasattr(self, "seed"):
            self._seed(self.seed if seed is None else seed)
        B = self.num_envs
        if days is not None:
            days = np.asarray([int(d) for d in days], dtype=np.int64)
            if days.shape != (B,):
                raise EnvError(f"reset(days=...) needs one day per scenario ({B}), got {len(days)}")
            if (days < 0).any() or (days >= self._prof.n_days).any():
                raise EnvError(f"days must lie in 0…{self._prof.n_days - 1}")
            self._check_split(self.feeder, self.split, days.tolist())
        self._day = np.zeros(B, dtype=np.int64)
        self._start = np.zeros(B, dtype=np.int64)
        self._k = torch.zeros(B, dtype=torch.int64)
        self._done = torch.zeros(B, dtype=torch.bool)
        self._outage = torch.zeros(B, self.n_agents, dtype=torch.bool)
        self._vm = torch.ones(B, self.n_bus, dtype=torch.float64)
        self._bus_p = torch.zeros(B, self.n_bus, dtype=torch.float64)
        self._bus_q = torch.zeros(B, self.n_bus, dtype=torch.float64)
        self._inv = torch.zeros(B, 3, self.n_inverters, dtype=torch.float64)  # p, q, q_avail
        self._g_obs = np.zeros(B, dtype=np.int64)
        self._vm_noise = torch.zeros(B, self.n_bus, dtype=torch.float64)
        self._ep_load = torch.ones(B, dtype=torch.float64)
        self._ep_pv = torch.ones(B, dtype=torch.float64)
        self._obs = torch.zeros(B, self.n_agents, self.obs_dim, dtype=torch.float32)
        self._v = None
        self._acc = {k: torch.zeros(B, dtype=torch.float64) for k in _EPISODE_KEYS}
        tc = self.tap_changer
        self._tap = torch.full((B,), tc.tap_pos0 if tc is not None else 0, dtype=torch.int64)
        self._tap_wait = torch.zeros(B, dtype=torch.int64)
        self._start_episodes(torch.arange(B), days)
        return self._out(self._obs.clone())

    @staticmethod
    def _check_split(feeder, split: str, days: Sequence[int]) -> None:
        """Explicit days must belong to the split, so a test day never reaches training."""
        if split == "all":
            return
        allowed = set(feeder.days(split))
        outside = sorted({int(d) for d in days} - allowed)
        if outside:
            shown = ", ".join(map(str, outside[:6])) + (" …" if len(outside) > 6 else "")
            raise EnvError(f"day(s) {shown} are not {split} days of feeder {feeder.name!r}; "
                           f"pick days from feeder.days({split!r}) or use split='all'")

    def reset_done(self) -> torch.Tensor:
        """Start new episodes (new days from the pool) in the finished scenarios only.

        The explicit auto-reset: call it after a step that reported ``done``. Returns the
        observations of every scenario; those of unfinished scenarios are unchanged.
        """
        rows = self._done.nonzero(as_tuple=True)[0]
        if len(rows):
            self._start_episodes(rows, None)
        return self._out(self._obs.clone())

    def _start_episodes(self, rows: torch.Tensor, days: np.ndarray | None) -> None:
        n = len(rows)
        r = rows.numpy()
        self._day[r] = self._draw_days(n) if days is None else days
        self._start[r] = self._draw_starts(n)
        self._k[rows] = 0
        self._done[rows] = False
        self._outage[rows] = self._draw_outages(n)
        if self._randomised:
            self._ep_load[rows], self._ep_pv[rows] = self._draw_scales(n)
        for k in _EPISODE_KEYS:
            self._acc[k][rows] = 0.0
        self._acc["day"][rows] = torch.as_tensor(self._day[r], dtype=torch.float64)
        # the observed state before the first action, inverters at q = 0: the start of the
        # first interval (measured) or the interval before it (previous_step)
        g = self._fine_index(0 if self.config.observation == "measured" else -1)[r]
        exo = self._exogenous(g, rows)
        exo["q_avail_mvar"] = self._q_avail(exo["pv_p_mw"], rows)
        q_inv = torch.zeros(n, self.n_inverters, dtype=torch.float64)
        sol = self._settle_tap(rows, exo, q_inv)
        vm = torch.where(sol["converged"][:, None], sol["vm_pu"], 1.0)
        self._store(rows, exo, q_inv, vm, g)
        self._store_v(rows, sol)
        self._obs[rows] = self._observe(rows)

    def _measure(self, rows: torch.Tensor, exo: dict, q_inv: torch.Tensor, vm: torch.Tensor,
                 g: np.ndarray) -> None:
        """What the sensors of the scenarios ``rows`` read before their next action, after the
        interval ``g`` was solved with reactive power ``q_inv`` (``exo``, ``vm``: its inputs and
        voltages).

        ``measured``: the start of the next interval — its loads and PV, each inverter holding
        its ``q_mvar`` (clipped to its new headroom) — solved here, warm-started from the
        interval just solved; that solution is also the next step's warm start. A measurement
        solve that does not converge reads the interval just solved instead.
        ``previous_step``: the interval just solved.
        """
        if self.config.observation == "previous_step":
            self._store(rows, exo, q_inv, vm, g)
            return
        full = len(rows) == self.num_envs
        sub = None if full else rows
        g1 = self._fine_index()[rows.numpy()]
        exo1 = self._exogenous(g1, sub)
        q_avail = exo1["q_avail_mvar"] = self._q_avail(exo1["pv_p_mw"], sub)
        q_hold = torch.maximum(torch.minimum(q_inv, q_avail), -q_avail)
        if self.tap_changer is not None:  # the tap in force at the interval's start (the AVR has moved)
            exo1["tap_pos"] = self._tap.clone() if full else self._tap[rows]
        v_prev = self._v if full else self._v[rows]
        sol = self._solve(exo1, q_hold, v_prev)
        ok = sol["converged"]
        if not ok.all():
            sol["vm_pu"] = torch.where(ok[:, None], sol["vm_pu"], vm)
            sol["v"] = torch.where(ok[:, None], sol["v"], v_prev)
        self._store(rows, exo1, q_hold, sol["vm_pu"], g1)
        self._store_v(rows, {"v": sol["v"], "converged": torch.isfinite(sol["v"].real).all(1)})

    def _settle_tap(self, rows: torch.Tensor, exo: dict, q_inv: torch.Tensor) -> dict:
        """Solve the state before an episode's first action with the tap where the AVR has had
        time to bring it (the substation regulates around the clock): from the net's position,
        the tap moves by the whole steps the busbar's deviation asks for until the busbar is in
        its deadband or the tap at its limit. Without AVR, the net's position."""
        tc = self.tap_changer
        tap = torch.full((len(rows),), tc.tap_pos0 if tc is not None else 0, dtype=torch.int64)
        self._tap[rows] = tap
        self._tap_wait[rows] = 0
        exo["tap_pos"] = tap
        sol = self._solve(exo, q_inv, None)
        if not self._avr:
            return sol
        cfg = self.config
        for _ in range(8):
            dev = sol["vm_pu"][:, self._tap_bus] - cfg.avr_v_set_pu
            out = sol["converged"] & (dev.abs() > cfg.avr_deadband_pu)
            steps = torch.clamp(torch.round(dev.abs() / tc.step_pu), min=1).to(torch.int64)
            new = tap + torch.where(out, -torch.sign(dev).to(torch.int64) * tc.raise_sign * steps, 0)
            new = new.clamp(tc.tap_min, tc.tap_max)
            if torch.equal(new, tap):
                break
            tap = new
            exo["tap_pos"] = tap
            sol = self._solve(exo, q_inv, sol["v"])
        self._tap[rows] = tap
        return sol

    def _avr_step(self, rows: torch.Tensor, full: bool, vm: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        """The AVR after a solved step: count the steps the busbar has been outside the
        deadband; after ``avr_delay_steps`` of them move the tap one step toward the setpoint
        (for the next step). Returns ``[n]`` float: 1 where the tap moved."""
        cfg, tc = self.config, self.tap_changer
        tap = self._tap if full else self._tap[rows]
        dev = vm[:, self._tap_bus] - cfg.avr_v_set_pu
        out = ok & (dev.abs() > cfg.avr_deadband_pu)
        wait = torch.where(out, (self._tap_wait if full else self._tap_wait[rows]) + 1, 0)
        move = wait >= cfg.avr_delay_steps
        # a tap moves toward the setpoint: down when the busbar is high (HV taps: up)
        direction = torch.where(dev > 0, -1, 1) * tc.raise_sign
        new = torch.where(move, tap + direction, tap).clamp(tc.tap_min, tc.tap_max)
        wait = torch.where(move, 0, wait)
        if full:
            self._tap, self._tap_wait = new, wait
        else:
            self._tap[rows], self._tap_wait[rows] = new, wait
        return (new != tap).to(torch.float64)

    def _branch_metrics(self, sol: dict, tap: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Loss split and branch loading of a solved batch (see :mod:`gridrl.grid.branches`),
        computed chunk by chunk (:attr:`chunk`)."""
        v = sol["v"].numpy()
        n = v.shape[0]
        fl = self._flows
        if fl.has_trafos:
            load_mw, noload_mw = (torch.from_numpy(np.concatenate(x)) for x in
                                  zip(*(fl.transformer_losses(v[s]) for s in self._chunks(n))))
        else:
            load_mw = noload_mw = torch.zeros(n, dtype=torch.float64)
        out = {"line_loss_mw": sol["loss_mw"] - load_mw - noload_mw, "trafo_load_loss_mw": load_mw,
               "trafo_noload_loss_mw": noload_mw}
        if fl.has_ratings:
            rho = None if tap is None else self.tap_changer.ratio(tap.numpy())
            peak, over = [], []
            for s in self._chunks(n):
                loading = fl.loading_pct(v[s], None if rho is None else rho[s])
                peak.append(loading.max(axis=1, initial=0.0))
                over.append((loading > 100.0).sum(axis=1).astype(np.float64))
            out["max_loading_pct"] = torch.from_numpy(np.concatenate(peak))
            out["overloaded_branches"] = torch.from_numpy(np.concatenate(over))
        else:
            out["max_loading_pct"] = torch.full((n,), torch.nan, dtype=torch.float64)
            out["overloaded_branches"] = torch.zeros(n, dtype=torch.float64)
        if not bool(sol["converged"].all()):
            bad = ~sol["converged"]
            out = {k: torch.where(bad, torch.nan, x) for k, x in out.items()}
        return out

    def _store(self, rows: torch.Tensor, exo: dict, q_inv: torch.Tensor, vm: torch.Tensor,
               g: np.ndarray) -> None:
        """Keep what the sensors of the scenarios ``rows`` read: the solved instant ``g`` with its
        inputs ``exo`` (with ``q_avail_mvar``), reactive power ``q_inv`` and voltages ``vm``; and
        draw the voltage sensors' noise for it."""
        p, q = self._bus_injection(exo)
        inv = torch.stack([exo["pv_p_mw"], q_inv, exo["q_avail_mvar"]], 1)
        noise = self.config.sensor_noise_pu
        if len(rows) == self.num_envs:
            # vm is also returned in step's info: keep a copy, later partial steps write into it
            self._vm, self._bus_p, self._bus_q, self._inv = vm.clone(), p, q, inv
            self._g_obs = np.asarray(g, dtype=np.int64).copy()
            if noise > 0:
                self._vm_noise = noise * torch.randn(vm.shape, generator=self._gen_noise, dtype=torch.float64)
        else:
            self._vm[rows], self._bus_p[rows], self._bus_q[rows], self._inv[rows] = vm, p, q, inv
            self._g_obs[rows.numpy()] = g
            if noise > 0:
                self._vm_noise[rows] = noise * torch.randn(vm.shape, generator=self._gen_noise,
                                                           dtype=torch.float64)

    def _store_v(self, rows: torch.Tensor, sol: dict) -> None:
        """Keep the solution as the next warm start. A diverged scenario gets NaN, which the
        solver reads as "start from the no-load voltage"."""
        v = sol["v"]
        if not sol["converged"].all():
            v = torch.where(sol["converged"][:, None], v, torch.nan)
        if len(rows) == self.num_envs:
            self._v = v
            return
        if self._v is None:
            self._v = torch.full((self.num_envs, v.shape[1]), torch.nan, dtype=v.dtype)
        self._v[rows] = v

    def _observe(self, rows: torch.Tensor) -> torch.Tensor:
        """Observations ``[n, N, obs_dim]`` (float32) of the scenarios ``rows``, from their
        stored measurements (see the class docstring for the layout)."""
        cfg = self.config
        n, N, Z = len(rows), self.n_agents, self.max_zone_buses
        full = n == self.num_envs
        pick = (lambda x: x) if full else (lambda x: x[rows])
        # per bus: dv, p, q, 1 (the mask); the extra last bus is the all-zero padding slot
        ext = torch.empty(n, self.n_bus + 1, 4, dtype=torch.float32)
        dv = pick(self._vm) - 1.0
        if cfg.sensor_noise_pu > 0:
            dv = dv + pick(self._vm_noise)
        ext[:, :-1, 0] = dv
        ext[:, :-1, 1] = pick(self._bus_p)
        ext[:, :-1, 2] = pick(self._bus_q)
        ext[:, :-1, 3] = 1.0
        ext[:, -1] = 0.0
        z = torch.index_select(ext, 1, self._zone_flat)  # [n, N·Z, 4]
        obs = torch.empty(n, N, self.obs_dim, dtype=torch.float32)
        if cfg.zone_layout == "pad":
            obs[:, :, :4 * Z] = z.view(n, N, 4 * Z)
            c = 4 * Z
        else:
            z = z.view(n, N, Z, 4)
            m = self.zone_mask
            dvz = z[..., 0]
            obs[:, :, 0] = dvz[:, :, 0]
            obs[:, :, 1] = torch.where(m, dvz, math.inf).amin(2)
            obs[:, :, 2] = dvz.sum(2) / self.zone_size
            obs[:, :, 3] = torch.where(m, dvz, -math.inf).amax(2)
            obs[:, :, 4:6] = z[..., 1:3].sum(2)
            c = 6
        inv = pick(self._inv)  # [n, 3, n_inverter]: p, q, q_avail
        if not self._one_to_one:
            inv = torch.zeros(n, 3, N, dtype=torch.float64).index_add_(2, self.inverter_agent, inv)
        obs[:, :, c:c + 3] = inv.transpose(1, 2)
        g = self._g_obs if full else self._g_obs[rows.numpy()]
        angle = torch.as_tensor(2.0 * math.pi * (g % self.steps_per_day) / self.steps_per_day)
        obs[:, :, c + 3] = torch.sin(angle)[:, None]
        obs[:, :, c + 4] = torch.cos(angle)[:, None]
        if cfg.forecast_steps:
            obs[:, :, c + 5:] = self._forecast(g)
        return obs

    def _forecast(self, g: np.ndarray) -> torch.Tensor:
        k = self.config.forecast_steps
        n = len(g)
        gg = (g[:, None] + np.arange(1, k + 1)[None, :]).reshape(-1)
        pv = self._to_agents(self._at(self._pv, gg) * self._pv_scale).reshape(n, k, -1)
        lp = self._at(self._prof.load_p_mw, gg) * (self._load_on * self._load_scale)
        load = torch.zeros(n * k, self.n_agents, dtype=torch.float64)
        load.index_add_(1, self._fc_load_agent, lp[:, self._fc_load_keep])
        out = torch.cat([pv, load.reshape(n, k, -1)], 1)  # [n, 2k, N]
        if self.config.forecast_noise_rel > 0:
            out = out * (1.0 + self.config.forecast_noise_rel *
                         torch.randn(out.shape, generator=self._gen_fc, dtype=torch.float64))
        return out.transpose(1, 2)

    def _check_actions(self, actions) -> torch.Tensor:
        a = torch.as_tensor(actions, dtype=torch.float64).cpu()
        if a.shape != (self.num_envs, self.n_agents):
            raise EnvError(f"actions must have shape [num_envs, n_agents] = "
                             f"[{self.num_envs}, {self.n_agents}], got {list(a.shape)}")
        nan = torch.isnan(a)
        if nan.any():
            bad_agents = nan.any(0).nonzero(as_tuple=True)[0].tolist()
            bad_rows = nan.any(1).nonzero(as_tuple=True)[0].tolist()
            names = ", ".join(self.agents[i] for i in bad_agents[:10])
            more = " …" if len(bad_agents) > 10 else ""
            raise EnvError(f"actions contain NaN for agent(s) {names}{more} (scenario(s) "
                             f"{', '.join(map(str, bad_rows[:10]))}{' …' if len(bad_rows) > 10 else ''}); "
                             f"actions must be numbers in [-1, 1]")
        return a.clamp(-1.0, 1.0)

    def step(self, actions):
        """Apply ``actions`` ``[B, N]`` (in [-1, 1]; clipped) and solve the next profile step.

        Returns ``obs [B, N, obs_dim]`` (float32; by default the measurement at the start of the
        following interval, see the module docstring), ``reward [B, N]`` (float32, local rewards),
        ``done [B]`` (bool) and ``info``, a dict of tensors (batch first):

        ``converged``, ``active`` (scenario was stepped), ``truncated`` (episode reached its
        length), ``controllable`` (every monitored bus in band), ``out_of_band_share``,
        ``dv_mean_pu`` / ``dv_max_pu`` (mean / max |v − 1| over monitored buses), ``loss_mw``,
        ``q_abs_mvar`` (Σ|q| over inverters), ``iterations``, ``vm_pu [B, n_bus]``,
        ``q_mvar``, ``p_mw``, ``q_avail_mvar`` ``[B, n_inverter]``, ``zone_loss_mw [B, N]``,
        the reward parts ``reward_voltage``, ``reward_loss``, ``reward_q`` ``[B, N]`` (costs,
        before weights), ``outage [B, N]``, ``message_mask [B, N, N]`` (``[b, i, j]``: a
        message from j reaches i at this step; always True for i = j, False off the agent
        graph; without message dropout a broadcast view of one ``[N, N]`` copy, so clone it
        before writing into it), ``tap_pos`` (the tap changer's position during the step; NaN
        without one), the loss split ``line_loss_mw``, ``trafo_load_loss_mw``,
        ``trafo_noload_loss_mw`` (they sum to ``loss_mw``), ``max_loading_pct`` (NaN on a feeder
        without branch ratings) and ``overloaded_branches`` (rated branches above 100 %),
        ``step``, ``day`` and, when some episode ended at this step,
        ``episode`` (a dict of ``[B]`` aggregates, NaN for scenarios that did not end; see
        :meth:`episode_metrics`). Per-step metrics of an inactive or diverged scenario are NaN
        (False for flags).
        """
        a = self._check_actions(actions)
        B, N = self.num_envs, self.n_agents
        active = ~self._done
        rows = active.nonzero(as_tuple=True)[0]
        full = len(rows) == B
        res = self._advance(rows, a if full else a[rows]) if len(rows) else None
        if full:
            reward, info = res.pop("reward"), res
        else:
            reward = torch.zeros(B, N, dtype=torch.float64)
            info = {}
            for key, like in _INFO_LIKE.items():
                shape = {"b": (B,), "bn": (B, N), "bus": (B, self.n_bus),
                         "inv": (B, self.n_inverters)}[like[0]]
                info[key] = (torch.zeros(shape, dtype=torch.bool) if like[1] == "bool" else
                             torch.full(shape, torch.nan, dtype=torch.float64))
            info["iterations"] = torch.zeros(B, dtype=torch.int64)
            if res is not None:
                reward[rows] = res.pop("reward")
                for key, val in res.items():
                    info[key][rows] = val
        ended = active & self._done
        info["active"] = active
        info["truncated"] = ended & info["converged"]
        info["outage"] = self._outage.clone()
        info["message_mask"] = self._message_mask()
        info["step"] = self._k.clone()
        info["day"] = torch.as_tensor(self._day.copy())
        if ended.any():
            ep = self.episode_metrics()
            info["episode"] = {k: torch.where(ended, v, torch.nan) for k, v in ep.items()}
        out = self._out
        return (out(self._obs.clone()), out(reward.to(torch.float32)), out(self._done.clone()),
                {k: (out(v) if isinstance(v, torch.Tensor) else {kk: out(vv) for kk, vv in v.items()})
                 for k, v in info.items()})

    def _advance(self, rows: torch.Tensor, a: torch.Tensor) -> dict[str, torch.Tensor]:
        """Take the pending step in the scenarios ``rows``; returns their reward and metrics."""
        cfg, N = self.config, self.n_agents
        full = len(rows) == self.num_envs
        r = rows.numpy()
        g = self._fine_index()[r]
        sub = None if full else rows
        exo = self._exogenous(g, sub)
        q_avail = exo["q_avail_mvar"] = self._q_avail(exo["pv_p_mw"], sub)
        q_inv = self._inverter_q(a, q_avail, self._outage if full else self._outage[rows])
        v_init = None if self._v is None else (self._v if full else self._v[rows])
        tap = None
        if self.tap_changer is not None:
            tap = exo["tap_pos"] = self._tap.clone() if full else self._tap[rows]
        sol = self._solve(exo, q_inv, v_init)
        ok, vm = sol["converged"], sol["vm_pu"]
        all_ok = bool(ok.all())
        flows = self._branch_metrics(sol, tap if self._avr else None)
        tap_ops = self._avr_step(rows, full, vm, ok) if self._avr else torch.zeros(len(rows), dtype=torch.float64)

        # global metrics over monitored buses (NaN for a diverged scenario; flags False)
        vm_t = vm.T.contiguous()  # bus-major: row gathers are fast
        vmon = torch.index_select(vm_t, 0, self._mon_pos)
        n_out = ((vmon < self.v_min_pu) | (vmon > self.v_max_pu)).sum(0).to(torch.float64)
        dev = (vmon - 1.0).abs()
        controllable = ok & (n_out == 0)
        share = n_out / max(self.n_monitored, 1)
        q_abs = q_inv.abs()

        # local reward: −(voltage barrier over the zone + zone's loss share + |q| cost)
        bar = barrier(torch.index_select(vm_t, 0, self._mon_zone_pos), cfg.barrier,
                      v_min_pu=self.v_min_pu, v_max_pu=self.v_max_pu)
        r_v = torch.zeros(N, len(rows), dtype=torch.float64).index_add_(0, self._mon_zone_agent, bar).T
        r_l = self._zone_loss(sol["v"])
        r_q = self._to_agents(q_abs)
        reward = -(cfg.voltage_weight * r_v + cfg.loss_weight_per_mw * r_l
                   + cfg.q_weight_per_mvar * r_q)
        if not all_ok:
            share = torch.where(ok, share, torch.nan)
            reward = torch.where(ok[:, None], reward, -cfg.divergence_penalty)

        self._store_v(rows, sol)
        self._k[rows] += 1
        self._done[rows] = (self._k[rows] >= self.episode_steps) | ~ok
        # what the sensors read before the next action; a diverged scenario keeps its last reading
        if all_ok:
            self._measure(rows, exo, q_inv, vm, g)
        elif ok.any():
            sub_exo = {k: v[ok] for k, v in exo.items()}
            self._measure(rows[ok], sub_exo, q_inv[ok], vm[ok], g[ok.numpy()])

        # episode aggregates (a diverged step adds no loss and no violations)
        acc, h = self._acc, self.step_hours
        loss0 = sol["loss_mw"] if all_ok else torch.nan_to_num(sol["loss_mw"])
        n_out0 = n_out if all_ok else torch.where(ok, n_out, 0.0)
        fl0 = flows if all_ok else {k: torch.nan_to_num(x) for k, x in flows.items()}
        for key, val in (("steps", 1.0), ("controllable_rate", controllable.to(torch.float64)),
                         ("energy_loss_mwh", loss0 * h), ("violation_bus_hours", n_out0 * h),
                         ("q_energy_mvarh", q_abs.sum(1) * h), ("return", reward.sum(1)),
                         ("line_loss_mwh", fl0["line_loss_mw"] * h),
                         ("trafo_load_loss_mwh", fl0["trafo_load_loss_mw"] * h),
                         ("trafo_noload_loss_mwh", fl0["trafo_noload_loss_mw"] * h),
                         ("overload_branch_hours", fl0["overloaded_branches"] * h),
                         ("tap_operations", tap_ops)):
            if full:
                acc[key] += val
            else:
                acc[key][rows] += val
        peak = torch.maximum(acc["max_loading_pct"] if full else acc["max_loading_pct"][rows],
                             fl0["max_loading_pct"])
        if full:
            acc["max_loading_pct"] = peak
        else:
            acc["max_loading_pct"][rows] = peak
        if not all_ok:
            acc["diverged"][rows[~ok]] = 1.0

        if full and all_ok:
            self._obs = self._observe(rows)
        elif ok.any():
            self._obs[rows[ok]] = self._observe(rows[ok])
        return {"reward": reward, "converged": ok, "controllable": controllable,
                "out_of_band_share": share, "dv_mean_pu": dev.mean(0), "dv_max_pu": dev.amax(0),
                "loss_mw": sol["loss_mw"], "q_abs_mvar": q_abs.sum(1),
                "iterations": sol["iterations"], "vm_pu": vm, "q_mvar": q_inv, "p_mw": exo["pv_p_mw"],
                "q_avail_mvar": q_avail,
                "zone_loss_mw": r_l, "reward_voltage": r_v, "reward_loss": r_l.clone(), "reward_q": r_q,
                "tap_pos": (torch.full((len(rows),), torch.nan, dtype=torch.float64) if tap is None
                            else tap.to(torch.float64)), **flows}

    def _message_mask(self) -> torch.Tensor:
        B, N = self.num_envs, self.n_agents
        p = self.config.message_dropout
        if p <= 0:  # the same graph in every scenario: one fresh [N, N] copy, broadcast
            return self._links.clone().expand(B, N, N)
        keep = torch.rand((B, len(self._edges[0])), generator=self._gen_drop) >= p
        mask = torch.eye(N, dtype=torch.bool).repeat(B, 1, 1)
        mask[:, self._edges[0], self._edges[1]] = keep
        return mask

    def episode_metrics(self) -> dict[str, torch.Tensor]:
        """Aggregates of each scenario's current (or just finished) episode, ``[B]`` float64.

        ``steps``, ``controllable_rate`` (share of steps with every monitored bus in band;
        a diverged step counts as not controllable), ``energy_loss_mwh``,
        ``violation_bus_hours`` (monitored buses out of band × hours), ``q_energy_mvarh``
        (Σ|q|·h), ``return`` (sum over steps and agents of the local rewards), ``diverged``
        (1.0 if the episode ended on a diverged power flow) and ``day``; the energy loss split
        into ``line_loss_mwh``, ``trafo_load_loss_mwh`` and ``trafo_noload_loss_mwh``;
        ``max_loading_pct`` (highest loading of any rated branch; NaN on a feeder without
        ratings), ``overload_branch_hours`` (rated branches above 100 % × hours) and
        ``tap_operations`` (moves of the tap changer, 0 without one).
        """
        out = {k: v.clone() for k, v in self._acc.items()}
        out["controllable_rate"] = out["controllable_rate"] / out["steps"].clamp(min=1.0)
        if not self._flows.has_ratings:
            out["max_loading_pct"] = torch.full_like(out["max_loading_pct"], torch.nan)
        return {k: self._out(v) for k, v in out.items()}

    def pending(self) -> dict[str, torch.Tensor]:
        """Exogenous inputs of the step that :meth:`step` would take next, per scenario, as the
        environment applies them (after ``load_scale`` and ``pv_scale``).

        ``load_p_mw``, ``load_q_mvar`` ``[B, n_load]`` (net.load order), ``sgen_p_mw``
        ``[B, n_sgen]`` (net.sgen order), ``pv_p_mw``, ``q_avail_mvar`` ``[B, n_inverter]``
        (feeder.inverters order), ``s_max_mva [n_inverter]`` (``[B, n_inverter]`` with a
        randomised ``pv_scale_range``), ``outage [B, N]`` (agents whose
        inverters are stuck at 0), ``step [B]`` (index within the episode), ``hour [B]`` and,
        on a feeder with an active tap changer, ``tap_pos [B]`` (the position the step will be
        solved at: the tap is given to controllers, never chosen by them).
        Finished scenarios report the step after their last one (it is never taken).
        """
        g = self._fine_index()
        exo = self._exogenous(g)
        exo["q_avail_mvar"] = self._q_avail(exo["pv_p_mw"])
        exo["s_max_mva"] = self._s_max().clone()
        exo["outage"] = self._outage.clone()
        exo["step"] = self._k.clone()
        exo["hour"] = torch.as_tensor((g % self.steps_per_day) * self.step_hours)
        if self.tap_changer is not None:
            exo["tap_pos"] = self._tap.clone()
        return {k: self._out(v) for k, v in exo.items()}

    def sensor_noise_pu(self) -> torch.Tensor:
        """``[B, n_bus]`` the error (p.u.) of every voltage sensor's reading in the latest
        observation (zeros without ``sensor_noise_pu``). A rule-based controller that reads its
        own voltage during the pending interval (droop) adds it, so it measures with the same
        noise as the agents' observations: like with like."""
        return self._out(self._vm_noise.clone())

    def peek(self, actions=None, *, q_mvar=None, v_init=None) -> dict[str, torch.Tensor]:
        """Solve the pending step with ``actions`` ``[B, N]`` without changing any state.

        Alternatively give ``q_mvar`` ``[B, n_inverter]`` per inverter (clipped to ±q_avail;
        outages still hold q at 0). Warm-starts from the env's last solution unless ``v_init``
        (e.g. the ``v`` of a previous peek) is given. Draws no random numbers. Returns
        ``vm_pu [B, n_bus]``, ``va_degree``, ``loss_mw [B]``, ``converged [B]``, ``q_mvar``,
        ``q_avail_mvar``, ``p_mw`` ``[B, n_inverter]``, ``vm_own_pu [B, N]`` (voltage at each
        agent's own bus), ``zone_loss_mw [B, N]`` and ``v`` (solver state for ``v_init``).
        Scenarios that did not converge carry NaN.
        """
        if (actions is None) == (q_mvar is None):
            raise ValueError("peek needs exactly one of actions or q_mvar")
        g = self._fine_index()
        exo = self._exogenous(g)
        q_avail = self._q_avail(exo["pv_p_mw"])
        if actions is not None:
            q_inv = self._inverter_q(self._check_actions(actions), q_avail, self._outage)
        else:
            q = torch.as_tensor(q_mvar, dtype=torch.float64).cpu()
            if q.shape != (self.num_envs, self.n_inverters):
                raise ValueError(f"q_mvar must have shape [num_envs, n_inverter] = "
                                 f"[{self.num_envs}, {self.n_inverters}], got {list(q.shape)}")
            if torch.isnan(q).any():
                raise ValueError("q_mvar contains NaN")
            q = torch.maximum(torch.minimum(q, q_avail), -q_avail)
            out = self._outage if self._one_to_one else self._outage[:, self.inverter_agent]
            q_inv = torch.where(out, 0.0, q)
        exo["tap_pos"] = self._tap
        sol = self._solve(exo, q_inv, self._v if v_init is None else v_init)
        res = {"vm_pu": sol["vm_pu"], "va_degree": sol["va_degree"], "loss_mw": sol["loss_mw"],
               "converged": sol["converged"], "q_mvar": q_inv, "q_avail_mvar": q_avail,
               "p_mw": exo["pv_p_mw"], "vm_own_pu": sol["vm_pu"][:, self.agent_bus_pos],
               "zone_loss_mw": self._zone_loss(sol["v"])}
        res = {k: self._out(v) for k, v in res.items()}
        res["v"] = sol["v"]
        return res

    def state(self) -> torch.Tensor:
        """Global state ``[B, state_dim]`` (float32) for centralized critics, noise-free.

        ``vm_pu − 1`` of every bus (net.bus order), net ``p_mw`` and ``q_mvar`` of every bus,
        the inverters' ``p_mw``, ``q_mvar`` and ``q_avail_mvar`` (feeder.inverters order), and
        sin/cos of the time of day, all of the last solved step.
        """
        angle = torch.as_tensor(2.0 * math.pi * (self._g_obs % self.steps_per_day) / self.steps_per_day)
        x = torch.cat([self._vm - 1.0, self._bus_p, self._bus_q, self._inv.reshape(self.num_envs, -1),
                       torch.sin(angle)[:, None], torch.cos(angle)[:, None]], 1)
        return self._out(torch.nan_to_num(x).to(torch.float32))

    @property
    def done(self) -> torch.Tensor:
        """``[B]`` bool: scenarios whose episode has ended (waiting for :meth:`reset_done`)."""
        return self._out(self._done.clone())

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.device.type == "cpu" else x.to(self.device)

    def __repr__(self) -> str:
        return (f"VoltageControlEnv({self.feeder.name!r}, num_envs={self.num_envs}, "
                f"n_agents={self.n_agents}, obs_dim={self.obs_dim}, "
                f"episode_steps={self.episode_steps}, step_minutes={self.step_minutes})")
