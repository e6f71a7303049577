"""The thread policy: one thread per process by default, ``GRIDRL_THREADS`` / ``set_threads`` to
change it, the user's own ``OMP_NUM_THREADS`` / ``NUMBA_NUM_THREADS`` respected, and torch's
count not disturbed when numba starts its pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numba
import pytest
import torch

import gridrl
from gridrl import threads
from gridrl.env import make_env
from gridrl.grid.bench import random_scenarios

# a fresh process: build an env, step it, solve in a second Python thread, report the counts
PROBE = """
import json, threading, numba, torch, gridrl
from gridrl.env import make_env
env = make_env("ieee33", num_envs=2)
env.step(torch.zeros(2, env.n_agents))
other = {}
def solve():
    env.peek(torch.zeros(2, env.n_agents))
    other["numba"] = numba.get_num_threads()
t = threading.Thread(target=solve); t.start(); t.join()
print(json.dumps({"torch": torch.get_num_threads(), "numba": numba.get_num_threads(),
                  "numba_other_thread": other["numba"], "source": gridrl.threads.policy()["source"]}))
"""

CLEAN = {k: v for k, v in os.environ.items()
         if k not in ("GRIDRL_THREADS", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS")}


def _probe(**env) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          env={**CLEAN, **env}, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores to tell 1 from 2 threads")
def test_one_thread_per_process_by_default_in_every_python_thread():
    assert _probe() == {"torch": 1, "numba": 1, "numba_other_thread": 1, "source": "default"}


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores to tell 1 from 2 threads")
def test_the_users_omp_setting_survives_numbas_pool_start():
    got = _probe(OMP_NUM_THREADS="2", NUMBA_NUM_THREADS="1")
    assert got == {"torch": 2, "numba": 1, "numba_other_thread": 1, "source": "default"}


def test_precedence_set_threads_then_gridrl_threads_then_library_variables(monkeypatch):
    monkeypatch.delenv("GRIDRL_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    assert threads.policy() == {"torch": None, "numba": 1, "source": "default"}
    monkeypatch.setenv("GRIDRL_THREADS", "2")
    assert threads.policy() == {"torch": 2, "numba": 2, "source": "GRIDRL_THREADS"}
    with threads.using(1):
        assert threads.policy() == {"torch": 1, "numba": 1, "source": "gridrl.set_threads"}
    assert threads.policy()["source"] == "GRIDRL_THREADS"


@pytest.mark.parametrize("env, expected", [({}, "1"), ({"GRIDRL_THREADS": "2"}, "2"),
                                            ({"OMP_NUM_THREADS": "3"}, None), ({"OPENBLAS_NUM_THREADS": "4"}, "4")])
def test_openblas_pool_follows_the_policy_when_gridrl_is_imported_first(env, expected):
    code = "import os, gridrl, numpy; print(os.environ.get('OPENBLAS_NUM_THREADS'))"
    clean = {k: v for k, v in CLEAN.items() if k != "OPENBLAS_NUM_THREADS"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**clean, **env},
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == str(expected)


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5", " "])
def test_bad_gridrl_threads_says_what_to_give(monkeypatch, bad):
    monkeypatch.setenv("GRIDRL_THREADS", bad)
    if not bad.strip():  # empty means unset
        assert threads.policy()["source"] != "GRIDRL_THREADS"
        return
    with pytest.raises(threads.ThreadsError, match="GRIDRL_THREADS must be a whole number"):
        threads.policy()


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "x"])
def test_bad_set_threads_says_what_to_give(bad):
    with pytest.raises(threads.ThreadsError, match=r"set_threads\(n\) must be a whole number"):
        gridrl.set_threads(bad)
    assert threads.policy()["source"] != "gridrl.set_threads"


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores to tell 1 from 2 threads")
def test_set_threads_reaches_torch_and_the_power_flow_in_every_thread():
    feeder = gridrl.load_feeder("ieee33")
    env = make_env(feeder, num_envs=2)
    pf = feeder.power_flow()
    scen = random_scenarios(feeder.net, 4)
    seen = {}

    def solve():
        pf.solve(*scen)
        seen["numba"] = numba.get_num_threads()

    with threads.using(2):
        env.step(torch.zeros(2, env.n_agents))
        assert (torch.get_num_threads(), numba.get_num_threads()) == (2, 2)
        t = threading.Thread(target=solve)
        t.start()
        t.join()
        assert seen["numba"] == 2
    assert threads.policy()["source"] != "gridrl.set_threads"


def test_no_stray_public_names_in_the_package():
    import types

    public = {n for n in dir(gridrl) if not n.startswith("_")}
    modules = {n for n in public if isinstance(getattr(gridrl, n), types.ModuleType)}
    assert public - modules == set(gridrl.__all__)
    assert "os" not in public and all(getattr(gridrl, m).__name__.startswith("gridrl.") for m in modules)


# a short dmpo run in a fresh process: the hash of every tensor of its checkpoint's learner
# state and selected policy, and its validation figures
TRAIN_PROBE = """
import hashlib, json, sys, torch, gridrl
from gridrl.marl import resolve_train_config, train
from gridrl.marl.checkpoint import read_checkpoint
cfg = resolve_train_config({"algo": "dmpo", "steps": 128, "num_envs": 4, "compare": [], "validation_days": 2,
                            "validate_every_steps": 128, "checkpoint_every_s": 0,
                            "env": {"episode_hours": 8.0}, "learner": {"hidden": 16, "message_dim": 8}},
                           source="probe")
train("ieee33", cfg, out=sys.argv[1], progress=False, log=lambda m: None)
ck = read_checkpoint(sys.argv[1])
h = hashlib.sha256()
def walk(x):
    if isinstance(x, torch.Tensor):
        h.update(x.detach().cpu().contiguous().numpy().tobytes())
    elif isinstance(x, dict):
        for k in sorted(x, key=str):
            h.update(str(k).encode()); walk(x[k])
    elif isinstance(x, (list, tuple)):
        for v in x: walk(v)
    else:
        h.update(repr(x).encode())
walk(ck["learner"]); walk(ck["selected"])
print(json.dumps({"hash": h.hexdigest(), "threads": torch.get_num_threads(),
                  "validations": [[v["env_steps"], v["controllable_rate"], v["energy_loss_mwh"]]
                                  for v in ck["driver"]["validations"]]}))
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores to tell 1 from 2 threads")
def test_training_gives_the_same_numbers_on_one_and_two_threads_and_in_every_process(tmp_path):
    """Same seed, same versions: the same checkpoint bit for bit, whatever the thread count and
    whichever process runs it (README, *Determinism*). dmpo, because its model fit sums over large
    batches: before the train driver kept torch on one thread, two threads changed its weights by
    up to 9 % after two iterations."""
    def run(name, **env):
        proc = subprocess.run([sys.executable, "-c", TRAIN_PROBE, str(tmp_path / name)], capture_output=True,
                              text=True, env={**CLEAN, **env}, timeout=900)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.splitlines()[-1])

    one, two = run("a", GRIDRL_THREADS="1"), run("b", GRIDRL_THREADS="2")
    assert (one["threads"], two["threads"]) == (1, 2)  # the caller's count is back after training
    assert len(one["validations"]) == 1
    assert one["validations"] == two["validations"]
    assert one["hash"] == two["hash"]
