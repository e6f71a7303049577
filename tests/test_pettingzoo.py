"""The PettingZoo adapter passes PettingZoo's own API and seed tests on every small feeder."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from pettingzoo.test import parallel_api_test, parallel_seed_test

import gridrl
from gridrl.env import EnvConfig, parallel_env

SMALL = ["ieee33", "ieee69", "ieee141", "mv-rural", "mv-urban"]


@pytest.mark.parametrize("name", [*SMALL, pytest.param("mvlv-rural", marks=pytest.mark.slow)])
def test_pettingzoo_api_and_seed_tests_pass(name):
    feeder = gridrl.load_feeder(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parallel_api_test(parallel_env(feeder, seed=0), num_cycles=1000)
        parallel_seed_test(lambda: parallel_env(feeder, seed=0))
    api_warnings = [str(w.message) for w in caught if "pettingzoo" in (w.filename or "")]
    assert not api_warnings


def test_spaces_state_and_end_of_day_truncation():
    env = parallel_env("ieee33", split="test", seed=1, config=EnvConfig(episode_hours=1.0))
    obs, infos = env.reset(seed=5, options={"day": 2})
    assert env.agents == env.possible_agents and infos[env.agents[0]]["day"] == 2
    agent = env.agents[0]
    space = env.observation_space(agent)
    assert space is env.observation_space(agent) and space.shape == (env.core.obs_dim,)
    assert obs[agent].dtype == np.float32 and space.contains(obs[agent])
    assert env.action_space(agent).shape == (1,)
    assert env.state().shape == env.state_space.shape and env.state().dtype == np.float32
    for k in range(4):
        obs, rew, term, trunc, info = env.step({a: np.array([0.1], np.float32) for a in env.agents})
        assert set(rew) == set(env.possible_agents) and not any(term.values())
    assert all(trunc.values()) and env.agents == []
    assert info[agent]["episode"]["steps"] == 4
    with pytest.raises(RuntimeError, match="reset"):
        env.step({})


def test_divergence_is_a_termination():
    env = parallel_env("ieee33", seed=0, config=EnvConfig(start_hour=18.0, episode_hours=1.0))
    env.reset(seed=0)
    exogenous = env.core._exogenous

    def overloaded(g):
        exo = exogenous(g)
        exo["load_p_mw"] *= 40
        exo["load_q_mvar"] *= 40
        return exo

    env.core._exogenous = overloaded
    _, rew, term, trunc, info = env.step({a: np.zeros(1, np.float32) for a in env.agents})
    assert all(term.values()) and not any(trunc.values()) and env.agents == []
    assert info[env.possible_agents[0]]["converged"] is False
    assert set(rew.values()) == {-env.core.config.divergence_penalty}


def test_adapter_matches_the_batched_core():
    from gridrl.env import make_env

    penv = parallel_env("ieee69", seed=3)
    core = make_env("ieee69", num_envs=1, seed=3)
    obs, _ = penv.reset(seed=3)
    obs_core = core.reset(seed=3)
    for i, a in enumerate(penv.agents):
        np.testing.assert_array_equal(obs[a], obs_core[0, i].numpy())
    acts = {a: np.array([0.3 * (-1) ** i], np.float32) for i, a in enumerate(penv.agents)}
    obs, rew, _, _, _ = penv.step(acts)
    obs_core, rew_core, _, _ = core.step(torch.tensor([[float(acts[a][0]) for a in penv.agents]]))
    for i, a in enumerate(penv.agents):
        np.testing.assert_array_equal(obs[a], obs_core[0, i].numpy())
        assert rew[a] == pytest.approx(float(rew_core[0, i]))
