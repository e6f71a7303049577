"""Rule-based controllers: ``none`` (q = 0), ``droop`` (volt-var curves), ``opf`` (the optimum).

``make_controller(name, feeder, **options)`` builds one; every controller shares the interface
of trained policies (``act(obs, env=env) -> actions [B, N]``, ``hops``, ``communication``), so
evaluation runs both the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gridrl.control.base import Controller, ControllerError, CurveError, UnknownController, UnknownPreset
from gridrl.control.droop import PRESET_NAMES, PRESETS, TUNED, DroopController, DroopCurve, DroopOptions
from gridrl.control.none import NoControl
from gridrl.control.opf import OpfOptions, OptimalPowerFlow

CONTROLLERS = ("none", "droop", "opf")

__all__ = ["CONTROLLERS", "PRESETS", "PRESET_NAMES", "Controller", "ControllerError", "CurveError",
           "DroopController", "DroopCurve", "DroopOptions", "NoControl", "OpfOptions", "OptimalPowerFlow",
           "UnknownController", "UnknownPreset", "make_controller"]


def make_controller(name: str, feeder, *, preset: str | None = None, curve: DroopCurve | Mapping | None = None,
                    env_config=None, tune: Mapping[str, Any] | None = None,
                    progress: Callable[[str], None] | None = None, **options: Any) -> Controller:
    """A controller by name for ``feeder``.

    name: ``none``, ``droop`` or ``opf``.
    preset, curve: droop only — a preset name (see :data:`PRESET_NAMES`, default ``ieee1547-b``)
        or a custom curve (a :class:`DroopCurve` or a mapping with ``v_pu``, ``q``, ``reference``
        and optionally ``fit``, as a curve file holds). ``tuned`` is the curve fitted to this
        feeder on its training days for the scenario ``env_config`` (an
        :class:`~gridrl.env.EnvConfig`; default the standard one): read from the cache, or fitted
        now (seconds to minutes; ``progress`` hears what happens). A curve mapping whose ``fit``
        names another feeder, spec or scenario is refused.
    tune: droop:tuned only: fields of :class:`~gridrl.control.tuning.TuneConfig` (the search).
    options: fields of :class:`DroopOptions` (droop) or :class:`OpfOptions` (opf).
    Raises :class:`UnknownController`, :class:`UnknownPreset`, :class:`CurveError` or
    :class:`ControllerError` (an option the controller does not take).
    """
    if name not in CONTROLLERS:
        raise UnknownController(name, CONTROLLERS)
    if name != "droop" and (preset is not None or curve is not None):
        raise ControllerError(f"controller {name!r} takes no droop preset or curve")
    if tune is not None and preset != TUNED:
        raise ControllerError("tune settings apply to droop:tuned only")
    if name == "none":
        _check_options(name, options, ())
        return NoControl(feeder)
    if name == "droop":
        droop_options = _options(name, DroopOptions, options)
        if preset == TUNED:
            from gridrl.control.curvefile import curve_mapping
            from gridrl.control.tuning import TuneConfig, tuned_curve

            fitted = tuned_curve(feeder, env_config=env_config, config=_options("droop:tuned", TuneConfig, tune or {}),
                                 options=droop_options, progress=progress)
            return DroopController(feeder, curve=curve_mapping(fitted.curve, fitted.fit), options=droop_options,
                                   label=TUNED)
        if isinstance(curve, Mapping) and curve.get("fit"):
            from gridrl.control.fitted import check_fitted_for

            check_fitted_for(feeder, curve, env_config)
        return DroopController(feeder, preset=preset, curve=curve, options=droop_options)
    return OptimalPowerFlow(feeder, options=_options(name, OpfOptions, options))


def _options(name: str, cls, options: Mapping[str, Any]):
    """Options through the same validation as config files: unknown keys and wrong types listed together."""
    from gridrl.config import from_dict
    from gridrl.errors import SpecError

    try:
        return from_dict(cls, dict(options), source=f"controller {name!r} options")
    except SpecError as exc:
        raise ControllerError(str(exc)) from None


def _check_options(name: str, options: Mapping[str, Any], allowed) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        allowed_text = ", ".join(sorted(allowed)) or "none"
        raise ControllerError(f"controller {name!r} has no option {', '.join(unknown)} (options: {allowed_text})")
