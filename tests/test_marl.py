"""The learners' shared pieces (κ-hop gathering, normalisation, GAE, PPO's loss) and the proof that
every trained policy is decentralized."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import gridrl
from gridrl.env import EnvConfig, make_env
from gridrl.marl.buffer import minibatch_indices
from gridrl.marl.gae import gae
from gridrl.marl.graph import Neighbourhood
from gridrl.marl.normalize import ReturnScale, RunningNorm, observation_masks
from gridrl.marl.ppo import clipped_surrogate, gaussian_log_prob, linear_lr


@pytest.fixture(scope="module")
def ieee141():
    return gridrl.load_feeder("ieee141")


# --------------------------------------------------------------------------------------------
# κ-hop neighbourhoods
# --------------------------------------------------------------------------------------------


def test_neighbourhoods_are_the_hop_balls_of_the_agent_graph(ieee141):
    d = ieee141.hop_distance
    for hops in (0, 1, 2, 3):
        g = Neighbourhood(d, hops)
        np.testing.assert_array_equal(g.mask().numpy(), (d >= 0) & (d <= hops))
        assert g.n_pairs == int(((d >= 0) & (d <= hops)).sum())  # linear: no padding to the largest
        np.testing.assert_array_equal(g.hop.numpy(), d[g.receiver.numpy(), g.sender.numpy()])
        # CSR: receiver-sorted, own pair first
        assert (np.diff(g.receiver.numpy()) >= 0).all()
        assert (g.sender[g.offsets[:-1]] == torch.arange(d.shape[0])).all()
    g2 = Neighbourhood(d, 2)  # the sizes the issue measured on ieee141
    assert int(g2.size.max()) == 10 and abs(float(g2.size.float().mean()) - 5.64) < 0.01


def _dense_pool(x, d, hops, delivered_dense):
    """Reference: per receiver and hop, the mean over delivered senders at that hop, as a loop."""
    M, N, H = x.shape
    pooled = torch.zeros(M, N, hops, H)
    heard = torch.zeros(M, N, hops)
    for m, i, h in itertools.product(range(M), range(N), range(1, hops + 1)):
        ring = [j for j in range(N) if d[i, j] == h]
        got = [j for j in ring if delivered_dense[m, i, j]]
        if got:
            pooled[m, i, h - 1] = x[m, got].mean(0)
        heard[m, i, h - 1] = len(got) / len(ring) if ring else 0.0
    return pooled, heard


def _path_delivery(d, link_mask, hops=None):
    """Reference: j's message reaches i when every link of the relay path (smallest-index relay
    at each hop) delivered."""
    M, N, _ = link_mask.shape
    out = torch.zeros(M, N, N, dtype=torch.bool)
    for m, i, j in itertools.product(range(M), range(N), range(N)):
        if d[i, j] < 0 or (hops is not None and d[i, j] > hops):
            continue
        ok, cur = True, i
        while d[cur, j] > 0:
            relay = int(np.flatnonzero((d[cur] == 1) & (d[:, j] == d[cur, j] - 1))[0])
            ok &= bool(link_mask[m, cur, relay])
            cur = relay
        out[m, i, j] = ok
    return out


def test_pooling_and_delivery_match_a_dense_reference():
    feeder = gridrl.load_feeder("ieee33")
    d = feeder.hop_distance
    N = d.shape[0]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, N, 5, generator=gen)
    links = torch.rand(3, N, N, generator=gen) < 0.6
    links |= torch.eye(N, dtype=torch.bool)
    links &= torch.as_tensor((d <= 1) & (d >= 0))
    for hops in (1, 2, 3):
        g = Neighbourhood(d, hops)
        delivered = g.delivered(links)
        dense = _path_delivery(d, links)
        assert torch.equal(delivered, dense[:, g.receiver, g.sender])
        xt = x.transpose(0, 1).contiguous()  # pool reads agent-major [N, M, H], returns hop-major
        pooled, heard = g.pool(xt, delivered)
        ref_p, ref_h = _dense_pool(x, d, hops, dense)
        torch.testing.assert_close(pooled.view(N, 3, hops, 5).transpose(0, 1), ref_p)
        torch.testing.assert_close(heard.transpose(0, 1), ref_h)
        full_p, full_h = g.pool(xt, None)  # one sparse product; shares heard per agent
        ref_p, ref_h = _dense_pool(x, d, hops, torch.ones(3, N, N, dtype=torch.bool))
        torch.testing.assert_close(full_p.view(N, 3, hops, 5).transpose(0, 1), ref_p)
        assert full_h.shape == (N, 1, hops)
        torch.testing.assert_close(full_h.transpose(0, 1).expand(3, -1, -1), ref_h)
        # leading (ensemble) dimensions: each slice pooled alone, deliveries shared
        two = torch.stack([xt, 2 * xt])
        for dl in (delivered, None):
            p2, h2 = g.pool(two, dl)
            p1, h1 = g.pool(xt, dl)
            torch.testing.assert_close(p2, torch.stack([p1, 2 * p1]))
            torch.testing.assert_close(h2, torch.stack([h1, h1]))


@pytest.mark.parametrize("hops", [0, 1, 2])
def test_neighbourhood_net_is_one_affine_map_over_concatenated_inputs(hops):
    """The network computes in parts and agent-major; it must equal the plain definition: each
    first layer one linear map over the concatenation of its inputs, hop means over the messages
    that arrived, for any delivery pattern."""
    from gridrl.marl.nets import NeighbourhoodNet

    feeder = gridrl.load_feeder("ieee33")
    d = feeder.hop_distance
    N = d.shape[0]
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    g = Neighbourhood(d, hops)
    net = NeighbourhoodNet(7, g, out_dim=2, hidden=16, message_dim=5, embed_dim=3)
    obs = torch.randn(4, N, 7, generator=gen)
    links = (torch.rand(4, N, N, generator=gen) < 0.6) | torch.eye(N, dtype=torch.bool)
    for delivered, dense in ((None, torch.ones(4, N, N, dtype=torch.bool)),
                             (g.delivered(links), _path_delivery(d, links))):
        emb = net.embed.expand(4, -1, -1)
        w_enc = torch.cat([net.enc_obs.weight, net.enc_embed.weight], 1)
        msg = net.enc_out(torch.relu(torch.cat([obs, emb], -1) @ w_enc.T + net.enc_obs.bias))
        parts = [msg, emb]
        if hops:
            pooled, heard = _dense_pool(msg, d, hops, dense)
            parts += [pooled.reshape(4, N, -1), heard]
        w_head = torch.cat([lin.weight for lin in net.head_in], 1)
        want = net.head(torch.relu(torch.cat(parts, -1) @ w_head.T + net.head_in[0].bias))
        got = net(obs, delivered)
        assert got.shape == (4, N, 2) and got.is_contiguous()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        # an agent-major view (what updates pass) gives the same
        torch.testing.assert_close(net(obs.transpose(0, 1).contiguous().transpose(0, 1), delivered), got)


def test_neighbourhood_sum_and_communication(ieee141):
    d = ieee141.hop_distance
    g = Neighbourhood(d, 2)
    x = torch.randn(4, 7, d.shape[0], dtype=torch.float64)
    dense = torch.as_tensor(((d >= 0) & (d <= 2)).astype(float))
    torch.testing.assert_close(g.neighbourhood_sum(x), x @ dense.T)
    # floats per agent: each message crosses as many links as it is hops away
    assert g.relay_floats(1.0) == pytest.approx(d[(d >= 1) & (d <= 2)].sum() / d.shape[0])
    assert Neighbourhood(d, 0).relay_floats(32.0) == 0.0


# --------------------------------------------------------------------------------------------
# normalisation
# --------------------------------------------------------------------------------------------


def test_running_norm_ignores_padding_and_merges_batches():
    env = make_env("ieee33", num_envs=6, seed=1, config=EnvConfig(start_hour=None, episode_hours=2))
    valid, keep = observation_masks(env)
    assert not valid.all() and keep.sum() == env.max_zone_buses  # one mask feature per zone slot
    obs = [env.reset()] + [env.step(torch.zeros(6, env.n_agents))[0] for _ in range(3)]
    norm = RunningNorm(env.obs_dim, valid=valid, keep=keep)
    for o in obs:  # in four batches
        norm.update(o)
    x = torch.cat(obs).double()
    for c in range(env.obs_dim):
        real = x[:, valid[:, c], c]
        assert norm.count[c] == real.numel()
        torch.testing.assert_close(norm.mean[c], real.mean(), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(norm.var[c], real.var(unbiased=False), rtol=1e-6, atol=1e-12)
    y = norm(obs[0])
    assert (y[:, ~valid] == 0).all()                        # padding stays exactly zero
    assert torch.equal(y[..., keep], obs[0][..., keep])     # masks pass through
    dv = [c for c, n in enumerate(env.obs_names) if n == "dv_pu[0]"][0]
    assert abs(float(norm(x.float())[..., dv].mean())) < 1e-3


def test_return_scale_is_the_return_std_per_agent():
    gen = torch.Generator().manual_seed(0)
    scale = ReturnScale(3, gamma=0.9)
    rewards = torch.randn(200, 5, 3, generator=gen) * torch.tensor([0.01, 1.0, 10.0])
    rets = []
    ret = torch.zeros(5, 3, dtype=torch.float64)
    for r in rewards:
        scale.update(r, torch.zeros(5, dtype=torch.bool))
        ret = ret * 0.9 + r.double()
        rets.append(ret)
    want = torch.stack(rets).pow(2).mean((0, 1))
    torch.testing.assert_close(scale.var, want, rtol=1e-9, atol=0.0)
    torch.testing.assert_close(scale.scale, (want + scale.eps).sqrt())
    scale.update(torch.ones(5, 3), torch.ones(5, dtype=torch.bool))
    assert (scale.ret == 0).all()  # episodes ended


def test_per_agent_running_norm_keeps_each_agents_scale():
    gen = torch.Generator().manual_seed(0)
    valid = torch.tensor([[True, True], [True, False], [True, True]])
    scale = torch.tensor([[1.0, 10.0], [100.0, 1.0], [0.01, 1.0]], dtype=torch.float64)
    norm = RunningNorm(2, valid=valid, per_agent=True)
    batches = [torch.randn(7, 3, 2, generator=gen, dtype=torch.float64) * scale + 3.0 for _ in range(3)]
    for b in batches:
        norm.update(b)
    x = torch.cat(batches)
    assert norm.mean.shape == (3, 2)
    torch.testing.assert_close(norm.mean[valid], x.mean(0)[valid])
    torch.testing.assert_close(norm.var[valid], x.var(0, unbiased=False)[valid])
    y = norm(x)
    assert (y[:, ~valid] == 0).all()
    torch.testing.assert_close(y.std(0, unbiased=False)[valid], torch.ones(int(valid.sum()), dtype=torch.float64),
                               rtol=1e-3, atol=0.0)  # eps = 1e-8 beside var 1e-4
    with pytest.raises(ValueError, match="per_agent"):
        RunningNorm(2, per_agent=True)


# --------------------------------------------------------------------------------------------
# GAE and PPO's pieces
# --------------------------------------------------------------------------------------------


def _gae_loop(r, v, nv, term, end, gamma, lam):
    T = len(r)
    adv = np.zeros(T)
    for t in range(T):
        total, k = 0.0, t
        while True:
            delta = r[k] + gamma * nv[k] * (not term[k]) - v[k]
            total += (gamma * lam) ** (k - t) * delta
            if end[k] or k == T - 1:
                break
            k += 1
        adv[t] = total
    return adv


@pytest.mark.parametrize("gamma,lam", [(0.99, 0.5), (0.9, 1.0), (0.5, 0.0), (0.0, 0.95)])
def test_gae_matches_the_definition(gamma, lam):
    gen = np.random.default_rng(3)
    T = 12
    r, v = gen.normal(size=T), gen.normal(size=T)
    nv = np.append(v[1:], gen.normal())
    term = np.zeros(T, dtype=bool)
    end = np.zeros(T, dtype=bool)
    term[4] = end[4] = True     # a diverged step
    end[8] = True               # a cut: bootstrapped from nv[8]
    nv[8] = 7.0
    adv, ret = gae(torch.tensor(r)[:, None], torch.tensor(v)[:, None], torch.tensor(nv)[:, None],
                   terminal=torch.tensor(term)[:, None], end=torch.tensor(end)[:, None], gamma=gamma, lam=lam)
    want = _gae_loop(r, v, nv, term, end, gamma, lam)
    np.testing.assert_allclose(adv[:, 0].numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(ret[:, 0].numpy(), want + v, rtol=1e-12)
    if lam == 1.0:  # Monte Carlo: discounted rewards to the episode's end (+ bootstrap) minus V
        mc = r[5] + gamma * (r[6] + gamma * (r[7] + gamma * (r[8] + gamma * nv[8])))
        assert ret[5, 0].item() == pytest.approx(mc)


def test_gaussian_log_prob_and_clipped_surrogate():
    gen = torch.Generator().manual_seed(0)
    mean, log_std, x = torch.randn(50, generator=gen), torch.randn(50, generator=gen) * 0.3, torch.randn(50, generator=gen)
    ref = torch.distributions.Normal(mean, log_std.exp()).log_prob(x)
    torch.testing.assert_close(gaussian_log_prob(x, mean, log_std), ref)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5]))
    loss, kl, frac = clipped_surrogate(new, old, adv, 0.2)
    # min(r·A, clip(r)·A): 1.2, −1.5, 0.5, −0.8 → loss = −mean
    assert loss.item() == pytest.approx(-(1.2 - 1.5 + 0.5 - 0.8) / 4)
    assert frac.item() == 1.0 and kl.item() > 0
    # weights: the weighted mean over the elements that count; weight 0 drops an element
    w = torch.tensor([1.0, 0.0, 3.0, 0.0])
    loss_w, kl_w, frac_w = clipped_surrogate(new, old, adv, 0.2, weight=w)
    assert loss_w.item() == pytest.approx(-(1.2 * 1 + 0.5 * 3) / 4)
    sub = clipped_surrogate(new[[0, 2, 2, 2]], old[[0, 2, 2, 2]], adv[[0, 2, 2, 2]], 0.2)
    torch.testing.assert_close(torch.stack([loss_w, kl_w, frac_w]), torch.stack(sub))
    assert linear_lr(1e-3, 1e-4, 0.0) == 1e-3 and linear_lr(1e-3, 1e-4, 2.0) == pytest.approx(1e-4)


def test_minibatch_indices_cover_the_chosen_samples_once():
    where = torch.arange(23) % 3 != 0
    chunks = list(minibatch_indices(23, 4, generator=torch.Generator().manual_seed(0), where=where))
    assert len(chunks) == 4 and max(map(len, chunks)) - min(map(len, chunks)) <= 1
    assert sorted(torch.cat(chunks).tolist()) == torch.arange(23)[where].tolist()


# --------------------------------------------------------------------------------------------
# decentralization: nothing outside agent i's κ-hop neighbourhood moves its action
# --------------------------------------------------------------------------------------------


def _learner(algo, feeder, hops, *, dropout=0.0, seed=0, iterations=1):
    from gridrl.marl.train import learner_class

    cls = learner_class(algo)
    # dmpo: imagined data from the first update on, so the policy checked was trained on it
    extra = {"imagine_from": 0, "model_updates": 5, "model_check_every": 0} if algo == "dmpo" else {}
    cfg = cls.Config(**({} if algo == "ippo" else {"hops": hops}), **extra)
    env = make_env(feeder, num_envs=4, seed=seed, config=EnvConfig(start_hour=None, episode_hours=1.0,
                                                                    forecast_steps=1, message_dropout=dropout))
    learner = cls(env, cfg, seed=seed, total_steps=10_000)
    for _ in range(iterations):  # trained briefly: weights and statistics are not the initial ones
        learner.iterate()
    return learner, env


CASES = [("ippo", 0), ("dppo", 1), ("dppo", 2), ("dppo", 3), ("cppo", 1), ("cppo", 2), ("dmpo", 1), ("dmpo", 2)]


@pytest.mark.parametrize("algo,hops", CASES)
def test_actions_depend_only_on_the_k_hop_neighbourhood(algo, hops, ieee141):
    learner, env = _learner(algo, ieee141, hops)
    policy = learner.policy
    assert policy.hops == hops
    obs = env.reset()
    gen = torch.Generator().manual_seed(1)
    base = policy.act(obs)
    d = ieee141.hop_distance
    N = d.shape[0]
    for i in range(N):
        outside = torch.as_tensor(d[i] > hops)
        if outside.any():  # perturb every feature of every agent outside at once, strongly
            moved = obs.clone()
            moved[:, outside] += 5.0 * torch.randn(moved[:, outside].shape, generator=gen)
            assert torch.equal(policy.act(moved)[:, i], base[:, i]), f"agent {i} saw outside its {hops}-hop ball"
        for j in np.flatnonzero(d[i] == hops):  # the farthest ring still counts
            moved = obs.clone()
            moved[:, j] += 5.0 * torch.randn(moved[:, j].shape, generator=gen)
            assert not torch.equal(policy.act(moved)[:, i], base[:, i]), f"agent {i} ignores agent {j}"


@pytest.mark.parametrize("hops", [1, 2])
def test_lost_messages_are_missing_not_stale(hops, ieee141):
    learner, env = _learner("dppo", ieee141, hops, dropout=0.3)
    policy = learner.policy
    obs = env.reset()
    _, _, _, info = env.step(torch.zeros(env.num_envs, env.n_agents))
    mask = info["message_mask"]
    assert not mask[:, ieee141.adjacency].all()  # some links dropped
    base = policy.act(obs, message_mask=mask)
    dense = _path_delivery(ieee141.hop_distance, mask, hops)
    d = torch.as_tensor(ieee141.hop_distance)
    gen = torch.Generator().manual_seed(2)
    lost_checked = heard_checked = 0
    for i, j in itertools.product(range(env.n_agents), range(env.n_agents)):
        if not 1 <= d[i, j] <= hops:
            continue
        moved = obs.clone()
        moved[:, j] += 5.0 * torch.randn(moved[:, j].shape, generator=gen)
        same = policy.act(moved, message_mask=mask)[:, i] == base[:, i]
        assert same[~dense[:, i, j]].all(), f"a lost message from {j} reached {i}"
        assert not same[dense[:, i, j]].any(), f"a message from {j} that arrived did not reach {i}"
        lost_checked += int((~dense[:, i, j]).sum())
        heard_checked += int(dense[:, i, j].sum())
    assert lost_checked > 0 and heard_checked > 0
    # a lost message is not a zero message either: all lost ≠ all arrived with zeros
    none_heard = mask & torch.eye(env.n_agents, dtype=torch.bool)
    zeroed = obs.clone()
    zeroed[:, 1:] = 0.0
    assert not torch.equal(policy.act(obs, message_mask=none_heard)[:, 0], policy.act(zeroed)[:, 0])


def test_policy_needs_no_environment_and_checks_its_inputs(feeder):
    learner, env = _learner("dppo", feeder, 1, iterations=0)
    obs = env.reset()
    a = learner.policy.act(obs)  # no env argument
    assert a.shape == (env.num_envs, env.n_agents) and a.dtype == torch.float64
    assert (a.abs() <= 1).all()
    assert torch.equal(learner.policy.act(obs, env=object()), a)  # an env is accepted and never read
    from gridrl.marl.policy import PolicyError

    with pytest.raises(PolicyError, match=r"reads observations \[B, 6, \d+\]"):
        learner.policy.act(obs[..., :-1])


def test_the_critic_can_be_narrower_than_the_actor_and_its_messages_are_counted(ieee141):
    from gridrl.marl.dppo import DPPO, DppoConfig

    env = make_env(ieee141, num_envs=2, seed=0, config=EnvConfig(start_hour=None, episode_hours=1.0))
    sizes = {"hops": 2, "hidden": 64, "message_dim": 32}
    same = DPPO(env, DppoConfig(**sizes), seed=0, total_steps=1000)
    narrow = DPPO(env, DppoConfig(**sizes, critic_hidden=16, critic_message_dim=8), seed=0, total_steps=1000)
    assert narrow.critic.message_dim == 8 and narrow.policy.actor.net.message_dim == 32
    assert sum(p.numel() for p in narrow.critic.parameters()) < sum(p.numel() for p in same.critic.parameters()) / 3
    g = narrow.graph  # training sends the actor's message, the critic's and each local advantage
    assert narrow.communication_training == pytest.approx(g.relay_floats(32) + g.relay_floats(8) + g.relay_floats(1))
    assert same.communication_training == pytest.approx(2 * g.relay_floats(32) + g.relay_floats(1))
    narrow.iterate()  # and it trains
    with pytest.raises(ValueError, match="critic_hidden must be ≥ 1"):
        DppoConfig(critic_hidden=0)


def test_critic_hidden_is_the_critics_width_for_every_learner(feeder):
    from gridrl.marl.cppo import CPPO, CppoConfig
    from gridrl.marl.dppo import DPPO, DppoConfig
    from gridrl.marl.train import resolve_train_config

    env = make_env(feeder, num_envs=2, seed=0, config=EnvConfig(start_hour=None, episode_hours=1.0))

    def widths(learner):  # the critic's hidden widths: its linear layers' outputs, but the last
        return {m.out_features for m in learner.critic.modules() if isinstance(m, torch.nn.Linear)} - {1}

    small = {"hidden": 16, "message_dim": 8}
    assert widths(DPPO(env, DppoConfig(**small), seed=0, total_steps=1000)) >= {16}  # None: the actor's
    assert 24 in widths(DPPO(env, DppoConfig(**small, critic_hidden=24), seed=0, total_steps=1000))
    assert widths(CPPO(env, CppoConfig(**small), seed=0, total_steps=1000)) == {128}  # cppo's default
    assert widths(CPPO(env, CppoConfig(**small, critic_hidden=24), seed=0, total_steps=1000)) == {24}
    assert widths(CPPO(env, CppoConfig(**small, critic_hidden=None), seed=0, total_steps=1000)) == {16}
    # a config written before keeps loading and meaning the same; a critic message cppo never sends is refused
    old = resolve_train_config({"algo": "cppo", "learner": {"critic_hidden": 64}}, source="old.toml")
    assert old.learner.critic_hidden == 64
    with pytest.raises(gridrl.errors.GridrlError, match="critic_message_dim does not apply to cppo"):
        resolve_train_config({"algo": "cppo", "learner": {"critic_message_dim": 8}}, source="x.toml")
    with pytest.raises(ValueError) as exc:  # every problem at once, the parent's with the learner's
        CppoConfig(critic_message_dim=8, critic_hidden=0, hops=-1)
    for part in ("critic_message_dim does not apply", "critic_hidden must be ≥ 1", "hops must be ≥ 0"):
        assert part in str(exc.value)
