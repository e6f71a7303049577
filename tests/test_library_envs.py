"""The library adapters over the batched core: TorchRL, Gymnasium vector, SB3, centralized Gymnasium."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from torchrl.envs.utils import check_env_specs

import gridrl
from gridrl.env import EnvConfig, EnvError
from gridrl.env.gymnasium import CentralizedEnv, VoltageControlVectorEnv
from gridrl.env.sb3 import VoltageControlSB3VecEnv
from gridrl.env.torchrl import VoltageControlTorchRLEnv

TWO_HOURS = EnvConfig(episode_hours=2.0, start_hour=None)


@pytest.fixture(scope="module")
def ieee33():
    return gridrl.load_feeder("ieee33")


def test_torchrl_env_passes_check_env_specs(ieee33):
    env = VoltageControlTorchRLEnv(ieee33, num_envs=4, seed=0, include_state=True, config=TWO_HOURS)
    check_env_specs(env, break_when_any_done="both")
    td = env.reset()
    assert td["agents", "observation"].shape == (4, env.n_agents, env.core.obs_dim)
    assert td["state"].shape == (4, env.core.state_dim)
    assert env.obs_names == env.core.obs_names


def test_torchrl_env_is_the_core_step_for_step(ieee33):
    env = VoltageControlTorchRLEnv(ieee33, num_envs=3, seed=5, config=TWO_HOURS)
    core = gridrl.make_env(ieee33, num_envs=3, seed=5, config=TWO_HOURS)
    td = env.reset()
    obs = core.reset()
    torch.testing.assert_close(td["agents", "observation"], obs)
    g = torch.Generator().manual_seed(0)
    for k in range(3 * 8 + 2):  # through two auto-resets
        a = 2 * torch.rand(3, core.n_agents, generator=g) - 1
        td.set(("agents", "action"), a.unsqueeze(-1))
        stepped, td = env.step_and_maybe_reset(td)
        obs, reward, done, info = core.step(a)
        torch.testing.assert_close(stepped["next", "agents", "reward"][..., 0], reward)
        assert torch.equal(stepped["next", "done"][:, 0], done)
        assert torch.equal(stepped["next", "truncated"][:, 0], done & info["converged"])
        assert torch.equal(stepped["next", "metrics", "controllable"][:, 0], info["controllable"])
        if done.any():
            obs = core.reset_done()
        torch.testing.assert_close(td["agents", "observation"], obs)


def test_torchrl_set_seed_and_copies(ieee33):
    a = VoltageControlTorchRLEnv(ieee33, num_envs=4, config=TWO_HOURS)
    b = VoltageControlTorchRLEnv(ieee33, num_envs=4, config=TWO_HOURS)
    a.set_seed(3)
    b.set_seed(3)
    days_a, days_b = a.core.episode_metrics()["day"], b.core.episode_metrics()["day"]
    assert not torch.equal(days_a, days_b)  # copies draw apart for one seed
    c = VoltageControlTorchRLEnv(ieee33, num_envs=4, copy_index=a.copy_key[1], config=TWO_HOURS)
    c.set_seed(3)
    assert torch.equal(c.core.episode_metrics()["day"], days_a)
    with pytest.raises(EnvError, match="running scenario"):
        a.reset(a.reset().update({"_reset": torch.tensor([[True], [False], [False], [False]])}))


def test_vector_env_flattens_scenarios_by_agents(ieee33):
    venv = VoltageControlVectorEnv(ieee33, num_envs=3, seed=2, config=TWO_HOURS)
    core = gridrl.make_env(ieee33, num_envs=3, seed=2, config=TWO_HOURS)
    n = core.n_agents
    assert venv.num_envs == 3 * n and venv.single_action_space.shape == (1,)
    obs, _ = venv.reset(seed=2)
    np.testing.assert_array_equal(obs, core.reset(seed=2).reshape(3 * n, -1).numpy())
    g = np.random.default_rng(0)
    for k in range(8):
        a = g.uniform(-1, 1, (3 * n, 1)).astype(np.float32)
        obs, rew, term, trunc, info = venv.step(a)
        o, r, done, _ = core.step(torch.as_tensor(a).reshape(3, n))
        np.testing.assert_allclose(rew, r.reshape(-1).numpy())
    assert trunc.all() and not term.any()  # 8 steps = two hours: every episode ended
    np.testing.assert_array_equal(np.stack(info["final_obs"]), o.reshape(3 * n, -1).numpy())
    np.testing.assert_allclose(info["final_info"]["scenario_return"],
                               np.repeat(core.episode_metrics()["return"].numpy(), n))
    np.testing.assert_array_equal(obs, core.reset_done().reshape(3 * n, -1).numpy())
    with pytest.raises(EnvError, match=rf"shape \({3 * n}, 1\) or \({3 * n},\)"):
        venv.step(np.zeros((3, n)))
    VoltageControlVectorEnv(ieee33, num_envs=3, seed=2, strict_actions=False).step(np.zeros((3, n)))


def test_vector_copies_draw_apart(ieee33):
    a, b = (VoltageControlVectorEnv(ieee33, num_envs=4, config=TWO_HOURS) for _ in range(2))
    a.reset(seed=1)
    b.reset(seed=1)
    assert not torch.equal(a.core.episode_metrics()["day"], b.core.episode_metrics()["day"])


def test_sb3_vec_env_reports_episodes(ieee33):
    env = VoltageControlSB3VecEnv(ieee33, num_envs=2, seed=0, config=TWO_HOURS)
    env.seed(4)
    obs = env.reset()
    assert obs.shape == (2 * env.core.n_agents, env.core.obs_dim)
    for _ in range(8):
        obs, rew, done, infos = env.step(np.zeros((env.num_envs, 1), np.float32))
    assert done.all()
    assert all(i["TimeLimit.truncated"] and i["episode"]["l"] == 8 for i in infos)
    assert infos[0]["terminal_observation"].shape == (env.core.obs_dim,)


def test_centralized_env_passes_gymnasium_checks(ieee33):
    env = CentralizedEnv(ieee33, seed=0, config=TWO_HOURS)
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=0, options={"day": ieee33.days("train")[0]})
    assert obs.shape == (env.core.state_dim,) and info["day"] == ieee33.days("train")[0]
    with pytest.raises(EnvError, match="one per agent"):
        env.step(np.zeros(2, np.float32))
