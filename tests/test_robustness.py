"""The fault and growth suite, like-with-like comparisons and the honest information model:
droop reads its voltage with the comparison's sensor noise, every [env] observation override
reaches trained runs or is refused in one line, and a tiny trained run goes through the suite
(each controller charged with its own worst outage)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

import gridrl
from gridrl.env import EnvConfig, make_env
from gridrl.errors import CheckpointError, GridrlError

DAYS = (2, 7)


def test_droop_reads_its_own_voltage_with_the_observations_noise(feeder):
    """Like with like: with sensor noise droop's curve sees the same erring reading the agents'
    observations carry (so its actions move), while the physics stays exact."""
    ctrl = gridrl.make_controller("droop", feeder, preset="ieee1547-b")
    acts = {}
    for noise in (0.0, 0.01):
        env = make_env(feeder, split="test", num_envs=2, days=list(DAYS), seed=3,
                       config=EnvConfig(start_hour=12.0, episode_hours=1.0, sensor_noise_pu=noise))
        obs = env.reset(days=list(DAYS))
        ctrl.reset()
        a = ctrl.act(obs, env=env)
        own = env.agent_bus_pos
        if noise:
            # the reading droop settled on: true voltage of its settled action plus the sensor error
            v_true = env.peek(a)["vm_pu"][:, own]
            v_read = v_true + env.sensor_noise_pu()[:, own]
            target = torch.as_tensor(ctrl.target(v_read.numpy(), (env.pending()["q_avail_mvar"].numpy()),
                                                 s_max_mva=env.s_max_mva.numpy()))
            torch.testing.assert_close(a, target, atol=2e-3, rtol=0)
            torch.testing.assert_close(obs[:, :, 0].double() - env.state()[:, own].double(),
                                       env.sensor_noise_pu()[:, own], atol=1e-6, rtol=0)
        acts[noise] = a
    assert (acts[0.0] - acts[0.01]).abs().max() > 1e-3


def test_every_env_override_reaches_a_run_or_is_refused(tmp_path):
    from gridrl.marl.run import evaluation_env_config, information_label

    trained = EnvConfig(forecast_steps=1, forecast_noise_rel=0.0, step_minutes=15, observation="previous_step")
    # nothing asked: the run's own observation settings
    got = evaluation_env_config(trained, EnvConfig())
    assert (got.forecast_steps, got.forecast_noise_rel, got.observation) == (1, 0.0, "previous_step")
    # asked: applied to the run too (never silently its training value)
    got = evaluation_env_config(trained, EnvConfig(forecast_noise_rel=0.3, step_minutes=5, sensor_noise_pu=0.01))
    assert (got.forecast_noise_rel, got.step_minutes, got.sensor_noise_pu) == (0.3, 5, 0.01)
    assert information_label(got) == "previous step, sensor noise 0.01 p.u. + oracle forecast (1 step(s), noise 0.3)"
    # what changes the policy's input shape: one line naming the setting
    with pytest.raises(CheckpointError, match=r"^env.forecast_steps = 2: runs/x was trained with forecast_steps = 1"):
        evaluation_env_config(trained, EnvConfig(forecast_steps=2), run="runs/x")
    with pytest.raises(CheckpointError, match=r"^env.zone_layout = 'pool'"):
        evaluation_env_config(trained, EnvConfig(zone_layout="pool"))
    assert information_label(EnvConfig()) == "measured"
    # a run trained with 5-minute steps: its own where no scenario is given; in a comparison left at
    # the default 15 minutes, refused in one line (else it alone would act every 5 minutes)
    five = EnvConfig(step_minutes=5)
    assert evaluation_env_config(five).step_minutes == 5
    assert evaluation_env_config(five, EnvConfig(step_minutes=5)).step_minutes == 5
    assert evaluation_env_config(five, EnvConfig(step_minutes=3)).step_minutes == 3
    with pytest.raises(CheckpointError, match=r"^env.step_minutes: runs/x was trained with step_minutes = 5 and would "
                                              r"act with it where the other controllers use 15; set \[env\] "
                                              r"step_minutes = 5"):
        evaluation_env_config(five, EnvConfig(), run="runs/x")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from gridrl.config import from_dict
    from gridrl.marl.train import resolve_train_config, train

    out = tmp_path_factory.mktemp("robust") / "dppo-tiny"
    cfg = resolve_train_config({"algo": "dppo", "steps": 64, "num_envs": 2, "validation_days": 0, "compare": [],
                                "env": {"episode_hours": 1.0}, "learner": {"hidden": 16, "message_dim": 8}},
                               source="tiny")
    train("ieee33", cfg, out=out, progress=False, log=lambda m: None)
    return out


def test_the_suite_runs_every_condition_and_charges_each_controller_its_own_worst_outage(tiny_run, tmp_path):
    from gridrl.robustness import LearnerGroup, RobustnessConfig, run_robustness

    cfg = RobustnessConfig(feeder="ieee33", baselines=("none", "droop"), days=DAYS[:1],
                           learners=(LearnerGroup(label="dppo", runs=(str(tiny_run),)),
                                     LearnerGroup(label="dppo-raw", runs=(str(tiny_run),),
                                                  envelope={"mechanism": "off", "handover_z": 0})),
                           conditions=("nominal", "noise-0.01", "worst-outage"))
    tidy = run_robustness(cfg, out=tmp_path / "suite")
    assert set(tidy["condition"]) == set(cfg.conditions)
    assert set(tidy["group"]) == {"none", "droop-ieee1547-b", "dppo", "dppo-raw"}
    assert len(tidy) == 3 * 4
    r = tidy.set_index(["condition", "group"])
    # droop under noise is not droop without (it reads its own voltage with the noise)
    assert r.loc[("noise-0.01", "droop-ieee1547-b"), "energy_loss_mwh"] != r.loc[("nominal", "droop-ieee1547-b"),
                                                                                 "energy_loss_mwh"]
    # no control does not care about sensors or messages
    assert r.loc[("noise-0.01", "none"), "energy_loss_mwh"] == r.loc[("nominal", "none"), "energy_loss_mwh"]
    # the policy acted through the envelope, the ablation did not
    assert "measured" in r.loc[("nominal", "dppo"), "information"] and "envelope clamp" in r.loc[("nominal", "dppo"),
                                                                                                   "information"]
    assert "no envelope" in r.loc[("nominal", "dppo-raw"), "information"]
    assert r.loc[("nominal", "dppo-raw"), "envelope_pct"] == 0
    # each controller's own worst agent: the lowest rate, then the highest loss, over every agent
    feeder = gridrl.load_feeder("ieee33")
    per_agent = []
    for agent in feeder.agents:
        d = pd.read_parquet(tmp_path / "suite" / "worst-outage" / agent / "days.parquet")
        g = d.groupby("controller").agg(rate=("controllable_rate", "mean"), loss=("energy_loss_mwh", "sum"))
        per_agent.append(g.assign(agent=agent))
    every = pd.concat(per_agent).reset_index()
    worst = tidy[tidy["condition"] == "worst-outage"].set_index("controller")
    for ctrl, g in every.groupby("controller"):
        pick = g.sort_values(["rate", "loss"], ascending=[True, False]).iloc[0]
        assert worst.loc[ctrl, "agent"] == pick["agent"]
        assert worst.loc[ctrl, "controllable_rate"] == pytest.approx(pick["rate"])
    text = (tmp_path / "suite" / "summary.md").read_text()
    assert "| sensor noise 0.01 p.u. |" in text and "worst single-inverter outage" in text
    assert "What each controller knew" in text
    # a second run resumes: nothing is evaluated again, the same table comes back
    again = run_robustness(cfg, out=tmp_path / "suite")
    pd.testing.assert_frame_equal(again, tidy)


def test_suite_config_problems_are_one_line(tmp_path):
    from gridrl.robustness import RobustnessError, load_config

    path = tmp_path / "bad.toml"
    path.write_text('feeder = "ieee33"\nconditions = ["nominal", "pv-2.0"]\n')
    with pytest.raises(GridrlError, match="unknown 'pv-2.0'"):
        load_config(path)
    with pytest.raises(RobustnessError, match="has no runs"):
        from gridrl.robustness import LearnerGroup, RobustnessConfig

        RobustnessConfig(feeder="ieee33", learners=(LearnerGroup(label="x", runs=()),))
    with pytest.raises(RobustnessError, match="split must be test or val, got 'train'"):
        RobustnessConfig(feeder="ieee33", split="train")


def test_summary_gives_the_mean_of_a_groups_runs_with_their_spread():
    from gridrl.robustness import summary_markdown

    rows = [dict(condition="nominal", description="nominal", group="dmpo", controller=f"dmpo/s{i}", agent="",
                 controllable_rate=r, energy_loss_mwh=l, handover_pct=0.004, envelope_pct=1.0, information="measured")
            for i, (r, l) in enumerate([(0.97, 40.0), (0.98, 42.0), (0.99, 44.0)])]
    rows.append(dict(rows[0], group="droop", controller="droop", handover_pct=float("nan"), information="own"))
    text = summary_markdown(pd.DataFrame(rows), feeder="ieee33", split="val")
    assert "| nominal | 0.9800 ±0.0100 / 42.00 ±2.00 (0.004 %) | 0.9700 / 40.00 |" in text
    assert "ieee33, validation days" in text


def test_cli_refuses_an_unknown_condition_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from gridrl.cli import app

    cfg = tmp_path / "suite.toml"
    cfg.write_text('feeder = "ieee33"\nbaselines = ["none"]\ndays = [2]\n')
    res = CliRunner().invoke(app, ["robustness", "--config", str(cfg), "--conditions", "nominal,pv-3",
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    lines = [x for x in res.output.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "unknown 'pv-3'" in lines[0]
    assert not (tmp_path / "o").exists()


def test_a_curve_file_keeps_its_fitted_curves_in_every_condition():
    """droop:curves=FILE (the curves distilled by ``gridrl export``) is deployed like droop:tuned:
    its fit describes the nominal training days, so the suite drops it instead of refusing the
    curves under a fault (an outage changes the scenario the fit names)."""
    from gridrl.compare import parse_controllers
    from gridrl.robustness import _baseline_specs

    path = "reports/export/curves/ieee33-dmpo-published-threads1-seed0.json"
    (given,) = parse_controllers(f"droop:curves={path}")
    assert "fit" in given.curve  # the file names what its curves were fitted on
    feeder = gridrl.load_feeder("ieee33")
    (spec,) = _baseline_specs(feeder, [f"droop:curves={path}"])
    assert "fit" not in spec.curve
    assert spec.curve["agents"] == given.curve["agents"] and spec.label == given.label


def test_the_tuned_droop_is_fitted_under_the_suites_base_scenario(monkeypatch):
    """With ``env = { q_at_night = true }`` the suite's droop:tuned is the curve fitted with
    night-time reactive power (what `gridrl compare` with the same [env] deploys), not the
    feeder default's."""
    from gridrl.control import tuning
    from gridrl.control.droop import DroopCurve
    from gridrl.control.fitted import scenario_of
    from gridrl.env import EnvConfig
    from gridrl.robustness import _baseline_specs

    seen = []

    def fake(feeder, *, env_config=None, **_kw):
        seen.append(scenario_of(feeder, env_config)["q_at_night"])
        return tuning.FittedCurve(curve=DroopCurve(v_pu=[0.95, 1.05], q=[0.4, -0.4], reference="s_max"), fit={})

    monkeypatch.setattr(tuning, "tuned_curve", fake)
    feeder = gridrl.load_feeder("ieee33")
    _baseline_specs(feeder, ["droop:tuned"], EnvConfig(q_at_night=True))
    _baseline_specs(feeder, ["droop:tuned"])
    assert seen == [True, False]


def test_custom_conditions_load_from_toml_and_bad_ones_are_one_line(tmp_path):
    from gridrl.robustness import RobustnessError, load_config

    path = tmp_path / "suite.toml"
    path.write_text('feeder = "ieee33"\nconditions = ["nominal", "light-load-much-pv", "pair"]\n'
                    '[[custom_conditions]]\nname = "light-load-much-pv"\ndescription = "loads ×0.6, PV ×1.5"\n'
                    'env = { load_scale = 0.6, pv_scale = 1.5 }\n'
                    '[[custom_conditions]]\nname = "pair"\noutage = "worst-pair"\nenv = { pv_scale = 2.0 }\n')
    cfg = load_config(path)
    assert [c.name for c in cfg.chosen] == ["nominal", "light-load-much-pv", "pair"]
    assert cfg.chosen[1].env == {"load_scale": 0.6, "pv_scale": 1.5} and cfg.chosen[1].label == "loads ×0.6, PV ×1.5"
    assert cfg.chosen[2].label == "pair" and cfg.chosen[2].outage == "worst-pair"
    # without a list: every built-in condition, then the custom ones
    path.write_text('feeder = "ieee33"\n[[custom_conditions]]\nname = "noise-0.02"\nenv = { sensor_noise_pu = 0.02 }\n')
    names = [c.name for c in load_config(path).chosen]
    assert names[-1] == "noise-0.02" and "worst-outage-pair" in names and names[0] == "nominal"
    bad = {'name = "x"\nenv = { sensor_nosie_pu = 0.02 }': "sensor_nosie_pu: unknown key",
           'name = "x"\nenv = { message_dropout = 1.5 }': "message_dropout is a probability",
           'name = "pv-1.5"\nenv = { pv_scale = 1.5 }': "'pv-1.5' named twice or like a built-in",
           'name = "x"\noutage = "worst"\nenv = { outage_agents = ["bus18"] }': "remove env.outage_agents",
           'name = "../x"': "must be letters, digits",
           'name = "x"\noutage = "all"': "outage"}
    for body, message in bad.items():
        path.write_text(f'feeder = "ieee33"\n[[custom_conditions]]\n{body}\n')
        with pytest.raises(GridrlError, match=message) as info:
            load_config(path)
        assert "\n" not in str(info.value)
    with pytest.raises(RobustnessError, match="unknown 'noise-0.02'"):
        from gridrl.robustness import RobustnessConfig

        RobustnessConfig(feeder="ieee33", conditions=("noise-0.02",))


def test_a_custom_condition_naming_a_missing_agent_is_refused_before_anything_runs(tmp_path):
    from gridrl.robustness import Condition, RobustnessConfig, RobustnessError, run_robustness

    cfg = RobustnessConfig(feeder="ieee33", baselines=("none",), days=DAYS[:1],
                           custom_conditions=(Condition(name="two-out", env={"outage_agents": ("bus18", "bus99")}),))
    with pytest.raises(RobustnessError, match=r"condition 'two-out': env.outage_agents: .*bus99"):
        run_robustness(cfg, out=tmp_path / "o")
    assert not (tmp_path / "o" / "nominal").exists()


def test_the_worst_pair_tries_every_pair_of_each_controllers_two_worst_agents(monkeypatch, tmp_path):
    """Each controller is charged with its own worst pair, over the pairs of the agents that are
    one of some controller's two worst single outages; the single sweep without an [env] change is
    worst-outage's own folder, with one a folder of the condition's."""
    import itertools
    from pathlib import Path

    import gridrl.compare as compare_pkg
    from gridrl.robustness import Condition, RobustnessConfig, run_robustness

    feeder = gridrl.load_feeder("ieee33")
    agents = list(feeder.agents)
    # each controller's harm per agent out: droop suffers most from agents[0] and [1], none from [2] and [3]
    harm = {"none": {agents[2]: 0.05, agents[3]: 0.04, agents[0]: 0.01},
            "droop-ieee1547-b": {agents[0]: 0.06, agents[1]: 0.05, agents[2]: 0.02}}
    calls = []

    class Result:
        def __init__(self, days):
            self.days = days

    def fake_compare(cfg, *, out, progress):
        out_agents, scale = cfg.env.outage_agents, cfg.env.pv_scale
        calls.append((Path(out).relative_to(tmp_path).as_posix(), out_agents, scale))
        rows = []
        for spec in cfg.controllers:
            h = harm[spec.key]
            # a pair hurts more than its parts where both are in a controller's top harm
            rate = 0.99 - sum(h.get(a, 0.0) for a in out_agents) - 0.03 * (out_agents == (agents[2], agents[3]))
            rows.append(dict(controller=spec.key, controllable_rate=rate, steps=96, energy_loss_mwh=10.0 * scale,
                             seed=0, handover_share=0.0, envelope_share=0.0, information="x"))
        return Result(pd.DataFrame(rows))

    monkeypatch.setattr(compare_pkg, "run_compare", fake_compare)
    cfg = RobustnessConfig(feeder="ieee33", baselines=("none", "droop"), days=DAYS[:1],
                           conditions=("worst-outage-pair", "pair-pv-2"),
                           custom_conditions=(Condition(name="pair-pv-2", outage="worst-pair", env={"pv_scale": 2.0}),))
    tidy = run_robustness(cfg, out=tmp_path)
    four = [agents[0], agents[1], agents[2], agents[3]]
    pairs = [c for c in calls if len(c[1]) == 2]
    expected = set(itertools.combinations(four, 2))
    assert {c[1] for c in pairs if c[2] == 1.0} == expected and {c[1] for c in pairs if c[2] == 2.0} == expected
    singles = [c for c in calls if len(c[1]) == 1]
    assert {c[0] for c in singles if c[2] == 1.0} == {f"worst-outage/{a}" for a in agents}
    assert {c[0] for c in singles if c[2] == 2.0} == {f"pair-pv-2/single/{a}" for a in agents}
    assert f"worst-outage-pair/{agents[2]}+{agents[3]}" in {c[0] for c in pairs}
    got = tidy.set_index(["condition", "controller"])["agent"]
    assert got[("worst-outage-pair", "none")] == f"{agents[2]}+{agents[3]}"
    assert got[("worst-outage-pair", "droop-ieee1547-b")] == f"{agents[0]}+{agents[1]}"
    assert tidy.set_index(["condition", "controller"]).loc[("pair-pv-2", "none"), "energy_loss_mwh"] == 20.0
    assert "| worst two inverters out together |" in (tmp_path / "summary.md").read_text()


def test_a_run_hands_over_on_inverters_rated_beyond_its_training(tiny_run):
    """PV ×2 (inverters rated for it) lies beyond the training's PV scale range: every agent whose
    PV produces acts as 1547-B; PV ×1.5 lies within it and the policy acts as without the rule."""
    from gridrl.marl.run import deployed, open_run

    run = open_run(tiny_run)
    assert run.env_config.pv_scale_range is not None and run.env_config.pv_scale_range[1] < 1.9
    feeder = gridrl.load_feeder("ieee33")
    handed, actions, info = {}, {}, {}
    for scale in (1.5, 2.0):
        for tol in (0.05, None):
            env = make_env(feeder, split="test", num_envs=2, days=list(DAYS), seed=0,
                           config=EnvConfig(start_hour=12.0, episode_hours=1.0, pv_scale=scale))
            obs = env.reset(days=list(DAYS))
            ctrl = deployed(run.policy(feeder=feeder), feeder, env.config, trained=run.env_config,
                            envelope={"rating_handover": tol is not None, "rating_tolerance": tol or 0.0})
            actions[scale, tol] = ctrl.act(obs)
            handed[scale, tol] = ctrl.last_info["handover"]
            info[scale, tol] = ctrl.information
            producing = (obs[..., ctrl.own_columns[1]] > 0).sum(1).numpy()
    assert (handed[2.0, 0.05] == producing).all() and producing.sum() > 0
    assert handed[2.0, None].sum() < producing.sum()
    assert torch.equal(actions[1.5, 0.05], actions[1.5, None])
    assert "or a rating beyond the trained ±5 %" in info[2.0, 0.05] and "rating" not in info[2.0, None]


def test_the_hand_over_settles_as_droop_on_the_intervals_physics(tiny_run):
    """Handed over (PV ×2, beyond the trained ratings), the agents act as the 1547-B droop
    controller does: on the fixed point of their own voltage during the interval, not on the
    voltage measured at its start (a late loop that swings with large inverters)."""
    from gridrl.env.envelope import droop_b_action
    from gridrl.marl.run import deployed, open_run

    run = open_run(tiny_run)
    feeder = gridrl.load_feeder("ieee33")
    env = make_env(feeder, split="test", num_envs=2, days=list(DAYS), seed=0,
                   config=EnvConfig(start_hour=11.0, episode_hours=1.0, pv_scale=2.0, sensor_noise_pu=0.003))
    obs = env.reset(days=list(DAYS))
    ctrl = deployed(run.policy(feeder=feeder), feeder, env.config, trained=run.env_config)
    late = deployed(run.policy(feeder=feeder), feeder, env.config, trained=run.env_config,
                    envelope={"handover_settle": False})
    a, a_late = ctrl.act(obs, env=env), late.act(obs, env=env)
    handed = torch.as_tensor(ctrl.last_info["handover"]).sum()
    assert handed > 0
    x = obs.double()
    v, p, qa = ctrl.own_measurements(x)
    on = (p > 0) & (qa > 0)
    # settled: the curve at its own voltage (read with the sensor's error) under the actions sent
    v_after = env.peek(a.float())["vm_own_pu"].double() + env.sensor_noise_pu()[:, env.agent_bus_pos].double()
    torch.testing.assert_close(a[on], droop_b_action(v_after, p, qa)[on], atol=2e-3, rtol=0)
    # the late curve is the measured voltage's, and it is not at the fixed point
    torch.testing.assert_close(a_late[on], droop_b_action(v, p, qa)[on])
    assert (a_late[on] - a[on]).abs().max() > 0.02
    # every agent handed over: what the droop controller settles on
    droop = gridrl.make_controller("droop", feeder, preset="ieee1547-b")
    torch.testing.assert_close(a[on], droop.act(obs, env=env)[on], atol=5e-3, rtol=0)
    assert "to 1547-B settled" in ctrl.information and "at the measured voltage" in late.information
