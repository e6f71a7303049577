"""droop:tuned: the curve family, batched scoring, the fit (training days only), the cache that
never serves a stale curve, curve files, and one clear line for every user mistake."""

from __future__ import annotations

import copy
import dataclasses
import tomllib

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import gridrl
from gridrl.cli import app
from gridrl.compare import summarize
from gridrl.control import CurveError, make_controller
from gridrl.control import tuning
from gridrl.control.curvefile import curve_mapping, read_curve_file, write_curve_file
from gridrl.control.droop import PRESETS, DroopCurve, curve_fraction, curve_table
from gridrl.control.tuning import (FittedCurve, TuneConfig, check_fitted_for, curve_from_unit, score_curves,
                                   scenario_of, tune_key, tuned_curve)
from gridrl.env import EnvConfig, make_env
from gridrl.env.core import VoltageControlEnv
from gridrl.evaluate import evaluate

runner = CliRunner()
SMALL = ["--budget", "6", "--search-days", "3", "--select-days", "3"]


def _one_line_error(result, text: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], result.stderr
    assert "Traceback" not in result.output


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """Tuned curves cached in a fresh folder (the feeder cache stays where it is)."""
    monkeypatch.setattr(tuning, "cache_path", lambda feeder, key: tmp_path / "tuned" / f"{feeder.name}-{key}.toml")
    return tmp_path / "tuned"


# --------------------------------------------------------------------------------------------
# the family of curves and batched scoring
# --------------------------------------------------------------------------------------------


def test_curve_tables_evaluate_every_curve_at_once():
    curves = [*PRESETS.values(), DroopCurve(v_pu=(0.95, 1.0), q=(0.1, -0.2))]
    v_tab, q_tab = curve_table(curves)
    v = np.linspace(0.8, 1.2, 401)
    got = curve_fraction(v[:, None], v_tab[None], q_tab[None])          # [401, C]
    for i, c in enumerate(curves):
        np.testing.assert_allclose(got[:, i], np.interp(v, c.v_pu, c.q), atol=1e-12)


def test_family_holds_the_standard_curves_and_keeps_ieee1547_ranges():
    cfg = TuneConfig()
    for name, params in tuning._SEEDS.items():
        assert curve_from_unit(tuning._unit(params, cfg), cfg) == PRESETS[name]
    rng = np.random.default_rng(0)
    for u in rng.random((300, tuning.N_PARAMS)):
        p = tuning._params(u, cfg)
        c = curve_from_unit(u, cfg)
        assert 0.95 - 1e-9 <= p["v_ref_pu"] <= 1.05 + 1e-9 and 0 <= p["half_deadband_pu"] <= 0.03 + 1e-9
        assert min(p["ramp_low_pu"], p["ramp_high_pu"]) >= 0.02 - 1e-9
        assert c.v_pu[0] >= p["v_ref_pu"] - 0.18 - 1e-6 and c.v_pu[-1] <= p["v_ref_pu"] + 0.18 + 1e-6
        assert c.reference == "s_max" and max(abs(x) for x in c.q) <= 1.0
        np.testing.assert_allclose(tuning._unit(p, cfg), u, atol=1e-6)  # the map is one to one


def test_family_stays_inside_category_b_and_the_inverters_reactive_rating():
    """Every curve the fitter can reach: Q1 injects, Q4 absorbs, |Q| within 44 % of s_max (and
    within the headroom at rated power), the V points inside Category B's adjustable ranges."""
    rng = np.random.default_rng(1)
    corners = np.array([[a, b, c, d, e, f, g] for a in (0, 1) for b in (0, 1) for c in (0, 0.5, 1) for d in (0, 1)
                        for e in (0, 1) for f in (0, 1) for g in (0, 1)], dtype=float)
    for cfg in (TuneConfig(), TuneConfig(q_limit=0.3)):
        for u in np.vstack([rng.random((500, tuning.N_PARAMS)), corners]):
            c = curve_from_unit(u, cfg)
            v, q = (c.v_pu[0], c.v_pu[1], c.v_pu[1], c.v_pu[2]) if len(c.v_pu) == 3 else c.v_pu, \
                (c.q[0], c.q[1], c.q[1], c.q[2]) if len(c.q) == 3 else c.q
            v_ref = (v[1] + v[2]) / 2
            assert q[0] >= 0.0 and q[3] <= 0.0 and q[1] == q[2]
            assert q[0] >= q[1] >= q[3]
            assert max(abs(x) for x in q) <= cfg.q_limit + 1e-9
            assert 0.95 - 1e-6 <= v_ref <= 1.05 + 1e-6
            assert v_ref - 0.03 - 1e-6 <= v[1] <= v_ref <= v[2] <= v_ref + 0.03 + 1e-6
            assert v_ref - 0.18 - 1e-6 <= v[0] <= v[1] - 0.02 + 1e-6
            assert v[2] + 0.02 - 1e-6 <= v[3] <= v_ref + 0.18 + 1e-6


def test_a_deadband_below_the_breakpoints_precision_is_none():
    cfg = TuneConfig()
    u = np.full(tuning.N_PARAMS, 0.5)
    v3 = cfg.v_ref_min_pu + u[tuning._V3] * (cfg.v_ref_max_pu + cfg.max_half_deadband_pu - cfg.v_ref_min_pu)
    d_hi = min(2.0 * cfg.max_half_deadband_pu, 2.0 * (v3 - cfg.v_ref_min_pu))
    u[tuning._DEADBAND] = 2e-7 / d_hi  # a deadband of 2e-7 p.u.: V2 and V3 round to the same 1e-6
    c = curve_from_unit(u, cfg)
    assert len(c.v_pu) == 3 and all(a < b for a, b in zip(c.v_pu, c.v_pu[1:]))


@pytest.mark.parametrize("field, value", [("q_limit", 1.0), ("q_limit", 0.45), ("v_ref_min_pu", 0.94),
                                          ("v_ref_max_pu", 1.06), ("max_half_deadband_pu", 0.04),
                                          ("min_ramp_pu", 0.01), ("max_reach_pu", 0.2)])
def test_search_settings_cannot_leave_category_b(field, value):
    with pytest.raises(ValueError, match="inside IEEE 1547-2018 Category B"):
        TuneConfig(**{field: value})


def test_reactive_rating_is_category_b_or_the_headroom_at_rated_power(feeder):
    assert tuning.q_rating(feeder) == pytest.approx(0.44)  # s_max = 1.2 p_peak leaves 0.553
    tight = copy.copy(feeder)
    tight.inverters = feeder.inverters.assign(s_max_mva=1.05 * feeder.inverters.p_peak_mw)
    assert tuning.q_rating(tight) == pytest.approx(np.sqrt(1 - 1 / 1.05 ** 2))
    tight.inverters = feeder.inverters.assign(s_max_mva=feeder.inverters.p_peak_mw)
    with pytest.raises(CurveError, match="no reactive power left at rated active power"):
        tuning.q_rating(tight)


def test_batched_scores_agree_with_evaluate(feeder):
    days = feeder.days("train")[100:102]
    curves = [PRESETS["ieee1547-b"], PRESETS["mapdn"], DroopCurve(v_pu=(0.96, 1.0, 1.035, 1.055), q=(0.2, 0, 0, -1))]
    s = score_curves(feeder, curves, days, max_batch=4)  # two batches: whole curves per batch
    for i, c in enumerate(curves):
        ev = evaluate(feeder, make_controller("droop", feeder, curve=c), split="train", days=days).days
        assert s["energy_loss_mwh"][i] == pytest.approx(ev["energy_loss_mwh"].sum(), rel=1e-9)
        assert s["controllable_rate"][i] == pytest.approx(ev["controllable_rate"].mean(), abs=1e-12)
        assert s["unsettled_steps"][i] == ev["unsettled_steps"].sum()
    assert s["energy_loss_mwh"][1] > s["energy_loss_mwh"][0]  # MAPDN's full-q curve loses more


def test_deb_ranking_puts_band_first():
    scores = {"energy_loss_mwh": np.array([5.0, 4.0, 3.0, 6.0]), "controllable_rate": np.array([1.0, 1.0, 0.99, 1.0]),
              "violation_bus_hours": np.array([0.0, 0.0, 3.0, 0.0]), "unsettled_steps": np.array([0, 0, 0, 2]),
              "diverged_days": np.zeros(4)}
    keys = tuning._rank_keys(scores, cr_ref=1.0)
    # feasible by loss; then the shortfall of controllable rate before unsettled steps
    assert sorted(range(4), key=keys.__getitem__) == [1, 0, 3, 2]


# --------------------------------------------------------------------------------------------
# the fit, end to end through the CLI: training days only, never below IEEE 1547-B
# --------------------------------------------------------------------------------------------


def test_tune_droop_fits_on_training_days_only(feeder, cache, tmp_path, monkeypatch):
    seen: list[int] = []
    reset = VoltageControlEnv.reset

    def recording_reset(self, seed=None, days=None):
        seen.extend(self.day_pool.tolist() if days is None else [int(d) for d in days])
        return reset(self, seed=seed, days=days)

    monkeypatch.setattr(VoltageControlEnv, "reset", recording_reset)
    out = tmp_path / "ieee33.toml"
    r = runner.invoke(app, ["tune-droop", "--feeder", "ieee33", *SMALL, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "droop:tuned on ieee33" in r.stdout and "ieee1547-b" in r.stdout
    train, test = set(feeder.days("train")), set(feeder.days("test"))
    assert seen and set(seen) <= train and not set(seen) & test

    data = read_curve_file(out)
    fit = data["fit"]
    assert fit["feeder"] == "ieee33" and fit["spec_hash"] == feeder.spec.content_hash()
    assert set(fit["search_days"]) <= train and set(fit["train_days"]) <= train
    assert fit["scenario"] == scenario_of(feeder) and fit["key"] == tune_key(feeder, config=TuneConfig(
        budget=6, search_days=3, select_days=3))
    # at least as good as IEEE 1547-B on the training objective (the same ranking, the same days)
    fig = fit["figures"]
    keys = tuning._rank_keys({k: np.array([fig["tuned"][k], fig["ieee1547-b"][k]]) for k in tuning.SCORE_COLUMNS},
                             fit["controllable_rate_required"])
    assert keys[0] <= keys[1]
    # the figures are what an ordinary evaluation of that curve on those days measures
    ev = evaluate(feeder, make_controller("droop", feeder, curve=data), split="train", days=fit["train_days"]).days
    w = dict(zip(fit["train_days"], fit["train_day_weights"]))
    assert fig["tuned"]["energy_loss_mwh"] == pytest.approx((ev["energy_loss_mwh"] * ev["day"].map(w)).sum(), rel=1e-9)

    # the same fit again is served from the cache, and droop:tuned in a comparison uses it too
    monkeypatch.setattr(tuning, "fit_droop", lambda *a, **k: pytest.fail("refitted a cached curve"))
    r = runner.invoke(app, ["tune-droop", "--feeder", "ieee33", *SMALL, "--out", str(tmp_path / "again.toml")])
    assert r.exit_code == 0, r.output
    assert read_curve_file(tmp_path / "again.toml") == data
    cfg = tmp_path / "cmp.toml"
    day = feeder.days("test")[0]
    cfg.write_text(f'feeders = ["ieee33"]\ndays = [{day}]\n[[controllers]]\nname = "droop"\npreset = "ieee1547-b"\n'
                   f'[[controllers]]\nname = "droop"\npreset = "tuned"\n'
                   f'tune = {{ budget = 6, search_days = 3, select_days = 3 }}\n')
    r = runner.invoke(app, ["compare", "--config", str(cfg), "--out", str(tmp_path / "cmp"), "--no-report"])
    assert r.exit_code == 0, r.output
    assert "| gap to tuned droop % |" in (tmp_path / "cmp" / "summary.md").read_text()
    cell = tmp_path / "cmp" / "cells" / "ieee33" / "droop-tuned" / "seed0"
    assert read_curve_file(cell / "curve.toml") == data  # the cell records the curve it ran
    s = pd.read_csv(tmp_path / "cmp" / "summary.csv").set_index("controller")
    assert s.loc["droop-tuned", "loss_gap_to_tuned_pct"] == 0.0


# --------------------------------------------------------------------------------------------
# never a stale curve
# --------------------------------------------------------------------------------------------


def _fake_fit(calls):
    def fit(feeder, *, env_config=None, config=TuneConfig(), options=None, progress=None):
        calls.append(config)
        return FittedCurve(curve=PRESETS["ieee1547-b"],
                           fit={"feeder": feeder.name, "spec_hash": feeder.spec.content_hash(),
                                "key": tune_key(feeder, env_config, config), "scenario": scenario_of(feeder, env_config)})
    return fit


def test_cache_serves_only_the_same_feeder_scenario_and_search(feeder, cache, monkeypatch):
    calls: list = []
    monkeypatch.setattr(tuning, "fit_droop", _fake_fit(calls))
    tuned_curve(feeder)
    tuned_curve(feeder)
    assert len(calls) == 1
    tuned_curve(feeder, env_config=EnvConfig(v_min_pu=0.94, v_max_pu=1.06))   # another band
    tuned_curve(feeder, env_config=EnvConfig(outage_prob=0.1))                # another operating point
    tuned_curve(feeder, config=TuneConfig(budget=10))                         # another search
    assert len(calls) == 4
    tuned_curve(feeder, env_config=EnvConfig(barrier="l1", episode_hours=2.0, start_hour=None))  # not physics
    assert len(calls) == 4
    # a changed feeder spec (e.g. new operating points) changes the key
    other = dataclasses.replace(feeder.spec, pv=dataclasses.replace(feeder.spec.pv, count=feeder.spec.pv.count + 1))
    moved = type("F", (), {"name": feeder.name, "spec": other, "v_min_pu": 0.95, "v_max_pu": 1.05})()
    assert tune_key(moved) != tune_key(feeder)
    # a damaged or foreign cache entry is refitted, never trusted
    path = tuning.cache_path(feeder, tune_key(feeder))
    path.write_text("v_pu = [1.0, 0.9]\nq = [0, 0]\n")
    tuned_curve(feeder)
    assert len(calls) == 5
    text = path.read_text()
    path.write_text(text.replace(tune_key(feeder), "0123456789abcdef"))
    tuned_curve(feeder)
    assert len(calls) == 6


def test_fitted_curve_is_refused_off_its_feeder_or_scenario(feeder, cache, monkeypatch):
    monkeypatch.setattr(tuning, "fit_droop", _fake_fit([]))
    droop = make_controller("droop", feeder, preset="tuned")
    assert droop.name == "droop-tuned" and droop.fit["feeder"] == "ieee33"
    mapping = curve_mapping(droop.curve, droop.fit)
    with pytest.raises(CurveError, match="another scenario \\(v_max_pu, v_min_pu differ\\)"):
        check_fitted_for(feeder, mapping, EnvConfig(v_min_pu=0.9, v_max_pu=1.1))
    with pytest.raises(CurveError, match="spec hash 0000"):
        check_fitted_for(feeder, {**mapping, "fit": {**droop.fit, "spec_hash": "0000"}})
    ieee69 = gridrl.load_feeder("ieee69")
    with pytest.raises(CurveError, match="fitted for feeder 'ieee33', not 'ieee69'"):
        make_controller("droop", ieee69, curve=mapping)
    # acting in an environment of another band is refused at the first step, not silently run
    day = feeder.days("test")[0]
    env = make_env(feeder, split="test", num_envs=1, days=[day], config=EnvConfig(v_min_pu=0.9, v_max_pu=1.1))
    with pytest.raises(CurveError, match="another scenario"):
        droop.act(env.reset(days=[day]), env=env)
    # without its [fit] table a curve is the user's own choice
    plain = make_controller("droop", ieee69, curve={k: v for k, v in mapping.items() if k != "fit"})
    assert plain.fit is None and plain.name == "droop-custom"


# --------------------------------------------------------------------------------------------
# curve files, the summary column, bad input
# --------------------------------------------------------------------------------------------


def test_curve_file_round_trip(tmp_path):
    curve = DroopCurve(v_pu=(0.9267, 1.0019, 1.0409, 1.061), q=(0.231, 0.005, 0.005, -0.81))
    fit = {"feeder": "ieee33", "search_days": [1, 5], "feasible": True, "figures": {"ieee1547-b": {"loss": 1.5}},
           "objective": 'loss "quoted" ünicode', "train_day_weights": None}
    path = write_curve_file(tmp_path / "c.toml", curve, fit)
    text = path.read_text()
    assert "v_pu = [0.9267, 1.0019, 1.0409, 1.061]" in text and text.startswith("# gridrl droop curve")
    data = read_curve_file(path)
    assert DroopCurve(v_pu=data["v_pu"], q=data["q"], reference=data["reference"]) == curve
    assert data["fit"] == {k: v for k, v in fit.items() if v is not None}
    assert tomllib.loads(text)["fit"]["figures"]["ieee1547-b"]["loss"] == 1.5
    nested = tmp_path / "nested.toml"
    nested.write_text('[curve]\nv_pu = [0.95, 1.05]\nq = [0.5, -0.5]\n')
    assert read_curve_file(nested)["q"] == [0.5, -0.5]


def test_summary_gap_to_tuned_droop():
    rows = [dict(feeder="f", controller=c, seed=0, day=1, steps=96, controllable_rate=1.0, share_out_of_band=0.0,
                 mean_abs_dv_pu=0.01, max_abs_dv_pu=0.02, energy_loss_mwh=loss, reactive_energy_mvarh=0.0,
                 violation_bus_hours=0.0, unsettled_steps=0, infeasible_steps=0, diverged_steps=0, communication=0.0)
            for c, loss in (("droop-ieee1547-b", 3.3), ("droop-tuned", 3.0), ("opf", 2.5))]
    s = summarize(pd.DataFrame(rows)).set_index("controller")
    assert s.loc["droop-ieee1547-b", "loss_gap_to_tuned_pct"] == pytest.approx(10.0)
    assert s.loc["opf", "loss_gap_to_tuned_pct"] == pytest.approx(-100 / 6)
    assert s.loc["droop-tuned", "loss_gap_to_opf_pct"] == pytest.approx(20.0)
    no_tuned = summarize(pd.DataFrame(rows[::2]))
    assert no_tuned["loss_gap_to_tuned_pct"].isna().all()


def test_cli_bad_input_is_one_line(tmp_path):
    _one_line_error(runner.invoke(app, ["tune-droop", "--feeder", "ieee14l"]), "unknown feeder 'ieee14l'")
    _one_line_error(runner.invoke(app, ["tune-droop", "--feeder", "ieee33", "--search-days", "3", "--budget", "5",
                                        "--select-days", "0"]), "select_days must be ≥ 1")
    bad = tmp_path / "bad.toml"
    bad.write_text("v_pu = [1.05, 0.95]\nq = [0.5, -0.5]\n")
    _one_line_error(runner.invoke(app, ["evaluate", "--feeder", "ieee33", "--curve", str(bad)]),
                    f"{bad}: droop curve: v_pu breakpoints must increase strictly")
    good = write_curve_file(tmp_path / "c.toml", PRESETS["ieee1547-b"], {"feeder": "ieee33"})
    _one_line_error(runner.invoke(app, ["evaluate", "--feeder", "ieee69", "--curve", str(good), "--days", "2"]),
                    "the curve was fitted for feeder 'ieee33', not 'ieee69'")
    _one_line_error(runner.invoke(app, ["evaluate", "--feeder", "ieee33", "--preset", "tuned", "--curve", str(good)]),
                    "give either --preset or --curve, not both")
    _one_line_error(runner.invoke(app, ["compare", "--feeders", "ieee33", "--controllers", "droop:tunned"]),
                    "known presets: ieee1547-a, ieee1547-b, mapdn, tuned")
    cfg = tmp_path / "cmp.toml"
    cfg.write_text('feeders = ["ieee33"]\n[[controllers]]\nname = "droop"\npreset = "tuned"\ntune = { budgte = 5 }\n'
                   '[[controllers]]\nname = "opf"\ntune = { budget = 5 }\n')
    r = runner.invoke(app, ["compare", "--config", str(cfg), "--out", str(tmp_path / "o")])
    _one_line_error(r, "budgte: unknown key")
    assert "'opf': tune settings apply to droop with preset 'tuned' only" in r.stderr
    assert not (tmp_path / "o").exists()
