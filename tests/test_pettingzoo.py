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

    def overloaded(g, *args):
        exo = exogenous(g, *args)
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


ONE_HOUR = EnvConfig(episode_hours=1.0, start_hour=None)


def _days(env, resets: int, seed: int | None) -> list[int]:
    out = []
    for k in range(resets):
        _, infos = env.reset(seed=seed if k == 0 else None)
        out.append(infos[env.possible_agents[0]]["day"])
    return out


def test_copies_reset_with_one_seed_draw_different_days():
    # what RLlib does: build N copies with one creator, reset each with seed=42, then go on unseeded
    feeder = gridrl.load_feeder("ieee33")
    copies = [parallel_env(feeder, config=ONE_HOUR) for _ in range(4)]
    assert len({env.copy_key for env in copies}) == 4
    seqs = [tuple(_days(env, 6, seed=42)) for env in copies]
    assert len(set(seqs)) == 4
    # a copy repeats itself: same key, same seed, same days
    again = parallel_env(feeder, config=ONE_HOUR, copy_index=copies[2].copy_key[1])
    assert tuple(_days(again, 6, seed=42)) == seqs[2]
    # library workers: the same copy index on another worker draws other days
    other = parallel_env(feeder, config=ONE_HOUR, copy_index=copies[2].copy_key[1], worker_index=1)
    assert tuple(_days(other, 6, seed=42)) != seqs[2]


def test_default_envs_differ_and_seeded_envs_agree_on_purpose():
    feeder = gridrl.load_feeder("ieee33")
    a, b = parallel_env(feeder, config=ONE_HOUR), parallel_env(feeder, config=ONE_HOUR)
    assert _days(a, 6, seed=None) != _days(b, 6, seed=None)
    c, d = (parallel_env(feeder, seed=7, config=ONE_HOUR) for _ in range(2))
    assert c.copy_key == () and _days(c, 6, seed=None) == _days(d, 6, seed=None)
    # an explicitly seeded env is the batched core with that seed
    core = gridrl.make_env(feeder, seed=7, config=ONE_HOUR)
    c.reset(seed=7)
    np.testing.assert_array_equal(c.state(), core.state()[0].numpy())


def test_wrong_actions_are_one_clear_error():
    env = parallel_env("ieee33", seed=0)
    env.reset(seed=0)
    agents = env.agents
    ok = {a: np.zeros(1, np.float32) for a in agents}
    with pytest.raises(gridrl.env.EnvError, match=rf"no action for 2 live agent\(s\) '{agents[0]}', '{agents[1]}'"):
        env.step({a: v for a, v in ok.items() if a not in agents[:2]})
    with pytest.raises(gridrl.env.EnvError, match=rf"shape must be \(1,\), got '{agents[3]}' \(2,\)"):
        env.step({**ok, agents[3]: np.array([0.5, 0.5])})
    with pytest.raises(gridrl.env.EnvError, match="unknown agent"):
        env.step({**ok, "bus999": np.zeros(1)})
    with pytest.raises(gridrl.env.EnvError, match="must be a dict"):
        env.step(np.zeros(6))
    env.step({a: np.float32(0.1) for a in agents})  # a scalar is one number too


def test_lenient_actions_only_clip():
    strict = parallel_env("ieee33", seed=0)
    lenient = parallel_env("ieee33", seed=0, strict_actions=False)
    strict.reset(seed=0)
    lenient.reset(seed=0)
    agents = strict.agents
    # the missing agent acts 0; a longer action's first element counts; 3.0 is clipped to 1
    _, r_lenient, *_ = lenient.step({agents[0]: np.array([3.0, -1.0]), **{a: np.zeros(1) for a in agents[2:]}})
    _, r_strict, *_ = strict.step({agents[0]: np.ones(1), agents[1]: np.zeros(1),
                                   **{a: np.zeros(1) for a in agents[2:]}})
    assert r_lenient == r_strict


def test_render_follows_gymnasium_and_the_older_mode_argument():
    env = parallel_env("ieee33", seed=0)
    env.reset(seed=0)
    assert env.render() is None and env.render(None) is None
    env.step({a: np.zeros(1) for a in env.agents})
    text = env.render("ansi")
    assert text.startswith("ieee33 day ") and "step 1" in text and "MW" in text
    ansi = parallel_env("ieee33", seed=0, render_mode="ansi")
    ansi.reset(seed=0)
    assert ansi.render().endswith(": reset")
    with pytest.raises(gridrl.env.EnvError, match="render_mode"):
        parallel_env("ieee33", seed=0, render_mode="human")
