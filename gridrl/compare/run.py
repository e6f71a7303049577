"""Running a comparison: every cell through a backend, then the tidy table and the summary.

:func:`run_compare` claims the output folder (see :mod:`gridrl.compare.folder`), records
provenance, runs the cells not yet finished and writes ``days.parquet``, ``summary.md`` and
``summary.csv``. Re-running the same comparison into the same folder skips finished cells, so an
interrupted comparison resumes where it stopped; a cell whose table does not read as parquet
(damaged outside gridrl) is run again. It writes no report: :mod:`gridrl.pipeline` (what
``gridrl compare`` runs) adds one.

Cells run through a *backend* (an executor of :mod:`gridrl.cluster`): ``local`` evaluates them
one after another in this process; ``ray`` evaluates each cell as a Ray task on a cluster (a cell
with several batches of days, ``num_envs`` smaller than its days, as one task per batch, merged
back). Where cells run never changes the results.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from gridrl.compare.cells import (Cell, CellResult, cell_id, cell_parts, cells_of, evaluate_cell, merge_parts,
                                  tuned_cache_files, write_cell)
from gridrl.compare.config import CompareConfig, CompareError, ControllerSpec, config_problems, env_changes, is_tuned
from gridrl.compare.folder import collect
from gridrl.compare.summary import summarize, summary_markdown
from gridrl.config import from_dict
from gridrl.env.config import EnvConfig

__all__ = ["CellProgress", "CompareResult", "prepare_out", "run_cells", "run_compare", "step_cost"]


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


def run_compare(config: CompareConfig, *, out: str | Path | None = None, backend: str | None = None,
                address: str | None = None, progress: bool = True) -> CompareResult:
    """Run (or resume) a comparison; write the tidy table and the summary (no report: see
    :func:`gridrl.pipeline.compare`).

    backend, address: where cells run (default: the config's; see :mod:`gridrl.cluster`).
    Raises :class:`CompareError` listing every problem of the config, or when ``out`` holds a
    different comparison; nothing is written then.
    """
    from gridrl.cluster import BACKENDS, executor
    from gridrl.io import atomic_write, default_out, write_parquet, write_text
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
              for c in cells if is_tuned(c.controller)}
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
