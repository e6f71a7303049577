"""The README's library examples train for a few iterations and give policies `gridrl score` takes.

Each example is a script under examples/; the tests import it and run a tiny budget, so an API
change in TorchRL, SB3, RLlib or gridrl breaks a test, not a reader's first try."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import gridrl
from gridrl.score import CallablePolicy, get_task, score

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ONE_DAY = dataclasses.replace(get_task("ieee33-v0"), days=(2,))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _check_policy(policy):
    env = gridrl.make_env("ieee33", num_envs=3)
    a = torch.as_tensor(np.asarray(policy(env.reset())))
    assert a.shape == (3, env.n_agents) and bool((a.abs() <= 1).all())
    metrics, _ = score(ONE_DAY, CallablePolicy(policy, name="example"))
    assert 0.0 <= metrics["controllable_rate"] <= 1.0 and metrics["diverged_steps"] == 0


def test_torchrl_example_trains_with_torchrls_ppo_loss():
    ex = _load("torchrl_ippo")
    cfg = dataclasses.replace(ex.Config(), num_envs=8, episode_hours=2.0, iterations=3, epochs=2)
    result = ex.train(cfg, log=None)
    assert [h["iteration"] for h in result["history"]] == [0, 1, 2]
    assert result["history"][-1]["steps"] == 3 * 8 * 8
    assert all(h["action_std"] > 0.01 for h in result["history"])  # it explores: actions are sampled
    _check_policy(result["policy"])


def test_sb3_example_trains_one_shared_policy():
    ex = _load("sb3_ppo")
    result = ex.train("ieee33", timesteps=2 * 2 * 6 * 8, num_envs=2, n_steps=8)
    assert result["model"].num_timesteps >= 2 * 6 * 8
    _check_policy(result["policy"])


def test_rllib_example_trains_a_shared_policy_on_copies_that_draw_apart():
    import ray

    ex = _load("rllib_ppo")
    try:
        result = ex.train("ieee33", iterations=1, num_envs=3, batch=192, log=None)
        algo = result["algo"]
        assert set(algo.config.policies) == {"shared"}
        # RLlib reset every copy with one seed; gridrl's copy keys keep their days apart
        copies = [e.unwrapped.par_env for e in algo.env_runner.env.envs]
        assert len({c.copy_key for c in copies}) == 3
        days = [c.core.episode_metrics()["day"].item() for c in copies]
        starts = [c.core.pending()["hour"].item() for c in copies]
        assert len(set(zip(days, starts))) == 3
        assert copies[0].render() is None  # RLlib's render() calls render(self.render_mode)
        _check_policy(result["policy"])
        algo.stop()
    finally:
        ray.shutdown()
