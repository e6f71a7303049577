"""``droop:tuned``: a volt-var curve fitted to one feeder and operating point on its training days.

A standard curve (IEEE 1547, MAPDN's) is written for every feeder at once; an engineer
commissioning inverters on a known feeder would set the curve for that feeder. The tuned curve
is that baseline: the best curve of a documented family found by a black-box search that sees
the training days only. A learner has to beat it, not only the standard presets.

**The family.** One curve shared by every inverter, in the IEEE 1547-2018 format: four
breakpoints ``(V1, Q1) (V2, Q2) (V3, Q3) (V4, Q4)`` with ``Q2 = Q3`` (the deadband's level, a
reactive bias), ``q`` in fractions of nameplate ``s_max`` (always also limited by the available
``sqrt(s_max² − p²)``). Seven parameters, searched only inside IEEE 1547-2018 Category B's
adjustable ranges (its Table 8) and inside the inverters' capability (:class:`TuneConfig`):

- voltages: the centre ``VRef`` in 0.95–1.05 p.u.; ``V2`` in ``VRef − 0.03 … VRef`` and ``V3``
  in ``VRef … VRef + 0.03`` (a symmetric deadband, half width 0–0.03 p.u.); ``V1`` from
  ``VRef − 0.18`` to ``V2 − 0.02`` and ``V4`` from ``V3 + 0.02`` to ``VRef + 0.18`` (0.02 p.u. is
  the standard's steepest slope, which keeps the loop of inverter and grid stable);
- reactive power: ``Q1`` injects (``0 ≤ Q1``), ``Q4`` absorbs (``Q4 ≤ 0``), the bias ``Q2 = Q3``
  either way, ``Q1 ≥ Q2 ≥ Q4``, and every ``|Q|`` at most the inverter's reactive rating
  ``q_max``: Category B's 44 % of nameplate apparent power, and no more than the headroom an
  inverter has at rated active power, ``sqrt(s_max² − p_peak²)/s_max`` (0.553 with gridrl's
  ``s_max = 1.2 × p_peak``, so 44 % binds on every shipped feeder; :func:`q_rating`).

IEEE 1547-A and -B lie in this family.

**The objective** ("in band first"): minimise the feeder's energy loss over the training days
subject to a controllable rate (share of steps with every monitored bus in the band) at least
that of the better IEEE 1547 preset (``ieee1547-a``, ``ieee1547-b``: the standard curves inside
the family, so the constraint can always be met) on the same days, and no step whose droop fixed point did not settle or whose power flow diverged. Candidates are
ranked by Deb's feasibility rules: a feasible curve beats an infeasible one; feasible curves
compare by loss; infeasible ones by their shortfall of controllable rate, then unsettled or
diverged steps, then out-of-band bus-hours, then loss. Rankings need no penalty weight to tune.

**The search.** The controllable rate is a step function of the curve and the loss has kinks
where an inverter reaches a breakpoint or its limit, so gradients are useless; the parameters
are few (7) and every candidate costs full-day rollouts. Hence a derivative-free search whose
candidates are scored together, many curves × days in one batched environment:

1. IEEE 1547-A and -B (the family's standard members);
2. a coarse grid over the high-voltage half of the curve (where absorption starts, the ramp, the
   absorption level: 9 × 2 × 2) on the best so far, then over the low-voltage half (deadband,
   ramp, injection level: 4 × 2 × 4) on the best so far. The two halves act in different hours
   (noon PV rise, evening load sag), so searching them one after the other loses little, and a
   grid reaches the edges of the box where the best curves lie (late, steep absorption), which a
   random initial design in 7 dimensions rarely samples;
3. CMA-ES (pycma, population 14, initial step 0.1 of each range) from the best curve for the rest
   of the ``budget``. It is told only each generation's ranking (it uses nothing else), so Deb's
   order needs no penalty weights; it adapts to the correlated parameters (a ramp and its
   level trade off through their slope);
4. the ``select_top`` best curves of the search, IEEE 1547-A and -B are scored again on *every*
   training day, and the best of them by the same rule is the tuned curve, so it never ranks
   below those standard curves on the training objective.

The search scores on ``search_days`` representative training days to stay fast: the days on
which the uncontrolled feeder leaves the band most (where the constraint binds) and the medoids
of k-means clusters of the other days' voltage envelopes, weighted by their clusters' sizes.

Measured on ieee33 (budget 160, 24 search days; ``gridrl tune-droop --feeder ieee33``): a random
initial design (32 Sobol points) followed by a compass search reached 149.8 MWh on the training
days, the same followed by CMA-ES 125.4 MWh, the staged grids followed by CMA-ES 115.8 MWh
(IEEE 1547-B: 130.1 MWh at a lower controllable rate).

Test days are never simulated: every environment of the fit is built on the ``train`` split,
which refuses test days.

**Never stale.** A fitted curve is cached under the user cache directory, keyed by the
feeder's content hash, the package versions that build it, the scenario (every physical field of
the :class:`~gridrl.env.EnvConfig` — band, step length, load and PV scaling, night-time reactive
power, outages — with the band resolved to the feeder's), the search settings and this module's
version. Anything else refits. The cached file is an ordinary curve file
(:mod:`gridrl.control.curvefile`) whose ``[fit]`` table holds that key and the provenance.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gridrl.control.base import CurveError
from gridrl.control.droop import PRESETS, DroopController, DroopCurve, DroopOptions
from gridrl.control.fitted import check_fitted_for, scenario_of

__all__ = ["CATEGORY_B", "OBJECTIVE", "FittedCurve", "TuneConfig", "cache_path", "check_fitted_for", "cma_in_cube",
           "curve_from_unit", "fit_droop", "q_rating", "residual_curve", "scenario_of", "score_curves", "standard_points",
           "tune_key", "tuned_curve"]

log = logging.getLogger(__name__)

_TUNE_VERSION = 4
N_PARAMS = 7

OBJECTIVE = ("minimise energy loss over the training days subject to a controllable rate at least that "
             "of the better IEEE 1547 preset (ieee1547-a, ieee1547-b) on the same days and no "
             "unsettled or diverged step; infeasible curves rank by controllable-rate shortfall, then "
             "unsettled/diverged steps, then out-of-band bus-hours")

#: the presets whose controllable rate the tuned curve must reach: the standard curves inside the
#: family (MAPDN's reaches 100 % of the available reactive power, beyond Category B's 44 %, so a
#: Category B curve may be unable to match its rate, and the fit would then trade any loss for rate)
REFERENCE_PRESETS = ("ieee1547-a", "ieee1547-b")


#: IEEE 1547-2018 Category B's adjustable volt-var ranges (Table 8) and reactive rating (Table 7),
#: in p.u. of nominal voltage and fractions of nameplate apparent power: the fit never leaves them.
CATEGORY_B = {"v_ref_min_pu": 0.95, "v_ref_max_pu": 1.05, "max_half_deadband_pu": 0.03, "min_ramp_pu": 0.02,
              "max_reach_pu": 0.18, "q_limit": 0.44}


@dataclass(frozen=True, kw_only=True)
class TuneConfig:
    """Settings of the droop:tuned search (defaults: IEEE 1547-2018 Category B ranges, which the
    range settings may narrow but never widen; see :data:`CATEGORY_B`).

    search_days: representative training days each candidate is scored on during the search
        (see :func:`_search_days`).
    budget: candidate curves scored in the search (seeds and grids included).
    select_top: best search candidates re-scored, with IEEE 1547-A and -B, for the final choice.
    select_days: training days of the final choice: ``None`` every one (default), or that many
        representative days chosen like ``search_days`` (for feeders too large to run them all).
    seed: seed of the Sobol scramble (and of the environment).
    v_ref_min_pu, v_ref_max_pu: range of the curve's centre.
    max_half_deadband_pu: largest half width of the deadband ``(V3 − V2)/2``.
    min_ramp_pu: narrowest ramp ``V2 − V1`` or ``V4 − V3`` (sets the steepest slope).
    max_reach_pu: farthest ``V1`` and ``V4`` from the centre.
    q_limit: largest reactive power of any breakpoint, as a fraction of ``s_max`` (at most
        Category B's 0.44; the fit lowers it further to the inverters' headroom at rated
        power where that is smaller, see :func:`q_rating`).
    max_batch: most scenarios (curves × days) stepped together (memory bound).
    """

    search_days: int = 24
    budget: int = 160
    select_top: int = 4
    select_days: int | None = None
    seed: int = 0
    v_ref_min_pu: float = 0.95
    v_ref_max_pu: float = 1.05
    max_half_deadband_pu: float = 0.03
    min_ramp_pu: float = 0.02
    max_reach_pu: float = 0.18
    q_limit: float = 0.44
    max_batch: int = 768

    def __post_init__(self) -> None:
        problems = []
        for name in ("search_days", "budget", "select_top", "max_batch"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.select_days is not None and self.select_days < 1:
            problems.append(f"select_days must be ≥ 1 (or omitted for every training day), got {self.select_days}")
        if not 0.5 < self.v_ref_min_pu <= self.v_ref_max_pu < 1.5:
            problems.append(f"need 0.5 < v_ref_min_pu ≤ v_ref_max_pu < 1.5, got {self.v_ref_min_pu}, "
                            f"{self.v_ref_max_pu}")
        if self.max_half_deadband_pu < 0 or self.min_ramp_pu <= 0:
            problems.append(f"need max_half_deadband_pu ≥ 0 and min_ramp_pu > 0, got "
                            f"{self.max_half_deadband_pu}, {self.min_ramp_pu}")
        elif self.max_reach_pu < self.max_half_deadband_pu + self.min_ramp_pu:
            problems.append(f"max_reach_pu ({self.max_reach_pu}) must be ≥ max_half_deadband_pu + min_ramp_pu "
                            f"({self.max_half_deadband_pu + self.min_ramp_pu:g})")
        if not self.q_limit > 0:
            problems.append(f"q_limit is a fraction of s_max > 0, got {self.q_limit}")
        b = CATEGORY_B
        wider = [f"{name} = {getattr(self, name):g} (Category B: {'≥' if name in ('v_ref_min_pu', 'min_ramp_pu') else '≤'} "
                 f"{b[name]:g})" for name in b
                 if (getattr(self, name) < b[name] if name in ("v_ref_min_pu", "min_ramp_pu")
                     else getattr(self, name) > b[name])]
        if wider:
            problems.append(f"the search must stay inside IEEE 1547-2018 Category B: {', '.join(wider)}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class FittedCurve:
    """A tuned curve and its provenance (the ``[fit]`` table of its curve file)."""

    curve: DroopCurve
    fit: dict[str, Any]


# --------------------------------------------------------------------------------------------
# the family of curves: the unit cube ↔ IEEE 1547 breakpoints
# --------------------------------------------------------------------------------------------


# coordinates of the unit cube: the high-voltage half of the curve, the low-voltage half, the bias
_V3, _DEADBAND, _BIAS, _RAMP_LOW, _RAMP_HIGH, _Q_INJECT, _Q_ABSORB = range(N_PARAMS)
_HIGH = (_V3, _RAMP_HIGH, _Q_ABSORB)
_LOW = (_DEADBAND, _RAMP_LOW, _Q_INJECT)


def _params(u: np.ndarray, cfg: TuneConfig) -> dict[str, float]:
    """Curve parameters of a point ``u`` of the unit cube ``[0, 1]^7``.

    The coordinates are chosen so that each half of the curve has its own: ``V3`` (where
    absorption starts), the deadband ``V3 − V2`` within what keeps ``v_ref`` in range, ramps on
    a log scale (as fine at the steep end as at the gentle one) and the end levels as shares of
    the way from the bias to ``±q_limit``; the bias is warped (``x·|x|``) to resolve small ones.
    """
    u = np.clip(np.asarray(u, dtype=np.float64), 0.0, 1.0)
    v3 = cfg.v_ref_min_pu + u[_V3] * (cfg.v_ref_max_pu + cfg.max_half_deadband_pu - cfg.v_ref_min_pu)
    d_lo = max(0.0, 2.0 * (v3 - cfg.v_ref_max_pu))
    d_hi = min(2.0 * cfg.max_half_deadband_pu, 2.0 * (v3 - cfg.v_ref_min_pu))
    half = (d_lo + u[_DEADBAND] * (d_hi - d_lo)) / 2.0
    x = 2.0 * u[_BIAS] - 1.0
    q_bias = cfg.q_limit * x * abs(x)
    widest = cfg.max_reach_pu - half
    ramp = lambda t: cfg.min_ramp_pu * (widest / cfg.min_ramp_pu) ** t  # noqa: E731
    # Q1 injects and Q4 absorbs (Category B): each end starts where the bias leaves zero behind
    inject_from, absorb_from = max(q_bias, 0.0), min(q_bias, 0.0)
    return {"v_ref_pu": v3 - half, "half_deadband_pu": half, "q_bias": q_bias,
            "ramp_low_pu": ramp(u[_RAMP_LOW]), "ramp_high_pu": ramp(u[_RAMP_HIGH]),
            "q_inject": inject_from + u[_Q_INJECT] * (cfg.q_limit - inject_from),
            "q_absorb": absorb_from - u[_Q_ABSORB] * (absorb_from + cfg.q_limit)}


def _unit(p: Mapping[str, float], cfg: TuneConfig) -> np.ndarray | None:
    """The point of the unit cube with parameters ``p`` (None when they lie outside the ranges)."""
    half, qb = p["half_deadband_pu"], p["q_bias"]
    v3 = p["v_ref_pu"] + half
    d_lo = max(0.0, 2.0 * (v3 - cfg.v_ref_max_pu))
    d_hi = min(2.0 * cfg.max_half_deadband_pu, 2.0 * (v3 - cfg.v_ref_min_pu))
    widest = cfg.max_reach_pu - half
    log_ramp = lambda r: math.log(r / cfg.min_ramp_pu) / math.log(widest / cfg.min_ramp_pu) if r > 0 else -1.0  # noqa: E731
    u = np.zeros(N_PARAMS)
    u[_V3] = (v3 - cfg.v_ref_min_pu) / (cfg.v_ref_max_pu + cfg.max_half_deadband_pu - cfg.v_ref_min_pu)
    u[_DEADBAND] = (2.0 * half - d_lo) / (d_hi - d_lo) if d_hi > d_lo else 0.0
    u[_BIAS] = (np.sign(qb) * math.sqrt(abs(qb) / cfg.q_limit) + 1.0) / 2.0
    u[_RAMP_LOW], u[_RAMP_HIGH] = log_ramp(p["ramp_low_pu"]), log_ramp(p["ramp_high_pu"])
    inject_from, absorb_from = max(qb, 0.0), min(qb, 0.0)
    u[_Q_INJECT] = (p["q_inject"] - inject_from) / (cfg.q_limit - inject_from) if cfg.q_limit > inject_from else 0.0
    u[_Q_ABSORB] = (absorb_from - p["q_absorb"]) / (absorb_from + cfg.q_limit) if absorb_from + cfg.q_limit > 0 else 0.0
    if not np.all((u >= -1e-9) & (u <= 1 + 1e-9)) or not np.allclose(_vector(_params(u, cfg)), _vector(p), atol=1e-5):
        return None
    return np.clip(u, 0.0, 1.0)


def _vector(p: Mapping[str, float]) -> np.ndarray:
    return np.array([p[k] for k in ("v_ref_pu", "half_deadband_pu", "q_bias", "ramp_low_pu", "ramp_high_pu",
                                     "q_inject", "q_absorb")])


def curve_from_unit(u: np.ndarray, cfg: TuneConfig = TuneConfig()) -> DroopCurve:
    """The curve of the family at point ``u`` of the unit cube (a zero deadband merges V2, V3)."""
    p = _params(u, cfg)
    v2, v3 = p["v_ref_pu"] - p["half_deadband_pu"], p["v_ref_pu"] + p["half_deadband_pu"]
    v = [round(x, 6) for x in (v2 - p["ramp_low_pu"], v2, v3, v3 + p["ramp_high_pu"])]
    q = [round(x, 6) for x in (p["q_inject"], p["q_bias"], p["q_bias"], p["q_absorb"])]
    if v[2] <= v[1]:  # a deadband narrower than the breakpoints' precision is none
        del v[2], q[2]
    return DroopCurve(v_pu=tuple(v), q=tuple(q), reference="s_max")


# stage grids: the high-voltage half (where absorption starts, its ramp, its level) on the curve of
# the best seed, then the low-voltage half (deadband, ramp, injection) on the best so far; the two
# halves act in different hours (noon PV, evening load), so one after the other loses little
_GRID_HIGH = [(v3, r, q) for v3 in np.linspace(0.45, 0.85, 9) for r in (0.0, 0.5) for q in (0.5, 1.0)]
_GRID_LOW = [(d, r, q) for d in (0.0, 0.33, 0.67, 1.0) for r in (0.0, 0.6) for q in (0.0, 0.15, 0.35, 0.7)]

# the standard curves expressible in the family seed the search
_SEEDS = {
    "ieee1547-a": {"v_ref_pu": 1.0, "half_deadband_pu": 0.0, "q_bias": 0.0, "ramp_low_pu": 0.10,
                   "ramp_high_pu": 0.10, "q_inject": 0.25, "q_absorb": -0.25},
    "ieee1547-b": {"v_ref_pu": 1.0, "half_deadband_pu": 0.02, "q_bias": 0.0, "ramp_low_pu": 0.06,
                   "ramp_high_pu": 0.06, "q_inject": 0.44, "q_absorb": -0.44},
}


def standard_points(cfg: TuneConfig) -> list[np.ndarray]:
    """The points of the unit cube of IEEE 1547-A and -B (those inside ``cfg``'s ranges)."""
    return [u for u in (_unit(p, cfg) for p in _SEEDS.values()) if u is not None]


# --------------------------------------------------------------------------------------------
# scoring many curves at once
# --------------------------------------------------------------------------------------------

SCORE_COLUMNS = ("energy_loss_mwh", "controllable_rate", "violation_bus_hours", "unsettled_steps", "diverged_days")


def score_curves(feeder, curves: Sequence[DroopCurve], days: Sequence[int], *, weights: Sequence[float] | None = None,
                 env_config=None, options: DroopOptions = DroopOptions(), max_batch: int = 768, seed: int = 0,
                 split: str = "train", on_batch: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Each curve over whole ``days`` of ``split``, as ``[C]`` arrays (:data:`SCORE_COLUMNS`).

    ``energy_loss_mwh`` and ``violation_bus_hours`` are sums over the days weighted by
    ``weights`` (default 1 each: a sample of days standing for more days counts more),
    ``controllable_rate`` the weighted mean; ``unsettled_steps`` and ``diverged_days`` are
    plain counts. Curves × days run as
    scenarios of one batched environment (at most ``max_batch`` at a time, whole curves per
    batch) in which each curve's droop settles at every step, exactly as ``gridrl evaluate``
    runs one. ``on_batch`` is told how many curve-days each batch finished.
    """
    from gridrl.env import EnvConfig, make_env

    days = [int(d) for d in days]
    n_days = len(days)
    w = np.ones(n_days) if weights is None else np.asarray(weights, dtype=np.float64)
    cfg = dataclasses.replace(env_config or EnvConfig(), start_hour=0.0, episode_hours=24.0, day_sampling="cycle")
    per_batch = max(1, max_batch // n_days)
    out = {k: np.zeros(len(curves)) for k in SCORE_COLUMNS}
    envs: dict[int, Any] = {}
    for start in range(0, len(curves), per_batch):
        chunk = list(curves[start:start + per_batch])
        batch = len(chunk) * n_days
        if batch not in envs:
            envs[batch] = make_env(feeder, split=split, num_envs=batch, seed=seed, days=days, config=cfg)
        env = envs[batch]
        ctrl = DroopController.batch(feeder, chunk, repeat=n_days, options=options)
        obs = env.reset(seed=seed, days=days * len(chunk))
        ctrl.reset()
        unsettled = np.zeros(batch)
        for _ in range(env.episode_steps):
            actions = ctrl.act(obs, env=env)
            obs, _, done, _ = env.step(actions)
            unsettled += ctrl.last_info["unsettled"]
            if bool(done.all()):
                break
        ep = {k: np.asarray(v.cpu(), dtype=np.float64).reshape(len(chunk), n_days)
              for k, v in env.episode_metrics().items()}
        sl = slice(start, start + len(chunk))
        out["energy_loss_mwh"][sl] = np.nansum(ep["energy_loss_mwh"] * w, axis=1)
        out["controllable_rate"][sl] = (ep["controllable_rate"] * w).sum(axis=1) / w.sum()
        out["violation_bus_hours"][sl] = np.nansum(ep["violation_bus_hours"] * w, axis=1)
        out["unsettled_steps"][sl] = unsettled.reshape(len(chunk), n_days).sum(axis=1)
        out["diverged_days"][sl] = ep["diverged"].sum(axis=1)
        if on_batch is not None:
            on_batch(batch)
    return out


def _rank_keys(scores: Mapping[str, np.ndarray], cr_ref: float) -> list[tuple]:
    """Deb's feasibility ranking as sort keys (smaller is better), one per scored curve."""
    keys = []
    for i in range(len(scores["energy_loss_mwh"])):
        short = max(0.0, cr_ref - float(scores["controllable_rate"][i]))
        short = 0.0 if short < 1e-9 else short
        flagged = float(scores["unsettled_steps"][i] + scores["diverged_days"][i])
        loss = float(scores["energy_loss_mwh"][i])
        if short == 0.0 and flagged == 0.0:
            keys.append((0, 0.0, 0.0, 0.0, loss))
        else:
            keys.append((1, short, flagged, float(scores["violation_bus_hours"][i]), loss))
    return keys


# --------------------------------------------------------------------------------------------
# the fit
# --------------------------------------------------------------------------------------------


def tune_key(feeder, env_config=None, config: TuneConfig = TuneConfig(),
             options: DroopOptions = DroopOptions()) -> str:
    """The cache key of a tuned curve: feeder content, packages, scenario, search settings, code."""
    from gridrl.config import to_dict
    from gridrl.grid.feeder import _code_key

    blob = {"feeder": feeder.name, "spec_hash": feeder.spec.content_hash(), "packages": _code_key(),
            "scenario": scenario_of(feeder, env_config), "tune": to_dict(config), "droop": to_dict(options),
            "version": _TUNE_VERSION}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _search_days(feeder, env_config, n: int, seed: int) -> tuple[list[int], list[float]]:
    """``n`` representative training days to search on, and how many training days each stands
    for, so that weighted sums estimate sums over every training day.

    The uncontrolled feeder is run over every training day; each day is described by its lowest
    and highest monitored voltage in each hour. The ``n/4`` days that leave the band most stand
    for themselves (the band constraint binds there); the other days are grouped by k-means
    (seeded k-means++) on the standardized descriptions into the remaining number of clusters,
    each represented by its medoid weighted by the cluster's size. Measured on ieee33 (16
    curves, every training day), 24 such days rank the curves' total loss like all 293 days
    (Kendall τ = 1.0) where 24 evenly spread days do not (τ = 0.97).
    """
    from scipy.cluster.vq import kmeans2

    from gridrl.control.none import NoControl
    from gridrl.env import EnvConfig, make_env

    train = [int(d) for d in feeder.days("train")]
    if n >= len(train):
        return train, [1.0] * len(train)
    cfg = dataclasses.replace(env_config or EnvConfig(), start_hour=0.0, episode_hours=24.0, day_sampling="cycle")
    env = make_env(feeder, split="train", num_envs=len(train), seed=seed, days=train, config=cfg)
    obs = env.reset(seed=seed, days=train)
    ctrl = NoControl(feeder)
    mon = np.asarray(env.monitored.cpu(), dtype=bool)
    per_hour = max(1, round(60 / cfg.step_minutes))
    lo, hi = [], []
    for k in range(env.episode_steps):
        obs, _, done, info = env.step(ctrl.act(obs, env=env))
        if k % per_hour == 0:
            vm = np.nan_to_num(np.asarray(info["vm_pu"].cpu(), dtype=np.float64)[:, mon], nan=1.0)
            lo.append(vm.min(axis=1))
            hi.append(vm.max(axis=1))
        if bool(done.all()):
            break
    viol = np.nan_to_num(np.asarray(env.episode_metrics()["violation_bus_hours"].cpu(), dtype=np.float64))
    stress = [i for i in np.argsort(-viol, kind="stable")[: n // 4] if viol[i] > 0]
    rest = np.setdiff1d(np.arange(len(train)), stress)
    x = np.hstack([np.array(lo).T, np.array(hi).T])[rest]
    x = (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-9)
    centres, label = kmeans2(x, n - len(stress), seed=seed, minit="++")
    picked = {int(i): 1.0 for i in stress}
    for c in range(len(centres)):
        members = np.flatnonzero(label == c)
        if len(members):
            medoid = members[np.argmin(((x[members] - centres[c]) ** 2).sum(axis=1))]
            picked[int(rest[medoid])] = float(len(members))
    order = sorted(picked)
    return [train[i] for i in order], [picked[i] for i in order]


def q_rating(feeder) -> float:
    """The reactive rating every inverter of ``feeder`` has at any active power, as a fraction of
    its ``s_max``: Category B's 44 % of nameplate apparent power, or less where an inverter at
    its rated active power (its PV peak) has less headroom, ``sqrt(s_max² − p_peak²)/s_max``."""
    inv = feeder.inverters
    ratio = (inv["p_peak_mw"].to_numpy(dtype=float) / inv["s_max_mva"].to_numpy(dtype=float)).clip(0.0, 1.0)
    headroom = float(np.sqrt(1.0 - ratio ** 2).min()) if len(ratio) else CATEGORY_B["q_limit"]
    if headroom <= 0.0:
        raise CurveError(f"the inverters of {feeder.name!r} have no reactive power left at rated active power "
                         f"(s_max = p_peak); rate them above their PV peak (pv.s_max_ratio > 1) to tune droop")
    return min(CATEGORY_B["q_limit"], headroom)


def fit_droop(feeder, *, env_config=None, config: TuneConfig = TuneConfig(), options: DroopOptions = DroopOptions(),
              progress: Callable[[str], None] | None = None) -> FittedCurve:
    """Fit the tuned curve of ``feeder`` for the scenario ``env_config`` on its training days
    (see the module docstring for the family, objective and search)."""
    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    space = dataclasses.replace(config, q_limit=min(config.q_limit, q_rating(feeder)))
    days, weights = _search_days(feeder, env_config, config.search_days, config.seed)
    curve_days = [0]

    def score(curves, on_days, on_weights=None):
        s = score_curves(feeder, curves, on_days, weights=on_weights, env_config=env_config, options=options,
                         max_batch=config.max_batch, seed=config.seed)
        curve_days[0] += len(curves) * len(on_days)
        return s

    presets = list(PRESETS)
    inside = [i for i, p in enumerate(presets) if p in REFERENCE_PRESETS]
    ref = score([PRESETS[p] for p in presets], days, weights)
    cr_ref = float(ref["controllable_rate"][inside].max())
    say(f"{feeder.name}: searching on {len(days)} training days; IEEE 1547 controllable rate {cr_ref:.4f}")

    points: list[np.ndarray] = []
    keys: list[tuple] = []
    loss, rate = [], []

    def add(us) -> list[tuple]:
        """Score new cube points on the search days; their rank keys."""
        us = [u for u in us if not any(np.allclose(u, v) for v in points)][: config.budget - len(points)]
        if not us:
            return []
        s = score([curve_from_unit(u, space) for u in us], days, weights)
        k = _rank_keys(s, cr_ref)
        points.extend(us)
        keys.extend(k)
        loss.extend(s["energy_loss_mwh"])
        rate.extend(s["controllable_rate"])
        b = min(range(len(points)), key=keys.__getitem__)
        say(f"{feeder.name}: {len(points)}/{config.budget} curves scored, best {loss[b]:.3f} MWh at "
            f"controllable rate {rate[b]:.4f}")
        return k

    seeds = standard_points(space)
    add(seeds)
    for axes, grid in ((_HIGH, _GRID_HIGH), (_LOW, _GRID_LOW)):
        base = points[min(range(len(points)), key=keys.__getitem__)]
        trial = []
        for values in grid:
            u = base.copy()
            u[list(axes)] = values
            trial.append(u)
        add(trial)
    es = cma_in_cube(points[min(range(len(points)), key=keys.__getitem__)], space)
    while len(points) < config.budget:
        gen = [np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0) for x in es.ask()]
        k = add(gen)
        if len(k) == len(gen):
            rank = np.empty(len(gen))
            rank[sorted(range(len(gen)), key=k.__getitem__)] = np.arange(len(gen))
            es.tell(gen, rank.tolist())  # CMA-ES uses only the ranking, so Deb's order is all it needs
        elif not k:
            break  # every point of the generation was scored before: the search has converged

    # the final choice on every training day, against the presets on the same days; the standard
    # curves of the family are candidates too, so the tuned curve never ranks below them there
    order = sorted(range(len(points)), key=keys.__getitem__)
    top: list[DroopCurve] = []
    for i in order:
        c = curve_from_unit(points[i], space)
        if c not in top:
            top.append(c)
        if len(top) == config.select_top:
            break
    top += [c for c in (curve_from_unit(u, space) for u in seeds) if c not in top]
    if config.select_days is None:
        train, train_weights = [int(d) for d in feeder.days("train")], None
    else:
        train, train_weights = _search_days(feeder, env_config, config.select_days, config.seed)
    say(f"{feeder.name}: choosing among the best {len(top)} on {len(train)} training days")
    final = score(top + [PRESETS[p] for p in presets], train, train_weights)
    cr_full = float(final["controllable_rate"][[len(top) + i for i in inside]].max())
    fkeys = _rank_keys(final, cr_full)
    pick = min(range(len(top)), key=fkeys.__getitem__)
    curve = top[pick]
    u = _unit_of_curve(curve, space)

    def figures(i):
        return {"energy_loss_mwh": float(final["energy_loss_mwh"][i]),
                "controllable_rate": float(final["controllable_rate"][i]),
                "violation_bus_hours": float(final["violation_bus_hours"][i]),
                "unsettled_steps": int(final["unsettled_steps"][i]), "diverged_days": int(final["diverged_days"][i])}

    from importlib.metadata import version

    fit = {
        "feeder": feeder.name,
        "spec_hash": feeder.spec.content_hash(),
        "key": tune_key(feeder, env_config, config, options),
        "gridrl_version": version("gridrl"),
        "objective": OBJECTIVE,
        "objective_mwh": float(final["energy_loss_mwh"][pick]),
        "feasible": fkeys[pick][0] == 0,
        "controllable_rate_required": cr_full,
        "family": "IEEE 1547-2018 four-point curve inside Category B's ranges and the inverters' reactive "
                  "rating (Q1 >= 0 >= Q4, |Q| <= q_max), shared by every inverter, q in fractions of s_max",
        "params": {k: round(v, 6) for k, v in _params(u, space).items()} if u is not None else {},
        "q_max": round(space.q_limit, 6),
        "seconds": round(time.perf_counter() - t0, 1),
        "curves_scored": len(points) + len(top) + 2 * len(presets),
        "curve_days": curve_days[0],
        "search_days": days,
        "search_day_weights": [round(x, 4) for x in weights],
        "train_days": list(train),
        "train_day_weights": None if train_weights is None else [round(x, 4) for x in train_weights],
        "scenario": scenario_of(feeder, env_config),
        "search": dataclasses.asdict(space),
        "figures": {"tuned": figures(pick), **{p: figures(len(top) + i) for i, p in enumerate(presets)}},
    }
    if not fit["feasible"]:
        log.warning("droop:tuned on %s: no candidate meets every constraint on the training days (controllable "
                    "rate ≥ %.4f, no unsettled or diverged step); the best by the ranking is used: %s", feeder.name,
                    cr_full, fit["figures"]["tuned"])
    say(f"{feeder.name}: tuned curve v_pu={list(curve.v_pu)} q={list(curve.q)}: "
        f"{fit['objective_mwh']:.3f} MWh on the training days ({fit['seconds']:.0f} s)")
    return FittedCurve(curve=curve, fit=fit)


def cma_in_cube(x0: np.ndarray, cfg: TuneConfig):
    """A CMA-ES (pycma) in the unit cube of the curve family started at ``x0``: population ``2·7``,
    step 0.1, seeded by ``cfg.seed``."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pycma warns that matplotlib (for its plots) is missing
        import cma

    opts = {"bounds": [0.0, 1.0], "popsize": 2 * N_PARAMS, "seed": cfg.seed + 1, "verbose": -9}
    return cma.CMAEvolutionStrategy(np.clip(x0, 0.02, 0.98).tolist(), 0.1, opts)


def _unit_of_curve(curve: DroopCurve, cfg: TuneConfig) -> np.ndarray | None:
    """The cube point of a curve of the family (for its readable parameters)."""
    v, q = curve.v_pu, curve.q
    if len(v) == 3:
        v, q = (v[0], v[1], v[1], v[2]), (q[0], q[1], q[1], q[2])
    if len(v) != 4:
        return None
    p = {"v_ref_pu": (v[1] + v[2]) / 2, "half_deadband_pu": (v[2] - v[1]) / 2, "q_bias": q[1],
         "ramp_low_pu": v[1] - v[0], "ramp_high_pu": v[3] - v[2], "q_inject": q[0], "q_absorb": q[3]}
    return _unit(p, cfg) if abs(q[1] - q[2]) < 1e-12 else None


# --------------------------------------------------------------------------------------------
# the cache
# --------------------------------------------------------------------------------------------


def cache_path(feeder, key: str) -> Path:
    """Where the tuned curve with cache key ``key`` lives (under the feeder cache's folder)."""
    from gridrl.grid.feeder import cache_dir

    return cache_dir() / "droop-tuned" / f"{feeder.name}-{key}.toml"


def tuned_curve(feeder, *, env_config=None, config: TuneConfig = TuneConfig(), options: DroopOptions = DroopOptions(),
                cache: bool = True, progress: Callable[[str], None] | None = None) -> FittedCurve:
    """The tuned curve of ``feeder`` for scenario ``env_config``: from the cache when one was
    fitted for exactly this feeder content, scenario and search, else fitted now and cached."""
    from gridrl.control.curvefile import read_curve_file, write_curve_file
    from gridrl.errors import GridrlError, OutputError

    key = tune_key(feeder, env_config, config, options)
    path = cache_path(feeder, key)
    if cache and path.exists():
        try:
            data = read_curve_file(path)
            if data.get("fit", {}).get("key") == key:
                return FittedCurve(curve=DroopCurve(v_pu=data["v_pu"], q=data["q"], reference=data["reference"]),
                                   fit=dict(data["fit"]))
            log.warning("refitting droop:tuned for %s: %s belongs to another fit", feeder.name, path)
        except (GridrlError, KeyError, TypeError) as exc:  # a damaged cache entry is refitted, never trusted
            log.warning("refitting droop:tuned for %s: cannot use %s (%s)", feeder.name, path, exc)
    if progress is not None:
        progress(f"fitting droop:tuned for {feeder.name} on its training days (first use of this feeder and "
                 f"scenario; cached afterwards)")
    fitted = fit_droop(feeder, env_config=env_config, config=config, options=options, progress=progress)
    if cache:
        try:
            write_curve_file(path, fitted.curve, fitted.fit)
        except OutputError as exc:  # a read-only cache only costs a refit next time
            log.warning("cannot cache the tuned curve: %s", exc)
    return fitted


def residual_curve(feeder, base: str, *, step_minutes: int = 15,
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The curve a policy trained as a residual on ``base`` (``droop:tuned``) adds to its actions,
    as a curve mapping with its fit's provenance: the feeder's tuned curve for the default
    scenario at the run's step length — the curve a comparison's ``droop:tuned`` uses — read
    from the cache or fitted now."""
    from gridrl.control.curvefile import curve_mapping
    from gridrl.env import EnvConfig

    if base != "droop:tuned":
        raise CurveError(f"a residual is trained on droop:tuned, not {base!r}")
    fitted = tuned_curve(feeder, env_config=EnvConfig(step_minutes=step_minutes), progress=progress)
    return curve_mapping(fitted.curve, fitted.fit)
