"""The batched environment: what agents observe, how actions become q, metrics against
pandapower, rewards, divergence, seeds, peek/pending, faults and configuration."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandapower as pp
import pytest
import torch

import gridrl
from gridrl.config import from_dict
from gridrl.env import EnvConfig, EnvError, barrier, make_env
from gridrl.errors import GridrlError, SpecError

NOON = EnvConfig(start_hour=12.0, episode_hours=2.0)
SUNNY_DAYS = [150, 160, 170, 180]  # day 160 leaves the band at noon without control


@pytest.fixture(scope="module")
def ieee33():
    return gridrl.load_feeder("ieee33")


@pytest.fixture(scope="module")
def noon_env(ieee33):
    return make_env(ieee33, num_envs=4, seed=0, config=NOON)


def _random_actions(env, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * (2 * torch.rand(env.num_envs, env.n_agents, generator=g) - 1)


def _runpp(net):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pp.runpp(net, lightsim2grid=False)


# ---------------------------------------------------------------------------------------------
# observations: only the agent's own zone and inverter
# ---------------------------------------------------------------------------------------------


def _bus_injections(feeder, pend, q_mvar, b):
    """Net P/Q per bus (generation − consumption) from the element tables, independently."""
    net = feeder.net
    p = {int(x): 0.0 for x in net.bus.index}
    q = dict(p)
    for k, (bus, on) in enumerate(zip(net.load.bus, net.load.in_service)):
        if on:
            p[int(bus)] -= float(pend["load_p_mw"][b, k])
            q[int(bus)] -= float(pend["load_q_mvar"][b, k])
    inv_q = dict(zip(feeder.inverters.index, q_mvar[b].tolist()))
    for k, (idx, bus, on) in enumerate(zip(net.sgen.index, net.sgen.bus, net.sgen.in_service)):
        if on:
            p[int(bus)] += float(pend["sgen_p_mw"][b, k])
            q[int(bus)] += inv_q.get(idx, float(net.sgen.q_mvar.at[idx]))
    return p, q


@pytest.mark.parametrize("observation", ["measured", "previous_step"])
def test_observation_is_built_from_the_agents_own_zone_only(ieee33, observation):
    """``measured``: the start of the next interval (its loads and PV, the set-points just applied
    still in force, clipped to the new headroom); ``previous_step``: the interval just solved."""
    env = make_env(ieee33, num_envs=4, seed=0, config=EnvConfig(start_hour=12.0, episode_hours=2.0,
                                                                observation=observation))
    env.reset(days=SUNNY_DAYS)
    pend = env.pending()
    obs, _, _, info = env.step(_random_actions(env))
    if observation == "measured":
        pend = env.pending()  # the interval about to be acted on
        q_held = torch.maximum(torch.minimum(info["q_mvar"], pend["q_avail_mvar"]), -pend["q_avail_mvar"])
        vm = env.peek(q_mvar=q_held)["vm_pu"]
        hour = 12.25
    else:
        q_held, vm, hour = info["q_mvar"], info["vm_pu"], 12.0
    names = env.obs_names
    Z = env.max_zone_buses
    assert obs.shape == (4, env.n_agents, env.obs_dim) and obs.dtype == torch.float32
    assert len(names) == env.obs_dim
    assert names[:5] == ["dv_pu[0]", "p_mw[0]", "q_mvar[0]", "mask[0]", "dv_pu[1]"]
    assert names[-1] == "cos_time"
    bus_pos = {int(b): i for i, b in enumerate(ieee33.net.bus.index)}
    for b in (0, 1):
        p_bus, q_bus = _bus_injections(ieee33, pend, q_held, b)
        for i, agent in enumerate(env.agents):
            own = int(ieee33.inverters.bus[ieee33.inverters.agent == agent].iloc[0])
            zone = [own] + sorted(int(x) for x in ieee33.zone_buses(agent) if x != own)
            pad = Z - len(zone)
            expect = []
            for x in zone:
                expect += [vm[b, bus_pos[x]].item() - 1, p_bus[x], q_bus[x], 1.0]
            expect += [0.0] * (4 * pad)
            inv = ieee33.inverters.agent == agent
            k = np.flatnonzero(inv.to_numpy())
            p = pend["pv_p_mw"][b, k].sum().item()
            q = q_held[b, k].sum().item()
            q_avail = pend["q_avail_mvar"][b, k].sum().item()
            expect += [p, q, q_avail, math.sin(2 * math.pi * hour / 24), math.cos(2 * math.pi * hour / 24)]
            np.testing.assert_allclose(obs[b, i].double().numpy(), expect, rtol=1e-6, atol=1e-6)


def test_measured_observation_agrees_with_pandapower_and_reset_measures_the_first_interval(ieee33):
    """The measurement solve is a real power flow: the own-bus voltage an agent reads equals
    pandapower's with the next interval's loads and PV and the held set-points; the first
    observation is the first interval with every inverter at q = 0."""
    env = make_env(ieee33, num_envs=1, seed=0, days=[160], config=EnvConfig(start_hour=12.0, episode_hours=1.0))
    obs0 = env.reset(days=[160])
    pend = env.pending()
    np.testing.assert_allclose(obs0[0, :, env.obs_names.index("inv_p_mw")].numpy(),
                               pend["pv_p_mw"][0].numpy(), rtol=1e-6)
    assert (obs0[0, :, env.obs_names.index("inv_q_mvar")] == 0).all()
    obs, _, _, info = env.step(torch.full((1, env.n_agents), -0.7))
    pend = env.pending()
    net = ieee33.net
    net.load["p_mw"] = pend["load_p_mw"][0].numpy()
    net.load["q_mvar"] = pend["load_q_mvar"][0].numpy()
    net.sgen["p_mw"] = pend["sgen_p_mw"][0].numpy()
    q_held = np.clip(info["q_mvar"][0].numpy(), -pend["q_avail_mvar"][0].numpy(), pend["q_avail_mvar"][0].numpy())
    net.sgen.loc[ieee33.inverters.index, "q_mvar"] = q_held
    _runpp(net)
    own = ieee33.inverters.drop_duplicates("agent").set_index("agent")["bus"].reindex(env.agents)
    expect = net.res_bus.vm_pu.loc[own.to_numpy()].to_numpy() - 1.0
    np.testing.assert_allclose(obs[0, :, 0].double().numpy(), expect, atol=1e-6)
    assert not np.allclose(obs[0, :, 0].double().numpy(), info["vm_pu"][0, env.agent_bus_pos].numpy() - 1, atol=1e-5)


def test_pooled_layout_summarizes_the_zone(ieee33):
    env = make_env(ieee33, num_envs=2, seed=0, config=EnvConfig(start_hour=12.0, episode_hours=1.0,
                                                                zone_layout="pool", observation="previous_step"))
    obs, _, _, info = env.step(_random_actions(env))
    assert env.obs_names[:6] == ["dv_own_pu", "dv_min_pu", "dv_mean_pu", "dv_max_pu", "p_zone_mw",
                                 "q_zone_mvar"]
    bus_pos = {int(b): i for i, b in enumerate(ieee33.net.bus.index)}
    for i, agent in enumerate(env.agents):
        zone = [bus_pos[int(x)] for x in ieee33.zone_buses(agent)]
        dv = info["vm_pu"][0, zone] - 1
        own = bus_pos[int(ieee33.inverters.bus[ieee33.inverters.agent == agent].iloc[0])]
        got = obs[0, i, :4].double()
        want = torch.stack([info["vm_pu"][0, own] - 1, dv.min(), dv.mean(), dv.max()])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# actions → reactive power
# ---------------------------------------------------------------------------------------------


def test_action_scales_available_reactive_power_and_is_clipped(noon_env):
    env = noon_env
    env.reset(days=SUNNY_DAYS)
    pend = env.pending()
    s_max = torch.as_tensor(env.feeder.inverters.s_max_mva.to_numpy())
    q_avail = torch.sqrt(s_max ** 2 - pend["pv_p_mw"] ** 2)
    torch.testing.assert_close(pend["q_avail_mvar"], q_avail)
    a = torch.tensor([[0.5, -0.25, 1.0, -1.0, 3.0, -7.0]]).repeat(4, 1)
    _, _, _, info = env.step(a)
    torch.testing.assert_close(info["q_mvar"], a.clamp(-1, 1).double() * q_avail)
    assert (info["q_mvar"].abs() <= q_avail + 1e-12).all()


def test_agent_with_several_inverters_drives_them_all_with_its_action():
    feeder = gridrl.load_feeder("mv-rural")
    counts = feeder.inverters.agent.value_counts()
    shared = counts.index[counts > 1][0]
    env = make_env(feeder, num_envs=1, seed=0, config=EnvConfig(start_hour=12.0, episode_hours=1.0))
    a = torch.zeros(1, env.n_agents)
    a[0, env.agents.index(shared)] = 0.5
    pend = env.pending()
    _, _, _, info = env.step(a)
    k = np.flatnonzero((feeder.inverters.agent == shared).to_numpy())
    torch.testing.assert_close(info["q_mvar"][0, k], 0.5 * pend["q_avail_mvar"][0, k])
    others = np.setdiff1d(np.arange(len(feeder.inverters)), k)
    assert (info["q_mvar"][0, others] == 0).all()


def test_nan_action_names_the_agent(noon_env):
    env = noon_env
    env.reset()
    a = torch.zeros(4, env.n_agents)
    a[2, 3] = float("nan")
    with pytest.raises(EnvError, match=rf"NaN for agent\(s\) {env.agents[3]} \(scenario\(s\) 2\)"):
        env.step(a)
    with pytest.raises(EnvError, match=rf"must have shape \[num_envs, n_agents\] = \[4, {env.n_agents}\], got "
                                       rf"\[4, {env.n_agents + 1}\]"):
        env.step(torch.zeros(4, env.n_agents + 1))


def test_bad_env_arguments_are_user_errors(ieee33):
    """A user error (GridrlError, still a ValueError) that names the problem and the fix."""
    with pytest.raises(EnvError) as exc:
        make_env(ieee33, days=[999])
    assert isinstance(exc.value, GridrlError) and isinstance(exc.value, ValueError)
    assert str(exc.value) == "days must be a non-empty list of day numbers in 0…365; got [999]"
    with pytest.raises(EnvError, match=r"^unknown split 'validation' \(use 'train', 'val', 'test' or 'all'\)$"):
        make_env(ieee33, split="validation")


# ---------------------------------------------------------------------------------------------
# metrics and rewards
# ---------------------------------------------------------------------------------------------


def test_band_metrics_and_losses_match_pandapower(ieee33, noon_env):
    env = noon_env
    env.reset(days=SUNNY_DAYS)
    pend = env.pending()
    _, _, _, info = env.step(_random_actions(env, seed=3, scale=0.3))
    mon = ieee33.monitored
    for b in range(4):
        net = ieee33.net
        net.load["p_mw"] = pend["load_p_mw"][b].numpy()
        net.load["q_mvar"] = pend["load_q_mvar"][b].numpy()
        net.sgen["p_mw"] = pend["sgen_p_mw"][b].numpy()
        net.sgen.loc[ieee33.inverters.index, "q_mvar"] = info["q_mvar"][b].numpy()
        _runpp(net)
        vm = net.res_bus.vm_pu.to_numpy()
        np.testing.assert_allclose(info["vm_pu"][b].numpy(), vm, atol=1e-6)
        v = vm[mon]
        out = (v < 0.95) | (v > 1.05)
        assert info["out_of_band_share"][b].item() == pytest.approx(out.mean(), abs=1e-12)
        assert bool(info["controllable"][b]) == (not out.any())
        assert info["dv_mean_pu"][b].item() == pytest.approx(np.abs(v - 1).mean(), abs=1e-6)
        assert info["dv_max_pu"][b].item() == pytest.approx(np.abs(v - 1).max(), abs=1e-6)
        loss = net.res_line.pl_mw.sum() + net.res_trafo.pl_mw.sum()
        assert info["loss_mw"][b].item() == pytest.approx(loss, abs=1e-6)
        assert info["zone_loss_mw"][b].sum().item() == pytest.approx(loss, abs=1e-6)
        assert info["q_abs_mvar"][b].item() == pytest.approx(info["q_mvar"][b].abs().sum().item())
    assert not info["controllable"].all(), "the test day should leave the band somewhere"


def test_local_reward_is_barrier_plus_loss_share_plus_q_cost(ieee33):
    cfg = EnvConfig(start_hour=12.0, episode_hours=1.0, barrier="l2", voltage_weight=2.0,
                    loss_weight_per_mw=3.0, q_weight_per_mvar=0.5)
    env = make_env(ieee33, num_envs=2, seed=0, config=cfg)
    _, reward, _, info = env.step(_random_actions(env))
    vm = info["vm_pu"]
    zone_of = ieee33.bus_zone.to_numpy()
    for i, agent in enumerate(env.agents):
        buses = np.flatnonzero((zone_of == agent) & ieee33.monitored)
        bar = (2 * (vm[:, buses] - 1) ** 2).sum(1)
        q = info["q_mvar"][:, np.flatnonzero((ieee33.inverters.agent == agent).to_numpy())].abs().sum(1)
        want = -(2.0 * bar + 3.0 * info["zone_loss_mw"][:, i] + 0.5 * q)
        torch.testing.assert_close(reward[:, i].double(), want, rtol=1e-5, atol=1e-6)
    # every monitored bus in exactly one zone: the local barriers add up to the global one
    total = (2 * (vm[:, ieee33.monitored] - 1) ** 2).sum(1)
    torch.testing.assert_close(info["reward_voltage"].sum(1), total)


@pytest.mark.parametrize("kind", ["l1", "l2", "bowl", "courant_beltrami"])
def test_barrier_values(kind):
    v = torch.tensor([0.90, 0.95, 0.99, 1.0, 1.02, 1.05, 1.07], dtype=torch.float64)
    got = barrier(v, kind)
    d = (v - 1).abs()
    if kind == "l1":
        want = d
    elif kind == "l2":
        want = 2 * d ** 2
    elif kind == "courant_beltrami":
        want = torch.relu(v - 1.05) ** 2 + torch.relu(0.95 - v) ** 2
    else:
        inside = lambda x: 0.04 - 0.01 * math.exp(-0.5 * (x / 0.1) ** 2) / (0.1 * math.sqrt(2 * math.pi))
        want = torch.tensor([2 * 0.05 + inside(0.05), inside(0.05), inside(0.01), inside(0.0),
                             inside(0.02), inside(0.05), 2 * 0.02 + inside(0.05)], dtype=torch.float64)
    torch.testing.assert_close(got, want, atol=1e-8, rtol=1e-8)


def test_bowl_is_continuous_flat_inside_and_steep_outside():
    v = torch.linspace(0.9, 1.1, 20001, dtype=torch.float64)
    b = barrier(v, "bowl")
    assert b.diff().abs().max() < 1e-4  # no jump anywhere, band edges included
    inside = (v > 0.951) & (v < 1.049)
    assert b[inside].max() < 0.005 and b.max() > 0.1
    assert barrier(torch.tensor([1.0], dtype=torch.float64), "bowl").item() == pytest.approx(
        0.04 - 0.01 / (0.1 * math.sqrt(2 * math.pi)))
    with pytest.raises(ValueError, match="unknown barrier"):
        barrier(v, "l3")


# ---------------------------------------------------------------------------------------------
# episodes, divergence, reset
# ---------------------------------------------------------------------------------------------


def test_full_day_episode_aggregates(ieee33):
    env = make_env(ieee33, num_envs=2, seed=1)
    assert env.episode_steps == 96
    env.reset(days=[160, 20])
    loss = viol = ctrl = ret = 0.0
    for k in range(96):
        _, reward, done, info = env.step(torch.zeros(2, env.n_agents))
        assert done.tolist() == [k == 95] * 2
        loss += info["loss_mw"][0].item() * 0.25
        viol += info["out_of_band_share"][0].item() * env.n_monitored * 0.25
        ctrl += float(info["controllable"][0])
        ret += reward[0].double().sum().item()
    ep = info["episode"]
    assert info["truncated"].all()
    assert ep["steps"][0] == 96 and ep["day"].tolist() == [160, 20]
    assert ep["energy_loss_mwh"][0].item() == pytest.approx(loss, rel=1e-9)
    assert ep["violation_bus_hours"][0].item() == pytest.approx(viol, rel=1e-9)
    assert ep["controllable_rate"][0].item() == pytest.approx(ctrl / 96)
    assert ep["return"][0].item() == pytest.approx(ret, rel=1e-5)
    assert ep["diverged"].tolist() == [0.0, 0.0]
    # finished scenarios stay frozen until reset_done
    obs_before = env._obs.clone()
    obs, reward, done, info = env.step(torch.zeros(2, env.n_agents))
    assert done.all() and not info["active"].any() and (reward == 0).all()
    assert torch.equal(obs, obs_before) and torch.isnan(info["loss_mw"]).all()
    env.reset_done()
    assert not env.done.any() and env.pending()["step"].tolist() == [0, 0]


def test_divergence_ends_only_that_episode(ieee33):
    env = make_env(ieee33, num_envs=3, seed=0, config=EnvConfig(start_hour=18.0, episode_hours=2.0))
    exogenous = env._exogenous

    def overloaded(g, rows=None):  # scenario 1 at forty times its load: no power-flow solution exists
        exo = exogenous(g, rows)
        if len(g) == 3:
            exo["load_p_mw"][1] *= 40
            exo["load_q_mvar"][1] *= 40
        return exo

    env._exogenous = overloaded
    obs, reward, done, info = env.step(torch.zeros(3, env.n_agents))
    assert done.tolist() == [False, True, False]
    assert info["converged"].tolist() == [True, False, True]
    assert not info["truncated"].any()
    assert (reward[1] == -env.config.divergence_penalty).all()
    assert torch.isfinite(reward).all() and torch.isfinite(obs).all()
    assert torch.isnan(info["loss_mw"][1]) and torch.isfinite(info["loss_mw"][[0, 2]]).all()
    assert not info["controllable"][1]
    assert info["episode"]["diverged"][1] == 1.0 and torch.isnan(info["episode"]["diverged"][0])
    _, _, done, info = env.step(torch.zeros(3, env.n_agents))  # the others go on
    assert info["active"].tolist() == [True, False, True] and info["step"].tolist() == [2, 1, 2]
    env._exogenous = exogenous
    env.reset_done()
    _, _, done, info = env.step(torch.zeros(3, env.n_agents))
    assert info["converged"].all() and info["step"].tolist() == [3, 1, 3]


def test_reset_draws_days_of_the_split_only(ieee33):
    env = make_env(ieee33, num_envs=64, seed=5, split="test")
    test_days = set(ieee33.days("test"))
    _, _, _, info = env.step(torch.zeros(64, env.n_agents))
    assert set(info["day"].tolist()) <= test_days
    env = make_env(ieee33, num_envs=3, seed=0, days=[7, 8, 9], split="all",
                   config=EnvConfig(day_sampling="cycle", episode_hours=1.0))
    assert env._day.tolist() == [7, 8, 9]
    env.reset(days=[100, 101, 102])
    assert env._day.tolist() == [100, 101, 102]
    with pytest.raises(ValueError, match="one day per scenario"):
        env.reset(days=[1, 2])


def test_explicit_days_stay_inside_their_split(ieee33):
    """A test day can never reach a training environment, by the pool or by reset(days=...)."""
    with pytest.raises(ValueError, match=r"day\(s\) 2, 7 are not train days of feeder 'ieee33'"):
        make_env(ieee33, num_envs=1, days=[2, 7, 10])
    env = make_env(ieee33, num_envs=2, days=[10, 11])
    with pytest.raises(ValueError, match=r"day\(s\) 12 are not train days"):
        env.reset(days=[10, 12])
    with pytest.raises(ValueError, match="are not test days"):
        make_env(ieee33, num_envs=1, split="test", days=[10])


def test_finer_steps_interpolate_the_profiles(ieee33):
    env = make_env(ieee33, num_envs=1, seed=0, days=[10],
                   config=EnvConfig(step_minutes=5, start_hour=12.0, episode_hours=1.0))
    assert env.episode_steps == 12 and env.steps_per_day == 288
    t = 10 * 96 + 48
    x0, x1 = ieee33.profiles.load_p_mw[t], ieee33.profiles.load_p_mw[t + 1]
    for k in range(3):
        want = x0 + (k / 3) * (x1 - x0)
        np.testing.assert_allclose(env.pending()["load_p_mw"][0].numpy(), want, rtol=1e-12)
        env.step(torch.zeros(1, env.n_agents))


# ---------------------------------------------------------------------------------------------
# seeds, peek, pending
# ---------------------------------------------------------------------------------------------

FAULTY = EnvConfig(episode_hours=3.0, start_hour=None, sensor_noise_pu=0.01, message_dropout=0.3,
                   outage_prob=0.2, forecast_steps=2, forecast_noise_rel=0.1)


def _rollout(feeder, seed, config, steps=14):
    env = make_env(feeder, num_envs=3, seed=seed, config=config)
    out = [env.reset()]
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        obs, reward, done, info = env.step(2 * torch.rand(3, env.n_agents, generator=g) - 1)
        out += [obs, reward, done, info["vm_pu"], info["message_mask"], info["outage"], env.state()]
        if done.any():
            out.append(env.reset_done())
    return out


def test_same_seed_same_trajectories_bit_for_bit(ieee33):
    a = _rollout(ieee33, 11, FAULTY)
    b = _rollout(ieee33, 11, FAULTY)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    c = _rollout(ieee33, 12, FAULTY)
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_peek_leaves_the_environment_unchanged(ieee33):
    env1 = make_env(ieee33, num_envs=2, seed=4, config=FAULTY)
    env2 = make_env(ieee33, num_envs=2, seed=4, config=FAULTY)
    a = _random_actions(env1)
    for _ in range(2):
        env1.step(a)
        env2.step(a)
    peeked = env1.peek(a)
    env1.peek(-a)
    env1.peek(q_mvar=torch.zeros(2, env1.n_inverters))
    pend = env1.pending()
    r1 = env1.step(a)
    r2 = env2.step(a)
    torch.testing.assert_close(peeked["vm_pu"], r1[3]["vm_pu"], rtol=0, atol=0)
    assert torch.equal(peeked["loss_mw"], r1[3]["loss_mw"])
    assert torch.equal(peeked["q_mvar"], r1[3]["q_mvar"])
    assert torch.equal(pend["pv_p_mw"], r1[3]["p_mw"])
    own = [env1.bus_index.tolist().index(int(ieee33.inverters.bus[ieee33.inverters.agent == ag].iloc[0]))
           for ag in env1.agents]
    assert torch.equal(peeked["vm_own_pu"], r1[3]["vm_pu"][:, own])
    for x, y in zip(r1[:3], r2[:3]):
        assert torch.equal(x, y)
    for k in r1[3]:
        if isinstance(r1[3][k], torch.Tensor):
            assert torch.equal(torch.nan_to_num(r1[3][k].double()), torch.nan_to_num(r2[3][k].double())), k


# ---------------------------------------------------------------------------------------------
# faults
# ---------------------------------------------------------------------------------------------


def test_inverter_outage_holds_q_at_zero(ieee33):
    cfg = EnvConfig(start_hour=12.0, episode_hours=1.0, outage_agents=("bus18",), outage_prob=0.5,
                    q_at_night=True)  # an inverter whose PV is dark at noon still has headroom
    env = make_env(ieee33, num_envs=8, seed=2, config=cfg)
    _, _, _, info = env.step(torch.ones(8, env.n_agents))
    out = info["outage"]
    assert out[:, env.agents.index("bus18")].all()
    assert 0 < out.float().mean() < 1
    assert (info["q_mvar"][out] == 0).all() and (info["q_mvar"][~out] > 0).all()
    with pytest.raises(ValueError, match="outage_agents: no agent 'bus99'"):
        make_env(ieee33, config=EnvConfig(outage_agents=("bus99",)))


def test_sensor_noise_touches_observations_only(ieee33):
    base = EnvConfig(start_hour=12.0, episode_hours=1.0)
    noisy = EnvConfig(start_hour=12.0, episode_hours=1.0, sensor_noise_pu=0.01)
    e1 = make_env(ieee33, num_envs=2, seed=3, config=base)
    e2 = make_env(ieee33, num_envs=2, seed=3, config=noisy)
    a = _random_actions(e1)
    o1, r1, _, i1 = e1.step(a)
    o2, r2, _, i2 = e2.step(a)
    assert torch.equal(r1, r2) and torch.equal(i1["vm_pu"], i2["vm_pu"])
    Z = e1.max_zone_buses
    dv = slice(0, 4 * Z, 4)
    diff = (o2 - o1)[:, :, dv] * o1[:, :, 3:4 * Z:4]  # voltage features of real zone buses
    assert 0.003 < diff.std().item() < 0.03
    keep = torch.ones(e1.obs_dim, dtype=torch.bool)
    keep[dv] = False
    assert torch.equal(o1[:, :, keep], o2[:, :, keep])  # P/Q, mask, inverter, time untouched


def test_message_mask_follows_the_agent_graph(ieee33):
    env = make_env(ieee33, num_envs=64, seed=0, config=EnvConfig(message_dropout=0.25))
    _, _, _, info = env.step(torch.zeros(64, env.n_agents))
    m = info["message_mask"]
    adj = torch.as_tensor(ieee33.adjacency)
    assert m.shape == (64, env.n_agents, env.n_agents)
    assert m.diagonal(dim1=1, dim2=2).all()
    off = ~adj & ~torch.eye(env.n_agents, dtype=torch.bool)
    assert not m[:, off].any()
    assert m[:, adj].float().mean().item() == pytest.approx(0.75, abs=0.05)
    env0 = make_env(ieee33, num_envs=2, seed=0)
    _, _, _, info0 = env0.step(torch.zeros(2, env0.n_agents))
    assert torch.equal(info0["message_mask"][0], adj | torch.eye(env0.n_agents, dtype=torch.bool))


def test_forecast_features_are_the_steps_after_the_one_acted_on(ieee33):
    """The oracle forecast: the next k intervals after the one the agent is about to act on (whose
    PV it already measures), exact when noise is 0, noisy by default."""
    env = make_env(ieee33, num_envs=1, seed=0, days=[160],
                   config=EnvConfig(start_hour=12.0, episode_hours=2.0, forecast_steps=2, forecast_noise_rel=0.0))
    obs, _, _, _ = env.step(torch.zeros(1, env.n_agents))
    assert EnvConfig().forecast_steps == 0 and EnvConfig().forecast_noise_rel == 0.1
    t = 160 * 96 + 48
    pv = ieee33.profiles.pv_p_mw
    names = env.obs_names
    assert names[-4:] == ["pv_forecast_mw[1]", "pv_forecast_mw[2]", "load_forecast_mw[1]",
                          "load_forecast_mw[2]"]
    np.testing.assert_allclose(obs[0, :, -4].numpy(), pv[t + 2], rtol=1e-6)
    np.testing.assert_allclose(obs[0, :, -3].numpy(), pv[t + 3], rtol=1e-6)
    np.testing.assert_allclose(obs[0, :, names.index("inv_p_mw")].numpy(), pv[t + 1], rtol=1e-6)
    np.testing.assert_allclose(env.pending()["pv_p_mw"][0].numpy(), pv[t + 1], rtol=1e-12)
    noisy = make_env(ieee33, num_envs=1, seed=0, days=[160],
                     config=EnvConfig(start_hour=12.0, episode_hours=2.0, forecast_steps=2))
    obs_n, _, _, _ = noisy.step(torch.zeros(1, env.n_agents))
    rel = (obs_n[0, :, -4] / obs[0, :, -4] - 1).numpy()
    assert 0.02 < np.abs(rel).mean() < 0.3


# ---------------------------------------------------------------------------------------------
# the scenario: load_scale, pv_scale, q_at_night
# ---------------------------------------------------------------------------------------------

EVENING = dict(start_hour=17.75, episode_hours=0.25)  # test day 27, 17:45: dark, ieee33 sags to 0.924 p.u.


def test_load_and_pv_scale_set_the_physics_every_controller_sees(ieee33):
    """More load, and more PV with inverters rated like the existing ones: pending inputs, ratings,
    headroom, forecasts and the solved step all follow; the solve agrees with pandapower."""
    base_cfg = EnvConfig(start_hour=12.0, episode_hours=1.0, forecast_steps=1)
    base = make_env(ieee33, num_envs=2, days=[160, 170], config=base_cfg)
    env = make_env(ieee33, num_envs=2, days=[160, 170],
                   config=EnvConfig(start_hour=12.0, episode_hours=1.0, forecast_steps=1, load_scale=1.3, pv_scale=1.5))
    a, b = base.pending(), env.pending()
    for key, k in (("load_p_mw", 1.3), ("load_q_mvar", 1.3), ("sgen_p_mw", 1.5), ("pv_p_mw", 1.5),
                   ("s_max_mva", 1.5), ("q_avail_mvar", 1.5)):
        torch.testing.assert_close(b[key], k * a[key], rtol=1e-12, atol=1e-12)
    obs_a, _, _, _ = base.step(torch.zeros(2, base.n_agents))
    obs_b, _, _, info = env.step(torch.full((2, env.n_agents), 0.5))
    names = env.obs_names
    for feature, k in (("pv_forecast_mw[1]", 1.5), ("load_forecast_mw[1]", 1.3), ("inv_q_avail_mvar", 1.5)):
        j = names.index(feature)
        torch.testing.assert_close(obs_b[..., j], k * obs_a[..., j], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(info["q_mvar"], 0.5 * b["q_avail_mvar"])
    net = ieee33.net
    net.load["p_mw"] = b["load_p_mw"][1].numpy()
    net.load["q_mvar"] = b["load_q_mvar"][1].numpy()
    net.sgen["p_mw"] = b["sgen_p_mw"][1].numpy()
    net.sgen.loc[ieee33.inverters.index, "q_mvar"] = info["q_mvar"][1].numpy()  # inverters order
    _runpp(net)
    np.testing.assert_allclose(info["vm_pu"][1].numpy(), net.res_bus.vm_pu.to_numpy(), atol=1e-6)


def test_pv_scale_leaves_generators_that_are_no_inverter_alone(tmp_path):
    import pandapower.networks as pn

    net = pn.case33bw()
    for bus in (17, 32):
        pp.create_sgen(net, bus=bus, p_mw=1.0, sn_mva=1.2, name=f"roof {bus}", type="PV")
    pp.to_json(net, str(tmp_path / "net.json"))
    spec = tmp_path / "one.toml"
    spec.write_text('name = "one"\ndescription = "one of two PV is an inverter"\n[source]\nkind = "json"\n'
                    'case = "net.json"\n[pv]\nplacement = "existing"\nsgen_names = ["roof 17"]\n'
                    '[profiles]\nmapping = "assign"\n')
    feeder = gridrl.load_feeder(spec, cache=False)
    noon = EnvConfig(start_hour=12.0, episode_hours=1.0)
    a = make_env(feeder, days=[160], config=noon).pending()["sgen_p_mw"][0]
    b = make_env(feeder, days=[160], config=EnvConfig(start_hour=12.0, episode_hours=1.0, pv_scale=2.0)).pending()
    inverter = feeder.net.sgen.index.get_loc(feeder.inverters.index[0])
    assert b["sgen_p_mw"][0, inverter] == 2 * a[inverter] > 0
    other = 1 - inverter
    assert b["sgen_p_mw"][0, other] == a[other]


def test_q_at_night_is_the_inverters_capability_after_dark(ieee33):
    dark = make_env(ieee33, split="test", days=[27], config=EnvConfig(**EVENING, q_at_night=True))
    pend = dark.pending()
    assert (pend["pv_p_mw"] == 0).all() and dark.q_at_night  # a night mode: a STATCOM at night
    torch.testing.assert_close(pend["q_avail_mvar"][0], dark.s_max_mva)
    off = make_env(ieee33, split="test", days=[27], config=EnvConfig(**EVENING))
    assert not off.q_at_night  # the spec's default: the common inverter, no night mode
    assert (off.pending()["q_avail_mvar"] == 0).all()
    obs, _, _, info = off.step(torch.ones(1, off.n_agents))
    assert (info["q_mvar"] == 0).all() and (info["q_avail_mvar"] == 0).all()
    assert (obs[..., off.obs_names.index("inv_q_avail_mvar")] == 0).all()
    # by day the capability changes nothing
    day = [make_env(ieee33, days=[160], config=EnvConfig(start_hour=12.0, episode_hours=1.0, q_at_night=night))
           for night in (True, False)]
    torch.testing.assert_close(day[0].pending()["q_avail_mvar"], day[1].pending()["q_avail_mvar"], rtol=0, atol=0)


def test_scenario_knobs_are_validated():
    for bad in ({"load_scale": 0.0}, {"pv_scale": -1.0}, {"load_scale": float("nan")}):
        with pytest.raises(ValueError, match="must be a number > 0"):
            EnvConfig(**bad)
    with pytest.raises(SpecError, match="q_at_night: expected true or false"):
        from_dict(EnvConfig, {"q_at_night": "no"}, source="exp.toml")


# ---------------------------------------------------------------------------------------------
# configuration and the global state
# ---------------------------------------------------------------------------------------------


def test_config_loads_from_toml_and_lists_every_problem():
    cfg = from_dict(EnvConfig, {"barrier": "l1", "step_minutes": 5, "outage_agents": ["bus13"],
                                "v_min_pu": 0.94, "v_max_pu": 1.06}, source="exp.toml")
    assert cfg.barrier == "l1" and cfg.outage_agents == ("bus13",) and cfg.steps_per_episode == 288
    with pytest.raises(SpecError) as err:
        from_dict(EnvConfig, {"barrier": "l3", "stepminutes": 5, "sensor_noise_pu": "x"}, source="exp.toml")
    msg = str(err.value)
    assert "barrier" in msg and "stepminutes: unknown key" in msg and "sensor_noise_pu" in msg
    for bad, match in [({"step_minutes": 7}, "divide"), ({"message_dropout": 1.5}, "probability"),
                       ({"v_min_pu": 0.95}, "both"), ({"start_hour": 23.0}, "within the day")]:
        with pytest.raises(ValueError, match=match):
            EnvConfig(**bad)


def test_global_state_and_graph_for_learners(ieee33, noon_env):
    """The global state is the instant the observations measure (the measured interval's start)."""
    env = noon_env
    env.reset(days=SUNNY_DAYS)
    obs, _, _, info = env.step(_random_actions(env))
    s = env.state()
    assert s.shape == (4, env.state_dim) and s.dtype == torch.float32
    own = env.agent_bus_pos
    torch.testing.assert_close(s[:, own], obs[:, :, 0], rtol=1e-5, atol=1e-6)
    pend = env.pending()
    q_held = torch.maximum(torch.minimum(info["q_mvar"], pend["q_avail_mvar"]), -pend["q_avail_mvar"])
    torch.testing.assert_close(s[:, :env.n_bus].double(), env.peek(q_mvar=q_held)["vm_pu"] - 1, rtol=1e-5, atol=1e-6)
    assert env.n_agents == len(ieee33.agents) == env.adjacency.shape[0]
    assert torch.equal(env.hop_distance, torch.as_tensor(ieee33.hop_distance))


def test_randomised_operating_points_draw_per_episode_within_their_ranges(ieee33):
    """Robust training: each episode draws its own load and PV multipliers (PV ratings with it),
    seeded, inside the configured ranges; the sensor noise a droop adds is the observations' own."""
    cfg = EnvConfig(start_hour=12.0, episode_hours=0.5, load_scale_range=(0.7, 1.3), pv_scale_range=(0.5, 1.6),
                    sensor_noise_pu=0.01)
    env = make_env(ieee33, num_envs=16, seed=4, days=[160] * 16, config=cfg)
    base = make_env(ieee33, num_envs=16, seed=4, days=[160] * 16,
                    config=EnvConfig(start_hour=12.0, episode_hours=0.5))
    a, b = base.pending(), env.pending()
    ls = (b["load_p_mw"] / a["load_p_mw"])[:, 0]
    ps = (b["pv_p_mw"] / a["pv_p_mw"])[:, 0]
    assert ((ls >= 0.7) & (ls <= 1.3)).all() and ((ps >= 0.5) & (ps <= 1.6)).all()
    assert ls.std() > 0.1 and ps.std() > 0.15
    torch.testing.assert_close(b["load_q_mvar"] / a["load_q_mvar"], ls[:, None].expand_as(b["load_q_mvar"]))
    torch.testing.assert_close(b["s_max_mva"], ps[:, None] * a["s_max_mva"][None, :])
    again = make_env(ieee33, num_envs=16, seed=4, days=[160] * 16, config=cfg).pending()
    assert torch.equal(again["load_p_mw"], b["load_p_mw"])
    obs = env.reset(days=[160] * 16)
    noise = env.sensor_noise_pu()
    vm = env.state()[:, env.agent_bus_pos].double()
    torch.testing.assert_close(obs[:, :, 0].double(), vm + noise[:, env.agent_bus_pos], rtol=0, atol=1e-6)
    assert 0.005 < noise.std() < 0.02
    with pytest.raises(ValueError, match="load_scale_range must be"):
        EnvConfig(load_scale_range=(1.2, 0.8))
