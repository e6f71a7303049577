"""The task suite, `gridrl score`, and the shipped observation/reward scales."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import gridrl
from gridrl.cli import app
from gridrl.env import EnvConfig
from gridrl.env.spec import NormalizedObservation, obs_loc_scale, obs_spec, reward_spec
from gridrl.score import TASKS, TaskError, get_task, load_controller, score

TWO_DAYS = dataclasses.replace(get_task("ieee33-v0"), days=(2, 7))

POLICY = '''
import torch

def act(obs):
    """volt-var on the own bus (entry 0 is dv_pu[0]): +q when low, -q when high"""
    return (-8.0 * obs[..., 0]).clamp(-1, 1)

def wrong(obs):
    return torch.zeros(obs.shape[0])
'''


def test_every_task_builds_its_config():
    for task in TASKS.values():
        cfg = task.env_config()
        assert isinstance(cfg, EnvConfig) and task.feeder in gridrl.list_feeders()
    assert get_task("ieee33-oracle-v0").env_config().forecast_steps == 1
    assert get_task("ieee141-faults-v0").env_config().message_dropout > 0
    with pytest.raises(TaskError, match="known tasks: ieee33-v0"):
        get_task("ieee33")


def test_score_of_a_callable_matches_the_same_function_as_a_controller(tmp_path):
    path = tmp_path / "mypolicy.py"
    path.write_text(POLICY)
    metrics, days = score(TWO_DAYS, f"{path}:act")
    assert metrics["days"] == 2 and metrics["controller"] == "act"
    # the same actions taken by hand in the core give the same figures
    env = gridrl.make_env("ieee33", split="test", num_envs=2, days=[2, 7],
                          config=EnvConfig(day_sampling="cycle"))
    obs = env.reset(days=[2, 7])
    for _ in range(env.episode_steps):
        obs, _, done, info = env.step((-8.0 * obs[..., 0]).clamp(-1, 1))
    ep = env.episode_metrics()
    assert metrics["controllable_rate"] == pytest.approx(float(ep["controllable_rate"].mean()))
    assert metrics["energy_loss_mwh"] == pytest.approx(float(ep["energy_loss_mwh"].sum()))
    with pytest.raises(TaskError, match=r"returned actions of shape \[2\]; it must return \[B, N\] = \[2, 6\]"):
        score(TWO_DAYS, f"{path}:wrong")


def test_score_of_an_onnx_policy_equals_the_torch_policy(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(33, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1), torch.nn.Tanh())
    torch.manual_seed(0)
    path = tmp_path / "policy.onnx"
    torch.onnx.export(net, (torch.zeros(1, 33),), str(path), input_names=["obs"], output_names=["action"],
                      dynamic_axes={"obs": {0: "batch"}, "action": {0: "batch"}}, dynamo=False)
    m_onnx, _ = score(TWO_DAYS, str(path))

    def torch_policy(obs):
        return net(obs)[..., 0]

    m_torch, _ = score(TWO_DAYS, load_controller_from(torch_policy))
    for k in ("controllable_rate", "energy_loss_mwh", "violation_bus_hours"):
        assert m_onnx[k] == pytest.approx(m_torch[k], rel=1e-5)


def load_controller_from(fn):
    from gridrl.score import CallablePolicy

    return CallablePolicy(fn, name="torch")


def test_builtin_controllers_and_bad_specs():
    feeder = gridrl.load_feeder("ieee33")
    assert load_controller("droop:mapdn", feeder).name == "droop-mapdn"
    with pytest.raises(TaskError, match="cannot import 'no_such_module'"):
        load_controller("no_such_module:act", feeder)
    with pytest.raises(TaskError, match="no ONNX file"):
        load_controller("missing.onnx", feeder)


def test_score_command_prints_metrics_and_refuses_unknown_tasks(tmp_path):
    path = tmp_path / "p.py"
    path.write_text(POLICY)
    runner = CliRunner()
    res = runner.invoke(app, ["score"])
    assert res.exit_code == 0 and "ieee141-faults-v0" in res.output
    res = runner.invoke(app, ["score", "ieee33-v0", "--controller", "none", "--json", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["days"] == 73 and 0 < m["controllable_rate"] < 1 and "controllable_rate" in res.output
    res = runner.invoke(app, ["score", "ieee33-v9"])
    assert res.exit_code == 2 and "unknown task 'ieee33-v9'" in res.output


def test_obs_spec_and_reward_spec_come_from_the_measurement():
    env = gridrl.make_env("ieee33", num_envs=2)
    spec = obs_spec(env)
    assert list(spec["name"]) == env.obs_names
    row = spec.set_index("name").loc["dv_pu[0]"]
    assert row["unit"] == "p.u." and row["p01"] < 0 < row["p99"] < 0.2
    assert spec.set_index("name").loc["inv_q_avail_mvar", "unit"] == "MVAr"
    rewards = reward_spec("ieee33")
    none = rewards[(rewards.controller == "none") & (rewards.component == "reward")].iloc[0]
    droop = rewards[(rewards.controller == "droop") & (rewards.component == "reward")].iloc[0]
    assert droop["episode_return"] > none["episode_return"]  # droop earns more than no control
    assert set(reward_spec()["feeder"]) >= {"ieee33", "ieee69", "ieee141", "mv-rural", "mv-urban"}


def test_normalized_observation_wrapper():
    env = gridrl.make_env("ieee33", num_envs=4, seed=0)
    loc, scale = obs_loc_scale(env, scenarios=4)
    assert loc.shape == scale.shape == (env.obs_dim,) and (scale > 0).all()
    mask = [i for i, n in enumerate(env.obs_names) if n.startswith("mask")]
    assert (scale[mask] == 1).all() and (loc[mask] == 0).all()  # constant entries pass unchanged
    wrapped = NormalizedObservation(gridrl.make_env("ieee33", num_envs=4, seed=0), loc=loc, scale=scale)
    raw = env.reset()
    torch.testing.assert_close(wrapped.reset(), (raw - loc) / scale)
    obs, reward, _, _ = wrapped.step(torch.zeros(4, env.n_agents))
    raw, reward_raw, _, _ = env.step(torch.zeros(4, env.n_agents))
    torch.testing.assert_close(obs, (raw - loc) / scale)
    assert torch.equal(reward, reward_raw) and wrapped.obs_names == env.obs_names
    assert float(obs.abs().max()) < 20  # on the scale of a unit normal, not of MVAr beside p.u.


def test_a_run_folder_scores_only_on_a_task_with_its_information_model(tmp_path):
    from gridrl.marl import resolve_train_config, train

    cfg = resolve_train_config({"steps": 2048, "eval_days": [2], "compare": [], "validation_days": 0,
                                "env": {"forecast_steps": 1}}, source="test")
    train("ieee33", cfg, out=tmp_path / "run", progress=False)
    with pytest.raises(TaskError, match=r"observes with forecast_steps=1 \(task: 0\)"):
        score(TWO_DAYS, str(tmp_path / "run"))
    oracle = dataclasses.replace(get_task("ieee33-oracle-v0"), days=(2, 7))
    metrics, _ = score(oracle, str(tmp_path / "run"))
    assert metrics["days"] == 2 and metrics["controller"] == "run"  # a run is named by its folder
