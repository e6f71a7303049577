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

Real inverters settle where their own output and the voltage it causes agree: ``q = Q(v(q))``.
Within each step the controller finds that fixed point with a damped iteration on the pending
step's physics (``env.peek``): ``a ← a + α (a_curve(v(a)) − a)``, starting from the previous
step's settled actions. The damping ``α`` starts at ``damping`` and halves for a scenario whose
residual grows (steep curves on weak feeders overshoot otherwise); a scenario settles when the
largest change its curve asks for falls below ``tol``. Steps still moving after ``max_iter``
iterations keep their last iterate and are reported in ``last_info["unsettled"]``.

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
        return np.interp(vm_pu, self.v_pu, self.q)


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


def resolve_curve(preset: str | None = None, curve: DroopCurve | Mapping[str, Any] | None = None) -> tuple[str, DroopCurve]:
    """The (label, curve) for a preset name or a custom curve (a :class:`DroopCurve` or a mapping
    with ``v_pu``, ``q`` and optionally ``reference``, as read from TOML)."""
    if curve is not None:
        if preset is not None:
            raise CurveError("give either a droop preset or a custom curve, not both")
        if isinstance(curve, Mapping):
            unknown = sorted(set(curve) - {"v_pu", "q", "reference"})
            missing = sorted({"v_pu", "q"} - set(curve))
            if unknown or missing:
                parts = [f"unknown keys {', '.join(unknown)} (allowed: v_pu, q, reference)"] if unknown else []
                if missing:
                    parts.append(f"missing {', '.join(missing)} (a curve needs v_pu = [...] and q = [...])")
                raise CurveError("droop curve: " + "; ".join(parts))
            curve = DroopCurve(v_pu=curve["v_pu"], q=curve["q"],
                               reference=curve.get("reference", "s_max"))
        return "custom", curve
    name = preset or DEFAULT_PRESET
    if name not in PRESETS:
        raise UnknownPreset(name, list(PRESETS))
    return name, PRESETS[name]


@dataclass(frozen=True, kw_only=True)
class DroopOptions:
    """Settings of the within-step fixed-point iteration.

    damping: initial step ``α`` of ``a ← a + α (a_curve − a)``; halves per scenario when its
        residual grows, down to ``min_damping``.
    min_damping: smallest step.
    tol: a scenario has settled when ``max |a_curve − a| < tol`` (action units, i.e. fractions of
        the available reactive power).
    max_iter: iteration cap per step; scenarios not settled by then are flagged ``unsettled``.
    """

    damping: float = 0.5
    min_damping: float = 0.02
    tol: float = 1e-4
    max_iter: int = 200

    def __post_init__(self) -> None:
        if not 0 < self.min_damping <= self.damping <= 1:
            raise ValueError(f"need 0 < min_damping ≤ damping ≤ 1, got {self.min_damping}, {self.damping}")
        if self.tol <= 0 or self.max_iter < 1:
            raise ValueError(f"need tol > 0 and max_iter ≥ 1, got {self.tol}, {self.max_iter}")


class DroopController(Controller):
    """Volt-var droop at every inverter from its own bus voltage, settled to a fixed point per step."""

    hops = 0
    communication = 0.0

    def __init__(self, feeder, *, preset: str | None = None, curve: DroopCurve | Mapping | None = None,
                 options: DroopOptions = DroopOptions()) -> None:
        super().__init__()
        label, self.curve = resolve_curve(preset, curve)
        self.preset = label
        self.name = f"droop-{label}"
        self.options = options
        inv = feeder.inverters
        agents = list(feeder.agents)
        self.n_agents = len(agents)
        s_max = inv.groupby("agent", sort=False)["s_max_mva"].sum()
        self.s_max_mva = s_max.reindex(agents).to_numpy(dtype=np.float64)  # [N]
        self._incidence = feeder.agent_incidence
        self._last: np.ndarray | None = None

    def reset(self) -> None:
        super().reset()
        self._last = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "preset": self.preset, "v_pu": list(self.curve.v_pu),
                "q": list(self.curve.q), "reference": self.curve.reference}

    def target(self, vm_own_pu: np.ndarray, q_avail_mvar: np.ndarray) -> np.ndarray:
        """The actions ``[B, N]`` the curve asks for at own-bus voltages ``vm_own_pu [B, N]`` given the
        agents' available reactive power ``q_avail_mvar [B, N]``."""
        frac = self.curve(vm_own_pu)
        if self.curve.reference == "q_avail":
            return np.clip(frac, -1.0, 1.0)
        want_mvar = frac * self.s_max_mva
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(q_avail_mvar > 0, want_mvar / q_avail_mvar, 0.0)
        return np.clip(a, -1.0, 1.0)

    def act(self, obs: Any, *, env: Any = None) -> torch.Tensor:
        """Settled droop actions for the pending step (needs ``env`` to see its physics)."""
        if env is None:
            raise ValueError("droop settles on the pending step's physics: call act(obs, env=env)")
        o = self.options
        batch = env.num_envs
        a = np.zeros((batch, self.n_agents)) if self._last is None or self._last.shape[0] != batch else self._last.copy()
        alpha = np.full(batch, o.damping)
        prev = np.full(batch, np.inf)
        settled = np.zeros(batch, dtype=bool)
        v_init = None
        for _ in range(o.max_iter):
            vm_own, q_avail, v_init = self._peek(env, a, v_init)
            step = self.target(vm_own, q_avail) - a
            step = np.where(np.isfinite(step), step, 0.0)  # a diverged peek: hold the actions
            res = np.abs(step).max(axis=1)
            settled = res < o.tol
            if settled.all():
                break
            grew = res > prev
            alpha = np.where(grew, np.maximum(alpha / 2, o.min_damping), alpha)
            prev = res
            a = np.where(settled[:, None], a, np.clip(a + alpha[:, None] * step, -1.0, 1.0))
        self._last = a
        self.last_info = {"unsettled": ~settled}
        return torch.as_tensor(a, dtype=torch.float64)

    def _peek(self, env, actions: np.ndarray, v_init):
        """Own-bus voltages and available reactive power ``[B, N]`` of the pending step under
        ``actions``, and the solver state to warm-start the next peek from."""
        res = env.peek(torch.as_tensor(actions, dtype=torch.float64), v_init=v_init)
        vm_own = np.asarray(res["vm_own_pu"].cpu(), dtype=np.float64)
        q_avail = np.asarray(res["q_avail_mvar"].cpu(), dtype=np.float64) @ self._incidence.T
        return vm_own, q_avail, res["v"]
