"""``droop``: piecewise-linear volt-var (Q(V)) control at each inverter from its own bus voltage.

A curve is a list of breakpoints ``(v_pu, q)``: reactive power ``q`` as a fraction of a reference
at each voltage, linear in between and flat beyond the first and last breakpoint. The reference is
the inverter's nameplate apparent power ``s_max_mva`` (IEEE 1547-2018 states its curves in % of
nameplate) or its available reactive power ``sqrt(s_max² − p²)`` (MAPDN's curve). Whatever the
curve asks, an inverter never exceeds ``sqrt(s_max² − p²)``.

Presets:

- ``ieee1547-a``: IEEE 1547-2018 Category A default: +25 % at ≤ 0.90 p.u., 0 at 1.00, −25 % at
  ≥ 1.10 (no deadband).
- ``ieee1547-b``: IEEE 1547-2018 Category B default: +44 % at ≤ 0.92, 0 from 0.98 to 1.02, −44 %
  at ≥ 1.08.
- ``mapdn``: +q_max at ≤ 0.95, 0 at 1.00, −q_max at ≥ 1.05, with q_max the available reactive
  power (the droop baseline of the MAPDN benchmark).
- ``tuned``: a curve fitted to each feeder and operating point on its training days (see
  :mod:`gridrl.control.tuning`); built by :func:`gridrl.control.make_controller`.

Real inverters settle where their own output and the voltage it causes agree: ``q = Q(v(q))``.
Within each step the controller finds that fixed point with a damped iteration on the pending
step's physics (``env.peek``): ``a ← a + α (a_curve(v(a)) − a)``, starting from the previous
step's settled actions. The damping ``α`` is per agent: it starts at ``damping``, halves for an
agent whose correction changes sign (it overshot: steep curves on weak feeders do, and a
coupled pair of agents can swing against each other for hundreds of iterations at a fixed
step), and grows back by half after each correction of the same sign, up to ``damping`` again.
A scenario settles when the largest change its curve asks for falls below ``tol``. Steps still
moving after ``max_iter`` iterations keep their last iterate and are reported in
``last_info["unsettled"]``. The iteration is :func:`gridrl.env.fixed_point.damped_fixed_point`,
which the safety envelope's settled rules use too.

With sensor noise in the environment (``sensor_noise_pu``) each inverter reads its own voltage
with the error the agents' observations carry at that interval (``env.sensor_noise_pu()``), so a
comparison under noise compares like with like.

Each agent may also have a curve of its own (a curve mapping ``{"agents": {AGENT: {"v_pu": [...],
"q": [...]}, ...}}``, e.g. the curves ``gridrl export --format curves`` distils from a trained
policy; see :func:`agent_curves`); every agent of the feeder then needs one.

An agent owning several inverters on one bus acts on their sum: its curve target is the curve
fraction times the summed reference, as a share of the summed available reactive power.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from gridrl.control.base import Controller, CurveError, UnknownPreset
from gridrl.env.fixed_point import FixedPointOptions, damped_fixed_point


@dataclass(frozen=True, kw_only=True)
class DroopCurve:
    """A volt-var curve.

    v_pu: voltage breakpoints in p.u., strictly increasing.
    q: reactive power at each breakpoint as a fraction of ``reference`` in [-1, 1], non-increasing
        (a droop absorbs more as the voltage rises); positive injects.
    reference: what ``q`` is a fraction of: ``s_max`` (nameplate apparent power, IEEE 1547) or
        ``q_avail`` (available reactive power sqrt(s_max² − p²), MAPDN).
    """

    v_pu: tuple[float, ...]
    q: tuple[float, ...]
    reference: Literal["s_max", "q_avail"] = "s_max"

    def __post_init__(self) -> None:
        problems = curve_problems(self.v_pu, self.q, self.reference)
        if problems:
            raise CurveError("droop curve: " + "; ".join(problems))
        object.__setattr__(self, "v_pu", tuple(float(v) for v in self.v_pu))
        object.__setattr__(self, "q", tuple(float(v) for v in self.q))

    def __call__(self, vm_pu: np.ndarray) -> np.ndarray:
        """The curve's reactive power fraction at each voltage (flat beyond the ends)."""
        return curve_fraction(np.asarray(vm_pu, dtype=np.float64), np.array(self.v_pu), np.array(self.q))


def curve_table(curves: Sequence[DroopCurve]) -> tuple[np.ndarray, np.ndarray]:
    """Breakpoints of several curves as ``(v_pu, q)`` arrays ``[C, K]``; a curve with fewer
    breakpoints repeats its last one (zero-width segments add nothing)."""
    k = max(len(c.v_pu) for c in curves)
    v = np.array([c.v_pu + (c.v_pu[-1],) * (k - len(c.v_pu)) for c in curves], dtype=np.float64)
    q = np.array([c.q + (c.q[-1],) * (k - len(c.q)) for c in curves], dtype=np.float64)
    return v, q


def curve_fraction(vm_pu: np.ndarray, v_tab: np.ndarray, q_tab: np.ndarray) -> np.ndarray:
    """Each voltage's reactive power fraction on its own curve, flat beyond the ends.

    vm_pu ``[...]``; v_tab, q_tab ``[..., K]`` breakpoints broadcast against it (one curve for
    all, one per scenario ``[B, 1, K]``, one per agent ``[1, N, K]``). The curve is the first
    value plus each segment's slope times how far into the segment the voltage lies, which
    needs no search for the segment and so vectorises over any number of curves.
    """
    width = np.diff(v_tab, axis=-1)
    dq = np.diff(q_tab, axis=-1)
    slope = np.divide(dq, width, out=np.zeros(np.broadcast_shapes(dq.shape, width.shape)), where=width > 0)
    into = np.clip(vm_pu[..., None] - v_tab[..., :-1], 0.0, width)
    return q_tab[..., 0] + (slope * into).sum(axis=-1)


def curve_problems(v_pu: Sequence[float], q: Sequence[float], reference: str = "s_max") -> list[str]:
    """Everything wrong with a curve's breakpoints (empty when it is a valid droop curve)."""
    problems: list[str] = []
    v = _numbers("v_pu", v_pu, problems)
    qq = _numbers("q", q, problems)
    if v is None or qq is None:
        return problems
    if len(v) < 2:
        problems.append(f"needs at least 2 breakpoints, got {len(v)}")
    if len(v) != len(qq):
        problems.append(f"v_pu has {len(v)} breakpoints but q has {len(qq)}")
    if not all(math.isfinite(x) for x in v + qq):
        problems.append("breakpoints must be finite numbers")
        return problems
    if any(b <= a for a, b in zip(v, v[1:])):
        problems.append(f"v_pu breakpoints must increase strictly, got {_fmt(v)}")
    if any(b > a for a, b in zip(qq, qq[1:])):
        problems.append(f"q must not increase with voltage (a droop absorbs as voltage rises), got {_fmt(qq)}")
    if any(abs(x) > 1 for x in qq):
        problems.append(f"q is a fraction of the reference and must lie in [-1, 1], got {_fmt(qq)}")
    if v and not all(0.5 < x < 1.5 for x in v):
        problems.append(f"v_pu breakpoints must lie in (0.5, 1.5) p.u., got {_fmt(v)}")
    if reference not in ("s_max", "q_avail"):
        problems.append(f"reference must be 's_max' or 'q_avail', got {reference!r}")
    return problems


def _numbers(name: str, xs: Any, problems: list[str]) -> list[float] | None:
    """``xs`` as floats, or None (and a problem noted) when it is not a list of numbers."""
    if (isinstance(xs, str) or not isinstance(xs, Sequence | np.ndarray)
            or any(isinstance(x, bool) or not isinstance(x, int | float | np.number) for x in xs)):
        example = "[0.95, 1.0, 1.05]" if name == "v_pu" else "[1.0, 0.0, -1.0]"
        problems.append(f"{name} must be a list of numbers, e.g. {name} = {example}, got {xs!r}")
        return None
    return [float(x) for x in xs]


def _fmt(xs: Sequence[float]) -> str:
    return "[" + ", ".join(f"{x:g}" for x in xs) + "]"


PRESETS: dict[str, DroopCurve] = {
    "ieee1547-a": DroopCurve(v_pu=(0.90, 1.00, 1.10), q=(0.25, 0.0, -0.25), reference="s_max"),
    "ieee1547-b": DroopCurve(v_pu=(0.92, 0.98, 1.02, 1.08), q=(0.44, 0.0, 0.0, -0.44), reference="s_max"),
    "mapdn": DroopCurve(v_pu=(0.95, 1.00, 1.05), q=(1.0, 0.0, -1.0), reference="q_avail"),
}
DEFAULT_PRESET = "ieee1547-b"
TUNED = "tuned"  # a preset fitted to each feeder on its training days (see gridrl.control.tuning)
PRESET_NAMES = (*PRESETS, TUNED)


def resolve_curve(preset: str | None = None, curve: DroopCurve | Mapping[str, Any] | None = None) -> tuple[str, DroopCurve]:
    """The (label, curve) for a preset name or a custom curve (a :class:`DroopCurve` or a mapping
    with ``v_pu``, ``q`` and optionally ``reference`` and ``fit``, the provenance of a fitted
    curve; see :mod:`gridrl.control.curvefile`)."""
    if curve is not None:
        if preset is not None:
            raise CurveError("give either a droop preset or a custom curve, not both")
        if isinstance(curve, Mapping):
            unknown = sorted(set(curve) - {"v_pu", "q", "reference", "fit"})
            missing = sorted({"v_pu", "q"} - set(curve))
            if "fit" in curve and not isinstance(curve["fit"], Mapping):
                raise CurveError(f"droop curve: fit must be a table of provenance, got {curve['fit']!r}")
            if unknown or missing:
                parts = [f"unknown keys {', '.join(unknown)} (allowed: v_pu, q, reference, fit)"] if unknown else []
                if missing:
                    parts.append(f"missing {', '.join(missing)} (a curve needs v_pu = [...] and q = [...])")
                raise CurveError("droop curve: " + "; ".join(parts))
            curve = DroopCurve(v_pu=curve["v_pu"], q=curve["q"],
                               reference=curve.get("reference", "s_max"))
        return "custom", curve
    name = preset or DEFAULT_PRESET
    if name == TUNED:
        raise CurveError("the tuned curve is fitted to each feeder: use make_controller('droop', feeder, "
                         "preset='tuned') or gridrl.control.tuning.tuned_curve(feeder)")
    if name not in PRESETS:
        raise UnknownPreset(name, PRESET_NAMES)
    return name, PRESETS[name]


#: the key of a curve mapping that gives every agent its own curve
AGENTS = "agents"


def agent_curves(curve: Mapping[str, Any], agents: Sequence[str] | None = None) -> dict[str, DroopCurve]:
    """The per-agent curves of a mapping ``{"agents": {AGENT: {v_pu, q[, reference]}}, "fit": …}``,
    checked: every problem of every agent's curve, agents missing from ``agents`` (the feeder's)
    and agents it does not have, in one :class:`CurveError`."""
    unknown = sorted(set(curve) - {AGENTS, "fit"})
    table = curve.get(AGENTS)
    if unknown or not isinstance(table, Mapping) or not table:
        raise CurveError(f"per-agent droop curves: a mapping {{agents = {{AGENT = {{v_pu = [...], q = [...]}}}}}}"
                         f"{' without ' + ', '.join(unknown) if unknown else ''} is needed, with one curve per agent")
    problems, out = [], {}
    for agent, c in table.items():
        if not isinstance(c, Mapping):
            problems.append(f"agent {agent!r}: expected a table with v_pu and q, got {c!r}")
            continue
        try:
            out[str(agent)] = resolve_curve(None, c)[1]
        except CurveError as exc:
            problems.append(f"agent {agent!r}: {str(exc).removeprefix('droop curve: ')}")
    if agents is not None:
        missing = [a for a in agents if a not in table]
        extra = [str(a) for a in table if a not in set(agents)]
        if missing:
            problems.append(f"no curve for agent {', '.join(map(repr, missing))}")
        if extra:
            problems.append(f"the feeder has no agent {', '.join(map(repr, extra))}")
    if problems:
        raise CurveError("per-agent droop curves: " + "; ".join(problems))
    return out


#: Settings of droop's within-step fixed point (:class:`gridrl.env.fixed_point.FixedPointOptions`:
#: ``damping``, ``min_damping``, ``tol``, ``max_iter``), the iteration the safety envelope's settled
#: rules share.
DroopOptions = FixedPointOptions


class DroopController(Controller):
    """Volt-var droop at every inverter from its own bus voltage, settled to a fixed point per step."""

    information = "own voltage during the interval (settled)"
    hops = 0
    communication = 0.0

    def __init__(self, feeder, *, preset: str | None = None, curve: DroopCurve | Mapping | None = None,
                 options: DroopOptions = DroopOptions(), label: str | None = None) -> None:
        super().__init__()
        agents = list(feeder.agents)
        self.agent_curves: dict[str, DroopCurve] | None = None
        if isinstance(curve, Mapping) and AGENTS in curve:
            if preset is not None:
                raise CurveError("give either a droop preset or per-agent curves, not both")
            self.agent_curves = agent_curves(curve, agents)
            resolved, self.curve = "per-agent", None
        else:
            resolved, self.curve = resolve_curve(preset, curve)
        self.fit = dict(curve["fit"]) if isinstance(curve, Mapping) and curve.get("fit") else None
        self.preset = label or resolved
        self.name = f"droop-{self.preset}"
        self.options = options
        if self.agent_curves is None:
            self._set_curves([self.curve], repeat=1)
        else:  # one curve per agent: tables [1, N, K]
            self._set_curves([self.agent_curves[a] for a in agents], repeat=1)
            self._v_tab, self._q_tab = self._v_tab.transpose(1, 0, 2), self._q_tab.transpose(1, 0, 2)
            self._of_q_avail = self._of_q_avail.T
        inv = feeder.inverters
        self.n_agents = len(agents)
        s_max = inv.groupby("agent", sort=False)["s_max_mva"].sum()
        self.s_max_mva = s_max.reindex(agents).to_numpy(dtype=np.float64)  # [N]
        self._incidence = feeder.agent_incidence
        bus_pos = {int(b): i for i, b in enumerate(feeder.net.bus.index)}
        own = inv.drop_duplicates("agent").set_index("agent")["bus"].reindex(agents)
        self._own_bus = np.array([bus_pos[int(b)] for b in own], dtype=np.int64)  # [N] each agent's bus
        self._pf = None
        self._amap = None
        self._checked_env = None
        self._last: np.ndarray | None = None

    @classmethod
    def batch(cls, feeder, curves: Sequence[DroopCurve], *, repeat: int = 1,
              options: DroopOptions = DroopOptions()) -> DroopController:
        """One droop for many curves at once: scenarios ``c·repeat … (c+1)·repeat − 1`` of the
        environment follow ``curves[c]`` (e.g. every curve on the same ``repeat`` days), so a
        whole set of candidate curves is settled and stepped in one batched environment."""
        ctrl = cls(feeder, curve=curves[0], options=options, label="batch")
        ctrl._set_curves(curves, repeat=repeat)
        return ctrl

    def _set_curves(self, curves: Sequence[DroopCurve], *, repeat: int) -> None:
        """Breakpoint tables ``[R, 1, K]`` (R = 1: one curve for every scenario); the
        per-agent curves transpose them to ``[1, N, K]``."""
        v_tab, q_tab = curve_table(curves)
        self._v_tab = np.repeat(v_tab, repeat, axis=0)[:, None, :]
        self._q_tab = np.repeat(q_tab, repeat, axis=0)[:, None, :]
        self._of_q_avail = np.repeat([c.reference == "q_avail" for c in curves], repeat)[:, None]

    def reset(self) -> None:
        super().reset()
        self._last = None

    def describe(self) -> dict[str, Any]:
        if self.agent_curves is not None:
            curves = {a: {"v_pu": list(c.v_pu), "q": list(c.q), "reference": c.reference}
                      for a, c in self.agent_curves.items()}
            out = {**super().describe(), "preset": self.preset, AGENTS: curves}
        else:
            out = {**super().describe(), "preset": self.preset, "v_pu": list(self.curve.v_pu),
                   "q": list(self.curve.q), "reference": self.curve.reference}
        if self.fit:
            out["fit"] = self.fit
        return out

    def target(self, vm_own_pu: np.ndarray, q_avail_mvar: np.ndarray, *, rows: np.ndarray | None = None,
               s_max_mva: np.ndarray | None = None) -> np.ndarray:
        """The actions ``[B, N]`` the curve asks for at own-bus voltages ``vm_own_pu [B, N]`` given the
        agents' available reactive power ``q_avail_mvar [B, N]``; ``rows`` says which scenarios
        these are when a batch of curves (:meth:`batch`) acts on some of its scenarios only;
        ``s_max_mva [N]`` are the agents' nameplate ratings (default: the feeder's; an environment
        with ``pv_scale`` has its own, see :meth:`act`)."""
        pick = (lambda x: x) if rows is None or self._v_tab.shape[0] == 1 else (lambda x: x[rows])
        frac = curve_fraction(vm_own_pu, pick(self._v_tab), pick(self._q_tab))
        s_max = self.s_max_mva if s_max_mva is None else s_max_mva
        with np.errstate(divide="ignore", invalid="ignore"):
            of_s_max = np.where(q_avail_mvar > 0, frac * s_max / q_avail_mvar, 0.0)
        return np.clip(np.where(pick(self._of_q_avail), frac, of_s_max), -1.0, 1.0)

    def act(self, obs: Any, *, env: Any = None) -> torch.Tensor:
        """Settled droop actions for the pending step (needs ``env`` to see its physics).

        Each iteration solves the power flow of the scenarios still moving only, warm-started
        from their previous iterate, so a batch costs the sum of its scenarios' iterations
        rather than the slowest scenario's count times the batch."""
        if env is None:
            raise ValueError("droop settles on the pending step's physics: call act(obs, env=env)")
        from gridrl.control.plant import plant_from_env

        if self.fit and self._checked_env is not env:
            from gridrl.control.fitted import check_fitted_for

            check_fitted_for(env.feeder, {"fit": self.fit}, env.config)  # never a fitted curve off its scenario
            self._checked_env = env
        plant = plant_from_env(env, self._power_flow(env), self._amap)
        batch = plant.batch
        a = np.zeros((batch, self.n_agents)) if self._last is None or self._last.shape[0] != batch else self._last
        q_avail = plant.q_avail_mvar @ self._incidence.T                     # [B, N]
        s_max = np.asarray(env.s_max_mva.cpu(), dtype=np.float64) @ self._incidence.T  # the env's ratings
        v = [None]                                                            # [B, n_bus] warm starts
        # its voltage sensor errs as the agents' observations do (like with like)
        noise = (np.asarray(env.sensor_noise_pu().cpu(), dtype=np.float64)[:, self._own_bus]
                 if env.config.sensor_noise_pu > 0 else None)

        def target(a_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
            res = plant.solve(a_rows, rows, v_init=None if v[0] is None else v[0][rows])
            if v[0] is None:
                v[0] = np.array(res.v)
            else:
                v[0][rows] = res.v
            vm_own = np.where(np.asarray(res.converged)[:, None], np.asarray(res.vm_pu)[:, self._own_bus], np.nan)
            vm_own = vm_own + (0.0 if noise is None else noise[rows])
            return self.target(vm_own, q_avail[rows], rows=rows, s_max_mva=s_max)

        a, settled = damped_fixed_point(a, target, self.options)
        self._last = a
        self.last_info = {"unsettled": ~settled}
        return torch.as_tensor(a, dtype=torch.float64)

    def _power_flow(self, env):
        """The feeder's batched power flow, compiled once per controller."""
        if self._pf is None:
            from gridrl.control.plant import ActionMap

            self._pf = env.feeder.power_flow()
            self._amap = ActionMap(env.feeder, self._pf)
        return self._pf
