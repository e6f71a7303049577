"""Batched power flow: agreement with pandapower, power balance, robustness, devices."""

from __future__ import annotations

import numpy as np
import pytest

import gridrl
from gridrl.grid.powerflow import BatchedPowerFlow, PowerFlowOptions, reference_solve

V_TOL_PU = 1e-6
LOSS_TOL_MW = 1e-6
LOSS_TOL_REL = 1e-6

_NETS: dict = {}
_SOLVERS: dict = {}


def _net(name):
    if name not in _NETS:
        _NETS[name] = gridrl.load_feeder(name).net
    return _NETS[name]


def _solver(name) -> BatchedPowerFlow:
    if name not in _SOLVERS:
        _SOLVERS[name] = BatchedPowerFlow(_net(name))
    return _SOLVERS[name]


def _scenarios(net, batch, seed=0):
    """Loads 0–1.5× nominal, PV 0–peak, q anywhere within the inverter's apparent-power limit."""
    rng = np.random.default_rng(seed)
    load_p = (net.load.p_mw * net.load.scaling).to_numpy()
    load_q = (net.load.q_mvar * net.load.scaling).to_numpy()
    factor = rng.uniform(0.0, 1.5, (batch, len(load_p)))
    peak = (net.sgen.p_mw * net.sgen.scaling).to_numpy()
    sgen_p = rng.uniform(0.0, 1.0, (batch, len(peak))) * peak
    q_max = np.sqrt(np.maximum((1.2 * peak) ** 2 - sgen_p ** 2, 0.0))
    sgen_q = rng.uniform(-1.0, 1.0, sgen_p.shape) * q_max
    return factor * load_p, factor * load_q, sgen_p, sgen_q


def _assert_matches_reference(net, res, ref):
    assert ref.converged.all()
    assert res.converged.all()
    assert np.array_equal(np.isnan(res.vm_pu), np.isnan(ref.vm_pu)), "dead buses differ from pandapower"
    dv = np.nanmax(np.abs(res.v - ref.v))
    assert dv <= V_TOL_PU, f"max |dV| {dv:.3g} p.u."
    assert np.nanmax(np.abs(res.vm_pu - ref.vm_pu)) <= V_TOL_PU
    dloss = np.abs(res.loss_mw - ref.loss_mw)
    assert (dloss <= LOSS_TOL_MW + LOSS_TOL_REL * np.abs(ref.loss_mw)).all(), f"max |dloss| {dloss.max():.3g} MW"
    assert np.abs(res.p_slack_mw - ref.p_slack_mw).max() <= 1e-6
    assert np.abs(res.q_slack_mvar - ref.q_slack_mvar).max() <= 1e-6


def _balance(pf, res, lp, gp):
    """ext_grid injection − (loads − sgens) − losses; zero on feeders without shunts."""
    live_load = pf._load_row >= 0
    live_sgen = pf._sgen_row >= 0
    return res.p_slack_mw - lp[:, live_load].sum(axis=1) + gp[:, live_sgen].sum(axis=1) - res.loss_mw


# ---------------------------------------------------------------------------------------------
# agreement with pandapower
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ieee33", "ieee69", "ieee141", "mv-rural", "mv-urban"])
def test_agrees_with_pandapower(name):
    net = _net(name)
    pf = _solver(name)
    lp, lq, gp, gq = _scenarios(net, 64, seed=1)
    res = pf.solve(lp, lq, gp, gq)
    assert res.vm_pu.shape == (64, len(net.bus)) and res.loss_mw.shape == (64,)
    assert res.converged.all()
    k = [0, 17, 63]
    ref = reference_solve(net, lp[k], lq[k], gp[k], gq[k])
    _assert_matches_reference(net, _take(res, k), ref)
    assert np.abs(_balance(pf, res, lp, gp)).max() <= 1e-8


@pytest.mark.slow
def test_agrees_with_pandapower_mvlv_rural():
    net = _net("mvlv-rural")
    pf = _solver("mvlv-rural")
    lp, lq, gp, gq = _scenarios(net, 8, seed=2)
    res = pf.solve(lp, lq, gp, gq)
    ref = reference_solve(net, lp[:2], lq[:2], gp[:2], gq[:2])
    _assert_matches_reference(net, _take(res, [0, 1]), ref)
    assert np.abs(_balance(pf, res, lp, gp)).max() <= 1e-8


def test_nominal_case_matches_published_ieee33():
    net = _net("ieee33")
    pf = _solver("ieee33")
    res = pf.solve(net.load.p_mw.to_numpy(), net.load.q_mvar.to_numpy(),
                   np.zeros(len(net.sgen)), np.zeros(len(net.sgen)))
    assert res.vm_pu.shape == (1, 33)
    assert res.loss_mw[0] == pytest.approx(0.2027, abs=5e-4)
    assert np.nanmin(res.vm_pu) == pytest.approx(0.9131, abs=5e-4)


def _take(res, k):
    return type(res)(**{f: getattr(res, f)[k] for f in res.__dataclass_fields__})


# ---------------------------------------------------------------------------------------------
# robustness
# ---------------------------------------------------------------------------------------------


def test_stressed_scenario_flagged_rest_solved():
    net = _net("ieee33")
    pf = _solver("ieee33")
    lp, lq, gp, gq = _scenarios(net, 6, seed=3)
    lp[2] = 4.0 * net.load.p_mw.to_numpy()
    lq[2] = 4.0 * net.load.q_mvar.to_numpy()
    gp[2] = 0.0
    res = pf.solve(lp, lq, gp, gq)
    assert res.converged.tolist() == [True, True, False, True, True, True]
    assert (res.iterations[2] <= pf.options.max_iter + pf.options.newton_max_iter)
    ref = reference_solve(net, lp[[2, 4]], lq[[2, 4]], gp[[2, 4]], gq[[2, 4]])
    assert ref.converged.tolist() == [False, True]  # pandapower cannot solve it either
    assert np.nanmax(np.abs(res.v[4] - ref.v[1])) <= V_TOL_PU
    # the other scenarios are exactly what they are without the stressed one in the batch
    alone = pf.solve(lp[[4]], lq[[4]], gp[[4]], gq[[4]])
    assert np.array_equal(alone.v[0], res.v[4])


def test_newton_fallback_rescues_what_the_fixed_point_gives_up():
    net = _net("ieee141")
    strict = BatchedPowerFlow(net, options=PowerFlowOptions(max_iter=3, fallback=True))
    lp, lq, gp, gq = _scenarios(net, 4, seed=4)
    res = strict.solve(lp, lq, gp, gq)
    assert res.converged.all()
    assert (res.iterations > 3).all()
    plain = _solver("ieee141").solve(lp, lq, gp, gq)
    assert np.abs(res.v - plain.v).max() <= 1e-8
    assert np.abs(res.loss_mw - plain.loss_mw).max() <= 1e-7
    no_fallback = BatchedPowerFlow(net, options=PowerFlowOptions(max_iter=3, fallback=False))
    assert not no_fallback.solve(lp, lq, gp, gq).converged.any()


@pytest.mark.parametrize("arg", ["load_p_mw", "load_q_mvar", "sgen_p_mw", "sgen_q_mvar"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input_names_the_argument(arg, bad):
    net = _net("ieee33")
    pf = _solver("ieee33")
    args = dict(zip(["load_p_mw", "load_q_mvar", "sgen_p_mw", "sgen_q_mvar"], _scenarios(net, 3)))
    args[arg][1, 0] = bad
    with pytest.raises(ValueError, match=arg):
        pf.solve(**args)


def test_wrong_shape_names_the_argument():
    pf = _solver("ieee33")
    lp, lq, gp, gq = _scenarios(_net("ieee33"), 2)
    with pytest.raises(ValueError, match="sgen_q_mvar"):
        pf.solve(lp, lq, gp, gq[:, :-1])
    with pytest.raises(ValueError, match="batch sizes differ"):
        pf.solve(lp, lq, gp[:1], gq[:1].repeat(3, axis=0))


def test_one_dimensional_inputs_broadcast():
    net = _net("ieee33")
    pf = _solver("ieee33")
    lp, lq, gp, gq = _scenarios(net, 3)
    res = pf.solve(lp[0], lq[0], gp, gq)
    full = pf.solve(np.repeat(lp[:1], 3, 0), np.repeat(lq[:1], 3, 0), gp, gq)
    assert np.array_equal(res.v, full.v)


# ---------------------------------------------------------------------------------------------
# warm start, elements, topology
# ---------------------------------------------------------------------------------------------


def test_warm_start_reduces_iterations():
    net = _net("ieee141")
    pf = _solver("ieee141")
    lp, lq, gp, gq = _scenarios(net, 32, seed=5)
    cold = pf.solve(lp, lq, gp, gq)
    # the next time step: everything moves a little
    nxt = [x * 1.01 for x in (lp, lq, gp, gq)]
    warm = pf.solve(*nxt, v_init=cold.v)
    fresh = pf.solve(*nxt)
    assert warm.converged.all()
    assert warm.iterations.mean() < fresh.iterations.mean() - 1
    assert np.abs(warm.v - fresh.v).max() <= 1e-8
    # from the exact solution one iteration confirms it
    again = pf.solve(lp, lq, gp, gq, v_init=cold.v)
    assert again.iterations.max() <= 2


def test_out_of_service_elements_are_ignored():
    import copy

    net = copy.deepcopy(_net("ieee33"))
    net.load.loc[net.load.index[5], "in_service"] = False
    net.sgen.loc[net.sgen.index[1], "in_service"] = False
    pf = BatchedPowerFlow(net)
    lp, lq, gp, gq = _scenarios(net, 4, seed=6)
    res = pf.solve(lp, lq, gp, gq)
    lp2, gp2 = lp.copy(), gp.copy()
    lp2[:, 5] = 1e3
    gp2[:, 1] = -7.0
    assert np.array_equal(pf.solve(lp2, lq, gp2, gq).v, res.v)
    ref = reference_solve(net, lp[:2], lq[:2], gp[:2], gq[:2])
    _assert_matches_reference(net, _take(res, [0, 1]), ref)


def test_taps_and_switches_as_in_pandapower():
    import copy

    net = copy.deepcopy(_net("mv-rural"))
    net.trafo["tap_pos"] = net.trafo["tap_pos"].fillna(0) + 3
    closed_line_switches = net.switch.index[(net.switch.et == "l") & net.switch.closed]
    net.switch.loc[closed_line_switches[-1], "closed"] = False  # cut a branch: its far end may go dead
    pf = BatchedPowerFlow(net)
    base = _solver("mv-rural")
    lp, lq, gp, gq = _scenarios(net, 3, seed=7)
    res = pf.solve(lp, lq, gp, gq)
    ref = reference_solve(net, lp, lq, gp, gq)
    _assert_matches_reference(net, res, ref)
    before = base.solve(lp, lq, gp, gq)
    assert np.nanmax(np.abs(res.vm_pu - before.vm_pu)) > 1e-3  # the taps did something


def test_unsupported_elements_raise_at_compile_time():
    import copy

    import pandapower as pp

    net = copy.deepcopy(_net("ieee33"))
    pp.create_gen(net, bus=10, p_mw=0.1, vm_pu=1.0)
    with pytest.raises(NotImplementedError, match="gen"):
        BatchedPowerFlow(net)
    net = copy.deepcopy(_net("ieee33"))
    net.load.loc[net.load.index[0], "const_z_p_percent"] = 50.0
    with pytest.raises(NotImplementedError, match="const"):
        BatchedPowerFlow(net)


def test_compile_leaves_the_net_untouched():
    import copy

    net = copy.deepcopy(_net("ieee33"))
    before = net.load.copy()
    BatchedPowerFlow(net)
    assert net.load.equals(before)
    assert len(net.res_bus) == len(_net("ieee33").res_bus)


# ---------------------------------------------------------------------------------------------
# torch
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["kernel", "dense"])
def test_torch_matches_numpy(method):
    torch = pytest.importorskip("torch")
    net = _net("ieee69")
    pf = BatchedPowerFlow(net, options=PowerFlowOptions(torch_method=method))
    lp, lq, gp, gq = _scenarios(net, 16, seed=8)
    lp[3] *= 4.0 / 1.5  # heavily loaded: more iterations, still solvable
    res = pf.solve(lp, lq, gp, gq)
    tres = pf.solve(*(torch.from_numpy(x) for x in (lp, lq, gp, gq)))
    assert isinstance(tres.vm_pu, torch.Tensor) and tres.vm_pu.dtype == torch.float64
    assert tres.v.dtype == torch.complex128 and tres.converged.dtype == torch.bool
    for field in ("vm_pu", "va_degree", "loss_mw", "p_slack_mw", "q_slack_mvar"):
        a, b = getattr(res, field), getattr(tres, field).numpy()
        assert np.array_equal(np.isnan(a), np.isnan(b))
        assert np.nanmax(np.abs(a - b)) <= 1e-9, field
    assert np.array_equal(res.converged, tres.converged.numpy())
    warm = pf.solve(*(torch.from_numpy(x) for x in (lp, lq, gp, gq)), v_init=tres.v)
    assert int(warm.iterations.max()) <= 2


def test_torch_dense_flags_divergence_and_rejects_nan():
    torch = pytest.importorskip("torch")
    net = _net("ieee33")
    pf = BatchedPowerFlow(net, options=PowerFlowOptions(torch_method="dense", newton_max_iter=5))
    lp, lq, gp, gq = (torch.from_numpy(x) for x in _scenarios(net, 3, seed=9))
    lp[1] = 4.0 * torch.from_numpy(net.load.p_mw.to_numpy())
    lq[1] = 4.0 * torch.from_numpy(net.load.q_mvar.to_numpy())
    gp[1] = 0.0
    res = pf.solve(lp, lq, gp, gq)
    assert res.converged.tolist() == [True, False, True]
    gq[0, 0] = float("nan")
    with pytest.raises(ValueError, match="sgen_q_mvar"):
        pf.solve(lp, lq, gp, gq)
