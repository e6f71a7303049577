"""Comparisons and sweeps on Ray: the same tables as in-process, workers killed mid-task, resumed
sweeps, and one clear line when Ray is missing or a cluster cannot be reached.

One local Ray instance (2 CPUs) serves the whole module; the tests that need no Ray, or need it
absent, run first.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import tomllib
from pathlib import Path

import pandas as pd
import pytest
import ray
from typer.testing import CliRunner

from gridrl.cli import app
from gridrl.compare import CompareConfig, collect, parse_controllers, run_compare
from gridrl.errors import SpecError
from gridrl.pipeline import sweep as run_sweep
from gridrl.sweep import SWEEP_FILE, plan_sweep

from conftest import one_line_error

runner = CliRunner()
TABLES = ("days", "steps", "voltages", "agents")
TIMING = ["seconds"]  # wall-clock per day: the only column allowed to differ between runs

# a tiny dppo run: 12 iterations of 4 scenarios × 8 steps (2-hour episodes), a checkpoint each
TRAIN_TOML = """
steps = 384
num_envs = 4
checkpoint_every_s = 0
[env]
episode_hours = 2.0
[learner]
hidden = 16
message_dim = 8
epochs = 2
minibatches = 2
"""
TRAIN = tomllib.loads(TRAIN_TOML)




def _same_tables(a: Path, b: Path) -> None:
    for table in TABLES:
        x, y = collect(a, None, table), collect(b, None, table)
        assert len(x) > 0, table
        pd.testing.assert_frame_equal(x.drop(columns=TIMING, errors="ignore"), y.drop(columns=TIMING, errors="ignore"))


@pytest.fixture(scope="module")
def days(sunny_days):
    return tuple(sorted(sunny_days))


# --------------------------------------------------------------------------------------------
# before Ray starts in this process
# --------------------------------------------------------------------------------------------


def test_missing_ray_and_unreachable_clusters_are_one_line(tmp_path, monkeypatch, days):
    assert not ray.is_initialized()
    base = ["compare", "--feeders", "ieee33", "--controllers", "none", "--days", str(days[0]), "--no-report"]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "a"), "--backend", "ray", "--address", "127.0.0.1:1"])
    one_line_error(res, "cannot reach the Ray cluster at 127.0.0.1:1", "ray start --head")
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--backend", "ray", "--address", "nowhere"])
    one_line_error(res, "'nowhere' is not host:port")
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "c"), "--address", "127.0.0.1:6379"])
    one_line_error(res, "--address 127.0.0.1:6379 needs --backend ray")
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "d"), "--backend", "spark"])
    one_line_error(res, "unknown backend 'spark'", "local, ray")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "e"), "--backend", "ray"])
    one_line_error(res, "needs Ray", "pip install 'gridrl[ray]'")
    assert not ray.is_initialized()


def test_a_sweep_plan_is_every_combination_and_lists_every_problem(tmp_path):
    learner = {"dppo": {"hidden": 16}, "ippo": {"hidden": 8}}
    runs = plan_sweep(["ieee33", "ieee69"], ["dppo", "ippo"], 2, out=tmp_path,
                      train={"algo": "cppo", "seed": 7, "steps": 64, "learner": learner})
    assert [r.name for r in runs] == [f"{f}-{a}-seed{s}" for f in ("ieee33", "ieee69") for a in ("dppo", "ippo")
                                      for s in (0, 1)]
    assert {(r.config.algo, r.config.seed, r.config.learner.hidden) for r in runs} == \
        {("dppo", 0, 16), ("dppo", 1, 16), ("ippo", 0, 8), ("ippo", 1, 8)}
    assert all(r.config.compare == () and r.config.steps == 64 and r.out.parent == tmp_path / "runs" for r in runs)
    with pytest.raises(SpecError) as err:
        plan_sweep(["ieee33", "ieee3"], ["dppo", "sac"], 0, out=tmp_path, train={"learner": {"hiden": 3}})
    for part in ("seeds must be", "unknown algorithm 'sac'", "unknown feeder 'ieee3'", "hiden"):
        assert part in str(err.value)


def test_a_tuned_cell_carries_its_fit_to_a_machine_without_it(monkeypatch, days):
    """A worker on another machine has no droop:tuned cache: the cell brings the driver's fit and
    the worker runs that very curve instead of fitting one (minutes) of its own."""
    import gridrl
    from gridrl.compare import Cell, ControllerSpec, evaluate_cell, tuned_cache_files
    from gridrl.control import tuning
    from gridrl.control.curvefile import write_curve_file
    from gridrl.control.droop import PRESETS

    feeder = gridrl.load_feeder("ieee33")
    spec = ControllerSpec(name="droop", preset="tuned", tune={"budget": 7919})  # a search no other test fits
    cell = Cell(feeder="ieee33", controller=spec, seed=0, split="test", days=days[:1], report_day=None,
                num_envs=None, out="unused")
    key = tuning.tune_key(feeder, cell.env, tuning.TuneConfig(budget=7919))
    path = tuning.cache_path(feeder, key)
    curve = PRESETS["mapdn"]
    write_curve_file(path, curve, {"key": key, "feeder": "ieee33"})  # as the driver's fit left it
    try:
        files = tuned_cache_files(cell)
        assert len(files) == 1 and path.as_posix().endswith(next(iter(files)))
        path.unlink()  # the other machine's cache
        monkeypatch.setattr(tuning, "fit_droop", lambda *a, **k: pytest.fail("fitted again"))
        result = evaluate_cell(cell, cached=files)
        assert path.is_file() and result.curve[1]["key"] == key and tuple(result.curve[0].q) == curve.q
    finally:
        path.unlink(missing_ok=True)
    assert tuned_cache_files(Cell(feeder="ieee33", controller=ControllerSpec(name="none"), seed=0, split="test",
                                  days=days[:1], report_day=None, num_envs=None, out="unused")) == {}


# --------------------------------------------------------------------------------------------
# on one local Ray instance
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_compare(tmp_path_factory, days):
    """none, droop and opf on ieee33's three sunniest test days, two days per batch (six pieces),
    in this process."""
    cfg = CompareConfig(feeders=("ieee33",), controllers=parse_controllers("none,droop:mapdn,opf"), days=days,
                        num_envs=2)
    out = tmp_path_factory.mktemp("local") / "cmp"
    return cfg, run_compare(cfg, out=out, progress=False)


class _Killer(threading.Thread):
    """Kills (SIGKILL) the first Ray worker seen running a piece, once it has run ``after_s``;
    with ``when``, only once ``when()`` is true."""

    def __init__(self, *, after_s: float = 0.5, when=None, timeout_s: float = 120.0):
        super().__init__(daemon=True)
        self.after_s, self.when, self.timeout_s = after_s, when, timeout_s
        self.killed: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        seen: dict[int, float] = {}
        end = time.monotonic() + self.timeout_s
        while not self.stop.is_set() and time.monotonic() < end:
            now = time.monotonic()
            for pid in _piece_workers():
                seen.setdefault(pid, now)
                if now - seen[pid] >= self.after_s and (self.when is None or self.when()):
                    os.kill(pid, signal.SIGKILL)
                    self.killed = pid
                    return
            time.sleep(0.05)


def _piece_workers() -> list[int]:
    """Ray workers running a piece of gridrl's work right now (their process title says so)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"ray::_run_piece"):
                pids.append(int(entry.name))
    return pids


def test_ray_compare_has_the_local_tables_even_when_a_worker_dies(cluster, local_compare, tmp_path):
    cfg, local = local_compare
    killer = _Killer(after_s=1.0)
    killer.start()
    try:
        res = run_compare(cfg, out=tmp_path / "ray", backend="ray", progress=False)
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed is not None, "no worker was seen running a piece"
    assert res.ran == 3 and res.skipped == 0
    # complete, nothing counted twice, and identical to the in-process run
    assert len(res.days) == 3 * len(cfg.days)
    assert not res.days.duplicated(["feeder", "controller", "seed", "day"]).any()
    _same_tables(local.out, res.out)
    pd.testing.assert_frame_equal(local.summary, res.summary)
    # resumable like a local comparison: nothing left to run
    again = run_compare(cfg, out=tmp_path / "ray", backend="ray", progress=False)
    assert again.ran == 0 and again.skipped == 3


def test_an_error_in_a_task_is_the_error_it_raised(cluster, tmp_path, days):
    from gridrl.marl.checkpoint import CHECKPOINT

    # a run folder damaged after the comparison checked it: the worker's CheckpointError, one line
    from gridrl.compare import Cell, ControllerSpec, run_cells
    from gridrl.cluster import executor
    from gridrl.errors import CheckpointError

    bad = tmp_path / "run"
    bad.mkdir()
    (bad / CHECKPOINT).write_bytes(b"not a checkpoint")
    cell = Cell(feeder="ieee33", controller=ControllerSpec(run=str(bad)), seed=0, split="test", days=days,
                report_day=None, num_envs=None, out=str(tmp_path / "cmp"))
    with executor("ray") as ex, pytest.raises(CheckpointError, match="checkpoint"):
        list(run_cells([cell], ex, progress=False))


# --------------------------------------------------------------------------------------------
# sweeps
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory, days):
    out = tmp_path_factory.mktemp("sweep") / "local"
    runs = plan_sweep(["ieee33"], ["dppo"], 1, out=out, train=TRAIN)
    return runs, run_sweep(runs, out=out, baselines=["none"], compare_days=days[:1], progress=False, report=False)


def test_a_sweep_trains_every_run_and_compares_them_with_the_baselines(local_sweep):
    runs, res = local_sweep
    assert [r.name for r in runs] == ["ieee33-dppo-seed0"]
    assert res.trained == 1 and res.runs["env_steps"].tolist() == [384]
    assert (res.out / SWEEP_FILE).is_file() and (res.out / "runs" / "ieee33-dppo-seed0" / "checkpoint.pt").is_file()
    assert set(res.compare.summary["controller"]) == {"none", "ieee33-dppo-seed0"}


def test_a_ray_sweep_whose_worker_dies_resumes_from_its_checkpoint(cluster, local_sweep, tmp_path, days):
    runs, local = local_sweep
    out = tmp_path / "ray"
    ckpt = out / "runs" / "ieee33-dppo-seed0" / "checkpoint.pt"
    killer = _Killer(after_s=0.0, when=ckpt.exists)  # after its first checkpoint
    killer.start()
    try:
        res = run_sweep(plan_sweep(["ieee33"], ["dppo"], 1, out=out, train=TRAIN), out=out, backend="ray",
                        baselines=["none"], compare_days=days[:1], progress=False, report=False)
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed is not None
    row = res.runs.iloc[0]
    assert row["env_steps"] == 384 and 0 < row["resumed_from_iteration"] < 12
    # resumed where it stopped and ended where the uninterrupted run ended: the same policy, the same tables
    _same_tables(local.compare.out, res.compare.out)


def test_an_interrupted_sweep_resumes(local_sweep, days, tmp_path):
    import shutil

    runs, first = local_sweep
    out = first.out
    # as if stopped before the comparison finished: a cell gone
    cell = next((out / "compare" / "cells").glob("*/ieee33-dppo-seed0/seed0"))
    shutil.rmtree(cell)
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TRAIN_TOML)
    res = runner.invoke(app, ["sweep", "--feeders", "ieee33", "--algos", "dppo", "--seeds", "1", "--config", str(cfg),
                              "--baselines", "none", "--days", str(days[0]), "--out", str(out), "--no-progress",
                              "--no-report"])
    assert res.exit_code == 0, res.output
    assert "0 run(s) trained, 1 already done" in res.output and "ieee33-dppo-seed0" in res.output
    again = pd.read_parquet(out / "compare" / "days.parquet")
    pd.testing.assert_frame_equal(first.compare.days.drop(columns=TIMING), again.drop(columns=TIMING))
    assert len(again) == 2  # none and the run, on one day: the missing cell ran again, once
    # the same folder with other settings is refused, one line, before any training
    res = runner.invoke(app, ["sweep", "--feeders", "ieee33", "--algos", "dppo", "--seeds", "2", "--out", str(out),
                              "--steps", "384", "--baselines", "none", "--no-progress"])
    one_line_error(res, "holds a sweep of a different configuration")
    res = runner.invoke(app, ["sweep", "--feeders", "ieee33", "--algos", "dpo", "--out", str(tmp_path / "x")])
    one_line_error(res, "unknown algorithm 'dpo'")
    assert not (tmp_path / "x").exists()
