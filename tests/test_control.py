"""Controllers: droop curves and their fixed point, the OPF's optimality, bad input."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

import gridrl
from gridrl.control import (ControllerError, CurveError, DroopCurve, UnknownController, UnknownPreset,
                            make_controller)
from gridrl.control.droop import PRESETS, resolve_curve
from gridrl.control.plant import plant_from_profiles
from gridrl.env import EnvConfig, make_env

TOL_MW = 1e-6      # losses: OPF may exceed another controller's by solver noise only
TOL_PU = 1e-6      # voltages: "in band" up to the OPF's own margin


@pytest.fixture(scope="module")
def opf(feeder):
    return make_controller("opf", feeder)


# --------------------------------------------------------------------------------------------
# curves
# --------------------------------------------------------------------------------------------


def test_presets_are_the_published_curves():
    a, b, m = PRESETS["ieee1547-a"], PRESETS["ieee1547-b"], PRESETS["mapdn"]
    np.testing.assert_allclose(a(np.array([0.85, 0.90, 0.95, 1.00, 1.05, 1.10, 1.20])),
                               [0.25, 0.25, 0.125, 0.0, -0.125, -0.25, -0.25])
    np.testing.assert_allclose(b(np.array([0.90, 0.92, 0.95, 0.98, 1.00, 1.02, 1.05, 1.08, 1.10])),
                               [0.44, 0.44, 0.22, 0.0, 0.0, 0.0, -0.22, -0.44, -0.44])
    np.testing.assert_allclose(m(np.array([0.90, 0.95, 0.975, 1.0, 1.025, 1.05, 1.10])),
                               [1.0, 1.0, 0.5, 0.0, -0.5, -1.0, -1.0])
    assert (a.reference, b.reference, m.reference) == ("s_max", "s_max", "q_avail")


def test_curve_breakpoints_must_be_monotone():
    with pytest.raises(CurveError) as exc:
        DroopCurve(v_pu=(0.95, 0.94, 1.05), q=(1.0, 0.0, -1.0))
    assert str(exc.value) == "droop curve: v_pu breakpoints must increase strictly, got [0.95, 0.94, 1.05]"
    with pytest.raises(CurveError) as exc:
        resolve_curve(curve={"v_pu": [0.95, 1.0, 1.05], "q": [-0.5, 0.0, 0.5]})
    assert str(exc.value) == ("droop curve: q must not increase with voltage (a droop absorbs as voltage "
                              "rises), got [-0.5, 0, 0.5]")
    with pytest.raises(CurveError, match="unknown keys slope"):
        resolve_curve(curve={"v_pu": [0.95, 1.05], "q": [1, -1], "slope": 3})
    label, curve = resolve_curve(curve={"v_pu": [0.9, 1.1], "q": [0.3, -0.3]})
    assert label == "custom" and curve.reference == "s_max"


def test_curve_of_wrong_types_is_a_curve_error(feeder):
    with pytest.raises(CurveError) as exc:
        gridrl.make_controller("droop", feeder, curve={"v_pu": "abc", "q": 1})
    assert str(exc.value) == ("droop curve: v_pu must be a list of numbers, e.g. v_pu = [0.95, 1.0, 1.05], got "
                              "'abc'; q must be a list of numbers, e.g. q = [1.0, 0.0, -1.0], got 1")
    with pytest.raises(CurveError, match=r"v_pu must be a list of numbers, .*got \[0.95, None\]"):
        resolve_curve(curve={"v_pu": [0.95, None], "q": [1, -1]})
    with pytest.raises(CurveError, match=r"missing q \(a curve needs v_pu = \[...\] and q = \[...\]\)"):
        resolve_curve(curve={"v_pu": [0.95, 1.05]})


def test_unknown_names_are_one_clear_error(feeder):
    with pytest.raises(UnknownController) as exc:
        make_controller("pid", feeder)
    assert str(exc.value) == "unknown controller 'pid' — known controllers: none, droop, opf"
    with pytest.raises(UnknownPreset) as exc:
        make_controller("droop", feeder, preset="ieee1547-c")
    assert str(exc.value) == "unknown droop preset 'ieee1547-c' — known presets: ieee1547-a, ieee1547-b, mapdn, tuned"
    with pytest.raises(ControllerError, match="controller 'opf' takes no droop preset"):
        make_controller("opf", feeder, preset="mapdn")
    with pytest.raises(ControllerError, match="damp: unknown key"):
        make_controller("droop", feeder, damp=0.3)
    assert isinstance(UnknownController("x", []), gridrl.GridrlError)


def test_interface_attributes(feeder, opf):
    none, droop = make_controller("none", feeder), make_controller("droop", feeder, preset="mapdn")
    assert (none.hops, droop.hops, opf.hops) == (0, 0, -1)
    assert none.communication == droop.communication == 0.0
    n_load = int(feeder.net.load.in_service.sum())
    n = len(feeder.agents)
    assert opf.communication == pytest.approx((2 * n_load + len(feeder.inverters) + n) / n)
    assert droop.name == "droop-mapdn" and make_controller("droop", feeder).name == "droop-ieee1547-b"
    with pytest.raises(ValueError, match="env=env"):
        droop.act(torch.zeros(2, n, 4))


# --------------------------------------------------------------------------------------------
# droop's fixed point
# --------------------------------------------------------------------------------------------


def _noon_env(feeder, days, hours=1.0):
    cfg = EnvConfig(start_hour=11.0, episode_hours=hours)
    return make_env(feeder, split="test", num_envs=len(days), days=days, config=cfg)


@pytest.mark.parametrize("preset", ["ieee1547-a", "ieee1547-b", "mapdn"])
def test_droop_settles_on_its_curve(feeder, sunny_days, preset):
    env = _noon_env(feeder, sunny_days)
    obs = env.reset(days=sunny_days)
    droop = make_controller("droop", feeder, preset=preset)
    s_max = feeder.inverters.set_index("agent")["s_max_mva"].reindex(feeder.agents).to_numpy()
    for _ in range(2):
        a = droop.act(obs, env=env).numpy()
        assert not droop.last_info["unsettled"].any()
        peek = env.peek(torch.as_tensor(a))
        vm_own = peek["vm_own_pu"].numpy()
        q_avail = peek["q_avail_mvar"].numpy()
        # a fixed point: the curve at the voltage these actions cause asks for these actions
        want = droop.target(vm_own, q_avail)
        assert np.abs(want - a).max() < droop.options.tol
        q = a * q_avail
        limit = max(abs(x) for x in droop.curve.q)
        ref = s_max if droop.curve.reference == "s_max" else q_avail
        assert (np.abs(q) <= limit * ref + 1e-9).all() and (np.abs(q) <= q_avail + 1e-9).all()
        obs, *_ = env.step(torch.as_tensor(a))


def test_droop_curves_follow_the_installed_rating(feeder, sunny_days):
    """With pv_scale = 2 every inverter is rated twice as large; IEEE 1547 curves are in % of
    nameplate, so the settled reactive power is the curve times the environment's rating."""
    cfg = EnvConfig(start_hour=11.0, episode_hours=1.0, pv_scale=2.0)
    env = make_env(feeder, split="test", num_envs=len(sunny_days), days=sunny_days, config=cfg)
    obs = env.reset(days=sunny_days)
    droop = make_controller("droop", feeder, preset="ieee1547-b")
    a = droop.act(obs, env=env).numpy()
    peek = env.peek(torch.as_tensor(a))
    q_avail = peek["q_avail_mvar"].numpy()
    want_mvar = droop.curve(peek["vm_own_pu"].numpy()) * 2.0 * feeder.inverters.s_max_mva.to_numpy()
    assert np.abs(want_mvar).max() > 0.1  # the curve is active
    np.testing.assert_allclose(a * q_avail, np.clip(want_mvar, -q_avail, q_avail),
                               atol=2 * droop.options.tol * q_avail.max())


@pytest.mark.parametrize("q_at_night", [True, False])
def test_droop_and_opf_use_reactive_power_after_dark_only_if_inverters_can(feeder, q_at_night):
    """Test day 27 at 17:45: dark, and the evening peak sags ieee33 to 0.924 p.u. without control."""
    cfg = EnvConfig(start_hour=17.75, episode_hours=0.25, q_at_night=q_at_night)
    env = make_env(feeder, split="test", days=[27], config=cfg)
    obs = env.reset(days=[27])
    mon = np.asarray(feeder.monitored)
    for name in ("droop", "opf"):
        ctrl = make_controller(name, feeder)
        peek = env.peek(ctrl.act(obs, env=env))
        q, vmin = peek["q_mvar"].numpy(), peek["vm_pu"].numpy()[:, mon].min()
        if q_at_night:
            assert q.sum() > 0.5 and vmin > 0.93, name  # injecting lifts the evening sag
        else:
            assert (q == 0).all() and vmin < 0.925, name
    assert ctrl.last_info["infeasible"].all() != q_at_night  # opf: the band is out of reach without q
    assert (vmin >= feeder.v_min_pu - TOL_PU) == q_at_night


def test_droop_settles_where_coupled_agents_swing_against_each_other(feeder):
    """Test day 2 at 19:45 under MAPDN's steep curve: at a fixed step of 0.5 two neighbouring
    agents swing against each other, the correction shrinking by only ~3 % per iteration (over
    200 iterations); per-agent damping that halves on a sign change settles it in a few dozen."""
    cfg = EnvConfig(start_hour=19.5, episode_hours=0.5)
    env = make_env(feeder, split="test", days=[2], config=cfg)
    obs = env.reset(days=[2])
    droop = make_controller("droop", feeder, preset="mapdn", max_iter=40)
    obs, *_ = env.step(droop.act(obs, env=env))  # 19:30 settles; its actions warm-start 19:45
    a = droop.act(obs, env=env).numpy()
    assert not droop.last_info["unsettled"].any()
    peek = env.peek(torch.as_tensor(a))
    want = droop.target(peek["vm_own_pu"].numpy(), peek["q_avail_mvar"].numpy())
    assert np.abs(want - a).max() < droop.options.tol


def test_droop_reports_steps_that_did_not_settle(feeder, sunny_days):
    env = _noon_env(feeder, sunny_days)
    obs = env.reset(days=sunny_days)
    droop = make_controller("droop", feeder, preset="mapdn", max_iter=2)
    droop.act(obs, env=env)
    assert droop.last_info["unsettled"].all()


# --------------------------------------------------------------------------------------------
# the OPF
# --------------------------------------------------------------------------------------------


def _in_band(vm, mon, lo, hi, tol=TOL_PU):
    v = vm[:, mon]
    return (v >= lo - tol).all(1) & (v <= hi + tol).all(1)


def test_opf_loss_never_above_droop_or_none_when_all_in_band(feeder, sunny_days, opf):
    """Random steps (random days and hours) plus sunny noons where the band binds."""
    rng_days = [int(d) for d in np.random.default_rng(7).choice(feeder.days("test"), 6, replace=False)]
    envs = [make_env(feeder, split="test", num_envs=6, days=rng_days, seed=3,
                     config=EnvConfig(start_hour=None, episode_hours=2.0)),
            _noon_env(feeder, sunny_days, hours=2.0)]
    others = [make_controller("none", feeder)] + [make_controller("droop", feeder, preset=p) for p in PRESETS]
    mon = np.asarray(feeder.monitored)
    lo, hi = feeder.v_min_pu, feeder.v_max_pu
    compared = bound = 0
    for env in envs:
        obs = env.reset()
        for c in [opf, *others]:
            c.reset()
        for _ in range(3):
            a_opf = opf.act(obs, env=env)
            best = env.peek(a_opf)
            b_ok = _in_band(best["vm_pu"].numpy(), mon, lo, hi)
            b_loss = best["loss_mw"].numpy()
            for c in others:
                p = env.peek(c.act(obs, env=env))
                ok = _in_band(p["vm_pu"].numpy(), mon, lo, hi)
                assert b_ok[ok].all(), f"{c.name} is in band where opf is not"
                both = ok & b_ok
                assert (b_loss[both] <= p["loss_mw"].numpy()[both] + TOL_MW).all(), c.name
                compared += int(both.sum())
            bound += int((best["vm_pu"].numpy()[:, mon].max(1) > hi - 1e-4).sum())
            assert not opf.last_info["infeasible"].any() and not opf.last_info["unsettled"].any()
            obs, *_ = env.step(a_opf)
    assert compared >= 50 and bound >= 3  # the band did bind at some of the steps


def test_opf_where_band_cannot_be_met_minimizes_worst_violation(feeder, sunny_days, opf):
    steps = np.array([d * feeder.profiles.steps_per_day + 48 for d in sunny_days])
    plant = dataclasses.replace(plant_from_profiles(feeder, steps), v_min_pu=0.999, v_max_pu=1.001)  # impossible
    sol = opf.solve(plant)
    assert sol.infeasible.all() and not sol.unsettled.any()
    mon = plant.monitored
    n = len(feeder.agents)
    for a in (np.zeros(n), -np.ones(n), np.linspace(-1, 1, n)):
        vm = plant.solve(np.tile(a, (len(steps), 1))).vm_pu[:, mon]
        worst = np.maximum(vm - 1.001, 0.999 - vm).max(1)
        assert (sol.violation_pu <= worst + 1e-7).all()
    assert (sol.violation_pu > 0).all()


def test_opf_agrees_with_pandapower_opf(feeder, sunny_days, opf):
    """pandapower's interior-point OPF (PIPS) on the same step, minimizing the slack's import."""
    import pandapower as pp

    steps = np.array([sunny_days[0] * feeder.profiles.steps_per_day + 48])
    plant = plant_from_profiles(feeder, steps)
    sol = opf.solve(plant)
    net = feeder.net
    inv = feeder.inverters.index
    q_avail = plant.q_avail_mvar[0]
    net.load["p_mw"], net.load["q_mvar"], net.load["scaling"] = plant.load_p_mw[0], plant.load_q_mvar[0], 1.0
    net.sgen["p_mw"], net.sgen["scaling"], net.sgen["controllable"] = plant.sgen_p_mw[0], 1.0, False
    net.sgen.loc[inv, "controllable"] = True
    net.sgen.loc[inv, "min_p_mw"] = net.sgen.loc[inv, "max_p_mw"] = net.sgen.loc[inv, "p_mw"]
    net.sgen.loc[inv, "min_q_mvar"], net.sgen.loc[inv, "max_q_mvar"] = -q_avail, q_avail
    mon = np.asarray(feeder.monitored)
    net.bus["min_vm_pu"] = np.where(mon, feeder.v_min_pu, 0.5)
    net.bus["max_vm_pu"] = np.where(mon, feeder.v_max_pu, 1.5)
    net.line["max_loading_percent"] = 1000.0  # no line limits (much larger values stall PIPS)
    net.ext_grid["min_p_mw"] = net.ext_grid["min_q_mvar"] = -1e3
    net.ext_grid["max_p_mw"] = net.ext_grid["max_q_mvar"] = 1e3
    net.poly_cost.drop(net.poly_cost.index, inplace=True)  # the case's own generation costs
    net.pwl_cost.drop(net.pwl_cost.index, inplace=True)
    pp.create_poly_cost(net, net.ext_grid.index[0], "ext_grid", cp1_eur_per_mw=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pp.runopp(net, verbose=False, init="pf", PDIPM_GRADTOL=1e-10, PDIPM_COMPTOL=1e-10,
                  PDIPM_COSTTOL=1e-12, PDIPM_FEASTOL=1e-9, PDIPM_MAX_IT=500)
    pp_loss = float(net.res_line.pl_mw.sum())
    assert net.res_bus.vm_pu[mon].max() == pytest.approx(feeder.v_max_pu, abs=1e-6)  # the band binds
    assert sol.loss_mw[0] == pytest.approx(pp_loss, rel=1e-4, abs=1e-6)
    q_ours = sol.actions[0] * q_avail
    np.testing.assert_allclose(q_ours, net.res_sgen.q_mvar.loc[inv].to_numpy(), atol=0.01)


def test_opf_on_a_kept_cholesky_factor_matches_daqp_alone(feeder, sunny_days, opf, monkeypatch):
    """Large feeders start each QP on a Cholesky factor that follows the BFGS updates; forced on
    here (ieee33 is below the size where it is used), the sunny-noon optimum, band binding, is
    the same as with DAQP alone."""
    from gridrl.control import opf as opf_module

    steps = np.array([d * feeder.profiles.steps_per_day + 48 for d in sunny_days])
    plant = plant_from_profiles(feeder, steps)
    ref = opf.solve(plant)
    answered = []
    warm = opf_module._qp_warm

    def counting(*args):
        out = warm(*args)
        answered.append(out is not None)
        return out

    monkeypatch.setattr(opf_module, "_FACTOR_FROM_AGENTS", 1)
    monkeypatch.setattr(opf_module, "_qp_warm", counting)
    got = opf.solve(plant)
    assert sum(answered) > len(steps)  # the factor path really answered QPs
    vm = plant.solve(got.actions).vm_pu[:, plant.monitored]
    assert vm.max() > plant.v_max_pu - 1e-4   # the band binds
    np.testing.assert_allclose(got.loss_mw, ref.loss_mw, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got.actions, ref.actions, rtol=0, atol=1e-5)
    assert not got.unsettled.any() and not got.infeasible.any()


def test_opf_improves_on_a_plain_newton_step_where_capabilities_span_orders_of_magnitude():
    """mv-rural's PV agents can give 0.008 to 0.43 MVAr (2.4 with its wind fleet as agents), so the
    QP's curvature in action units spans orders of magnitude; the OPF must still beat the clipped
    Newton step of its own loss model (once it stopped at q = 0 there: the QP solver called a
    worse step optimal). A night mode gives the 05:00 step headroom too."""
    from gridrl.control.opf import _with_ridge, solve_opf
    from gridrl.control.plant import ActionMap, PlantDerivatives

    f = gridrl.load_feeder("mv-rural")
    pf = f.power_flow()
    amap = ActionMap(f, pf)
    model = PlantDerivatives(f, pf, amap)
    plant = plant_from_profiles(f, np.array([2 * 96 + 48, 2 * 96 + 20]), pf=pf, amap=amap, q_at_night=True)
    zero = plant.solve(np.zeros((2, amap.n_agents)))
    grad = model.linearize(plant, np.arange(2), zero.v).grad
    newton = np.stack([np.clip(-np.linalg.solve(_with_ridge(model.hessian(plant.q_avail_mvar[[b]]))[0], grad[b]),
                               -1, 1) for b in range(2)])
    plain = plant.solve(newton)
    assert (plain.vm_pu[:, f.monitored] < f.v_max_pu).all() and (plain.loss_mw < zero.loss_mw).all()
    sol = solve_opf(plant, model)
    assert not sol.unsettled.any() and not sol.infeasible.any()
    assert (sol.loss_mw <= plain.loss_mw + 1e-9).all(), (sol.loss_mw, plain.loss_mw, zero.loss_mw)


def test_warm_started_qp_matches_daqp_or_defers():
    """The OPF's warm-started active-set QP returns DAQP's optimum and active set, from a good, a
    stale and an empty warm start, or defers (None); never a different answer."""
    import daqp
    from scipy.linalg import cholesky

    from gridrl.control.opf import _qp_warm

    rng = np.random.default_rng(7)
    answered = 0
    for trial in range(40):
        n, m = 30, 4
        b = rng.normal(size=(n, n))
        h = b @ b.T / n + 0.1 * np.eye(n)
        g = rng.normal(size=n) * 3.0
        a = rng.normal(size=(m, n))
        upper = np.concatenate([np.full(n, 0.5), rng.uniform(0.2, 1.0, m)])
        lower = np.concatenate([np.full(n, -0.5), rng.uniform(-1.0, -0.2, m)])
        d_ref, _, flag, info = daqp.solve(h, g, a, upper, lower, np.zeros(n + m, dtype=np.int32), primal_tol=1e-10)
        assert flag == 1
        lam_ref = info["lam"]
        exact = np.where(lam_ref > 0, 1, np.where(lam_ref < 0, 3, 0)).astype(np.int32)
        assert exact.any()
        stale = exact.copy()
        flip = rng.choice(n + m, 3, replace=False)
        stale[flip] = np.where(stale[flip] == 0, 1, 0)
        for warm in (exact, stale, np.zeros_like(exact)):
            out = _qp_warm(h, cholesky(h, lower=False), g, a, upper, lower, warm)
            if out is None:
                continue
            answered += 1
            d, sense, lam = out
            np.testing.assert_allclose(d, d_ref, atol=1e-9)
            np.testing.assert_array_equal(sense, exact)
            np.testing.assert_allclose(h @ d + g + np.vstack([np.eye(n), a]).T @ lam, 0.0, atol=1e-9)
    assert answered >= 40  # at least every exact warm start is answered here


def test_cholesky_follows_bfgs_updates():
    from scipy.linalg import cholesky

    from gridrl.control.opf import _cholesky_rank2, _damped_bfgs

    rng = np.random.default_rng(3)
    n = 25
    b = rng.normal(size=(n, n))
    h = b @ b.T + np.eye(n)
    u = cholesky(h, lower=False)
    for _ in range(10):
        s = rng.normal(size=(1, n))
        y = s @ h * rng.uniform(0.2, 3.0) + 0.3 * rng.normal(size=(1, n))
        h_new, plus, minus, ok = _damped_bfgs(h[None], s, y)
        assert ok[0] and _cholesky_rank2(u, plus[0], minus[0])
        h = h_new[0]
        np.testing.assert_allclose(u.T @ u, h, atol=1e-10 * np.abs(h).max())
        assert np.allclose(np.triu(u), u)
    # a downdate that would leave the matrix indefinite is refused
    assert not _cholesky_rank2(cholesky(np.eye(3), lower=False), np.zeros(3), np.array([0.0, 2.0, 0.0]))


def test_controller_options_are_validated_together(feeder):
    from gridrl.control import ControllerError

    with pytest.raises(ControllerError) as err:
        gridrl.make_controller("droop", feeder, damping="a", dampin=0.3)
    msg = str(err.value)
    assert "damping: expected a number, got 'a'" in msg
    assert "dampin: unknown key (allowed: damping, max_iter, min_damping, tol)" in msg
    with pytest.raises(ControllerError, match="need 0 < min_damping ≤ damping ≤ 1"):
        gridrl.make_controller("droop", feeder, damping=2.0)
    with pytest.raises(ControllerError, match="max_iter: expected an integer, got 'x'"):
        gridrl.make_controller("opf", feeder, max_iter="x")
    assert gridrl.make_controller("droop", feeder, max_iter=5).options.max_iter == 5
