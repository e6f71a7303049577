"""The environment's configuration: one frozen dataclass, loadable from a TOML table.

``EnvConfig`` holds every knob of :class:`~gridrl.env.core.VoltageControlEnv` that is not the
feeder itself: the voltage band, the operating scenario (load and PV scaling, the inverters' reactive
capability at night), episode and step length, the reward (barrier and weights), the observation
layout, and the fault options for robustness studies (all off by default). Load one
from an experiment file with ``gridrl.config.from_dict(EnvConfig, table, source=path)``, which
lists every unknown key and wrong value at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Barrier = Literal["l1", "l2", "bowl", "courant_beltrami"]
ZoneLayout = Literal["pad", "pool"]
DaySampling = Literal["random", "cycle"]
Observation = Literal["measured", "previous_step"]
TapControl = Literal["avr", "fixed"]


@dataclass(frozen=True, kw_only=True)
class EnvConfig:
    """Configuration of the batched voltage-control environment.

    Voltage band
        v_min_pu, v_max_pu: the band every monitored bus should stay in; ``None`` takes the
            feeder's band (0.95–1.05 p.u. on every shipped feeder). Used by the barrier, the
            band metrics and the episode aggregates.

    Scenario (stress studies without writing a feeder; defaults keep the feeder as specified)
        load_scale: multiplies every load's P and Q at every step (power factor kept). 1.2 is
            a feeder whose loads grew by 20 %.
        pv_scale: multiplies the installed capacity of every inverter: its available PV power
            at every step *and* its apparent-power rating ``s_max_mva``, as when more PV is
            installed with inverters sized like the existing ones (the usual meaning in
            hosting-capacity and stress studies). Reactive headroom therefore scales too:
            ``q_avail = pv_scale·sqrt(s_max² − p²)``. Generators that are not inverters (e.g.
            the wind, biomass and hydro units of the SimBench feeders) are unchanged.
        q_at_night: whether inverters keep their reactive capability when their PV produces
            nothing (see :mod:`gridrl.grid.inverters`); ``None`` takes the feeder's
            ``pv.q_at_night`` (false on every shipped feeder: the common inverter, see there).
            False models inverters without a night mode: ``q_avail = 0`` while ``p ≤ 0``.

    Time
        episode_hours: length of one episode in hours (default one day, 24.0). An episode never
            crosses midnight, so it stays inside its drawn day (train and test days never mix).
        start_hour: hour of day the episode starts at; ``None`` draws a start per episode
            (seeded, aligned to the step) such that the episode ends by midnight.
        step_minutes: length of one environment step. The profiles are native 15-minute data;
            a divisor of 15 (1, 3, 5) gives finer steps, with loads and PV interpolated
            linearly between native samples (held flat after the day's last sample).
        day_sampling: how episodes pick their day from the pool (the split, or the ``days``
            given to ``make_env``): ``"random"`` draws uniformly with replacement (seeded);
            ``"cycle"`` hands out the pool's days in order, the k-th episode started (counting
            scenarios in batch order) getting ``pool[k % len(pool)]``.

    Substation tap changer (see :mod:`gridrl.grid.tapchanger`; feeders with an HV/MV
    transformer at the slack: mv-rural, mv-urban, mvlv-rural)
        tap_control: ``"avr"``: the transformer's on-load tap changer regulates the voltage of its
            MV busbar (automatic voltage regulation, below); ``"fixed"``: the tap stays where the
            net puts it (mv-urban: −1, the others: 0), as a tap changer out of service.
        source_regulator: give a feeder without a substation transformer (the IEEE cases) an
            ideal step-voltage regulator at its source bus (±10 % in 32 steps of 0.625 %,
            IEEE Std C57.15), controlled like the tap changer. Off: the source is a stiff grid.
        avr_v_set_pu: the regulated busbar's voltage setpoint.
        avr_deadband_pu: half-width of the deadband around the setpoint; must exceed half a tap
            step, else the tap hunts (SimBench's 1.5 % steps: > 0.0075).
        avr_delay_steps: environment steps the busbar voltage must stay outside the deadband
            before the tap moves one step toward the setpoint (1: the deviation measured after
            step t moves the tap for step t + 1). The tap then waits again: at most one tap
            operation per ``avr_delay_steps`` steps.

    Reward (each agent's local reward is minus a cost; summed over agents it is the global one)
        barrier: voltage barrier applied to each monitored bus of the agent's zone and summed
            over the zone (see :mod:`gridrl.env.rewards`): ``"l1"`` |v−1|, ``"l2"`` 2(v−1)²,
            ``"bowl"`` (steep outside the band, nearly flat inside), ``"courant_beltrami"``
            (squared distance outside the band, zero inside).
        voltage_weight: weight of the zone's summed barrier.
        loss_weight_per_mw: weight of the zone's share of line losses, per MW. A branch inside a
            zone is that zone's; a branch joining two zones is split half and half.
        q_weight_per_mvar: weight of the agent's reactive power |q| (summed over its inverters),
            per MVAr: a small cost so agents do not use reactive power for nothing.
        divergence_penalty: reward of every agent at a step whose power flow did not converge
            (as a cost: the reward is ``-divergence_penalty``); that episode ends there.

    Observation (layout: see ``VoltageControlEnv.obs_names``)
        observation: what an agent knows when it acts (the information model).
            ``"measured"`` (default): at the start of interval t it reads its own sensors under
            interval t's loads and PV with the set-points still in force from t−1 (the
            environment solves that instant: one extra power flow per step), its inverters'
            available power now and its own buses' P and Q now; messages carry neighbours'
            readings of the same instant. ``"previous_step"``: the solved interval t−1 (voltages
            15 minutes old), as runs trained before the measured model saw it.
        zone_layout: how zones of different sizes become fixed-size vectors. ``"pad"``: four
            features per zone bus (voltage, net P, net Q, a 0/1 mask), the agent's own bus
            first, then the others in bus order, zero-padded to the largest zone of the feeder.
            ``"pool"``: summaries over the zone (own-bus voltage, min, mean and max voltage,
            summed net P and Q) — small and size-independent, for large feeders.
        forecast_steps: an *oracle* no inverter has, off by default: the number of upcoming
            steps (after the one about to be acted on) of the agent's own PV available power and
            its zone's load P appended to its observation (0: none). Results of controllers that
            read it are labelled ``oracle``.
        forecast_noise_rel: relative standard deviation of multiplicative Gaussian noise on
            those forecasts (seeded; default 0.1; 0: perfect forecasts, which must be asked for).

    Randomised operating points (robust training; off by default, seeded)
        load_scale_range: ``(low, high)``: each episode draws its own load multiplier uniformly
            from this range (on top of ``load_scale``), per scenario.
        pv_scale_range: ``(low, high)``: each episode draws its own PV multiplier (available
            PV power and inverter ratings together, as ``pv_scale``) uniformly, per scenario.

    Faults (robustness studies; all off by default, all seeded)
        sensor_noise_pu: standard deviation (p.u.) of Gaussian noise added to the voltages in
            the observations. Observations only: physics, rewards and metrics use true values.
        message_dropout: probability that a message on one directed link of the agent graph is
            lost at one step. The environment draws the mask (``info["message_mask"]``); the
            learner applies it, since messages are exchanged on the learner's side.
        outage_prob: probability that an agent's inverters are out (stuck at q = 0) for a whole
            episode, drawn per scenario and agent at each episode start.
        outage_agents: agents whose inverters are out in every episode.
    """

    v_min_pu: float | None = None
    v_max_pu: float | None = None

    load_scale: float = 1.0
    pv_scale: float = 1.0
    q_at_night: bool | None = None

    episode_hours: float = 24.0
    start_hour: float | None = 0.0
    step_minutes: int = 15
    day_sampling: DaySampling = "random"

    tap_control: TapControl = "avr"
    source_regulator: bool = False
    avr_v_set_pu: float = 1.0
    avr_deadband_pu: float = 0.01
    avr_delay_steps: int = 1

    barrier: Barrier = "bowl"
    voltage_weight: float = 1.0
    loss_weight_per_mw: float = 1.0
    q_weight_per_mvar: float = 0.01
    divergence_penalty: float = 10.0

    observation: Observation = "measured"
    zone_layout: ZoneLayout = "pad"
    forecast_steps: int = 0
    forecast_noise_rel: float = 0.1

    load_scale_range: tuple[float, float] | None = None
    pv_scale_range: tuple[float, float] | None = None

    sensor_noise_pu: float = 0.0
    message_dropout: float = 0.0
    outage_prob: float = 0.0
    outage_agents: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problems: list[str] = []
        if (self.v_min_pu is None) != (self.v_max_pu is None):
            problems.append("give both v_min_pu and v_max_pu, or neither")
        elif self.v_min_pu is not None and not 0.0 < self.v_min_pu < 1.0 < self.v_max_pu:
            problems.append(f"the band must satisfy 0 < v_min_pu < 1 < v_max_pu, got "
                            f"{self.v_min_pu}–{self.v_max_pu}")
        if self.step_minutes <= 0 or 15 % self.step_minutes:
            problems.append(f"step_minutes must divide the native 15 minutes (1, 3, 5 or 15), "
                            f"got {self.step_minutes}")
        elif not 0 < self.episode_hours <= 24:
            problems.append(f"episode_hours must lie in (0, 24], got {self.episode_hours}")
        elif (self.episode_hours * 60) % self.step_minutes:
            problems.append(f"episode_hours ({self.episode_hours}) must be a whole number of "
                            f"{self.step_minutes}-minute steps")
        elif self.start_hour is not None:
            if self.start_hour < 0 or self.start_hour + self.episode_hours > 24:
                problems.append(f"start_hour + episode_hours must stay within the day, got "
                                f"{self.start_hour} + {self.episode_hours}")
            elif (self.start_hour * 60) % self.step_minutes:
                problems.append(f"start_hour ({self.start_hour}) must fall on a "
                                f"{self.step_minutes}-minute step")
        for name in ("load_scale", "pv_scale"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                problems.append(f"{name} must be a number > 0, got {value!r}")
        for name in ("voltage_weight", "loss_weight_per_mw", "q_weight_per_mvar",
                     "divergence_penalty", "forecast_noise_rel", "sensor_noise_pu"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be ≥ 0, got {getattr(self, name)}")
        for name in ("load_scale_range", "pv_scale_range"):
            rng = getattr(self, name)
            if rng is not None and not (len(rng) == 2 and all(isinstance(x, int | float) and math.isfinite(x)
                                                              for x in rng) and 0 < rng[0] <= rng[1]):
                problems.append(f"{name} must be (low, high) with 0 < low ≤ high, got {rng!r}")
        if self.tap_control not in ("avr", "fixed"):
            problems.append(f"tap_control must be 'avr' or 'fixed', got {self.tap_control!r}")
        if not (isinstance(self.avr_v_set_pu, int | float) and 0.8 < self.avr_v_set_pu < 1.2):
            problems.append(f"avr_v_set_pu must lie in (0.8, 1.2), got {self.avr_v_set_pu!r}")
        if not (isinstance(self.avr_deadband_pu, int | float) and 0.0 < self.avr_deadband_pu < 0.1):
            problems.append(f"avr_deadband_pu must lie in (0, 0.1), got {self.avr_deadband_pu!r}")
        if not (isinstance(self.avr_delay_steps, int) and self.avr_delay_steps >= 1):
            problems.append(f"avr_delay_steps must be an integer ≥ 1, got {self.avr_delay_steps!r}")
        if self.forecast_steps < 0:
            problems.append(f"forecast_steps must be ≥ 0, got {self.forecast_steps}")
        for name in ("message_dropout", "outage_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} is a probability in [0, 1], got {getattr(self, name)}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def randomised(self) -> bool:
        """Whether episodes draw their own operating point (``*_scale_range`` set)."""
        return self.load_scale_range is not None or self.pv_scale_range is not None

    @property
    def steps_per_episode(self) -> int:
        """Environment steps in one episode."""
        return round(self.episode_hours * 60 / self.step_minutes)
