"""The substation tap changer, branch loading and the loss split: against pandapower, and the
AVR's behaviour in the environment."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pandapower as pp
import pytest
import torch

import gridrl
from gridrl.env import EnvConfig, EnvError, make_env
from gridrl.grid.branches import BranchFlows
from gridrl.grid.powerflow import reference_solve

_FEEDERS: dict = {}


def _feeder(name):
    if name not in _FEEDERS:
        _FEEDERS[name] = gridrl.load_feeder(name)
    return _FEEDERS[name]


def _profile_steps(feeder, batch, seed):
    rng = np.random.default_rng(seed)
    prof = feeder.profiles
    t = rng.integers(0, prof.load_p_mw.shape[0], batch)
    gp = prof.sgen_p_mw[t]
    gq = rng.uniform(-0.4, 0.4, gp.shape) * gp
    return prof.load_p_mw[t], prof.load_q_mvar[t], gp, gq


def test_substation_tap_changers_are_found_with_their_data():
    for name, trafos, pos0 in (("mv-rural", (0, 1), 0), ("mv-urban", (0, 1), -1)):
        tc = _feeder(name).power_flow().tap_changer
        assert tc.kind == "transformer" and tc.trafo_index == trafos and tc.tap_pos0 == pos0
        assert (tc.tap_min, tc.tap_max, tc.tap_step_percent, tc.side) == (-9, 9, 1.5, "hv")
        assert tc.filled == ()
        assert tc.ratio(pos0) == pytest.approx(1.0)
        assert tc.ratio(pos0 + 1) < 1.0  # an HV tap up lowers the MV side
    ieee = _feeder("ieee33").power_flow().tap_changer
    assert ieee.kind == "regulator" and (ieee.tap_min, ieee.tap_max, ieee.tap_step_percent) == (-16, 16, 0.625)
    assert ieee.ratio(16) == pytest.approx(1.1)


@pytest.mark.parametrize("name", ["mv-urban", "ieee33"])
def test_power_flow_with_random_taps_matches_pandapower(name):
    feeder = _feeder(name)
    pf = feeder.power_flow()
    tc = pf.tap_changer
    lp, lq, gp, gq = _profile_steps(feeder, 8, seed=3)
    taps = np.random.default_rng(4).integers(tc.tap_min, tc.tap_max + 1, 8)
    res = pf.solve(lp, lq, gp, gq, tap_pos=taps)
    ref = reference_solve(feeder.net, lp, lq, gp, gq, tap_changer=tc, tap_pos=taps)
    assert res.converged.all() and ref.converged.all()
    assert np.nanmax(np.abs(res.vm_pu - ref.vm_pu)) <= 1e-6
    assert np.nanmax(np.abs(res.va_degree - ref.va_degree)) <= 1e-4
    assert np.abs(res.loss_mw - ref.loss_mw).max() <= 1e-6
    assert np.abs(res.p_slack_mw - ref.p_slack_mw).max() <= 1e-6
    assert np.abs(res.q_slack_mvar - ref.q_slack_mvar).max() <= 1e-6
    # the taps matter: the same scenarios at the net's position differ
    assert np.nanmax(np.abs(pf.solve(lp, lq, gp, gq).vm_pu - res.vm_pu)) > 1e-3


def test_tap_positions_outside_the_range_are_refused():
    pf = _feeder("mv-urban").power_flow()
    lp, lq, gp, gq = _profile_steps(_feeder("mv-urban"), 2, seed=0)
    with pytest.raises(ValueError, match="tap range -9…9"):
        pf.solve(lp, lq, gp, gq, tap_pos=[0, 10])


def test_loadings_and_loss_split_match_pandapower():
    feeder = _feeder("mv-urban")
    pf = feeder.power_flow()
    tc = pf.tap_changer
    flows = BranchFlows(pf, feeder.net)
    assert flows.has_ratings and set(flows.rated_kind) == {"line", "trafo"}
    lp, lq, gp, gq = _profile_steps(feeder, 3, seed=5)
    lp, lq = 2.0 * lp, 2.0 * lq  # heavy enough for real loadings
    taps = np.array([-9, 2, 7])
    res = pf.solve(lp, lq, gp, gq, tap_pos=taps)
    loading = flows.loading_pct(res.v, tc.ratio(taps))
    load_loss, noload_loss = flows.transformer_losses(res.v)
    net = copy.deepcopy(feeder.net)
    net.load["scaling"] = 1.0
    net.sgen["scaling"] = 1.0
    for k in range(3):
        net.load["p_mw"], net.load["q_mvar"], net.sgen["p_mw"], net.sgen["q_mvar"] = lp[k], lq[k], gp[k], gq[k]
        net.trafo.loc[list(tc.trafo_index), "tap_pos"] = taps[k]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pp.runpp(net, lightsim2grid=False, numba=False)
        ref = np.array([net[f"res_{kind}"].loading_percent.at[e]
                        for kind, e in zip(flows.rated_kind, flows.rated_element)])
        assert np.abs(loading[k] - ref).max() <= 1e-6, np.abs(loading[k] - ref).max()
        assert load_loss[k] + noload_loss[k] == pytest.approx(net.res_trafo.pl_mw.sum(), abs=1e-9)
        assert res.loss_mw[k] - load_loss[k] - noload_loss[k] == pytest.approx(net.res_line.pl_mw.sum(), abs=1e-6)
        # no-load losses are the magnetizing ones: of the order of pfe_kw, far from the load losses' scale
        assert 0.5 < noload_loss[k] / (net.trafo.pfe_kw.sum() / 1e3) < 2.0
    assert loading.max() > 50.0


def test_feeders_without_ratings_report_nan_not_invented_loadings():
    env = make_env("ieee33", split="test", num_envs=2, seed=0)
    env.reset()
    _, _, _, info = env.step(torch.zeros(2, env.n_agents))
    assert torch.isnan(info["max_loading_pct"]).all()
    assert (info["overloaded_branches"] == 0).all()
    assert torch.allclose(info["line_loss_mw"], info["loss_mw"])
    assert torch.isnan(info["tap_pos"]).all()  # no tap changer unless asked for


def _run_day(name, cfg, days, steps=96):
    env = make_env(name, split="test", num_envs=len(days), seed=0, days=days, config=cfg)
    env.reset(days=days)
    taps, vms = [], []
    for _ in range(steps):
        _, _, _, info = env.step(torch.zeros(len(days), env.n_agents))
        taps.append(info["tap_pos"].numpy().copy())
        vms.append(info["vm_pu"][:, env._tap_bus].numpy().copy() if env.tap_changer is not None else None)
        parts = info["line_loss_mw"] + info["trafo_load_loss_mw"] + info["trafo_noload_loss_mw"]
        assert torch.allclose(parts, info["loss_mw"], atol=1e-12)
    return env, np.array(taps), (np.array(vms) if vms[0] is not None else None), info


def test_avr_moves_the_tap_toward_the_setpoint_after_the_delay():
    feeder = _feeder("mv-urban")
    days = feeder.days("test")[:5]
    cfg = EnvConfig(avr_delay_steps=3, avr_deadband_pu=0.008)  # a narrow band: mv-urban's busbar is stiff
    env, taps, vm, info = _run_day("mv-urban", cfg, days)
    tc = env.tap_changer
    assert np.isfinite(taps).all() and (taps >= tc.tap_min).all() and (taps <= tc.tap_max).all()
    ops = np.abs(np.diff(taps, axis=0)).sum(axis=0)
    assert ops.sum() > 0, "the test days should make the tap move"
    # the episode's count includes a move decided after the last step
    assert (info["episode"]["tap_operations"].numpy() >= ops).all()
    assert (info["episode"]["tap_operations"].numpy() <= ops + 1).all()
    out = np.abs(vm - cfg.avr_v_set_pu) > cfg.avr_deadband_pu
    for b in range(len(days)):
        for t in np.flatnonzero(np.diff(taps[:, b]) != 0):
            # a move for step t+1 follows three steps out of band on the same side, and goes toward the setpoint
            assert out[t - 2:t + 1, b].all()
            direction = np.sign(taps[t + 1, b] - taps[t, b])
            assert direction == (1 if vm[t, b] > cfg.avr_v_set_pu else -1)  # HV taps: up lowers the MV side
    # fixed: the net's tap, all day
    _, fixed_taps, _, fixed_info = _run_day("mv-urban", EnvConfig(tap_control="fixed"), days, steps=8)
    assert (fixed_taps == -1).all() and (fixed_info["tap_pos"] == -1).all()


def test_avr_settles_the_episode_start_and_keeps_the_busbar_in_its_deadband_more_often():
    feeder = _feeder("mv-urban")
    days = feeder.days("test")[:4]
    cfg = EnvConfig()
    _, _, vm_avr, _ = _run_day("mv-urban", cfg, days, steps=24)
    _, _, vm_fixed, _ = _run_day("mv-urban", EnvConfig(tap_control="fixed"), days, steps=24)
    in_avr = np.mean(np.abs(vm_avr - 1.0) <= cfg.avr_deadband_pu + 0.0075)
    in_fixed = np.mean(np.abs(vm_fixed - 1.0) <= cfg.avr_deadband_pu + 0.0075)
    assert in_avr == 1.0 and in_fixed < 0.5


def test_the_step_peek_and_controllers_solve_with_the_same_tap():
    feeder = _feeder("mv-urban")
    days = feeder.days("test")[:2]
    env = make_env("mv-urban", split="test", num_envs=2, seed=0, days=days)
    env.reset(days=days)
    for _ in range(40):  # into the day, where the tap has left the net's position
        env.step(torch.zeros(2, env.n_agents))
    pend = env.pending()
    assert (pend["tap_pos"] != env.tap_changer.tap_pos0).any()
    a = torch.full((2, env.n_agents), 0.3)
    peek = env.peek(a)
    from gridrl.control.plant import ActionMap, plant_from_env
    pf = feeder.power_flow()
    plant = plant_from_env(env, pf, ActionMap(feeder, pf))
    res = plant.solve(a.numpy().astype(np.float64))
    _, _, _, info = env.step(a)
    assert torch.allclose(info["tap_pos"], pend["tap_pos"].to(torch.float64))
    assert torch.allclose(peek["vm_pu"], info["vm_pu"], atol=1e-8, equal_nan=True)
    assert np.allclose(res.vm_pu, info["vm_pu"].numpy(), atol=1e-8, equal_nan=True)


def test_a_deadband_inside_half_a_tap_step_is_refused():
    with pytest.raises(EnvError, match="half a tap step"):
        make_env("mv-urban", split="test", num_envs=1, config=EnvConfig(avr_deadband_pu=0.005))


def test_source_regulator_on_an_ieee_feeder_raises_the_source_with_the_tap():
    cfg = EnvConfig(source_regulator=True, avr_v_set_pu=1.03, avr_deadband_pu=0.005)
    env, taps, vm, _ = _run_day("ieee33", cfg, [_feeder("ieee33").days("test")[0]], steps=4)
    # from neutral at 1.0 p.u., the settle at the episode start lifts the source to 1.03 ± 0.005
    assert (taps == 5).all()  # 1 + 5 × 0.625 % = 1.03125
    assert np.abs(vm - 1.03125).max() < 1e-9


def test_opf_respects_thermal_limits_at_the_given_tap():
    import dataclasses

    from gridrl.control.opf import OpfOptions, solve_opf
    from gridrl.control.plant import ActionMap, PlantDerivatives, plant_from_profiles

    feeder = _feeder("mv-urban")
    pf = feeder.power_flow()
    amap = ActionMap(feeder, pf)
    model = PlantDerivatives(feeder, pf, amap)
    steps = np.concatenate([feeder.profiles.day_steps(d) for d in feeder.days("test")[:12]])
    plant = dataclasses.replace(plant_from_profiles(feeder, steps), tap_pos=np.full(len(steps), 2))
    rho = pf.tap_changer.ratio(plant.tap_pos)
    none = model.flows.loading_pct(plant.solve(np.zeros((len(steps), amap.n_agents))).v, rho).max(axis=1)
    # overloads at night come from wind and hydro, where PV inverters have no reactive power:
    # steps with reactive headroom, slightly overloaded
    daylight = plant.q_avail_mvar.sum(axis=1) > 1.0
    hot = np.flatnonzero((none > 100.5) & (none < 104.0) & daylight)[:4]
    assert hot.size == 4, "the test days should hold slightly overloaded steps in daylight"
    sub = dataclasses.replace(plant_from_profiles(feeder, steps[hot]), tap_pos=np.full(hot.size, 2))
    free = solve_opf(sub, model, options=OpfOptions(thermal_limits=False))
    held = solve_opf(sub, model)
    load_free = model.flows.loading_pct(sub.solve(free.actions).v, rho[hot]).max(axis=1)
    load_held = model.flows.loading_pct(sub.solve(held.actions).v, rho[hot]).max(axis=1)
    assert (load_free > 100.0 + 1e-3).any()  # the unconstrained optimum overloads a branch ...
    met = ~held.infeasible
    assert met.any() and (load_held[met] <= 100.0 + 1e-6).all()  # ... the constrained one does not
    assert (held.overload[~met] > 0).all()
    assert (held.loss_mw >= free.loss_mw - 1e-7).all()  # limits cost losses, never save them
    assert (held.violation_pu <= 1e-6).all() and not held.unsettled.any()


def test_summary_gaps_on_controllable_losses_with_the_total_beside():
    import pandas as pd

    from gridrl.compare.summary import format_summary, summarize

    rows = []
    for feeder, rated in (("sub", True), ("ieee", False)):
        for ctrl, lines, noload, ops in (("none", 1.2, 1.0, 3), ("opf", 0.8, 1.0, 5)):
            rows.append(dict(feeder=feeder, controller=ctrl, seed=0, day=1, steps=96, controllable_rate=1.0,
                             share_out_of_band=0.0, mean_abs_dv_pu=0.01, max_abs_dv_pu=0.02,
                             energy_loss_mwh=lines + (noload if rated else 0.0), controllable_loss_mwh=lines,
                             line_loss_mwh=lines, trafo_load_loss_mwh=0.0,
                             trafo_noload_loss_mwh=noload if rated else 0.0, reactive_energy_mvarh=0.0,
                             violation_bus_hours=0.0, max_loading_pct=104.0 if rated else np.nan,
                             overload_branch_hours=0.5 if rated else 0.0, tap_operations=ops if rated else 0,
                             unsettled_steps=0, infeasible_steps=0, diverged_steps=0, communication=0.0))
    s = summarize(pd.DataFrame(rows)).set_index(["feeder", "controller"])
    assert s.loc[("sub", "none"), "loss_gap_to_opf_pct"] == pytest.approx(50.0)     # 1.2 vs 0.8
    assert s.loc[("sub", "none"), "total_gap_to_opf_pct"] == pytest.approx(100 * (2.2 / 1.8 - 1))
    assert s.loc[("ieee", "none"), "total_gap_to_opf_pct"] == pytest.approx(50.0)
    assert s.loc[("sub", "opf"), "tap_operations_per_day"] == 5.0
    assert s.loc[("sub", "none"), "overload_branch_hours"] == 0.5
    shown = {(r["feeder"], r["controller"]): r for r in format_summary(summarize(pd.DataFrame(rows)))}
    assert shown[("ieee", "none")]["max loading %"] == "–" and shown[("ieee", "none")]["overload branch-h"] == "–"
    assert shown[("sub", "none")]["max loading %"] == "104.0"
    assert shown[("sub", "none")]["gap to opf %"] == "+50.0"
