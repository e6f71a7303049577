"""The safety envelope: its rule as a property over random observations and actions, for every
mechanism; the hand-over outside the training statistics; a real policy on a real feeder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gridrl.env.envelope import IEEE1547_B, EnvelopeConfig, EnvelopeError, SafetyEnvelope, droop_b_action

NAMES = ["dv_pu[0]", "p_mw[0]", "q_mvar[0]", "mask[0]", "inv_p_mw", "inv_q_mvar", "inv_q_avail_mvar",
         "sin_time", "cos_time"]
V_MIN, V_MAX = 0.95, 1.05


class _Fixed:
    """A stand-in policy: returns the actions it is given, reads nothing."""

    name, hops, communication, reads_messages = "fixed", 1, 1.0, True

    def __init__(self, actions, n_agents):
        self.actions, self.obs_names, self.agents = actions, NAMES, [f"a{i}" for i in range(n_agents)]

    def act(self, obs, *, env=None, message_mask=None):
        return self.actions


def _random_case(seed, B=512, N=5):
    g = torch.Generator().manual_seed(seed)
    obs = torch.zeros(B, N, len(NAMES))
    v = 0.85 + 0.3 * torch.rand(B, N, generator=g)
    s = 0.1 + torch.rand(B, N, generator=g)
    p = s * torch.rand(B, N, generator=g) * (torch.rand(B, N, generator=g) > 0.2)  # night: p = 0
    qa = torch.sqrt(s ** 2 - p ** 2) * (torch.rand(B, N, generator=g) > 0.05)     # some without headroom
    obs[..., 0], obs[..., 4], obs[..., 6], obs[..., 3] = v - 1, p, qa, 1.0
    a = 2 * torch.rand(B, N, generator=g, dtype=torch.float64) - 1
    return obs, a, v.double(), p.double(), qa.double()


@pytest.mark.parametrize("mechanism", ["clamp", "ramp"])
@pytest.mark.parametrize("seed", range(6))
def test_never_weaker_than_1547b_at_the_band_edge(mechanism, seed):
    """Over random own voltages, PV, headroom and policy actions: at or above v_max − m the action
    sent absorbs at least as much as 1547-B would at that voltage, at or below v_min + m it
    injects at least as much; for the clamp, inside the action passes unchanged."""
    m = [0.0, 0.005, 0.01, 0.02, 0.03, 0.01][seed]
    obs, a, v, p, qa = _random_case(seed)
    env = SafetyEnvelope(_Fixed(a, a.shape[1]), v_min_pu=V_MIN, v_max_pu=V_MAX,
                         config=EnvelopeConfig(mechanism=mechanism, margin_pu=m, handover_z=None))
    out = env.act(obs)
    a_b = droop_b_action(v, p, qa)
    live = qa > 0
    tol = 1e-6  # the observation is float32
    hi = live & (v >= V_MAX - m + tol)
    lo = live & (v <= V_MIN + m - tol)
    assert hi.any() and lo.any()
    assert (out[hi] <= a_b[hi] + tol).all()
    assert (out[lo] >= a_b[lo] - tol).all()
    assert (out.abs() <= 1).all()
    # the q it sends is at least 1547-B's own q there (in MVAr, same sign convention)
    s = torch.sqrt(p ** 2 + qa ** 2)
    q_b = torch.as_tensor(np.interp(v.numpy(), [0.92, 0.98, 1.02, 1.08], [0.44, 0, 0, -0.44])) * s
    q_b = torch.maximum(torch.minimum(q_b, qa), -qa)
    assert (out[hi] * qa[hi] <= q_b[hi] + 1e-5).all() and (out[lo] * qa[lo] >= q_b[lo] - 1e-5).all()
    inside = (v > V_MIN + 2 * m + tol) & (v < V_MAX - 2 * m - tol) if mechanism == "ramp" else \
             (v > V_MIN + m + tol) & (v < V_MAX - m - tol)
    assert torch.equal(out[inside], a[inside])
    changed = ~torch.isclose(out, a)
    assert changed.any()
    np.testing.assert_array_equal(env.last_info["envelope"], changed.sum(1).numpy())


def test_ramp_is_continuous_in_the_measured_voltage_and_clamp_is_not():
    """A sensor's noise must not make the ramp's action jump: sweeping the own voltage finely
    through the upper edge, the ramp's action moves by at most its slope, the clamp's jumps."""
    v = torch.linspace(1.01, 1.06, 2001)
    obs = torch.zeros(1, len(v), len(NAMES))
    obs[0, :, 0], obs[0, :, 4], obs[0, :, 6] = v - 1, 0.5, 0.6
    a = torch.full((1, len(v)), 0.8, dtype=torch.float64)  # a policy that injects at high voltage
    steps = {}
    for mech in ("clamp", "ramp"):
        env = SafetyEnvelope(_Fixed(a, len(v)), v_min_pu=V_MIN, v_max_pu=V_MAX,
                             config=EnvelopeConfig(mechanism=mech, handover_z=None))
        steps[mech] = env.act(obs)[0].diff().abs().max().item()
    assert steps["ramp"] < 0.05 < steps["clamp"]


def test_hand_over_outside_the_training_statistics_acts_as_1547b():
    obs, a, v, p, qa = _random_case(7, B=4, N=3)
    mean = np.zeros(len(NAMES))
    std = np.ones(len(NAMES))
    mean[0], std[0] = 0.0, 0.01  # trained on voltages within ±0.06 of nominal at 6σ
    env = SafetyEnvelope(_Fixed(a, 3), v_min_pu=V_MIN, v_max_pu=V_MAX,
                         config=EnvelopeConfig(mechanism="off", handover_z=6.0), obs_mean=mean, obs_std=std)
    out = env.act(obs)
    far = (v - 1).abs() > 0.06 + 1e-6
    near = (v - 1).abs() < 0.06 - 1e-6
    assert far.any() and near.any()
    torch.testing.assert_close(out[far], droop_b_action(v, p, qa)[far])
    assert torch.equal(out[near], a[near])
    np.testing.assert_array_equal(env.last_info["handover"], far.sum(1).numpy())


def test_hand_over_tests_each_agents_own_statistics_not_the_pool():
    """Per-agent statistics (``[N, D]``, as a policy keeps them): an agent hands over exactly when
    one of its own tested features lies more than z of *its own* standard deviations from *its
    own* mean, whatever the other agents observe. Agents whose zones differ by nature (one of 64
    carries a load fifty times the others', about √63 pooled deviations above the pooled mean)
    stay with the policy on observations typical of their own training, where the statistics
    pooled over agents send the big one to droop."""
    from gridrl.marl.normalize import RunningNorm

    N, D, z = 64, len(NAMES), 6.0
    g = torch.Generator().manual_seed(3)
    centre = torch.zeros(N, D)
    centre[:, 1] = 0.02                      # zone load p_mw[0]: small everywhere ...
    centre[0, 1] = 1.0                       # ... but agent 0's
    centre[:, 4], centre[:, 6] = 0.3, 0.5    # PV and headroom
    spread = 0.05 * centre.abs() + 0.002
    spread[:, 0] = 0.01                      # voltage deviations
    train = centre + spread * torch.randn(4000, N, D, generator=g)
    train[..., 3] = 1.0
    valid = torch.ones(N, D, dtype=torch.bool)
    keep = torch.tensor([n.startswith("mask[") for n in NAMES])
    own, pooled = (RunningNorm(D, valid=valid, keep=keep, per_agent=per) for per in (True, False))
    own.update(train)
    pooled.update(train)
    test = np.array([n not in ("sin_time", "cos_time") for n in NAMES]) & ~keep.numpy()

    def envelope(norm):
        return SafetyEnvelope(_Fixed(torch.zeros(1, N, dtype=torch.float64), N), v_min_pu=V_MIN, v_max_pu=V_MAX,
                              config=EnvelopeConfig(mechanism="off", handover_z=z), obs_mean=norm.mean.numpy(),
                              obs_std=(norm.var + norm.eps).sqrt().numpy(), obs_valid=valid.numpy(), obs_test=test)

    typical = (centre + 3.0 * spread * (2 * torch.rand(256, N, D, generator=g) - 1)).float()  # within 3σ of their own
    typical[..., 3] = 1.0
    assert not envelope(own).outside(typical).any()
    assert envelope(pooled).outside(typical)[:, 0].all()   # the pool calls agent 0's ordinary load unseen

    # the rule, over random observations far and near: exactly the own z-test, agent by agent
    obs = (centre + spread * 8.0 * torch.randn(256, N, D, generator=g)).float()
    obs[..., 3] = 1.0
    env = envelope(own)
    zs = ((obs.double() - own.mean) / (own.var + own.eps).sqrt()).abs()[..., torch.as_tensor(test)]
    want = (zs > z).any(-1)
    assert want.any() and (~want).any()
    assert torch.equal(env.outside(obs), want)
    # local: another agent's observation never moves agent i's decision
    moved = obs.clone()
    moved[:, 1:] = (centre[1:] + spread[1:] * 8.0 * torch.randn(256, N - 1, D, generator=g)).float()
    assert torch.equal(env.outside(moved)[:, 0], want[:, 0])
    assert "hand-over at 6σ (pooled statistics) or" in EnvelopeConfig(handover_statistics="pooled").label
    with pytest.raises(EnvelopeError, match="handover_statistics 'global' is unknown"):
        EnvelopeConfig(handover_statistics="global")


@pytest.mark.parametrize("mechanism", ["clamp", "ramp"])
@pytest.mark.parametrize(("m_low", "k"), [(0.03, 0.0), (0.02, 50.0), (0.03, 25.0), (0.0, 100.0)])
def test_a_wider_lower_edge_with_a_steeper_floor(mechanism, m_low, k):
    """Over random voltages, PV, headroom and actions: with ``margin_low_pu = m_low`` and
    ``low_slope = k`` the action sent at or below v_min + m_low is at least
    ``max(a_B(v), min(1, k·(v_min + m_low − v)))``; the upper edge keeps ``m``; for the clamp,
    between the regions the action passes unchanged."""
    m = 0.01
    obs, a, v, p, qa = _random_case(70 + int(100 * m_low + k))
    env = SafetyEnvelope(_Fixed(a, a.shape[1]), v_min_pu=V_MIN, v_max_pu=V_MAX,
                         config=EnvelopeConfig(mechanism=mechanism, margin_pu=m, margin_low_pu=m_low, low_slope=k,
                                               handover_z=None))
    out = env.act(obs)
    a_b = droop_b_action(v, p, qa)
    floor = torch.maximum(a_b, (k * (V_MIN + m_low - v)).clamp(0.0, 1.0))
    live, tol = qa > 0, 1e-5
    hi, lo = live & (v >= V_MAX - m + tol), live & (v <= V_MIN + m_low - tol)
    assert (out[hi] <= a_b[hi] + tol).all()
    assert (out[lo] >= floor[lo] - tol).all()
    if k:  # the floor did lift actions above 1547-B's, up to all the headroom
        assert (lo & (out > a_b + 0.1)).any() and (out[lo & (v <= V_MIN + m_low - 1 / k - tol)] >= 1 - tol).all()
    inside = (v > V_MIN + m_low + tol) & (v < V_MAX - m - tol) if mechanism == "clamp" else \
             (v > V_MIN + 2 * m_low + tol) & (v < V_MAX - 2 * m - tol)
    assert torch.equal(out[inside], a[inside])
    # a policy that already injects enough is left alone there
    assert torch.equal(out[lo & (a >= floor)], a[lo & (a >= floor)])
    label = EnvelopeConfig(mechanism=mechanism, margin_low_pu=m_low, low_slope=k).label
    assert f"low m {m_low:g}" in label and (f"low slope {k:g}" in label) == bool(k)


def test_the_lower_edge_settings_are_checked():
    with pytest.raises(EnvelopeError, match="margin_low_pu must lie in"):
        EnvelopeConfig(margin_low_pu=0.2)
    with pytest.raises(EnvelopeError, match="low_slope must lie in"):
        EnvelopeConfig(low_slope=-1.0)
    assert EnvelopeConfig(margin_pu=0.02).low_margin_pu == 0.02  # unset: the margin itself
    assert EnvelopeConfig(margin_pu=0.02, margin_low_pu=0.03).low_margin_pu == 0.03


@pytest.mark.parametrize("tolerance", [0.0, 0.05, 0.2])
def test_hand_over_outside_the_trained_ratings_acts_as_1547b(tolerance):
    """An agent whose inverters report a rating s = sqrt(p² + q_avail²) > 0 beyond the ratings it
    was trained with (widened by the tolerance) acts as 1547-B; within them, and at s = 0, the
    policy's action passes; the decision is the agent's own."""
    B, N = 512, 4
    obs, a, v, p, qa = _random_case(11, B=B, N=N)
    ratings = np.array([[0.3, 0.6], [0.5, 0.9], [0.2, 0.4], [0.6, 1.2]])
    env = SafetyEnvelope(_Fixed(a, N), v_min_pu=V_MIN, v_max_pu=V_MAX, ratings_mva=ratings,
                         config=EnvelopeConfig(mechanism="off", handover_z=None, rating_tolerance=tolerance))
    out = env.act(obs)
    s = torch.sqrt(obs[..., 4].double() ** 2 + obs[..., 6].double() ** 2)
    low = torch.as_tensor(ratings[:, 0]) * (1 - tolerance)
    high = torch.as_tensor(ratings[:, 1]) * (1 + tolerance)
    beyond = (s > 0) & ((s > high) | (s < low))
    assert beyond.any() and (~beyond & (s > 0)).any() and (s == 0).any()
    torch.testing.assert_close(out[beyond], droop_b_action(v, p, qa)[beyond])
    assert torch.equal(out[~beyond], a[~beyond])
    np.testing.assert_array_equal(env.last_info["handover"], beyond.sum(1).numpy())
    # local: another agent's rating never moves agent 0's decision
    moved = obs.clone()
    moved[:, 1:, 4] *= 3.0
    assert torch.equal(env.outside(moved)[:, 0], beyond[:, 0])
    # off: no hand-over whatever the rating
    off = SafetyEnvelope(_Fixed(a, N), v_min_pu=V_MIN, v_max_pu=V_MAX, ratings_mva=ratings,
                         config=EnvelopeConfig(mechanism="off", handover_z=None, rating_handover=False))
    assert torch.equal(off.act(obs), a)
    with pytest.raises(EnvelopeError, match="rating_tolerance must lie in"):
        EnvelopeConfig(rating_tolerance=1.5)


def test_the_trained_ratings_are_the_feeders_times_the_training_pv_scale():
    import gridrl
    from gridrl.env import EnvConfig
    from gridrl.marl.run import trained_ratings

    feeder = gridrl.load_feeder("ieee33")
    agents = list(feeder.agents)[::-1]
    s = feeder.inverters.set_index("agent")["s_max_mva"].reindex(agents).to_numpy()
    np.testing.assert_allclose(trained_ratings(feeder, EnvConfig(pv_scale_range=(0.5, 1.6)), agents=agents),
                               np.stack([0.5 * s, 1.6 * s], axis=1))
    np.testing.assert_allclose(trained_ratings(feeder, EnvConfig(pv_scale=1.5), agents=agents),
                               np.stack([1.5 * s, 1.5 * s], axis=1))


def test_envelope_settings_and_layout_are_checked():
    with pytest.raises(EnvelopeError, match="mechanism 'shield' is unknown"):
        EnvelopeConfig(mechanism="shield")
    with pytest.raises(EnvelopeError, match="margin_pu"):
        EnvelopeConfig(margin_pu=-0.01)
    bad = _Fixed(None, 2)
    bad.obs_names = ["dv_pu[0]", "sin_time"]
    with pytest.raises(EnvelopeError, match="reads inv_p_mw, inv_q_avail_mvar"):
        SafetyEnvelope(bad, v_min_pu=V_MIN, v_max_pu=V_MAX)


def test_the_envelopes_curve_is_droops_1547b_preset():
    from gridrl.control.droop import PRESETS

    b = PRESETS["ieee1547-b"]
    assert (b.v_pu, b.q, b.reference) == (IEEE1547_B[0], IEEE1547_B[1], "s_max")


def test_neighbours_of_an_inverter_that_is_out_act_as_1547b():
    """On ieee33 at noon, where bus18 reports neither active power nor headroom in scenario 0 (its
    own PV profile has no sun at that instant: what a tripped inverter reports; the environment's
    outage only holds its reactive power at 0): exactly the agents that hear from it (its
    neighbours on the agent graph, their message delivered) act as 1547-B; a lost message tells
    nothing, at night nobody is handed over, and without the setting nothing changes."""
    import gridrl
    from gridrl.env import EnvConfig

    feeder = gridrl.load_feeder("ieee33")
    gone = feeder.agents[-1]
    k = feeder.agents.index(gone)
    N = len(feeder.agents)
    neighbours = torch.as_tensor(gridrl.make_env("ieee33", num_envs=1).hop_distance == 1)
    inner = _Fixed(torch.full((2, N), 0.5, dtype=torch.float64), N)
    cases = {}
    for hour in (12, 0):
        env = gridrl.make_env("ieee33", split="train", num_envs=2, seed=0,
                              config=EnvConfig(outage_agents=(gone,), start_hour=hour, episode_hours=2.0))
        inner.obs_names = env.obs_names
        cases[hour] = env.reset(), env.obs_names
    obs, names = cases[12]
    shield = SafetyEnvelope(inner, v_min_pu=V_MIN, v_max_pu=V_MAX, neighbours=neighbours,
                            config=EnvelopeConfig(mechanism="off", handover_z=None, neighbour_outage=True))
    plain = SafetyEnvelope(inner, v_min_pu=V_MIN, v_max_pu=V_MAX, config=EnvelopeConfig(mechanism="off", handover_z=None))
    mask = (neighbours | torch.eye(N, dtype=torch.bool))[None].repeat(2, 1, 1)
    mask[1, :, k] = False                                # scenario 1: the outaged agent's messages are lost
    a = shield.act(obs, message_mask=mask)
    x = obs.double()
    a_b = droop_b_action(1 + x[..., names.index("dv_pu[0]")], x[..., names.index("inv_p_mw")],
                         x[..., names.index("inv_q_avail_mvar")])
    beside = neighbours[:, k]
    assert beside.any() and (~beside).any()
    torch.testing.assert_close(a[0, beside], a_b[0, beside])
    assert (a[0, beside] != 0.5).all()
    assert torch.equal(a[0, ~beside], torch.full((int((~beside).sum()),), 0.5, dtype=torch.float64))
    assert torch.equal(a[1], torch.full((N,), 0.5, dtype=torch.float64))
    assert shield.last_info["handover"].tolist() == [int(beside.sum()), 0]
    assert torch.equal(plain.act(obs, message_mask=mask), torch.full((2, N), 0.5, dtype=torch.float64))
    night, _ = cases[0]
    assert shield.last_info["handover"].sum() > 0 and not shield.beside_outage(night.double()).any()
    assert "1547-B beside a neighbour out" in EnvelopeConfig(neighbour_outage=True).label


@pytest.mark.parametrize("mechanism", ["clamp", "ramp"])
@pytest.mark.parametrize("seed", range(4))
def test_the_hold_keeps_an_agent_in_its_edge_region_until_it_is_well_inside(mechanism, seed):
    """Over random sequences of own voltages: with ``hold_pu = h`` an agent is in the upper edge
    region exactly when ``v ≥ v_max − m``, or when it was in it at its previous step and
    ``v ≥ v_max − m − h`` (the lower region alike); in it the action sent is never weaker than
    1547-B's at its current voltage, and the rule outside it and without the hold is the one of
    the plain envelope. ``reset`` forgets the regions."""
    m, h = [(0.01, 0.005), (0.01, 0.01), (0.005, 0.02), (0.02, 0.01)][seed]
    B, N, T = 256, 4, 6
    g = torch.Generator().manual_seed(100 + seed)
    # voltages wandering around both edges, so that agents enter, stay and leave the regions
    edge = torch.where(torch.rand(B, N, generator=g) < 0.5, V_MAX - m, V_MIN + m)
    vs = edge + (3 * m + 2 * h) * (torch.rand(T, B, N, generator=g) - 0.5)
    hold = EnvelopeConfig(mechanism=mechanism, margin_pu=m, hold_pu=h, handover_z=None)
    plain = EnvelopeConfig(mechanism=mechanism, margin_pu=m, handover_z=None)
    a = 2 * torch.rand(B, N, generator=g, dtype=torch.float64) - 1
    held_env = SafetyEnvelope(_Fixed(a, N), v_min_pu=V_MIN, v_max_pu=V_MAX, config=hold)
    plain_env = SafetyEnvelope(_Fixed(a, N), v_min_pu=V_MIN, v_max_pu=V_MAX, config=plain)
    up = lo = torch.zeros(B, N, dtype=torch.bool)
    tol = 1e-6  # the observation is float32
    kept = 0
    for t in range(T):
        obs, _, _, p, qa = _random_case(1000 * seed + t, B=B, N=N)
        obs[..., 0] = vs[t] - 1
        v = obs[..., 0].double() + 1
        # the hysteresis, written out: in at the edge, out only below v_max − m − h (above v_min + m + h)
        up = (v >= V_MAX - m) | (up & (v >= V_MAX - m - h))
        lo = (v <= V_MIN + m) | (lo & (v <= V_MIN + m + h))
        out, base = held_env.act(obs), plain_env.act(obs)
        a_b = droop_b_action(v, p, qa)
        live = qa > 0
        assert (out[up & live] <= a_b[up & live] + tol).all()
        assert (out[lo & live] >= a_b[lo & live] - tol).all()
        only_held = (up & (v < V_MAX - m - tol)) | (lo & (v > V_MIN + m + tol))
        kept += int((only_held & live).sum())
        # held agents: the rule at the region's edge (for the ramp its full weight), as if the voltage were there
        if mechanism == "clamp":
            want = torch.where(up & live, torch.minimum(a, a_b), torch.where(lo & live, torch.maximum(a, a_b), a))
            torch.testing.assert_close(out, want)
        free = ~only_held
        torch.testing.assert_close(out[free], base[free])
    assert kept > 0  # the sequences did exercise the hold
    held_env.reset()
    first = held_env.act(obs)
    torch.testing.assert_close(first, plain_env.act(obs))  # after reset nothing is held
    assert hold.label.startswith(f"envelope {mechanism} (m {m:g}, hold {h:g}), edge rule settled, hand-over at a rating beyond")
    with pytest.raises(EnvelopeError, match="hold_pu must lie in"):
        EnvelopeConfig(hold_pu=-0.01)


@pytest.mark.parametrize("mechanism", ["clamp", "ramp"])
@pytest.mark.parametrize("k", [0.0, 0.1, 0.3])
def test_excess_max_keeps_the_action_at_the_edge_within_k_of_1547b(mechanism, k):
    """Over random voltages, PV, headroom and actions: with ``excess_max = k`` the action sent in
    the upper edge region lies in ``[a_B − k, a_B]`` (in the lower in ``[a_B, a_B + k]``), so it is
    still never weaker than 1547-B; outside the edge regions it is the plain envelope's."""
    m = 0.01
    obs, a, v, p, qa = _random_case(40 + int(10 * k))
    capped = SafetyEnvelope(_Fixed(a, a.shape[1]), v_min_pu=V_MIN, v_max_pu=V_MAX,
                            config=EnvelopeConfig(mechanism=mechanism, margin_pu=m, excess_max=k, handover_z=None))
    plain = SafetyEnvelope(_Fixed(a, a.shape[1]), v_min_pu=V_MIN, v_max_pu=V_MAX,
                           config=EnvelopeConfig(mechanism=mechanism, margin_pu=m, handover_z=None))
    out, base = capped.act(obs), plain.act(obs)
    a_b = droop_b_action(v, p, qa)
    live, tol = qa > 0, 1e-6
    hi, lo = live & (v >= V_MAX - m + tol), live & (v <= V_MIN + m - tol)
    assert (out[hi] <= a_b[hi] + tol).all() and (out[hi] >= a_b[hi] - k - tol).all()
    assert (out[lo] >= a_b[lo] - tol).all() and (out[lo] <= a_b[lo] + k + tol).all()
    assert (base[hi] < a_b[hi] - k - tol).any()  # the plain envelope lets it absorb more: the cap did act
    torch.testing.assert_close(out[hi], torch.maximum(base[hi], a_b[hi] - k))
    inside = ~(live & ((v >= V_MAX - m - tol) | (v <= V_MIN + m + tol)))
    torch.testing.assert_close(out[inside], base[inside])
    assert f"excess ≤ {k:g}" in capped.config.label
    with pytest.raises(EnvelopeError, match="excess_max must lie in"):
        EnvelopeConfig(excess_max=-0.1)


@pytest.mark.parametrize("mechanism", ["clamp", "ramp"])
@pytest.mark.parametrize("stop", [1.02, 1.035])
def test_the_injection_stop_caps_injection_near_the_top_and_keeps_the_edge_rule(mechanism, stop):
    """Over random voltages, PV, headroom and actions: with ``inject_stop_pu = v_stop`` an agent at
    or above ``v_stop`` injects nothing, from ``v_stop − 0.01`` up at most the falling ramp; below,
    and wherever the plain envelope's action absorbs, the action is the plain envelope's; the
    edge rule still holds."""
    m = 0.01
    obs, a, v, p, qa = _random_case(70 + int(1000 * (stop - 1)))
    stopped = SafetyEnvelope(_Fixed(a, a.shape[1]), v_min_pu=V_MIN, v_max_pu=V_MAX,
                             config=EnvelopeConfig(mechanism=mechanism, margin_pu=m, inject_stop_pu=stop,
                                                   handover_z=None))
    plain = SafetyEnvelope(_Fixed(a, a.shape[1]), v_min_pu=V_MIN, v_max_pu=V_MAX,
                           config=EnvelopeConfig(mechanism=mechanism, margin_pu=m, handover_z=None))
    out, base = stopped.act(obs), plain.act(obs)
    tol = 1e-6
    above = v >= stop + tol
    assert above.any() and (base[above] > 0).any()             # the plain envelope injects up there
    assert (out[above] <= tol).all()
    ramp = (v > stop - 0.01 + tol) & ~above
    assert (out[ramp] <= (stop - v[ramp]) / 0.01 + tol).all()
    free = (v <= stop - 0.01 - tol) | (base <= 0)
    torch.testing.assert_close(out[free], base[free])
    a_b, live = droop_b_action(v, p, qa), qa > 0
    hi, lo = live & (v >= V_MAX - m + tol), live & (v <= V_MIN + m - tol)
    assert (out[hi] <= a_b[hi] + tol).all() and (out[lo] >= a_b[lo] - tol).all()
    assert f"no injection from {stop:g}" in stopped.config.label
    with pytest.raises(EnvelopeError, match="inject_stop_pu must lie in"):
        EnvelopeConfig(inject_stop_pu=1.2)


@pytest.mark.parametrize("mechanism", ["clamp", "ramp"])
def test_excess_max_low_sets_the_lower_regions_slack_apart(mechanism):
    """``excess_max_low`` caps the lower edge region with its own slack (2: no cap there) and
    leaves the upper region's cap ``excess_max`` as it is."""
    m, k = 0.01, 0.1
    obs, a, v, p, qa = _random_case(77)
    upper_only = SafetyEnvelope(_Fixed(a, a.shape[1]), v_min_pu=V_MIN, v_max_pu=V_MAX,
                                config=EnvelopeConfig(mechanism=mechanism, margin_pu=m, excess_max=k,
                                                      excess_max_low=2.0, handover_z=None))
    both = SafetyEnvelope(_Fixed(a, a.shape[1]), v_min_pu=V_MIN, v_max_pu=V_MAX,
                          config=EnvelopeConfig(mechanism=mechanism, margin_pu=m, excess_max=k, handover_z=None))
    plain = SafetyEnvelope(_Fixed(a, a.shape[1]), v_min_pu=V_MIN, v_max_pu=V_MAX,
                           config=EnvelopeConfig(mechanism=mechanism, margin_pu=m, handover_z=None))
    low_only = SafetyEnvelope(_Fixed(a, a.shape[1]), v_min_pu=V_MIN, v_max_pu=V_MAX,
                              config=EnvelopeConfig(mechanism=mechanism, margin_pu=m, excess_max_low=k, handover_z=None))
    out, capped, base, low = upper_only.act(obs), both.act(obs), plain.act(obs), low_only.act(obs)
    a_b = droop_b_action(v, p, qa)
    live, tol = qa > 0, 1e-6
    hi, lo = live & (v >= V_MAX - m + tol), live & (v <= V_MIN + m - tol)
    torch.testing.assert_close(out[hi], capped[hi])    # the upper cap as with excess_max alone
    torch.testing.assert_close(out[lo], base[lo])      # no cap below
    assert (capped[lo] < base[lo] - tol).any()         # where excess_max alone did cap
    torch.testing.assert_close(low[hi], base[hi])      # the lower cap alone leaves the upper region free
    assert (low[lo] <= a_b[lo] + k + tol).all() and (low[lo] >= a_b[lo] - tol).all()
    assert "low excess ≤ 2" in upper_only.config.label
    with pytest.raises(EnvelopeError, match="excess_max_low must lie in"):
        EnvelopeConfig(excess_max_low=3.0)


@pytest.mark.parametrize("mechanism", ["clamp", "ramp"])
def test_loss_guard_keeps_the_deadband_action_on_the_side_that_does_not_raise_losses(mechanism):
    """Over random voltages and actions: with ``loss_guard`` an agent whose zone lies in 1547-B's deadband never
    injects where injecting raises the losses (sensitivity > 0) nor absorbs where absorbing does
    (< 0), and keeps the policy's action where it already lay on that side; outside the deadband
    it is the plain envelope's action, so the edge rule still holds."""
    obs, a, v, p, qa = _random_case(77, N=6)
    sens = [0.02, -0.03, 0.0, 0.001, -0.0005, 0.01]
    guarded = SafetyEnvelope(_Fixed(a, 6), v_min_pu=V_MIN, v_max_pu=V_MAX, loss_sensitivity=sens,
                             config=EnvelopeConfig(mechanism=mechanism, loss_guard="all", handover_z=None))
    plain = SafetyEnvelope(_Fixed(a, 6), v_min_pu=V_MIN, v_max_pu=V_MAX,
                           config=EnvelopeConfig(mechanism=mechanism, handover_z=None))
    out, base = guarded.act(obs), plain.act(obs)
    s = torch.tensor(sens, dtype=torch.float64).expand_as(a)
    dead = (v >= IEEE1547_B[0][1]) & (v <= IEEE1547_B[0][2])
    assert dead.float().mean() > 0.1
    assert (out[dead & (s > 0)] <= 0).all() and (out[dead & (s < 0)] >= 0).all()
    torch.testing.assert_close(out[dead & (s == 0)], base[dead & (s == 0)])
    right_side = dead & (a * s <= 0)
    torch.testing.assert_close(out[right_side], base[right_side])
    assert (out[dead & (a * s > 0)] == 0).all() and (a * s > 0)[dead].any()
    torch.testing.assert_close(out[~dead], base[~dead])
    assert "loss guard (all agents)" in guarded.config.label and guarded.describe()["envelope"]["loss_guard"] == "all"
    assert "loss guard (all agents: 2 of 6)" in guarded.config.label_with(guarded=(2, 6))  # the knew line's count
    with pytest.raises(EnvelopeError, match="loss_guard needs each of the 6 agents' loss sensitivity"):
        SafetyEnvelope(_Fixed(a, 6), v_min_pu=V_MIN, v_max_pu=V_MAX, config=EnvelopeConfig(loss_guard="all"))
    with pytest.raises(EnvelopeError, match="loss_guard 'some' is unknown"):
        EnvelopeConfig(loss_guard="some")


def test_the_unseen_loss_guard_holds_only_agents_outside_the_training_feeders_range():
    from gridrl.env.envelope import unseen_sensitivity

    trained = [-0.04, -0.02, -0.001, 0.00002]
    got = unseen_sensitivity([0.003, -0.01, -0.05, 0.00001, 0.0], trained)
    np.testing.assert_array_equal(got, [0.003, 0.0, -0.05, 0.0, 0.0])


def test_the_loss_guard_reads_the_whole_zone_in_the_pad_layout():
    """An agent whose own bus lies in the deadband but another bus of its zone does not is not
    guarded; padding slots (mask 0, reading 0 p.u. deviation) do not count."""
    names = ["dv_pu[0]", "p_mw[0]", "q_mvar[0]", "mask[0]", "dv_pu[1]", "p_mw[1]", "q_mvar[1]", "mask[1]",
             "inv_p_mw", "inv_q_mvar", "inv_q_avail_mvar"]
    pol = _Fixed(torch.tensor([[0.3, 0.3, 0.3]], dtype=torch.float64), 3)
    pol.obs_names = names
    obs = torch.zeros(1, 3, len(names))
    obs[0, :, 0] = 0.01                       # own bus 1.01 p.u. everywhere
    obs[0, :, 3] = 1.0
    obs[0, 0, 4], obs[0, 0, 7] = 0.03, 1.0    # agent 0: a second bus at 1.03 p.u.
    obs[0, 1, 4], obs[0, 1, 7] = 0.005, 1.0   # agent 1: a second bus at 1.005 p.u.
    obs[0, 2, 4] = -0.5                       # agent 2: padding (mask 0), never read
    obs[0, :, 8], obs[0, :, 10] = 0.5, 0.5
    env = SafetyEnvelope(pol, v_min_pu=V_MIN, v_max_pu=V_MAX, loss_sensitivity=[0.01, 0.01, 0.01],
                         config=EnvelopeConfig(loss_guard="all", handover_z=None))
    np.testing.assert_allclose(env.act(obs)[0].numpy(), [0.3, 0.0, 0.0])


@pytest.mark.parametrize("mechanism", ["clamp", "ramp", "off"])
@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.3])
def test_smoothing_moves_the_action_part_way_and_the_edge_rule_still_holds(mechanism, alpha):
    """Over random voltages, PV, headroom, reactive power in force and actions: with ``smoothing = α``
    the action sent is the plain envelope's on ``a_now + α (a − a_now)`` (``a_now`` the reactive power
    in force as a share of the headroom), so α = 1 is the plain envelope and the edge rule still
    holds exactly on the action sent; an observation without ``inv_q_mvar`` is refused in one line."""
    m = 0.01
    obs, a, v, p, qa = _random_case(70 + int(10 * alpha))
    g = torch.Generator().manual_seed(7)
    now = (2 * torch.rand(a.shape, generator=g, dtype=torch.float64) - 1) * (qa > 0)
    obs[..., 5] = (now * qa).float()
    smoothed = EnvelopeConfig(mechanism=mechanism, margin_pu=m, handover_z=None, smoothing=alpha)
    plain = EnvelopeConfig(mechanism=mechanism, margin_pu=m, handover_z=None)
    out = SafetyEnvelope(_Fixed(a, a.shape[1]), v_min_pu=V_MIN, v_max_pu=V_MAX, config=smoothed).act(obs)
    a_now = torch.where(qa > 0, obs[..., 5].double() / qa.clamp(min=1e-12), 0.0).clamp(-1, 1)
    want = SafetyEnvelope(_Fixed(a_now + alpha * (a - a_now), a.shape[1]), v_min_pu=V_MIN, v_max_pu=V_MAX,
                          config=plain).act(obs)
    torch.testing.assert_close(out, want)
    if alpha == 1:
        torch.testing.assert_close(out, SafetyEnvelope(_Fixed(a, a.shape[1]), v_min_pu=V_MIN, v_max_pu=V_MAX,
                                                       config=plain).act(obs))
    else:
        assert (out - a).abs().max() > 0.1  # the smoothing did change actions
        assert smoothed.label.endswith(f", action smoothed {alpha:g}")
    if mechanism != "off":
        a_b, live, tol = droop_b_action(v, p, qa), qa > 0, 1e-6
        hi, lo = live & (v >= V_MAX - m + tol), live & (v <= V_MIN + m - tol)
        assert hi.any() and lo.any()
        assert (out[hi] <= a_b[hi] + tol).all() and (out[lo] >= a_b[lo] - tol).all()
    with pytest.raises(EnvelopeError, match="smoothing must lie in"):
        EnvelopeConfig(smoothing=0.0)
    fixed = _Fixed(a, a.shape[1])
    fixed.obs_names = [n for n in NAMES if n != "inv_q_mvar"]
    if alpha < 1:
        with pytest.raises(EnvelopeError, match="smoothing reads inv_q_mvar"):
            SafetyEnvelope(fixed, v_min_pu=V_MIN, v_max_pu=V_MAX, config=smoothed)


class _Injecting:
    """A stand-in policy on a real environment's observation: injects all its headroom."""

    name, hops, communication, reads_messages = "injecting", 1, 1.0, False

    def __init__(self, env):
        self.obs_names, self.agents = list(env.obs_names), list(env.agents)

    def act(self, obs, *, env=None):
        return torch.ones(obs.shape[:2], dtype=torch.float64)


@pytest.mark.parametrize("noise", [0.0, 0.005])
def test_the_settled_edge_rule_holds_on_the_voltage_during_the_interval(sunny_days, noise):
    """On ieee33's sunniest test noons a policy that injects everything is clamped at the voltage
    measured at the interval's start; with ``edge_settle`` the action sent obeys the rule at each
    agent's own voltage during the interval (the pending step's physics, read with the sensor's
    noise), where the plain envelope leaves some agent absorbing less than the rule asks there."""
    import gridrl
    from gridrl.env.envelope import edge_regions

    cfg = gridrl.EnvConfig(start_hour=10.0, episode_hours=1.0, sensor_noise_pu=noise)
    env = gridrl.make_env("ieee33", split="test", num_envs=len(sunny_days), days=sunny_days, config=cfg, seed=1)
    obs = env.reset(days=sunny_days)
    settled = SafetyEnvelope(_Injecting(env), v_min_pu=V_MIN, v_max_pu=V_MAX,
                             config=EnvelopeConfig(handover_z=None, edge_settle=True))
    plain = SafetyEnvelope(_Injecting(env), v_min_pu=V_MIN, v_max_pu=V_MAX,
                           config=EnvelopeConfig(handover_z=None, edge_settle=False))
    reached = False
    for _ in range(3):
        a = settled.act(obs, env=env)
        peek = env.peek(a.to(torch.float32))
        v = peek["vm_own_pu"].double() + (env.sensor_noise_pu()[:, env.agent_bus_pos].double() if noise else 0.0)
        p, qa = peek["p_mw"].double(), peek["q_avail_mvar"].double()  # one inverter per agent on ieee33
        a_b = droop_b_action(v, p, qa)
        upper, lower = edge_regions(v, v_min_pu=V_MIN, v_max_pu=V_MAX, margin_pu=0.01)
        live = qa > 1e-9
        assert (a[upper & live] <= a_b[upper & live] + 2e-3).all()
        assert (a[lower & live] >= a_b[lower & live] - 2e-3).all()
        # the plain envelope at the measured voltage lets some agent absorb less than the rule asks during the interval
        b = plain.act(obs, env=env)
        pb = env.peek(b.to(torch.float32))
        vb = pb["vm_own_pu"].double() + (env.sensor_noise_pu()[:, env.agent_bus_pos].double() if noise else 0.0)
        ub, _ = edge_regions(vb, v_min_pu=V_MIN, v_max_pu=V_MAX, margin_pu=0.01)
        reached = reached or bool((b[ub & live] > droop_b_action(vb, p, qa)[ub & live] + 1e-2).any())
        obs, *_ = env.step(a.to(torch.float32))
    assert reached


def _alert_obs(v, q, qa, p=0.5):
    """Observations ``[1, N, D]`` of NAMES with own voltages ``v``, reactive power in force ``q``,
    headroom ``qa`` and active power ``p``."""
    N = len(v)
    obs = torch.zeros(1, N, len(NAMES))
    obs[0, :, 0], obs[0, :, 5], obs[0, :, 6], obs[0, :, 4], obs[0, :, 3] = (
        torch.tensor(v) - 1, torch.tensor(q), torch.tensor(qa), p, 1.0)
    return obs


@pytest.mark.parametrize("k", [1, 2])
def test_an_inverter_that_does_not_follow_its_set_point_alerts_agents_up_to_k_hops_away(k):
    """On a chain of 4 agents acting 0.5: once agent 0's reactive power stays at 0 (it is out), the
    alert reaches one more hop per step and no further than ``k`` hops; an agent following its
    set-point (reactive power held within a smaller headroom included) raises none; a lost message
    carries none; ``reset`` forgets it; alerted agents near the top absorb as 1547-B from 1.02 p.u."""
    N = 4
    chain = torch.zeros(N, N, dtype=torch.bool)
    for i in range(N - 1):
        chain[i, i + 1] = chain[i + 1, i] = True
    a = torch.full((1, N), 0.5, dtype=torch.float64)
    env = SafetyEnvelope(_Fixed(a, N), v_min_pu=V_MIN, v_max_pu=V_MAX, neighbours=chain,
                         config=EnvelopeConfig(handover_z=None, edge_settle=False, outage_alert_hops=k))
    v = [1.0] * N
    env.act(_alert_obs(v, [0.0] * N, [1.0] * N))                    # the first step: nothing to compare
    assert env.last_info["alerted"].tolist() == [0]
    seen = []
    for s in range(4):  # agent 0 holds 0; the others what 0.5 of the previous headroom asks, within today's
        env.act(_alert_obs(v, [0.0, 0.5, 0.4 if s == 0 else 0.2, 0.5], [1.0, 1.0, 0.4, 1.0]))
        seen.append(env._alerted[0].tolist())
    reach = [[j <= min(s, k) for j in range(N)] for s in range(4)]
    assert seen == reach
    # agent 1 at 1.03 p.u. in the widened region: 1547-B's absorption instead of the policy's injection;
    # agent 3 (never alerted) at the same voltage keeps the policy's action
    out = env.act(_alert_obs([1.0, 1.03, 1.0, 1.03], [0.0, 0.5, 0.5, 0.5], [1.0] * N))
    a_b = float(droop_b_action(torch.tensor([1.03], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64),
                               torch.tensor([1.0], dtype=torch.float64)))
    assert a_b < 0 and float(out[0, 1]) == pytest.approx(a_b, abs=1e-6) and float(out[0, 3]) == 0.5
    env.reset()
    env.act(_alert_obs(v, [0.0] * N, [1.0] * N))
    env.act(_alert_obs(v, [0.0, 0.5, 0.5, 0.5], [1.0] * N, ))
    lost = torch.eye(N, dtype=torch.bool)[None]                      # every message lost: only agent 0 knows
    env.act(_alert_obs(v, [0.0, 0.5, 0.5, 0.5], [1.0] * N), message_mask=lost)
    assert env._alerted[0].tolist() == [True, False, False, False]
    plain = SafetyEnvelope(_Fixed(a, N), v_min_pu=V_MIN, v_max_pu=V_MAX, config=EnvelopeConfig(handover_z=None))
    assert plain.alerted(_alert_obs(v, [0.0] * N, [1.0] * N).double()) is None
    # a policy without messages of its own (ippo): the alerts still travel as messages, lost with them
    silent = _Fixed(a, N)
    silent.reads_messages = False
    silent.act = lambda obs, *, env=None: a  # takes no message_mask: handed one, it would fail
    alone = SafetyEnvelope(silent, v_min_pu=V_MIN, v_max_pu=V_MAX, neighbours=chain,
                           config=EnvelopeConfig(handover_z=None, edge_settle=False, outage_alert_hops=k))
    assert alone.reads_messages
    alone.act(_alert_obs(v, [0.0] * N, [1.0] * N))
    alone.act(_alert_obs(v, [0.0, 0.5, 0.5, 0.5], [1.0] * N))
    alone.act(_alert_obs(v, [0.0, 0.5, 0.5, 0.5], [1.0] * N), message_mask=lost)  # the policy never sees it
    assert alone._alerted[0].tolist() == [True, False, False, False]
    assert f"upper margin 0.03 within {k} hops of an inverter out" in env.config.label
    assert env.communication == pytest.approx(1.0 + 6 / 4) and plain.communication == 1.0  # 6 links' one float
    with pytest.raises(EnvelopeError, match="outage_alert_hops must be a whole number"):
        EnvelopeConfig(outage_alert_hops=-1)


def test_outage_alerts_on_a_real_feeder_find_the_inverter_out_and_change_nothing_without_one():
    """ieee33 through a morning with the inverter at bus18 out: the agent at bus18 raises the alert
    and exactly the agents within 2 hops of it are alerted; without an outage no alert is raised
    over a whole day and every action is the plain envelope's, bit for bit."""
    import gridrl
    from gridrl.env import EnvConfig

    feeder = gridrl.load_feeder("ieee33")
    hops = torch.as_tensor(feeder.hop_distance)
    k = feeder.agents.index("bus18")
    for outage in (("bus18",), ()):
        hours = 12.0 if outage else 24.0
        env = gridrl.make_env("ieee33", split="val", num_envs=4, seed=0,
                              config=EnvConfig(outage_agents=outage, start_hour=0.0, episode_hours=hours))
        obs = env.reset()
        inner = _Fixed(torch.full((4, len(feeder.agents)), 0.3, dtype=torch.float64), len(feeder.agents))
        inner.obs_names = env.obs_names
        alerts = SafetyEnvelope(inner, v_min_pu=V_MIN, v_max_pu=V_MAX, neighbours=hops == 1,
                                config=EnvelopeConfig(handover_z=None, outage_alert_hops=2))
        plain = SafetyEnvelope(inner, v_min_pu=V_MIN, v_max_pu=V_MAX, config=EnvelopeConfig(handover_z=None))
        for _ in range(env.episode_steps):
            a = alerts.act(obs, env=env)
            if not outage:
                assert torch.equal(a, plain.act(obs, env=env))
            obs, *_ = env.step(a.to(torch.float32))
        if outage:
            assert alerts._alert_state[1][:, k].all() and alerts._alert_state[1].sum() == 4
            assert torch.equal(alerts._alerted, (hops[k] <= 2)[None].expand(4, -1))
        else:
            assert not alerts._alert_state[1].any()
