"""Cells of a comparison: one feeder × controller × seed, evaluated anywhere, written here.

A :class:`Cell` is picklable and :func:`evaluate_cell` is a plain top-level function of picklable
arguments: it computes a cell's tables where it runs (this process, or a Ray worker elsewhere)
and returns them; :func:`write_cell` writes them atomically into the results folder
(:mod:`gridrl.compare.folder`), ``days.parquet`` last, so a cell is finished exactly when its
``days.parquet`` exists. A cluster thus needs no shared filesystem for a comparison of
rule-based controllers, and the tables are the same whichever backend ran them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gridrl.compare.config import CompareConfig, ControllerSpec, feeder_days, is_tuned, run_feeder
from gridrl.compare.folder import CELL_IDENTITY_FILE, CELL_TABLES, cell_folder, cell_identity, readable
from gridrl.config import from_dict
from gridrl.env.config import EnvConfig

__all__ = ["Cell", "CellResult", "cell_id", "cell_parts", "cells_of", "evaluate_cell", "merge_parts", "run_cell",
           "sunniest_day", "tuned_cache_files", "write_cell"]


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
        if self.identity is not None and cell_identity(self.folder) != self.identity:
            return False
        return all(readable(self.folder / f"{table}.parquet") for table in CELL_TABLES)


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
        from gridrl.marl.run import deployed, open_run

        run = open_run(spec.run)
        run.check_feeder(feeder)
        env_config = run.evaluation_config(cell.env)  # the comparison's scenario, the run's observations
        ctrl = deployed(run.policy(name=spec.key, feeder=feeder), feeder, env_config, envelope=spec.envelope,
                        trained_on=run.feeders, trained=run.env_config)
    else:
        ctrl = make_controller(spec.name, feeder, preset=spec.preset, curve=spec.curve, tune=spec.tune,
                               env_config=cell.env)
    ctrl.name = spec.key
    rday = cell.report_day if cell.report_day is not None else sunniest_day(feeder, all_days)
    ev = evaluate(feeder, ctrl, split=cell.split, days=all_days if days is None else days, seed=cell.seed,
                  num_envs=cell.num_envs, voltage_days=[rday], env_config=env_config, progress=progress)
    described = ctrl.describe() if callable(getattr(ctrl, "describe", None)) else None
    # a fitted single curve (droop:tuned) is written beside the tables; per-agent curves are in controller.json
    fitted = (ctrl.curve, ctrl.fit) if getattr(ctrl, "fit", None) and getattr(ctrl, "curve", None) else None
    return CellResult(evaluation=ev, controller=described, curve=fitted)


def tuned_cache_files(cell: Cell) -> dict[str, str]:
    """A droop:tuned cell's fitted curve as this machine's cache holds it (path under the cache
    folder → text; empty for other controllers). Sent with the cell to a worker on another
    machine, it spares that machine a refit (minutes) and makes it run the very same curve."""
    if not is_tuned(cell.controller):
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
    from gridrl.grid.days import check_days
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
    (cell.folder / CELL_IDENTITY_FILE).unlink(missing_ok=True)  # the tables below replace another identity's
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
        write_text(cell.folder / CELL_IDENTITY_FILE, cell.identity + "\n")
    return cell.folder


def run_cell(cell: Cell, progress: Callable[[int], None] | None = None) -> Path:
    """Evaluate one cell in this process and write its tables; its folder."""
    return write_cell(cell, evaluate_cell(cell, progress=progress))


def sunniest_day(feeder, days: Sequence[int]) -> int:
    """The day among ``days`` with the most PV energy (where voltage rise is worst)."""
    prof = feeder.profiles
    energy = [float(prof.pv_p_mw[prof.day_steps(d)].sum()) for d in days]
    return int(days[int(np.argmax(energy))])


def cells_of(config: CompareConfig, out: Path) -> list[Cell]:
    """Every cell of the comparison, feeders outermost (a trained run on its own feeder only)."""
    from gridrl.marl.run import open_run

    from gridrl.grid.feeder import load_feeder

    names = {f: load_feeder(f).name for f in config.feeders}
    runs = {c.key: run_feeder(c) for c in config.controllers}
    pairs = [(f, c) for f in config.feeders for c in config.controllers
             if c.runs_on(f) and runs[c.key] in (None, names[f])]
    ident = {(f, c.key): open_run(c.run).hash for f, c in pairs if c.run is not None}
    ident.update({(f, c.key): _tuned_key(f, c) for f, c in pairs if is_tuned(c)})
    days = {f: feeder_days(config, f) for f in config.feeders}
    return [Cell(feeder=f, controller=c, seed=s, split=config.split, days=days[f], report_day=config.report_day,
                 num_envs=config.num_envs, out=str(out), identity=ident.get((f, c.key)), env=config.env)
            for f, c in pairs for s in range(config.seeds)]


def cell_id(cell: Cell) -> tuple:
    """What tells cells of one comparison apart."""
    return cell.feeder, cell.controller.key, cell.seed


def _tuned_key(feeder: str, spec: ControllerSpec) -> str:
    from gridrl.control.tuning import TuneConfig, tune_key
    from gridrl.grid.feeder import load_feeder

    return tune_key(load_feeder(feeder), config=from_dict(TuneConfig, spec.tune or {}, source="tune"))
