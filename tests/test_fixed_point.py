"""The damped fixed point that droop and the safety envelope's settled rules share."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gridrl.env.fixed_point import FixedPointOptions, damped_fixed_point


def _linear(gain, offset, calls):
    """``target(a) = offset − gain·a`` per agent (a volt-var loop: absorbing lowers the voltage,
    which asks for less absorption); records which rows each call saw."""
    def target(a, rows):
        calls.append(rows.copy())
        return offset[rows] - gain[rows] * a
    return target


@pytest.mark.parametrize("freeze", [True, False])
def test_it_settles_on_the_fixed_point_even_where_the_plain_iteration_swings(freeze):
    """Gains above 1 make ``a ← target(a)`` swing apart; the halving step still settles every
    agent within ``tol`` of ``a* = offset / (1 + gain)``."""
    rng = np.random.default_rng(0)
    gain, offset = rng.uniform(0.1, 6.0, (8, 5)), rng.uniform(-0.8, 0.8, (8, 5))
    calls = []
    a, settled = damped_fixed_point(np.zeros((8, 5)), _linear(gain, offset, calls), FixedPointOptions(), freeze=freeze)
    assert settled.all()
    residual = np.abs(offset - gain * a - a).max()
    assert residual < 1e-4
    np.testing.assert_allclose(a, offset / (1 + gain), atol=1e-4)
    if freeze:  # a settled scenario is no longer solved
        assert len(calls[-1]) < 8
    else:       # the whole batch every time
        assert all(len(rows) == 8 for rows in calls)


def test_a_solve_that_did_not_converge_holds_its_actions_and_the_cap_reports_unsettled():
    gain, offset = np.full((3, 2), 0.5), np.full((3, 2), 0.3)
    nan_row = lambda a, rows: np.where((rows == 1)[:, None], np.nan, offset[rows] - gain[rows] * a)  # noqa: E731
    start = np.full((3, 2), -0.7)
    a, settled = damped_fixed_point(start, nan_row)
    assert settled.all() and (a[1] == -0.7).all()          # held, and a correction of 0 counts as settled
    np.testing.assert_allclose(a[[0, 2]], 0.2, atol=1e-4)
    a, settled = damped_fixed_point(start, _linear(np.full((3, 2), 5.0), offset, []), FixedPointOptions(max_iter=2))
    assert not settled.any()
    assert (start == -0.7).all()                            # the caller's actions are never moved in place


def test_the_options_are_checked():
    with pytest.raises(ValueError, match="min_damping ≤ damping"):
        FixedPointOptions(damping=0.1, min_damping=0.2)
    with pytest.raises(ValueError, match="tol > 0"):
        FixedPointOptions(tol=0.0)


def test_the_envelopes_handed_over_agents_settle_where_1547b_droop_does(sunny_days):
    """Every agent handed over: the envelope settles on 1547-B's curve during the interval through
    the environment's ``peek`` (the whole batch moving), droop through its own power flow (settled
    scenarios frozen); both reach the same operating point."""
    import gridrl
    from gridrl.control import make_controller
    from gridrl.env.envelope import EnvelopeConfig, SafetyEnvelope

    class Anything:
        name, hops, communication, reads_messages = "anything", 1, 1.0, False

        def __init__(self, env):
            self.obs_names, self.agents = list(env.obs_names), list(env.agents)

        def act(self, obs, *, env=None):
            return torch.ones(obs.shape[:2], dtype=torch.float64)

    cfg = gridrl.EnvConfig(start_hour=11.0, episode_hours=1.0, pv_scale=1.5)
    env = gridrl.make_env("ieee33", split="test", num_envs=len(sunny_days), days=sunny_days, config=cfg, seed=1)
    obs = env.reset(days=sunny_days)
    n, d = len(env.agents), len(env.obs_names)
    handed = SafetyEnvelope(Anything(env), v_min_pu=0.95, v_max_pu=1.05, config=EnvelopeConfig(handover_z=1e-9),
                            obs_mean=torch.full((n, d), 100.0), obs_std=torch.ones(n, d))  # every agent far out
    a_env = handed.act(obs, env=env)
    assert (handed.last_info["handover"] == n).all()
    a_droop = make_controller("droop", env.feeder).act(obs, env=env)
    assert float(a_droop.abs().max()) > 0.05              # 1547-B absorbs at these noons
    np.testing.assert_allclose(a_env.numpy(), a_droop.numpy(), atol=2e-3)
