"""Analytic sensitivities of voltages and losses to reactive injections, and the bus impedance."""

from __future__ import annotations

import numpy as np
import pandapower as pp
import pytest

import gridrl
from gridrl.control.plant import ActionMap, PlantDerivatives, finite_difference, plant_from_profiles
from gridrl.grid.powerflow import BatchedPowerFlow
from gridrl.grid.sensitivity import InjectionSensitivity, bus_impedance


def _solved(feeder, pf, batch, seed):
    """Random profile steps with random inverter actions, solved."""
    rng = np.random.default_rng(seed)
    steps = rng.choice(len(feeder.profiles.load_p_mw), batch, replace=False)
    plant = plant_from_profiles(feeder, steps, pf=pf, q_at_night=True)  # every inverter has headroom, any hour
    actions = rng.uniform(-1.0, 1.0, (batch, plant.amap.n_agents))
    q = plant.amap.sgen_q_mvar(actions, plant.q_avail_mvar)
    return plant, q, pf.solve(plant.load_p_mw, plant.load_q_mvar, plant.sgen_p_mw, q)


# mv-rural: several inverters on one bus, pandapower auxiliary buses behind open switches
@pytest.mark.parametrize("name", ["ieee33", "mv-rural"])
def test_sensitivities_match_central_differences(name):
    feeder = gridrl.load_feeder(name)
    pf = feeder.power_flow()
    plant, q, res = _solved(feeder, pf, batch=4, seed=1)
    cols = plant.amap.sgen_col
    sens = InjectionSensitivity(pf, cols, np.arange(pf.n_bus))
    dvm, dloss, ok = sens(res.v)
    assert ok.all() and dvm.shape == (4, pf.n_bus, len(cols)) and dloss.shape == (4, len(cols))
    h = 1e-4
    for j in np.linspace(0, len(cols) - 1, 5).astype(int):
        up, down = q.copy(), q.copy()
        up[:, cols[j]] += h
        down[:, cols[j]] -= h
        r_up = pf.solve(plant.load_p_mw, plant.load_q_mvar, plant.sgen_p_mw, up)
        r_down = pf.solve(plant.load_p_mw, plant.load_q_mvar, plant.sgen_p_mw, down)
        fd_v = (r_up.vm_pu - r_down.vm_pu) / (2 * h)
        fd_l = (r_up.loss_mw - r_down.loss_mw) / (2 * h)
        scale_v = np.nanmax(np.abs(fd_v))
        assert scale_v > 1e-4  # a real sensitivity, not two zeros agreeing
        np.testing.assert_allclose(dvm[:, :, j], fd_v, atol=1e-6 * scale_v, rtol=0)
        np.testing.assert_allclose(dloss[:, j], fd_l, atol=1e-5 * np.abs(fd_l).max() + 1e-9, rtol=0)


def test_plant_derivatives_in_action_units_match_finite_differences():
    """Per agent (an agent drives all its inverters), scaled by the available reactive power."""
    feeder = gridrl.load_feeder("mv-rural")
    pf = feeder.power_flow()
    amap = ActionMap(feeder, pf)
    assert amap.incidence.sum(axis=1).max() > 1  # some agent owns several inverters
    model = PlantDerivatives(feeder, pf, amap)
    plant, _, _ = _solved(feeder, pf, batch=2, seed=2)
    actions = np.random.default_rng(3).uniform(-0.9, 0.9, (2, amap.n_agents))
    res = plant.solve(actions)
    jac, grad, ok = model.first_order(plant, np.arange(2), res.v)
    fd_jac, fd_grad = finite_difference(plant, actions, np.arange(2), step=1e-5, monitored=model.monitored)
    assert ok.all()
    np.testing.assert_allclose(jac, fd_jac, atol=1e-4 * np.abs(fd_jac).max(), rtol=0)
    # forward differences carry step/2 × curvature: compare at that accuracy
    np.testing.assert_allclose(grad, fd_grad, atol=1e-3 * np.abs(fd_grad).max(), rtol=0)


@pytest.mark.parametrize("name", ["ieee33", "mv-rural"])
def test_single_solves_match_the_whole_matrix(name):
    """The adjoint loss gradient, single voltage rows (adjoint) and voltage changes (forward)
    reproduce the full matrix the per-inverter solves give, in MVAr and in action units."""
    feeder = gridrl.load_feeder(name)
    pf = feeder.power_flow()
    amap = ActionMap(feeder, pf)
    model = PlantDerivatives(feeder, pf, amap)
    plant, _, _ = _solved(feeder, pf, batch=3, seed=4)
    rng = np.random.default_rng(5)
    actions = rng.uniform(-0.9, 0.9, (3, amap.n_agents))
    res = plant.solve(actions)
    sens = model.sensitivity
    dvm, dloss, _ = sens(res.v)
    lin = sens.linearize(res.v)
    np.testing.assert_allclose(sens.loss_gradient(lin), dloss, rtol=1e-9, atol=1e-12 * np.abs(dloss).max())
    rows = np.array([0, 3, len(model.monitored) - 1, 7, 3])
    scen = np.array([2, 0, 1, 1, 2])
    np.testing.assert_allclose(sens.voltage_rows(lin, scen, rows), dvm[scen, rows], rtol=1e-9, atol=1e-13)
    dq = rng.normal(size=(3, len(amap.sgen_col)))
    np.testing.assert_allclose(sens.voltage_change(lin, dq), np.einsum("bmk,bk->bm", dvm, dq), rtol=1e-9, atol=1e-13)

    jac, grad, _ = model.first_order(plant, np.arange(3), res.v)
    fo = model.linearize(plant, np.arange(3), res.v)
    assert fo.ok.all() and np.abs(jac).max() > 1e-4
    np.testing.assert_allclose(fo.grad, grad, rtol=1e-9, atol=1e-12 * np.abs(grad).max())
    step = rng.uniform(-0.5, 0.5, amap.n_agents)
    for j in range(3):
        np.testing.assert_allclose(fo.voltage_rows(j, rows), jac[j][rows], rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose(fo.voltage_change(j, step), jac[j] @ step, rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose(fo.jacobian(j), jac[j], rtol=1e-12, atol=0)
        assert fo.voltage_rows(j, []).shape == (0, amap.n_agents)  # no band row binds (mv-rural has multi-inverter agents)


def test_slack_and_dead_elements():
    """An sgen at the slack bus moves nothing; a bus out of service has no voltage to move."""
    net = gridrl.load_feeder("ieee33").net
    slack = int(net.ext_grid.bus.iloc[0])
    at_slack = pp.create_sgen(net, slack, p_mw=0.1)
    dead_bus = pp.create_bus(net, vn_kv=12.66, in_service=False)
    pf = BatchedPowerFlow(net)
    n_load, n_sgen = len(pf.load_index), len(pf.sgen_index)
    res = pf.solve(net.load.p_mw.to_numpy(), net.load.q_mvar.to_numpy(), np.zeros(n_sgen), np.zeros(n_sgen))
    sgen_cols = np.array([list(pf.sgen_index).index(at_slack), 0])
    bus_cols = np.array([list(pf.bus_index).index(dead_bus), list(pf.bus_index).index(slack), 5])
    dvm, dloss, ok = InjectionSensitivity(pf, sgen_cols, bus_cols)(res.v)
    assert ok.all() and n_load
    assert (dvm[0, :, 0][1:] == 0).all() and dloss[0, 0] == 0      # sgen at the slack
    assert np.isnan(dvm[0, 0]).all()                                 # bus out of service
    assert (dvm[0, 1] == 0).all()                                    # the slack's own voltage
    assert dvm[0, 2, 1] > 0 and dloss[0, 1] != 0                     # an ordinary sgen does act


def test_singular_jacobian_is_reported_not_raised():
    feeder = gridrl.load_feeder("ieee33")
    pf = feeder.power_flow()
    sens = InjectionSensitivity(pf, np.arange(pf.n_sgen), np.arange(pf.n_bus))
    v = np.ones((2, pf.n_bus), dtype=np.complex128)
    v[1, 1:] = 0.0  # no voltage at all: every diagonal block vanishes
    dvm, dloss, ok = sens(v)
    assert ok.tolist() == [True, False]
    assert np.isnan(dvm[1]).all() and np.isnan(dloss[1]).all() and np.isfinite(dvm[0]).all()


def test_bus_impedance_is_the_inverse_admittance():
    feeder = gridrl.load_feeder("ieee33")
    pf = feeder.power_flow()
    m = pf.internal_model()
    cols = ActionMap(feeder, pf).sgen_col
    z = bus_impedance(pf, cols)
    dense = np.linalg.inv(m.ybus[:m.n_pq][:, :m.n_pq].toarray())
    rows = m.sgen_row[cols]
    np.testing.assert_allclose(z, dense[np.ix_(rows, rows)], rtol=1e-10, atol=1e-12)
    assert (z.real > 0).all()  # resistances along shared paths


def test_agent_loss_sensitivity_is_the_exact_gradient_at_the_mean_sunny_step():
    """Per agent (its inverters by rating): the forward difference agrees with the exact loss
    gradient at the feeder's mean daytime operating point of its training days; on ieee33
    injecting lowers the losses at every agent, on mv-rural it raises them at most agents (the
    reason a policy trained on the other feeders, where injecting paid, loses there)."""
    from gridrl.grid.sensitivity import agent_loss_sensitivity

    for name, share_positive in (("ieee33", (0.0, 0.0)), ("mv-rural", (0.6, 0.9))):
        feeder = gridrl.load_feeder(name)
        s = agent_loss_sensitivity(feeder)
        assert s.shape == (len(feeder.agents),) and np.isfinite(s).all()
        assert share_positive[0] <= (s > 0).mean() <= share_positive[1]
        prof, pf = feeder.profiles, feeder.power_flow()
        steps = np.concatenate([prof.day_steps(int(d)) for d in feeder.days("train")])
        steps = steps[np.asarray(prof.pv_p_mw[steps]).sum(axis=1) > 0]
        point = [np.asarray(a[steps], dtype=np.float64).mean(axis=0)
                 for a in (prof.load_p_mw, prof.load_q_mvar, prof.sgen_p_mw)]
        res = pf.solve(*point, np.zeros(len(feeder.net.sgen)))
        inv = feeder.inverters
        cols = feeder.net.sgen.index.get_indexer(inv.index)
        _, dloss, ok = InjectionSensitivity(pf, cols, np.arange(pf.n_bus))(res.v[None] if res.v.ndim == 1 else res.v)
        weight = inv["s_max_mva"].to_numpy(float)
        exact = (_per_agent_sum(dloss[0] * weight, inv["agent"].to_numpy(), feeder.agents)
                 / _per_agent_sum(weight, inv["agent"].to_numpy(), feeder.agents))
        np.testing.assert_allclose(s, exact, atol=0.05 * np.abs(exact).max(), rtol=0)


def _per_agent_sum(values, keys, agents):
    out = np.zeros(len(agents))
    np.add.at(out, [list(agents).index(k) for k in keys], values)
    return out
