"""The benchmarks' own machinery (tiny sizes): the background load is bounded and always
stopped, thread settings are applied and restored, ratios compare like with like."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import gridrl
from gridrl import threads
from gridrl.env.bench import _contention_markdown, background_load, bench_contention
from gridrl.grid.bench import run_benchmark, to_markdown


def test_background_load_runs_pauses_and_is_stopped_even_on_ctrl_c():
    with background_load(60) as load:
        assert load.proc.poll() is None
        load.pause()
        assert _state(load.proc.pid) == "T"  # stopped
        load.resume()
        assert _state(load.proc.pid) in "RS"
    assert load.proc.poll() is not None
    with pytest.raises(KeyboardInterrupt):
        with background_load(60) as load:
            load.pause()
            raise KeyboardInterrupt
    assert load.proc.poll() is not None


def test_background_load_dies_with_a_killed_benchmark():
    script = ("import sys, time\nfrom gridrl.env.bench import background_load\n"
              "with background_load(600) as load:\n"
              "    print(load.proc.pid, flush=True)\n    time.sleep(600)\n")
    bench = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pid = int(bench.stdout.readline())
    bench.kill()  # SIGKILL: no finally block runs
    bench.wait()
    bench.stdout.close()
    deadline = time.monotonic() + 30
    while _state(pid) not in ("Z", "gone") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _state(pid) in ("Z", "gone")  # exited (a zombie until its new parent reaps it)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_background_load_ends_by_itself_when_its_time_is_up():
    with background_load(0.2) as load:
        assert load.proc.wait(timeout=30) == 0  # left alone, it exits on its own


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores to tell 1 from 2 threads")
def test_contention_bench_runs_each_setting_quiet_and_contended_then_restores():
    threads.apply_torch()  # the policy's own count, as after building any environment
    torch_before = torch.get_num_threads()
    r = bench_contention(gridrl.load_feeder("ieee33"), num_envs=8, steps=3, rounds=1, updates=1,
                         settings={"one": (1, 1), "two": (2, 2), "policy": None})
    assert [(x["label"], x["torch"], x["numba"]) for x in r["rows"]][:2] == [("one", 1, 1), ("two", 2, 2)]
    for x in r["rows"]:
        for cond in ("quiet", "contended"):
            for what in ("step", "step_cpu", "update"):
                assert 0 < x[f"{cond}_{what}_median_ms"] <= x[f"{cond}_{what}_max_ms"]
    assert threads.policy()["source"] != "gridrl.set_threads"
    assert torch.get_num_threads() == torch_before
    text = "\n".join(_contention_markdown({**r, "rows": [r["rows"][2], r["rows"][0],
                                                         {**r["rows"][1], "label": "every core (before)"}]}))
    assert "contended ÷ quiet" in text and "(target ≤ 1.5×)" in text and "(target ≤ 1.2×)" in text


def test_powerflow_bench_compares_on_the_same_number_of_threads():
    cores = os.cpu_count() or 1
    df = run_benchmark(["ieee33"], batch=8, repeats=1, pandapower_calls=2,
                       solvers=("gridrl", "pandapower"))
    own = df[df.solver == "gridrl"]
    assert sorted(own.threads) == sorted({1, cores}) and own.gridrl_speedup.isna().all()
    pp = df[df.solver == "pandapower"].iloc[0]
    one = own[own.threads == 1].us_per_solve.iloc[0]
    assert pp.threads == 1 and np.isclose(pp.gridrl_speedup, pp.us_per_solve / one)
    text = to_markdown(df, info={"cores": cores})
    assert "gridrl is × faster (same threads)" in text and "| ieee33 | 33 | 8 | gridrl | 1 |" in text
