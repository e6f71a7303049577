"""First use is never silent on the command line and always silent in the library: a cold feeder
build and the kernel's compile say so on stderr, `gridrl warmup` does both ahead of time."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from gridrl.cli import app
from gridrl.grid import powerflow

runner = CliRunner()


def test_warmup_builds_cold_feeders_says_so_and_only_checks_the_second_time(tmp_path, monkeypatch):
    monkeypatch.setenv("GRIDRL_CACHE_DIR", str(tmp_path / "feeders"))
    first = runner.invoke(app, ["warmup", "--feeder", "ieee33"])
    assert first.exit_code == 0, first.output
    assert "building feeder ieee33 from pandapower:case33bw (first use; cached afterwards)" in first.output
    assert "built feeder ieee33 in" in first.output
    assert any(line.split()[:3] == ["feeder", "ieee33", "built"] for line in first.output.splitlines())
    assert list((tmp_path / "feeders").glob("ieee33-*.pkl"))
    again = runner.invoke(app, ["warmup", "--feeder", "ieee33"])
    assert again.exit_code == 0, again.output
    assert "building feeder" not in again.output
    lines = [line.split() for line in again.output.splitlines()]
    assert ["feeder", "ieee33", "cached"] in [ln[:3] for ln in lines]
    assert ["power-flow", "kernel", "cached"] in [ln[:3] for ln in lines]


def test_the_library_stays_quiet_on_a_cold_build(tmp_path):
    env = {**os.environ, "GRIDRL_CACHE_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", "import gridrl; gridrl.load_feeder('ieee33')"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert list(tmp_path.glob("ieee33-*.pkl")) and proc.stderr == "" and proc.stdout == ""


def test_kernel_compile_is_announced_only_when_it_will_compile(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="gridrl.grid.powerflow")
    monkeypatch.setattr(powerflow, "_kernel_ready", False)  # not launched in this process yet
    monkeypatch.setattr(powerflow, "kernel_compiled", lambda: False)  # and no build on disk
    with powerflow._first_launch_notice():
        pass
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[0] == "compiling the power-flow kernel (first use only: numba caches it on disk)"
    assert msgs[1].startswith("power-flow kernel compiled in") and len(msgs) == 2
    assert powerflow._kernel_ready  # announced once per process
    caplog.clear()
    monkeypatch.setattr(powerflow, "_kernel_ready", False)
    monkeypatch.setattr(powerflow, "kernel_compiled", lambda: True)  # a current build on disk
    with powerflow._first_launch_notice():
        pass
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]


@pytest.mark.slow
def test_a_cold_install_compiles_once_and_says_so(tmp_path):
    """The real thing (tens of seconds): an empty numba cache, then a warm one."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    cmd = [sys.executable, "-m", "gridrl.cli", "warmup", "--feeder", "ieee33"]
    cold = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    assert cold.returncode == 0, cold.stderr
    assert "compiling the power-flow kernel" in cold.stderr
    assert ["power-flow", "kernel", "compiled"] in [ln.split()[:3] for ln in cold.stdout.splitlines()]
    warm = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    assert "compiling" not in warm.stderr
    assert ["power-flow", "kernel", "cached"] in [ln.split()[:3] for ln in warm.stdout.splitlines()]
    assert len(list((tmp_path / "numba").rglob("*_zbus_kernel*.nbc"))) == 1
