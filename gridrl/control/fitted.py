"""Where a fitted volt-var curve belongs: the scenario it was fitted for, and the check that it is
used only there.

A curve fitted by :mod:`gridrl.control.tuning` carries a ``fit`` table (feeder, spec hash,
scenario, ...; see :mod:`gridrl.control.curvefile`). :func:`scenario_of` is the physical scenario
of a feeder under an environment configuration; :func:`check_fitted_for` refuses a fitted curve
on another feeder, another version of its spec or another scenario. Droop checks its curve with
it when it acts, the tuner records it when it fits: both import it from here, so neither imports
the other.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from gridrl.control.base import CurveError

__all__ = ["check_fitted_for", "scenario_of"]

# EnvConfig fields that cannot change a droop rollout's physics or its band metrics; every other
# field (including ones added later) is part of the cache key, so a new knob refits by default
_NOT_PHYSICS = frozenset({"episode_hours", "start_hour", "day_sampling", "barrier", "voltage_weight",
                          "loss_weight_per_mw", "q_weight_per_mvar", "divergence_penalty", "zone_layout",
                          "forecast_steps", "forecast_noise_rel", "sensor_noise_pu", "message_dropout",
                          "observation"})
# randomised operating points (robust training): part of the scenario only when set
_ONLY_WHEN_SET = frozenset({"load_scale_range", "pv_scale_range"})


def scenario_of(feeder, env_config=None) -> dict[str, Any]:
    """The physical scenario a curve is fitted for: every :class:`~gridrl.env.EnvConfig` field
    that can change a droop rollout, with the band and the inverters' capability at night
    resolved to the feeder's when not given."""
    from gridrl.env import EnvConfig

    cfg = env_config or EnvConfig()
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if f.name in _NOT_PHYSICS:
            continue
        v = getattr(cfg, f.name)
        if v is None and f.name in _ONLY_WHEN_SET:
            continue
        out[f.name] = list(v) if isinstance(v, tuple) else v
    out["v_min_pu"] = float(cfg.v_min_pu if cfg.v_min_pu is not None else feeder.v_min_pu)
    out["v_max_pu"] = float(cfg.v_max_pu if cfg.v_max_pu is not None else feeder.v_max_pu)
    out["q_at_night"] = bool(cfg.q_at_night if cfg.q_at_night is not None else feeder.spec.pv.q_at_night)
    return out


def check_fitted_for(feeder, curve: Mapping[str, Any], env_config=None) -> None:
    """Raise :class:`CurveError` if a curve mapping's ``fit`` says it was fitted for another
    feeder, another version of this feeder's spec or another scenario: a fitted curve is never
    used where it was not fitted unless its ``[fit]`` table is removed."""
    fit = curve.get("fit") or {}
    if not fit:
        return
    where = []
    if fit.get("feeder", feeder.name) != feeder.name:
        where.append(f"feeder {fit.get('feeder')!r}, not {feeder.name!r}")
    elif fit.get("spec_hash", feeder.spec.content_hash()) != feeder.spec.content_hash():
        where.append(f"{feeder.name!r} with spec hash {fit.get('spec_hash')}, which is now "
                     f"{feeder.spec.content_hash()}")
    if "scenario" in fit:
        now = json.loads(json.dumps(scenario_of(feeder, env_config)))
        diff = sorted(k for k in set(now) | set(fit["scenario"]) if fit["scenario"].get(k) != now.get(k))
        if diff:
            where.append(f"another scenario ({', '.join(diff)} differ)")
    if where:
        raise CurveError(f"the curve was fitted for {'; '.join(where)}: refit it with `gridrl tune-droop "
                         f"--feeder {feeder.name}`, or delete its [fit] table to use it anyway")
