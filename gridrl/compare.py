"""Batch comparison: every feeder × controller × seed over the days of a split, resumable.

A comparison is described by one :class:`CompareConfig` (from the CLI or an experiment TOML) and
lives in one output folder::

    OUT/config.json                       what was asked (a different config here is an error)
    OUT/cells/<feeder>/<controller>/seed<k>/{voltages,agents,steps,days}.parquet, controller.json
    OUT/provenance.json                   who ran what, when, with which gridrl and feeder specs
    OUT/days.parquet                      the tidy table: one row per feeder × controller × seed × day
    OUT/summary.md, OUT/summary.csv       one row per feeder × controller, with the gap to ``opf``
    OUT/report.html                       see :mod:`gridrl.report`

Each cell (feeder × controller × seed) is written atomically, ``days.parquet`` last, so a cell is
finished exactly when its ``days.parquet`` exists: re-running the same comparison into the same
folder skips finished cells and an interrupted comparison resumes where it stopped. A cell with a
table that does not read as parquet (damaged outside gridrl) is run again.

Cells run through a *backend* (an executor of :mod:`gridrl.cluster`): ``local`` evaluates them
one after another in this process; ``ray`` evaluates each cell as a Ray task on a cluster (a cell
with several batches of days, ``num_envs`` smaller than its days, as one task per batch, merged
back). Either way :func:`evaluate_cell` (a plain top-level function of picklable arguments)
computes a cell's tables where it runs and returns them, and this process writes them, so a
cluster needs no shared filesystem for a comparison of rule-based controllers, and the tables
are the same whichever backend ran them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from gridrl.config import from_dict, read_toml, to_dict
from gridrl.env.config import EnvConfig
from gridrl.errors import GridrlError

_CONFIG_VERSION = 1


class CompareError(GridrlError, ValueError):
    """A comparison that cannot run as asked (bad config, or an output folder in the way)."""


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------


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
        ``reference`` (``s_max`` or ``q_avail``).
    label: name of the controller in tables and plots (default ``none``, ``droop-<preset>``,
        ``droop-custom``, ``opf``); labels must be unique within a comparison.
    tune: droop with preset ``tuned`` only: settings of the search that fits the curve on each
        feeder's training days (fields of :class:`~gridrl.control.tuning.TuneConfig`; default
        the documented ones).
    feeders: run this controller on these feeders of the comparison only (default: on every
        feeder), e.g. a controller too costly to fit or run on the largest feeder; its rows are
        then absent there and the gap columns that refer to it are empty.
    """

    name: str | None = None
    preset: str | None = None
    curve: dict | None = None
    label: str | None = None
    run: str | None = None
    tune: dict | None = None
    feeders: tuple[str, ...] | None = None

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
    split: days to run: ``test`` (held out), ``train`` or ``all``.
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


def parse_controllers(text: str, *, preset: str | None = None) -> tuple[ControllerSpec, ...]:
    """``none,droop:ieee1547-a,opf,runs/ieee33-dppo`` as controller specs; ``preset`` applies to
    bare ``droop``. A token that is not a controller name and names a folder (or contains a path
    separator) is a run directory."""
    from gridrl.control import CONTROLLERS

    specs = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        name, _, p = token.partition(":")
        if name not in CONTROLLERS and ("/" in token or Path(token).is_dir()):
            specs.append(ControllerSpec(run=token))
            continue
        specs.append(ControllerSpec(name=name, preset=(p or preset) if name == "droop" else (p or None)))
    return tuple(specs)


def config_problems(config: CompareConfig) -> list[str]:
    """Everything wrong with a comparison config (empty when it can run)."""
    from gridrl.control import CONTROLLERS, ControllerError, UnknownController
    from gridrl.control.droop import resolve_curve
    from gridrl.control.tuning import TuneConfig, check_fitted_for
    from gridrl.evaluate import check_days
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
                continue
            if spec.name is None:
                raise ControllerError("a controller needs a name (none, droop or opf) or a run directory (run = ...)")
            if spec.name not in CONTROLLERS:
                raise UnknownController(spec.name, CONTROLLERS)
            if _is_tuned(spec):
                from_dict(TuneConfig, spec.tune or {}, source=f"controller {spec.key!r} tune")
            elif spec.tune is not None:
                raise ControllerError(f"controller {spec.key!r}: tune settings apply to droop with preset "
                                      f"'tuned' only")
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


def _run_feeder(spec: ControllerSpec) -> str | None:
    """The feeder a trained run belongs to (``None`` for rule-based controllers, which run on all)."""
    from gridrl.marl.run import open_run

    return open_run(spec.run).feeder if spec.run is not None else None


# --------------------------------------------------------------------------------------------
# cells
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Cell:
    """One feeder × controller × seed: everything :func:`run_cell` needs (picklable).

    identity: for a trained run, its checkpoint's hash: a cell evaluated with another checkpoint
        (the run was trained again) is not finished and runs again; for droop:tuned, the key of
        its fit (feeder content, scenario, search), so a changed feeder refits and reruns.
    """

    feeder: str
    controller: ControllerSpec
    seed: int
    split: str
    days: tuple[int, ...] | None
    report_day: int | None
    num_envs: int | None
    out: str
    identity: str | None = None
    env: EnvConfig = field(default_factory=EnvConfig)

    @property
    def folder(self) -> Path:
        return cell_folder(self.out, self.feeder, self.controller.key, self.seed)

    @property
    def done(self) -> bool:
        """Finished: its tables are all there and readable (a damaged cell runs again), and made
        by the same checkpoint when the controller is a trained run."""
        if self.identity is not None and _cell_identity(self.folder) != self.identity:
            return False
        return all(_readable(self.folder / f"{table}.parquet") for table in CELL_TABLES)


CELL_TABLES = ("voltages", "steps", "days")
_CELL_IDENTITY = "checkpoint.txt"


def _cell_identity(folder: Path) -> str | None:
    try:
        return (folder / _CELL_IDENTITY).read_text(encoding="utf-8").strip()
    except OSError:
        return None


def cell_folder(out: str | Path, feeder: str, controller: str, seed: int) -> Path:
    """Where the cell of ``feeder`` × ``controller`` (its label) × ``seed`` keeps its tables."""
    return Path(out) / "cells" / _safe(feeder) / _safe(controller) / f"seed{seed}"


def _readable(path: Path) -> bool:
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(path)
    except (OSError, ValueError):  # missing, or not parquet (pyarrow's ArrowInvalid is a ValueError)
        return False
    return True


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "_"


@dataclass(frozen=True)
class CellResult:
    """A cell's tables as computed (by :func:`evaluate_cell`), before :func:`write_cell` writes them.

    controller: the controller's own description (``controller.json``), if it gives one.
    curve: droop:tuned only: the fitted curve and its provenance (``curve.toml``).
    """

    evaluation: Any
    controller: dict | None = None
    curve: tuple | None = None


def evaluate_cell(cell: Cell, days: Sequence[int] | None = None, cached: Mapping[str, str] | None = None, *,
                  progress: Callable[[int], None] | None = None) -> CellResult:
    """Evaluate one cell (or only ``days`` of it, see :func:`cell_parts`) and return its tables;
    nothing is written but ``cached`` (see :func:`tuned_cache_files`), so this runs anywhere (a
    Ray worker) and the caller writes the tables."""
    from gridrl.control import make_controller
    from gridrl.evaluate import check_days, evaluate
    from gridrl.grid.feeder import cache_dir, load_feeder
    from gridrl.io import write_text

    for rel, text in (cached or {}).items():  # the caller's fit, on a machine that lacks it
        if not (cache_dir() / rel).exists():
            write_text(cache_dir() / rel, text)
    feeder = load_feeder(cell.feeder)
    all_days = check_days(feeder, cell.split, cell.days)
    spec = cell.controller
    env_config = cell.env
    if spec.run is not None:
        from gridrl.marl.run import open_run

        run = open_run(spec.run)
        run.check_feeder(feeder)
        ctrl = run.policy(name=spec.key)
        env_config = run.evaluation_config(cell.env)  # the comparison's scenario, the run's observations
    else:
        ctrl = make_controller(spec.name, feeder, preset=spec.preset, curve=spec.curve, tune=spec.tune,
                               env_config=cell.env)
    ctrl.name = spec.key
    rday = cell.report_day if cell.report_day is not None else sunniest_day(feeder, all_days)
    ev = evaluate(feeder, ctrl, split=cell.split, days=all_days if days is None else days, seed=cell.seed,
                  num_envs=cell.num_envs, voltage_days=[rday], env_config=env_config, progress=progress)
    described = ctrl.describe() if callable(getattr(ctrl, "describe", None)) else None
    fitted = (ctrl.curve, ctrl.fit) if getattr(ctrl, "fit", None) else None
    return CellResult(evaluation=ev, controller=described, curve=fitted)


def tuned_cache_files(cell: Cell) -> dict[str, str]:
    """A droop:tuned cell's fitted curve as this machine's cache holds it (path under the cache
    folder → text; empty for other controllers). Sent with the cell to a worker on another
    machine, it spares that machine a refit (minutes) and makes it run the very same curve."""
    if not _is_tuned(cell.controller):
        return {}
    from gridrl.control.tuning import TuneConfig, cache_path, tune_key
    from gridrl.grid.feeder import cache_dir, load_feeder

    feeder = load_feeder(cell.feeder)
    config = from_dict(TuneConfig, cell.controller.tune or {}, source="tune")
    path = cache_path(feeder, tune_key(feeder, cell.env, config))
    try:
        return {str(path.relative_to(cache_dir())): path.read_text(encoding="utf-8")}
    except OSError:  # not cached here (read-only cache): the worker fits it itself
        return {}


def cell_parts(cell: Cell, *, split: bool) -> list[tuple[int, ...] | None]:
    """The pieces a cell is evaluated in: the whole cell (``[None]``), or with ``split`` one piece
    per batch of ``num_envs`` days, exactly the batches :func:`~gridrl.evaluate.evaluate` would
    run one after another, so the merged tables are the whole cell's."""
    if not split or not cell.num_envs:
        return [None]
    from gridrl.evaluate import check_days
    from gridrl.grid.feeder import load_feeder

    days = check_days(load_feeder(cell.feeder), cell.split, cell.days)
    if cell.num_envs >= len(days):
        return [None]
    return [tuple(days[i:i + cell.num_envs]) for i in range(0, len(days), cell.num_envs)]


def merge_parts(parts: Sequence[CellResult]) -> CellResult:
    """The pieces of one cell (in day order) as one result."""
    if len(parts) == 1:
        return parts[0]
    from gridrl.evaluate import Evaluation

    evs = [p.evaluation for p in parts]
    merged = Evaluation(*(pd.concat([getattr(e, f.name) for e in evs], ignore_index=True)
                          for f in dataclasses.fields(Evaluation)))
    return CellResult(evaluation=merged, controller=parts[0].controller, curve=parts[0].curve)


def write_cell(cell: Cell, result: CellResult) -> Path:
    """Write a cell's tables atomically (``days.parquet`` last: the cell is finished exactly
    when it exists); its folder."""
    from gridrl.io import write_json, write_parquet, write_text

    ev = result.evaluation
    (cell.folder / _CELL_IDENTITY).unlink(missing_ok=True)  # the tables below replace another identity's
    if result.controller is not None:  # its settings, e.g. the droop curve the report draws
        write_json(cell.folder / "controller.json", result.controller)
    if result.curve is not None:  # the fitted curve the cell ran, with its provenance
        from gridrl.control.curvefile import write_curve_file

        write_curve_file(cell.folder / "curve.toml", *result.curve)
    write_parquet(cell.folder / "voltages.parquet", ev.voltages)
    write_parquet(cell.folder / "agents.parquet", ev.agents)
    write_parquet(cell.folder / "steps.parquet", ev.steps)
    write_parquet(cell.folder / "days.parquet", ev.days)
    if cell.identity is not None:
        write_text(cell.folder / _CELL_IDENTITY, cell.identity + "\n")
    return cell.folder


def run_cell(cell: Cell, progress: Callable[[int], None] | None = None) -> Path:
    """Evaluate one cell in this process and write its tables; its folder."""
    return write_cell(cell, evaluate_cell(cell, progress=progress))


def sunniest_day(feeder, days: Sequence[int]) -> int:
    """The day among ``days`` with the most PV energy (where voltage rise is worst)."""
    prof = feeder.profiles
    energy = [float(prof.pv_p_mw[prof.day_steps(d)].sum()) for d in days]
    return int(days[int(np.argmax(energy))])


# --------------------------------------------------------------------------------------------
# running a comparison
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompareResult:
    """A finished comparison: the tidy per-day table, the summary and where they were written."""

    out: Path
    days: pd.DataFrame
    summary: pd.DataFrame
    ran: int
    skipped: int


def prepare_out(config: CompareConfig, out: Path) -> None:
    """Claim ``out`` for ``config``: fine if new, empty or holding the same comparison; an error
    (nothing written) if it holds a different comparison or anything else."""
    from gridrl.io import write_json

    cfg_file = out / "config.json"
    if cfg_file.exists():
        try:
            old = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise CompareError(f"{out} holds an unreadable config.json; use another --out or delete it") from None
        new = config.identity()
        if old != json.loads(json.dumps(new)):
            diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != json.loads(json.dumps(new.get(k)))]
            raise CompareError(f"{out} holds a comparison of a different configuration "
                               f"({', '.join(diff)} differ); use another --out or delete it")
        return
    # hidden files (a .gitignore of a committed results folder) do not make a folder someone else's
    if out.exists() and (not out.is_dir() or any(not p.name.startswith(".") for p in out.iterdir())):
        raise CompareError(f"{out} exists and holds no gridrl comparison; use another --out or delete it")
    write_json(cfg_file, config.identity())


def cells_of(config: CompareConfig, out: Path) -> list[Cell]:
    """Every cell of the comparison, feeders outermost (a trained run on its own feeder only)."""
    from gridrl.marl.run import open_run

    from gridrl.grid.feeder import load_feeder

    names = {f: load_feeder(f).name for f in config.feeders}
    runs = {c.key: _run_feeder(c) for c in config.controllers}
    pairs = [(f, c) for f in config.feeders for c in config.controllers
             if c.runs_on(f) and runs[c.key] in (None, names[f])]
    ident = {(f, c.key): open_run(c.run).hash for f, c in pairs if c.run is not None}
    ident.update({(f, c.key): _tuned_key(f, c) for f, c in pairs if _is_tuned(c)})
    days = {f: feeder_days(config, f) for f in config.feeders}
    return [Cell(feeder=f, controller=c, seed=s, split=config.split, days=days[f], report_day=config.report_day,
                 num_envs=config.num_envs, out=str(out), identity=ident.get((f, c.key)), env=config.env)
            for f, c in pairs for s in range(config.seeds)]


def feeder_days(config: CompareConfig, feeder: str) -> tuple[int, ...] | None:
    """The days a comparison runs on one feeder (``None``: every day of the split)."""
    stride = (config.day_stride or {}).get(feeder)
    if not stride:
        return config.days
    from gridrl.grid.feeder import load_feeder

    days = config.days if config.days is not None else load_feeder(feeder).days(config.split)
    return tuple(int(d) for d in days[::stride])


def _is_tuned(spec: ControllerSpec) -> bool:
    from gridrl.control.droop import TUNED

    return spec.name == "droop" and spec.preset == TUNED and spec.curve is None


def _tuned_key(feeder: str, spec: ControllerSpec) -> str:
    from gridrl.control.tuning import TuneConfig, tune_key
    from gridrl.grid.feeder import load_feeder

    return tune_key(load_feeder(feeder), config=from_dict(TuneConfig, spec.tune or {}, source="tune"))


def run_compare(config: CompareConfig, *, out: str | Path | None = None, backend: str | None = None,
                address: str | None = None, progress: bool = True, report: bool = True) -> CompareResult:
    """Run (or resume) a comparison; write the tidy table, the summary and the report.

    backend, address: where cells run (default: the config's; see :mod:`gridrl.cluster`).
    Raises :class:`CompareError` listing every problem of the config, or when ``out`` holds a
    different comparison; nothing is written then.
    """
    from gridrl.cluster import BACKENDS, executor
    from gridrl.io import atomic_write, default_out, write_html, write_parquet, write_text
    from gridrl.provenance import read_provenance, record_run

    problems = config_problems(config)
    if problems:
        raise CompareError("; ".join(problems))
    out = Path(out or config.out or default_out("compare"))
    backend_name = backend or config.backend
    if backend_name not in BACKENDS:
        raise CompareError(f"unknown backend {backend_name!r} — known backends: {', '.join(BACKENDS)}")
    ex = executor(backend_name, address=address or config.address)  # checked before anything is written
    prepare_out(config, out)
    cells = cells_of(config, out)
    todo = [c for c in cells if not c.done]
    if todo or read_provenance(out) is None:  # before running, so an interrupted run is on record too
        record_run(out, config=config.identity(), feeders=_feeder_specs(config.feeders), cells_to_run=len(todo))
    _fit_tuned(todo, progress)
    if todo:
        with ex:
            for _ in run_cells(todo, ex, progress=progress):
                pass
    days = collect(out, cells, "days")
    summary = summarize(days)
    write_parquet(out / "days.parquet", days)
    write_text(out / "summary.md", summary_markdown(summary))
    atomic_write(out / "summary.csv", lambda p: summary.to_csv(p, index=False))
    if report:
        from gridrl.report import build_report

        write_html(build_report(out), out / "report.html")
    return CompareResult(out=out, days=days, summary=summary, ran=len(todo), skipped=len(cells) - len(todo))


def run_cells(cells: Sequence[Cell], ex, *, progress: bool = True) -> Iterable[Path]:
    """Evaluate ``cells`` on the executor ``ex`` (see :mod:`gridrl.cluster`) and write each as soon
    as all its pieces are in; yields the folders written, in the order they finish. Shows the
    progress bar (estimated work, see :class:`CellProgress`) when ``progress``."""
    from tqdm import tqdm

    from gridrl.cluster import LocalExecutor

    one_at_a_time = isinstance(ex, LocalExecutor)
    cached = {cell_id(c): {} if one_at_a_time else tuned_cache_files(c) for c in cells}
    pieces = [(cell, days, cached[cell_id(cell)]) for cell in cells for days in cell_parts(cell, split=ex.splits)]
    owner = [cell_id(cell) for cell, _, _ in pieces]
    left = {cell_id(c): sum(1 for k in owner if k == cell_id(c)) for c in cells}
    by_id = {cell_id(c): c for c in cells}
    got: dict[tuple, dict[int, CellResult]] = {k: {} for k in left}
    bar = tqdm(total=1.0, disable=not progress, file=sys.stderr, dynamic_ncols=True,
               bar_format="{desc}{percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")
    cell_progress = CellProgress(bar, cells, name_cells=one_at_a_time)
    bar.total = cell_progress.total
    steps: dict[int, int] = {}
    finished, where = 0, ex.describe()
    if not one_at_a_time:
        bar.set_description(f"{where}: 0/{len(cells)} cells")

    def report(i: int, n: int) -> None:
        steps[i] = n
        key = owner[i]
        cell_progress.reach(by_id[key], sum(v for j, v in steps.items() if owner[j] == key))

    labels = [f"cell {c.feeder} · {c.controller.key} · seed {c.seed}" + (f" (days {d[0]}–{d[-1]})" if d else "")
              for c, d, _ in pieces]
    try:
        for i, result in ex.map(evaluate_cell, pieces, report=report, labels=labels):
            key = owner[i]
            got[key][i] = result
            if len(got[key]) == left[key]:
                cell = by_id[key]
                folder = write_cell(cell, merge_parts([got[key][j] for j in sorted(got[key])]))
                cell_progress.finish(cell)
                del got[key]
                finished += 1
                if not one_at_a_time:
                    bar.set_description(f"{where}: {finished}/{len(cells)} cells")
                yield folder
    finally:
        bar.close()


def _feeder_specs(names: Sequence[str]) -> dict[str, dict[str, str]]:
    """Each feeder's spec file and content hash, for provenance."""
    from gridrl.grid.feeder import resolve_spec

    specs = {}
    for name in names:
        spec = resolve_spec(name)
        specs[name] = {"spec_hash": spec.content_hash(), "spec_file": spec.path, "source": spec.source.case}
    return specs


def _fit_tuned(cells: Sequence[Cell], progress: bool) -> None:
    """Fit (or find in the cache) every droop:tuned curve the cells need before their progress
    bar starts, so the bar measures rollouts only."""
    from gridrl.control.tuning import TuneConfig, tuned_curve
    from gridrl.grid.feeder import load_feeder

    say = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else None
    wanted = {(c.feeder, json.dumps(c.controller.tune or {}, sort_keys=True), json.dumps(env_changes(c.env), sort_keys=True))
              for c in cells if _is_tuned(c.controller)}
    for feeder, tune, env in sorted(wanted):
        tuned_curve(load_feeder(feeder), env_config=from_dict(EnvConfig, json.loads(env), source="env"),
                    config=from_dict(TuneConfig, json.loads(tune), source="tune"), progress=say)


class CellProgress:
    """The comparison's progress bar, advanced in estimated work rather than steps.

    Cells differ in cost by three orders of magnitude (no control on ieee33 against the optimum on
    a feeder with hundreds of inverters), so a bar that counts environment steps tells the time
    left wrongly whenever cheap and dear cells are mixed. Each environment step of a cell weighs
    :func:`step_cost`; the bar's fraction (and so tqdm's time estimate) is the share of that work
    done. Backends report each cell's cumulative steps (:meth:`reach`), from this process or
    from a worker elsewhere.
    """

    def __init__(self, bar, cells: Sequence[Cell], *, name_cells: bool = True) -> None:
        self.bar = bar
        self.name_cells = name_cells  # one cell at a time: the bar names it
        self.per_step, self.steps = self.plan(cells)
        self._done: dict[tuple, float] = {}

    @property
    def total(self) -> float:
        """All the cells' estimated work."""
        return float(sum(self.per_step[k] * self.steps[k] for k in self.per_step))

    @staticmethod
    def plan(cells: Sequence[Cell]) -> tuple[dict[tuple, float], dict[tuple, int]]:
        """Per cell (keyed by :func:`cell_id`): the estimated cost of one of its environment
        steps and how many steps it takes (episode steps × batches of days)."""
        from gridrl.grid.feeder import load_feeder

        feeders: dict[str, tuple[int, int, int]] = {}
        per_step, steps = {}, {}
        for cell in cells:
            if cell.feeder not in feeders:
                f = load_feeder(cell.feeder)
                feeders[cell.feeder] = (len(f.net.bus), len(f.agents), len(f.days(cell.split)))
            n_bus, n_agents, n_days = feeders[cell.feeder]
            days = len(cell.days) if cell.days is not None else n_days
            batch = min(days, cell.num_envs or days)
            per_step[cell_id(cell)] = step_cost(n_bus, n_agents, batch, cell.controller)
            episode = dataclasses.replace(cell.env, start_hour=0.0, episode_hours=24.0).steps_per_episode
            steps[cell_id(cell)] = episode * math.ceil(days / batch)
        return per_step, steps

    def reach(self, cell: Cell, steps: int) -> None:
        """``cell`` has taken ``steps`` environment steps in all (wherever it runs): the bar moves
        by what is new, never past the cell's planned work (the plan is an estimate), and never
        back (a retried task counting again from zero adds nothing until it passes its earlier
        attempt)."""
        key = cell_id(cell)
        if self.name_cells:
            self.bar.set_description(f"{cell.feeder} · {cell.controller.key} · seed {cell.seed}")
        work = min(steps, self.steps[key]) * self.per_step[key]
        done = self._done.get(key, 0.0)
        if work > done:
            self._done[key] = work
            self.bar.update(min(work - done, max(self.bar.total - self.bar.n, 0.0)))

    def finish(self, cell: Cell) -> None:
        """``cell`` is written: its whole planned work counts."""
        self.reach(cell, self.steps[cell_id(cell)])


def cell_id(cell: Cell) -> tuple:
    """What tells cells of one comparison apart."""
    return cell.feeder, cell.controller.key, cell.seed


def step_cost(n_bus: int, n_agents: int, batch: int, controller: ControllerSpec) -> float:
    """Estimated cost of one environment step of a cell (about µs on one core), for weighting.

    A step of ``batch`` scenarios costs per scenario the environment and one power flow (about
    40 + 0.4·buses); droop adds its fixed point (about 8 more power flows); the optimum adds its
    SQP iterations (about 3, each one sensitivity solve ∝ buses × agents, one QP ∝ agents³ and a
    power flow); a trained policy adds its forward pass (∝ agents). The constants come from
    timing each part on ieee33, ieee141, mv-rural and mvlv-rural; they need only be right in
    proportion.
    """
    power_flow = 0.4 * n_bus
    base = 40.0 + power_flow
    if controller.run is not None:
        extra = 2.0 * n_agents
    elif controller.name == "droop":
        extra = 8.0 * power_flow
    elif controller.name == "opf":
        extra = 3.0 * (300.0 + power_flow + 0.03 * n_bus * n_agents + 1e-3 * n_agents ** 3)
    else:
        extra = 0.0
    return batch * (base + extra)


def collect(out: str | Path, cells: Sequence[Cell] | None = None, table: str = "days") -> pd.DataFrame:
    """One table (``days``, ``steps``, ``voltages`` or ``agents``) of every finished cell under ``out``
    (cells written before a table existed simply lack it)."""
    out = Path(out)
    files = ([c.folder / f"{table}.parquet" for c in cells] if cells is not None
             else sorted((out / "cells").glob(f"*/*/seed*/{table}.parquet")))
    frames = [_read_table(f, out) for f in files if f.exists()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _read_table(path: Path, out: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError):  # pyarrow's ArrowInvalid is a ValueError
        raise CompareError(f"{path} is damaged (not a readable parquet table); run the same comparison again "
                           f"with --out {out} to redo that cell") from None


# --------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------

TUNED_KEY = "droop-tuned"  # the controller the "gap to tuned droop" column compares with

SUMMARY_COLUMNS = {
    "feeder": "feeder",
    "controller": "controller",
    "days": "days",
    "controllable_rate": "controllable",
    "out_of_band_pct": "out of band %",
    "mean_abs_dv_pu": "mean |v−1|",
    "max_abs_dv_pu": "max |v−1|",
    "energy_loss_mwh": "loss MWh",
    "loss_gap_to_opf_pct": "gap to opf %",
    "loss_gap_to_tuned_pct": "gap to tuned droop %",
    "reactive_energy_mvarh": "reactive MVArh",
    "communication": "floats/agent/step",
    "flagged_steps": "flagged steps",
    "q_at_night": "Q at night",
}


def summarize(days: pd.DataFrame) -> pd.DataFrame:
    """One row per feeder × controller from the tidy per-day table.

    Rates and means are over all bus-steps of all days and seeds; energies are per seed (summed
    over the days, averaged over seeds); ``loss_gap_to_opf_pct`` compares with ``opf`` and
    ``loss_gap_to_tuned_pct`` with ``droop-tuned`` on the same feeder (NaN when that controller
    is not in the comparison); ``flagged_steps`` counts unsettled, infeasible and diverged steps.
    """
    if days.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    order = {k: i for i, k in enumerate(dict.fromkeys(days["controller"]))}
    rows = []
    for (feeder, ctrl), g in days.groupby(["feeder", "controller"], sort=False):
        n_seeds = g["seed"].nunique()
        rows.append({
            "feeder": feeder,
            "controller": ctrl,
            "days": int(g["day"].nunique()),
            "controllable_rate": float(np.average(g["controllable_rate"], weights=g["steps"])),
            "out_of_band_pct": 100.0 * float(np.average(g["share_out_of_band"], weights=g["steps"])),
            "mean_abs_dv_pu": float(np.average(g["mean_abs_dv_pu"], weights=g["steps"])),
            "max_abs_dv_pu": float(g["max_abs_dv_pu"].max()),
            "energy_loss_mwh": float(g["energy_loss_mwh"].sum() / n_seeds),
            "loss_gap_to_opf_pct": np.nan,
            "loss_gap_to_tuned_pct": np.nan,
            "reactive_energy_mvarh": float(g["reactive_energy_mvarh"].sum() / n_seeds),
            "communication": float(g["communication"].iloc[0]),
            "flagged_steps": int((g["unsettled_steps"] + g["infeasible_steps"] + g["diverged_steps"]).sum()),
            "q_at_night": ("yes" if g["q_at_night"].all() else "no" if not g["q_at_night"].any() else "mixed")
                          if "q_at_night" in g else "–",
        })
    summary = pd.DataFrame(rows)
    for feeder, g in summary.groupby("feeder", sort=False):
        for column, reference in (("loss_gap_to_opf_pct", "opf"), ("loss_gap_to_tuned_pct", TUNED_KEY)):
            ref = g.loc[g["controller"] == reference, "energy_loss_mwh"]
            if len(ref) and ref.iloc[0] > 0:
                summary.loc[g.index, column] = 100.0 * (g["energy_loss_mwh"] / ref.iloc[0] - 1.0)
    feeders = list(dict.fromkeys(days["feeder"]))
    summary["_f"] = summary["feeder"].map({f: i for i, f in enumerate(feeders)})
    summary["_c"] = summary["controller"].map(order)
    return summary.sort_values(["_f", "_c"]).drop(columns=["_f", "_c"]).reset_index(drop=True)


def format_summary(summary: pd.DataFrame, *, columns: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Summary rows with human headers and rounded values (for printing and markdown).

    columns: which columns to show, ``{column: header}`` (default :data:`SUMMARY_COLUMNS`, less
        the gap to tuned droop when the comparison has no ``droop-tuned``)."""
    digits = {"controllable_rate": 4, "out_of_band_pct": 3, "mean_abs_dv_pu": 4, "max_abs_dv_pu": 4,
              "energy_loss_mwh": 3, "loss_gap_to_opf_pct": 1, "loss_gap_to_tuned_pct": 1, "reactive_energy_mvarh": 1,
              "communication": 1}
    if columns is None:
        columns = dict(SUMMARY_COLUMNS)
        if "loss_gap_to_tuned_pct" in summary and summary["loss_gap_to_tuned_pct"].isna().all():
            del columns["loss_gap_to_tuned_pct"]
    rows = []
    for rec in summary.to_dict("records"):
        row = {}
        for key, header in columns.items():
            v = rec.get(key)
            if isinstance(v, float):
                v = "–" if math.isnan(v) else (f"{v:+.{digits[key]}f}" if key.startswith("loss_gap_to_")
                                               else f"{v:.{digits.get(key, 3)}f}")
            row[header] = v
        rows.append(row)
    return rows


def format_days(days: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of the tidy per-day table with the summary's headers and rounding (for printing)."""
    d = days.assign(out_of_band_pct=100.0 * days["share_out_of_band"],
                    flagged_steps=days["unsettled_steps"] + days["infeasible_steps"] + days["diverged_steps"])
    keys = ("day", "date", "controllable_rate", "out_of_band_pct", "max_abs_dv_pu", "energy_loss_mwh",
            "reactive_energy_mvarh", "flagged_steps")
    return format_summary(d, columns={k: SUMMARY_COLUMNS.get(k, k) for k in keys})


def summary_markdown(summary: pd.DataFrame) -> str:
    """The summary as a GitHub markdown table."""
    rows = format_summary(summary)
    if not rows:
        return "(no results)\n"
    headers = list(rows[0])
    right = [h not in ("feeder", "controller") for h in headers]
    cell = lambda x: str(x).replace("|", "\\|")  # noqa: E731 - a bare pipe would split the column
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---:" if r else ":---" for r in right) + "|"]
    lines += ["| " + " | ".join(cell(r[h]) for h in headers) + " |" for r in rows]
    return "\n".join(lines) + "\n\n" + SUMMARY_LEGEND + "\n"


#: What each summary column means, in the words a grid engineer would look for (summary.md, the report).
SUMMARY_GLOSSARY = {
    "feeder": "the feeder (see `gridrl feeders`).",
    "controller": "none: inverters at q = 0; droop-PRESET: a volt-var curve at each inverter from its own bus "
                  "voltage, settled within each step (droop-tuned: the curve fitted on the feeder's training "
                  "days); opf: the centralized optimum with full information at "
                  "every step (minimum losses, every bus in the band); trained policies by their run name.",
    "days": "days evaluated, each a whole day from midnight.",
    "controllable_rate": "share of steps at which every monitored bus is inside the band (MAPDN's controllable "
                         "rate, without its 0.1 % tolerance).",
    "out_of_band_pct": "share of monitored bus-steps outside the band, in %.",
    "mean_abs_dv_pu": "mean deviation from 1 p.u. over monitored bus-steps, in p.u.",
    "max_abs_dv_pu": "largest deviation from 1 p.u. at any monitored bus and step, in p.u.",
    "energy_loss_mwh": "energy lost in lines and transformers over all days, in MWh (mean over seeds).",
    "loss_gap_to_opf_pct": "extra energy loss relative to opf on the same feeder and days, in %.",
    "loss_gap_to_tuned_pct": "extra energy loss relative to droop-tuned (the volt-var curve fitted on the feeder's "
                             "training days) on the same feeder and days, in %; shown when droop-tuned ran.",
    "reactive_energy_mvarh": "Σ|q| of all inverters integrated over time, in MVArh: how hard the inverters work.",
    "communication": "numbers each agent sends per step to compute the actions, averaged over agents: 0 for "
                     "local rules (none, droop); for opf the measurements sent to the central solver (every "
                     "load's P and Q, every inverter's PV power) plus one setpoint back per agent, divided by "
                     "the number of agents; for learners, messages to neighbours on the agent graph.",
    "flagged_steps": "steps to look at: a droop fixed point or OPF iteration stopped at its iteration cap, "
                     "the band could not be met by any admissible action, or the power flow diverged.",
    "q_at_night": "whether the inverters gave reactive power while their PV produced nothing (yes: a night "
                  "mode, STATCOM operation; no: the common inverter, as IEEE 1547-2018 requires no reactive "
                  "power below 5 % of rated active power).",
}

SUMMARY_LEGEND = "\n".join(f"- **{SUMMARY_COLUMNS[k]}**: {v}" for k, v in SUMMARY_GLOSSARY.items())

