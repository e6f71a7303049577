"""Training sweeps: one run per feeder × algorithm × seed, then one comparison of them all.

``gridrl sweep --feeders ieee33,ieee69 --algos dppo,ippo --seeds 3 --out DIR`` and
:func:`gridrl.pipeline.sweep` do the same::

    DIR/sweep.json                    what was asked (a different sweep here is an error)
    DIR/runs/<feeder>-<algo>-seed<k>/ one `gridrl train` run folder each (checkpoints, scalars, curves)
    DIR/runs.csv                      one row per run: steps, training seconds, where it resumed
    DIR/compare/                      every run on its own feeder's test days beside the baselines
                                      (gridrl compare's layout: days.parquet, summary.md, report.html)

This module plans the runs (:func:`plan_sweep`), claims the folder (:func:`claim_sweep`) and
trains them (:func:`train_sweep`); :func:`gridrl.pipeline.sweep` chains that with the comparison
and its report. Runs go through an executor of :mod:`gridrl.cluster` (``local``: one after
another here; ``ray``: one Ray task each, side by side), and so does the comparison. A run is finished when its
checkpoint says so; re-running the same sweep into the same folder skips finished runs, continues
unfinished ones from their last checkpoint (a run whose worker died mid-way does the same when
Ray retries it), and resumes the comparison cell by cell: an interrupted sweep resumes like an
interrupted comparison.

On a cluster of several machines, ``DIR`` must be on a filesystem every node mounts (NFS or
similar): a run's worker writes its checkpoints there, and a retried run reads them back from
whichever node it lands on. A worker that cannot see ``DIR`` says so in one line.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from gridrl.errors import GridrlError, SpecError

__all__ = ["SweepError", "SweepResult", "SweepRun", "claim_sweep", "plan_sweep", "train_run", "train_sweep"]

_SWEEP_VERSION = 1
SWEEP_FILE, RUNS_FILE = "sweep.json", "runs.csv"


class SweepError(GridrlError, ValueError):
    """A sweep that cannot run as asked (its settings, its folder, a worker that cannot see it)."""


@dataclass(frozen=True)
class SweepRun:
    """One training run of a sweep: its feeder, its resolved training config and its folder."""

    feeder: str
    config: Any  # gridrl.marl.train.TrainConfig
    out: Path

    @property
    def name(self) -> str:
        return self.out.name

    @property
    def finished(self) -> bool:
        """Its checkpoint marks the run finished (it trained its whole budget)."""
        from gridrl.marl.checkpoint import CHECKPOINT, read_checkpoint

        if not (self.out / CHECKPOINT).exists():
            return False
        try:
            return bool(read_checkpoint(self.out)["driver"].get("finished"))
        except GridrlError:
            return False  # a damaged checkpoint: train() says what is wrong when it is resumed


@dataclass(frozen=True)
class SweepResult:
    """A finished sweep: its folder, the runs' table and the comparison."""

    out: Path
    runs: pd.DataFrame
    compare: Any  # gridrl.compare.CompareResult
    trained: int
    skipped: int


def plan_sweep(feeders: Sequence[str], algos: Sequence[str], seeds: int, *, out: str | Path,
               train: Mapping[str, Any] | None = None, source: str = "command line",
               steps: int | None = None) -> list[SweepRun]:
    """Every run of the sweep with its resolved config (one :class:`SpecError` lists every problem).

    train: a training TOML's tables (top level, ``[env]``, ``[learner]``) shared by all runs; the
        sweep sets each run's ``algo`` and ``seed`` (the TOML's are ignored, as ``gridrl train
        --algo/--seed`` override them). ``[learner.dppo]``-style tables give settings per
        algorithm. Runs do no comparison of their own (the sweep compares them all).
    """
    from gridrl.grid.feeder import load_feeder
    from gridrl.marl.train import ALGORITHMS, resolve_train_config

    data = {k: v for k, v in (train or {}).items() if k not in ("algo", "seed", "compare")}
    problems: list[str] = []
    if not feeders:
        problems.append("no feeders given")
    if not algos:
        problems.append("no algorithms given")
    if data.get("residual") is not None:
        problems.append(f"residual = {data['residual']!r}: a sweep does not train residual policies; train each "
                        f"run with `gridrl train FEEDER --residual {data['residual']}`")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        problems.append(f"seeds must be a whole number ≥ 1, got {seeds!r}")
    unknown = [a for a in algos if a not in ALGORITHMS]
    if unknown:
        problems.append(f"unknown algorithm {', '.join(map(repr, unknown))} (known: {', '.join(ALGORITHMS)})")
    names: dict[str, str] = {}
    for f in feeders:
        try:
            names[f] = load_feeder(f).name
        except GridrlError as exc:
            problems.append(str(exc))
    learner = data.get("learner", {})
    per_algo = isinstance(learner, Mapping) and any(k in ALGORITHMS and isinstance(v, Mapping)
                                                    for k, v in learner.items())
    configs = {}
    for algo in (a for a in algos if a in ALGORITHMS):
        d = dict(data)
        if per_algo:
            d["learner"] = learner.get(algo, {})
        try:
            cfg = resolve_train_config(d, source=source, overrides={"algo": algo, "steps": steps})
        except SpecError as exc:
            problems += [f"{algo}: {p}" for p in exc.problems]
            continue
        for seed in range(seeds if isinstance(seeds, int) and not isinstance(seeds, bool) else 0):
            configs[algo, seed] = dataclasses.replace(cfg, seed=seed, compare=())
    if problems:
        raise SpecError(source, list(dict.fromkeys(problems)))
    out = Path(out)
    return [SweepRun(feeder=f, config=configs[a, s], out=out / "runs" / f"{names[f]}-{a}-seed{s}")
            for f in feeders for a in algos for s in range(seeds)]


def _identity(runs: Sequence[SweepRun], baselines: Sequence[str], days) -> dict[str, Any]:
    from gridrl.marl.checkpoint import config_dict

    ident = {"version": _SWEEP_VERSION, "baselines": list(baselines), "compare_days": list(days) if days else None,
             "runs": {r.name: {"feeder": r.feeder, "config": config_dict(r.config)} for r in runs}}
    for r in ident["runs"].values():
        r["config"].pop("checkpoint_every_s", None)  # how often it saves does not change the run
    return json.loads(json.dumps(ident))


def _claim(out: Path, ident: dict[str, Any]) -> None:
    """Make ``out`` this sweep's folder (fine if new, empty, or holding the same sweep)."""
    from gridrl.io import write_json

    f = out / SWEEP_FILE
    if f.exists():
        try:
            old = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise SweepError(f"{out} holds an unreadable {SWEEP_FILE}; use another --out or delete it") from None
        if old != ident:
            diff = [k for k in sorted(set(old) | set(ident)) if old.get(k) != ident.get(k)]
            if "runs" in diff and set(old.get("runs", {})) == set(ident["runs"]):
                diff = [k for k in diff if k != "runs"] + ["the runs' training settings"]
            raise SweepError(f"{out} holds a sweep of a different configuration ({', '.join(diff)} differ); "
                             f"use another --out or delete it")
        return
    if out.exists() and (not out.is_dir() or any(not p.name.startswith(".") for p in out.iterdir())):
        raise SweepError(f"{out} exists and holds no gridrl sweep; use another --out or delete it")
    write_json(f, ident)


def train_run(run: SweepRun, sweep_dir: str, *, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train one run of a sweep (or continue it from its checkpoint); a row of ``runs.csv``.

    Runs where the executor puts it: in this process or on a Ray worker, which must see
    ``sweep_dir`` (the sweep's folder) to write the run's checkpoints there.
    """
    from gridrl.marl.train import train

    if not (Path(sweep_dir) / SWEEP_FILE).is_file():
        raise SweepError(f"the sweep folder {sweep_dir} is not visible on node {socket.gethostname()}; put --out "
                         f"on a filesystem every node of the cluster mounts (e.g. NFS)")
    result = train(run.feeder, run.config, out=run.out, resume=True, progress=False, log=lambda _: None,
                   on_steps=progress)
    from gridrl.marl.checkpoint import read_checkpoint

    learner = read_checkpoint(run.out)["learner"]
    return {"run": run.name, "feeder": run.feeder, "algo": run.config.algo, "seed": run.config.seed,
            "env_steps": int(learner["env_steps"]), "iterations": int(learner["iteration"]),
            "train_seconds": round(float(result.seconds), 2), "resumed_from_iteration": int(result.resumed_from),
            "host": socket.gethostname()}


def claim_sweep(out: str | Path, runs: Sequence[SweepRun], *, baselines: Sequence[str] = ("none", "droop", "opf"),
                compare_days: Sequence[int] | None = None) -> None:
    """Make ``out`` the folder of this sweep (its runs, and the comparison they will meet: the
    ``baselines`` on ``compare_days``); fine if new, empty or holding the same sweep.

    Raises :class:`SweepError` when ``out`` holds another sweep or anything else (nothing is
    written then).
    """
    _claim(Path(out), _identity(runs, baselines, tuple(compare_days) if compare_days else None))


def train_sweep(runs: Sequence[SweepRun], ex, *, out: str | Path,
                progress: bool = True) -> tuple[pd.DataFrame, list[SweepRun]]:
    """Train every run of :func:`plan_sweep` not finished yet on the executor ``ex`` (entered;
    see :mod:`gridrl.cluster`), writing ``runs.csv`` as each finishes; the runs' table and the
    runs trained now. The folder must be claimed first (:func:`claim_sweep`); comparing the runs
    is :func:`gridrl.pipeline.sweep`'s next step.
    """
    from tqdm import tqdm

    out = Path(out)
    todo = [r for r in runs if not r.finished]
    rows: dict[str, dict[str, Any]] = {}
    if todo:
        total = sum(r.config.steps for r in todo)
        bar = tqdm(total=total, disable=not progress, file=sys.stderr, dynamic_ncols=True, unit="step",
                   unit_scale=True, desc=f"training {len(todo)} run(s) ({ex.describe()})")
        reached: dict[int, int] = {}

        def advance(i: int, steps: int) -> None:
            new = min(steps, todo[i].config.steps)
            if new > reached.get(i, 0):
                bar.update(new - reached.get(i, 0))
                reached[i] = new

        try:
            for i, row in ex.map(train_run, [(r, str(out)) for r in todo], report=advance,
                                 labels=[f"run {r.name}" for r in todo]):
                advance(i, todo[i].config.steps)
                rows[row["run"]] = row
                _write_runs(out, rows)
        finally:
            bar.close()
    return _write_runs(out, rows), todo


def _write_runs(out: Path, rows: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """``runs.csv``: the rows of this invocation's runs over those of earlier ones (atomic)."""
    from gridrl.io import atomic_write

    path = out / RUNS_FILE
    old = pd.read_csv(path) if path.exists() else pd.DataFrame()
    new = pd.DataFrame(list(rows.values()))
    if not old.empty and "run" in old:
        old = old[~old["run"].isin(new["run"])] if not new.empty else old
    table = pd.concat([old, new], ignore_index=True) if not old.empty else new
    if not table.empty:
        table = table.sort_values("run", kind="stable").reset_index(drop=True)
    atomic_write(path, lambda p: table.to_csv(p, index=False))
    return table

