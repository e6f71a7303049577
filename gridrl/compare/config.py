"""What a comparison is: its configuration, its controllers and everything that can be wrong with them.

A comparison is described by one :class:`CompareConfig` (from the CLI or an experiment TOML file),
its controllers by :class:`ControllerSpec`: a rule-based controller by name or a trained run by
its folder. :func:`config_problems` checks a configuration at the door and lists every problem at
once; nothing here runs or writes anything.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gridrl.config import from_dict, read_toml, to_dict
from gridrl.env.config import EnvConfig
from gridrl.errors import GridrlError

__all__ = ["CURVES_OPTION", "CompareConfig", "CompareError", "ControllerSpec", "config_problems", "env_changes", "feeder_days",
           "is_tuned", "load_config", "parse_controllers", "run_feeder"]

_CONFIG_VERSION = 1


class CompareError(GridrlError, ValueError):
    """A comparison that cannot run as asked (bad config, or an output folder in the way)."""


@dataclass(frozen=True, kw_only=True)
class ControllerSpec:
    """One controller of a comparison: a rule-based controller by ``name``, or a trained run.

    name: ``none``, ``droop`` or ``opf``.
    run: instead of ``name``, a run directory written by ``gridrl train``; its policy is
        evaluated with the run's observation settings, and only on the feeder it was trained on.
    preset: droop only: ``ieee1547-a``, ``ieee1547-b`` (default), ``mapdn`` or ``tuned`` (fitted
        to each feeder on its training days, see :mod:`gridrl.control.tuning`).
    curve: droop only, instead of a preset: a table with ``v_pu`` (breakpoints, strictly
        increasing), ``q`` (fractions of the reference, non-increasing) and optionally
        ``reference`` (``s_max`` or ``q_avail``); or one curve per agent, ``{agents = {AGENT =
        {v_pu = [...], q = [...]}, ...}}`` (``droop:curves=FILE`` reads such a table from the
        curves file ``gridrl export --format curves`` writes).
    label: name of the controller in tables and plots (default ``none``, ``droop-<preset>``,
        ``droop-custom``, ``opf``); labels must be unique within a comparison.
    tune: droop with preset ``tuned`` only: settings of the search that fits the curve on each
        feeder's training days (fields of :class:`~gridrl.control.tuning.TuneConfig`; default
        the documented ones).
    feeders: run this controller on these feeders of the comparison only (default: on every
        feeder), e.g. a controller too costly to fit or run on the largest feeder; its rows are
        then absent there and the gap columns that refer to it are empty.
    envelope: trained runs only: the safety envelope the policy acts through (fields of
        :class:`~gridrl.env.envelope.EnvelopeConfig`; default: on, ``clamp``, with the hand-over
        to 1547-B droop outside the training statistics); ``{ mechanism = "off", handover_z = 0 }``
        is the ablation.
    """

    name: str | None = None
    preset: str | None = None
    curve: dict | None = None
    label: str | None = None
    run: str | None = None
    tune: dict | None = None
    feeders: tuple[str, ...] | None = None
    envelope: dict | None = None

    def runs_on(self, feeder: str) -> bool:
        """Whether the comparison runs this controller on ``feeder``."""
        return self.feeders is None or feeder in self.feeders

    @property
    def key(self) -> str:
        """The label used in tables, plots and folder names."""
        if self.label:
            return self.label
        if self.run is not None:
            return Path(self.run).name or str(self.run)
        if self.name == "droop":
            from gridrl.control.droop import DEFAULT_PRESET

            return "droop-custom" if self.curve is not None else f"droop-{self.preset or DEFAULT_PRESET}"
        return self.name


@dataclass(frozen=True, kw_only=True)
class CompareConfig:
    """A comparison of controllers on feeders.

    feeders: feeder names (see ``gridrl feeders``) or spec paths.
    controllers: the controllers compared (see :class:`ControllerSpec`).
    split: days to run: ``test`` (held out), ``val`` (validation), ``train`` or ``all``.
    seeds: number of seeds per cell (seeds 0 … seeds−1).
    days: run only these days (each must belong to the split of every feeder); default all.
    day_stride: per feeder, run only every k-th of its days (e.g. ``{"mvlv-rural" = 4}``: a
        quarter of the days on a feeder whose optimum costs minutes per day).
    report_day: the day the report shows in detail (heat maps, envelopes, losses over the day);
        default the evaluated day with the most PV energy on each feeder.
    num_envs: days per batch (default: all days of a cell in one batch).
    env: the environment every cell runs in (an ``[env]`` table of :class:`EnvConfig` fields),
        e.g. the stress scenario ``load_scale = 1.3``, ``pv_scale = 1.5``, ``q_at_night = false``,
        or a different band or step length. Days always run whole, from midnight, once each, so
        ``start_hour``, ``episode_hours`` and ``day_sampling`` cannot be set here.
    out: output folder (the CLI's ``--out`` takes precedence; default ``out/compare``, see
        :func:`gridrl.io.default_out`).
    backend: how cells run: ``local`` (in this process) or ``ray`` (as Ray tasks; see
        :mod:`gridrl.cluster`). Where cells run never changes the results.
    address: with ``backend = "ray"``: the cluster to join (``auto`` or ``host:port``); default:
        start a Ray instance on this machine for the run.
    """

    feeders: tuple[str, ...]
    controllers: tuple[ControllerSpec, ...]
    split: Literal["train", "val", "test", "all"] = "test"
    seeds: int = 1
    days: tuple[int, ...] | None = None
    day_stride: dict[str, int] | None = None
    report_day: int | None = None
    num_envs: int | None = None
    env: EnvConfig = field(default_factory=EnvConfig)
    out: str | None = None
    backend: Literal["local", "ray"] = "local"
    address: str | None = None

    def identity(self) -> dict[str, Any]:
        """What determines the results (where they are written and how cells run do not).

        ``env`` enters with the fields that differ from :class:`EnvConfig`'s defaults only, so a
        comparison in the default environment keeps its identity when EnvConfig gains a field.
        """
        d = to_dict(self)
        d.pop("out", None)
        d.pop("backend", None)
        d.pop("address", None)
        if not self.day_stride:  # comparisons written before the field existed stay resumable
            d.pop("day_stride", None)
        d["controllers"] = [to_dict(c) for c in self.controllers]
        env = env_changes(self.env)
        if env:
            d["env"] = env
        else:
            d.pop("env", None)
        d["version"] = _CONFIG_VERSION
        return d


#: EnvConfig fields a comparison fixes itself: every day of the split, whole, from midnight, once.
_WHOLE_DAYS = ("start_hour", "episode_hours", "day_sampling")


def env_changes(env: EnvConfig) -> dict[str, Any]:
    """The fields of ``env`` that differ from the defaults, TOML-ready (tuples as lists)."""
    default = EnvConfig()
    out = {}
    for f in dataclasses.fields(EnvConfig):
        value = getattr(env, f.name)
        if value != getattr(default, f.name):
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def load_config(path: str | Path) -> CompareConfig:
    """A :class:`CompareConfig` from an experiment TOML file (every problem reported at once)."""
    return from_dict(CompareConfig, read_toml(path), source=str(path))


#: ``droop:curves=FILE``: per-inverter curves from a file of ``gridrl export --format curves``
CURVES_OPTION = "curves="


def parse_controllers(text: str, *, preset: str | None = None) -> tuple[ControllerSpec, ...]:
    """``none,droop:ieee1547-a,opf,runs/ieee33-dppo`` as controller specs; ``preset`` applies to
    bare ``droop``; ``droop:curves=FILE`` reads per-inverter curves from FILE (labelled
    ``droop-<file stem>``). A token that is not a controller name and names a folder (or contains
    a path separator) is a run directory."""
    from gridrl.control import CONTROLLERS

    specs = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        name, _, p = token.partition(":")
        if name == "droop" and p.startswith(CURVES_OPTION):
            from gridrl.control.curvefile import read_agent_curves

            path = Path(p.removeprefix(CURVES_OPTION))
            specs.append(ControllerSpec(name="droop", curve=read_agent_curves(path), label=f"droop-{path.stem}"))
            continue
        if name not in CONTROLLERS and ("/" in token or Path(token).is_dir()):
            specs.append(ControllerSpec(run=token))
            continue
        specs.append(ControllerSpec(name=name, preset=(p or preset) if name == "droop" else (p or None)))
    return tuple(specs)


def config_problems(config: CompareConfig) -> list[str]:
    """Everything wrong with a comparison config (empty when it can run)."""
    from gridrl.control import CONTROLLERS, ControllerError, UnknownController
    from gridrl.control.droop import AGENTS, agent_curves, resolve_curve
    from gridrl.control.fitted import check_fitted_for
    from gridrl.control.tuning import TuneConfig
    from gridrl.grid.days import check_days
    from gridrl.grid.feeder import load_feeder

    problems: list[str] = []
    if not config.feeders:
        problems.append("no feeders given")
    if not config.controllers:
        problems.append("no controllers given")
    if config.seeds < 1:
        problems.append(f"seeds must be ≥ 1, got {config.seeds}")
    if config.num_envs is not None and config.num_envs < 1:
        problems.append(f"num_envs must be ≥ 1, got {config.num_envs}")
    fixed = [k for k in _WHOLE_DAYS if k in env_changes(config.env)]
    if fixed:
        problems.append(f"env.{', env.'.join(fixed)}: a comparison runs every day of the split whole, from "
                        f"midnight, once; remove {'it' if len(fixed) == 1 else 'them'} from the [env] table")
    for spec in config.controllers:
        if spec.feeders is not None:
            unknown = [f for f in spec.feeders if f not in config.feeders]
            if unknown:
                problems.append(f"controller {spec.key!r}: feeders {', '.join(map(repr, unknown))} "
                                f"{'is' if len(unknown) == 1 else 'are'} not among the comparison's feeders "
                                f"({', '.join(config.feeders)})")
            if not spec.feeders:
                problems.append(f"controller {spec.key!r}: feeders is empty (omit it to run on every feeder)")
        try:
            if spec.run is not None:
                problems += _run_problems(spec, [f for f in config.feeders if spec.runs_on(f)])
                problems += _envelope_problems(spec, config.env)
                continue
            if spec.envelope is not None:
                raise ControllerError(f"controller {spec.key!r}: an envelope wraps a trained run only")
            if spec.name is None:
                raise ControllerError("a controller needs a name (none, droop or opf) or a run directory (run = ...)")
            if spec.name not in CONTROLLERS:
                raise UnknownController(spec.name, CONTROLLERS)
            if is_tuned(spec):
                from_dict(TuneConfig, spec.tune or {}, source=f"controller {spec.key!r} tune")
            elif spec.tune is not None:
                raise ControllerError(f"controller {spec.key!r}: tune settings apply to droop with preset "
                                      f"'tuned' only")
            elif spec.name == "droop" and isinstance(spec.curve, dict) and AGENTS in spec.curve:
                if spec.preset is not None:
                    raise ControllerError(f"controller {spec.key!r}: give either a preset or per-agent curves")
                agent_curves(spec.curve)
            elif spec.name == "droop":
                resolve_curve(spec.preset, spec.curve)
            elif spec.preset is not None or spec.curve is not None:
                raise ControllerError(f"controller {spec.name!r} takes no droop preset or curve")
        except GridrlError as exc:
            problems.append(str(exc))
    keys = [s.key for s in config.controllers]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        problems.append(f"controller {', '.join(map(repr, dup))} is listed twice (give each a distinct label)")
    for name, stride in (config.day_stride or {}).items():
        if name not in config.feeders:
            problems.append(f"day_stride names {name!r}, which is not a feeder of the comparison")
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            problems.append(f"day_stride.{name} must be a whole number ≥ 1, got {stride!r}")
    if config.split not in ("train", "val", "test", "all"):
        problems.append(f"split must be test, val, train or all, got {config.split!r}")
        return problems  # the days checks below need a valid split
    for name in config.feeders:
        try:
            feeder = load_feeder(name)
            check_days(feeder, config.split, config.days)
            unknown = sorted(set(config.env.outage_agents) - set(feeder.agents))
            if unknown:
                problems.append(f"env.outage_agents: feeder {feeder.name!r} has no agent "
                                f"{', '.join(map(repr, unknown))} (its agents: {', '.join(feeder.agents[:6])}"
                                f"{' …' if len(feeder.agents) > 6 else ''})")
            if config.report_day is not None:
                check_days(feeder, config.split, [config.report_day])
                if config.days is not None and config.report_day not in config.days:
                    problems.append(f"report_day {config.report_day} is not among the days run")
            for spec in config.controllers:  # a fitted curve file belongs to its own feeder
                if spec.runs_on(name) and isinstance(spec.curve, dict) and isinstance(spec.curve.get("fit"), dict):
                    check_fitted_for(feeder, spec.curve)
                if spec.runs_on(name) and isinstance(spec.curve, dict) and AGENTS in spec.curve:
                    agent_curves(spec.curve, feeder.agents)
        except GridrlError as exc:
            problems.append(str(exc))
    return list(dict.fromkeys(problems))


def _run_problems(spec: ControllerSpec, feeders: Sequence[str]) -> list[str]:
    """A run directory that cannot be read, or was trained on none of the feeders compared (a
    run is evaluated on the feeder it was trained on only, so a sweep compares the runs of
    several feeders in one comparison)."""
    from gridrl.grid.feeder import load_feeder
    from gridrl.marl.run import open_run

    if spec.name is not None or spec.preset is not None or spec.curve is not None:
        return [f"controller with run = {spec.run!r} takes no name, preset or curve"]
    try:
        run = open_run(spec.run)
        loaded = [load_feeder(name) for name in feeders]
        own = [f for f in loaded if f.name == run.feeder]
        for feeder in own or loaded[:1]:  # the one it was trained on; else the refusal names the first
            run.check_feeder(feeder)
    except GridrlError as exc:
        return [str(exc)]
    return []


def _envelope_problems(spec: ControllerSpec, env: EnvConfig) -> list[str]:
    """A run's envelope settings that cannot be used, and ``[env]`` settings its policy cannot read."""
    from gridrl.env.envelope import EnvelopeConfig
    from gridrl.marl.run import open_run

    problems = []
    try:
        from_dict(EnvelopeConfig, spec.envelope or {}, source=f"controller {spec.key!r} envelope")
        open_run(spec.run).evaluation_config(env)
    except GridrlError as exc:
        problems.append(str(exc))
    return problems


def run_feeder(spec: ControllerSpec) -> str | None:
    """The feeder a trained run belongs to (``None`` for rule-based controllers and transferable
    runs, which run on all)."""
    from gridrl.marl.run import open_run

    if spec.run is None:
        return None
    run = open_run(spec.run)
    return None if run.transferable else run.feeder


def feeder_days(config: CompareConfig, feeder: str) -> tuple[int, ...] | None:
    """The days a comparison runs on one feeder (``None``: every day of the split)."""
    stride = (config.day_stride or {}).get(feeder)
    if not stride:
        return config.days
    from gridrl.grid.feeder import load_feeder

    days = config.days if config.days is not None else load_feeder(feeder).days(config.split)
    return tuple(int(d) for d in days[::stride])


def is_tuned(spec: ControllerSpec) -> bool:
    """Whether ``spec`` is droop:tuned (a curve fitted on each feeder's training days)."""
    from gridrl.control.droop import TUNED

    return spec.name == "droop" and spec.preset == TUNED and spec.curve is None
