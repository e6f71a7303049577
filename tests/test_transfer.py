"""One policy for every feeder (issue 25): feeder-agnostic policies, training on several feeders,
evaluation on feeders never seen, fine-tuning from a transferable run. Tiny budgets: these check
promises (shapes, refusals, what a run records and loads), not quality."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import gridrl
from gridrl.cli import app
from gridrl.config import read_toml
from gridrl.env import EnvConfig, make_env
from gridrl.errors import SpecError
from gridrl.marl.checkpoint import read_checkpoint
from gridrl.marl.dppo import DPPO, DppoConfig
from gridrl.marl.graph import Neighbourhood
from gridrl.marl.run import open_run
from gridrl.marl.train import TrainError, _initialize, resolve_train_config
from gridrl.marl.transfer import STATIC_NAMES, feeder_features

runner = CliRunner()

TINY = """
steps = 64
num_envs = 4
checkpoint_every_s = 0
eval_split = "val"
compare = []
validation_days = 1
validate_every_steps = 64
[env]
episode_hours = 2.0
[learner]
hidden = 16
message_dim = 8
epochs = 1
minibatches = 2
"""
SMALL = DppoConfig(transfer=True, hidden=16, message_dim=8, epochs=1, minibatches=2)
POOL = EnvConfig(zone_layout="pool", episode_hours=2.0, start_hour=None)


def _learner(feeder: str, config: DppoConfig = SMALL) -> DPPO:
    env = make_env(feeder, split="train", num_envs=2, seed=0, config=POOL)
    return DPPO(env, config, seed=0, total_steps=64)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def several(tmp_path_factory, tiny):
    """A tiny transferable run on ieee33 and ieee69, through the CLI."""
    out = tmp_path_factory.mktemp("runs") / "mix"
    res = runner.invoke(app, ["train", "--feeders", "ieee33,ieee69", "--transfer", "--config", str(tiny),
                              "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def specific(tmp_path_factory, tiny):
    """A tiny feeder-specific run on ieee33."""
    out = tmp_path_factory.mktemp("runs") / "specific"
    res = runner.invoke(app, ["train", "ieee33", "--config", str(tiny), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    return out


# 1. feeder-agnostic policies ----------------------------------------------------------------

def test_a_transferable_policy_holds_nothing_per_agent_and_loads_onto_another_feeder():
    small, large = _learner("ieee33"), _learner("ieee141")  # 6 and 22 agents
    a, b = small.policy.state_dict(), large.policy.state_dict()
    assert {k: tuple(v.shape) for k, v in a.items()} == {k: tuple(v.shape) for k, v in b.items()}
    assert not any("embed" in k and v.numel() for k, v in a.items())
    assert tuple(a["actor.log_std"].shape) == (1,)
    assert {k: tuple(v.shape) for k, v in small.critic.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in large.critic.state_dict().items()}
    large.policy.load_state_dict(a)
    obs = large.env.reset()
    assert large.policy.act(obs).shape == (2, 22)


def test_the_default_policy_stays_feeder_specific():
    learner = _learner("ieee33", DppoConfig(hidden=16, message_dim=8))
    assert not learner.policy.transferable
    assert learner.policy.actor.log_std.shape == (6,)
    with pytest.raises(gridrl.GridrlError, match="transfer = true"):
        f = gridrl.load_feeder("ieee69")
        learner.policy.bind(Neighbourhood(f.hop_distance, 1), agents=f.agents, features=feeder_features(f))


def test_local_physical_features_are_normalised_per_feeder():
    for name in ("ieee33", "ieee141"):
        feeder = gridrl.load_feeder(name)
        ff = feeder_features(feeder)
        assert ff.static.shape == (len(feeder.agents), len(STATIC_NAMES))
        assert np.isfinite(ff.static).all()
        z, rx, rating, size = ff.static.T
        assert z.max() == pytest.approx(1.0) and z.min() > 0          # electrical distance, farthest agent 1
        assert (rx > 0).all()
        assert rating.mean() == pytest.approx(1.0) and size.mean() == pytest.approx(1.0)


def test_powers_reach_the_network_per_unit_of_the_agents_rating():
    learner = _learner("ieee33")
    norm, env = learner.policy.obs_norm, learner.env
    obs = env.reset()
    x = norm.features(obs.to(torch.float64))
    rating = torch.as_tensor(feeder_features(env.feeder).rating_mva)
    c = env.obs_names.index("inv_q_avail_mvar")
    assert torch.allclose(x[..., c], obs[..., c].to(torch.float64) / rating)
    v = env.obs_names.index("dv_own_pu")
    assert torch.equal(x[..., v], obs[..., v].to(torch.float64))        # voltages are already per unit
    assert x.shape[-1] == len(env.obs_names) + len(STATIC_NAMES)


def test_transfer_settings_are_checked_at_the_door():
    with pytest.raises(ValueError, match="training = 'shared'"):
        DppoConfig(transfer=True, training="decentralized")
    with pytest.raises(SpecError, match="zone_layout = 'pad'"):
        resolve_train_config({"env": {"zone_layout": "pad"}, "learner": {"transfer": True}}, source="t")
    assert resolve_train_config({"learner": {"transfer": True}}, source="t").env.zone_layout == "pool"


# 2. several feeders at once -------------------------------------------------------------------

def test_a_run_on_several_feeders_trains_on_each_and_records_them(several):
    run = open_run(several)
    assert run.transferable and run.feeders == ["ieee33", "ieee69"]
    assert run.feeder == "ieee33+ieee69"
    scalars = (several / "scalars.csv").read_text().splitlines()
    seen = {float(line.rsplit(",", 1)[1]) for line in scalars if ",feeder_index," in line}
    assert seen == {0.0, 1.0}
    assert json.loads((several / "config.json").read_text())["identity"]["feeders"] == ["ieee33", "ieee69"]


def test_several_feeders_need_a_transferable_policy(tiny, tmp_path):
    res = runner.invoke(app, ["train", "--feeders", "ieee33,ieee69", "--out", str(tmp_path / "x"), "--no-progress"])
    assert res.exit_code != 0 and "--transfer" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x").exists()


# 3. unseen feeders ----------------------------------------------------------------------------

def test_a_transferable_run_is_evaluated_on_a_feeder_it_never_saw(several, tmp_path):
    day = str(gridrl.load_feeder("ieee141").days("test")[0])
    res = runner.invoke(app, ["evaluate", str(several), "--feeder", "ieee141", "--days", day,
                              "--out", str(tmp_path / "ev"), "--no-report"])
    assert res.exit_code == 0, res.output
    summary = (tmp_path / "ev" / "summary.md").read_text()
    assert "ieee141" in summary
    assert "loss guard (unseen agents: 0 of 22)" in summary  # the default away from the training feeders
    policy = open_run(several).policy(feeder=gridrl.load_feeder("ieee141"))
    assert len(policy.agents) == 22


def test_the_unseen_loss_guard_is_the_default_only_on_a_feeder_outside_the_training_set(several):
    from gridrl.marl.run import deployed

    run = open_run(several)

    def guard(name, envelope=None):
        feeder = gridrl.load_feeder(name)
        ctrl = deployed(run.policy(feeder=feeder), feeder, run.evaluation_config(), envelope=envelope,
                        trained_on=run.feeders, trained=run.env_config)
        return ctrl.config.loss_guard, ctrl.guarded_agents, ctrl.information

    assert guard("ieee141")[:2] == ("unseen", 0)  # ieee141's sensitivities lie inside ieee33's and ieee69's
    level, held, knew = guard("ieee69")  # a training feeder: as without the guard
    assert (level, held) == ("off", 0) and "loss guard" not in knew
    assert guard("ieee141", {"loss_guard": "off"})[:2] == ("off", 0)
    level, held, knew = guard("ieee141", {"loss_guard": "all"})
    assert (level, held) == ("all", 22) and "loss guard (all agents: 22 of 22)" in knew


def test_a_feeder_specific_run_is_still_refused_elsewhere(specific, tmp_path):
    res = runner.invoke(app, ["evaluate", str(specific), "--feeder", "ieee69", "--out", str(tmp_path / "ev")])
    assert res.exit_code != 0
    assert "trained on feeder 'ieee33', not 'ieee69'" in res.output and "Traceback" not in res.output


# 4. fine-tuning -------------------------------------------------------------------------------

def test_fine_tuning_starts_from_the_transferable_runs_policy(several, tiny):
    cfg = resolve_train_config({**read_toml(tiny), "learner": {**read_toml(tiny)["learner"], "transfer": True}},
                               source="tiny")
    env = make_env("ieee141", split="train", num_envs=2, seed=0, config=cfg.env)
    learner = DPPO(env, cfg.learner, seed=1, total_steps=64)
    run = open_run(several)
    before = learner.policy.actor.net.head[0].weight.clone()
    _initialize(learner, run, cfg, lambda m: None)
    selected = read_checkpoint(several)["selected"]
    assert not torch.equal(before, selected["actor.net.head.0.weight"])
    for k, v in learner.policy.state_dict().items():
        assert torch.equal(v, selected[k]), k


def test_gridrl_train_init_fine_tunes_and_refuses_what_cannot_start(several, specific, tiny, tmp_path):
    res = runner.invoke(app, ["train", "ieee141", "--init", str(several), "--config", str(tiny),
                              "--out", str(tmp_path / "ft"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "starting from the policy and critic of" in res.output
    assert read_checkpoint(tmp_path / "ft")["header"]["init"]["run"] == str(several)
    res = runner.invoke(app, ["train", "ieee141", "--init", str(specific), "--config", str(tiny),
                              "--out", str(tmp_path / "ft2"), "--no-progress"])
    assert res.exit_code != 0 and "feeder-specific" in res.output and "Traceback" not in res.output
    wide = tmp_path / "wide.toml"
    wide.write_text(tiny.read_text().replace("hidden = 16", "hidden = 24"))
    res = runner.invoke(app, ["train", "ieee141", "--init", str(several), "--config", str(wide),
                              "--out", str(tmp_path / "ft3"), "--no-progress"])
    assert res.exit_code != 0 and "hidden 16 ≠ 24" in res.output and "Traceback" not in res.output
    with pytest.raises(TrainError, match="add --transfer"):
        from gridrl.marl.train import _init_source

        _init_source(several, resolve_train_config(read_toml(tiny), source="tiny"))


@pytest.mark.parametrize("algo", ["dmpo", "cppo"])
def test_every_learner_trains_one_transferable_policy_on_several_feeders(algo, tiny, tmp_path):
    from gridrl.marl.train import train

    data = read_toml(tiny)
    data["learner"] = {**data["learner"], "transfer": True}
    if algo == "dmpo":
        data["learner"].update(ensemble=2, model_updates=4, model_batch=8, imagine_from=1, model_check_every=3)
    cfg = resolve_train_config({**data, "algo": algo}, source="tiny")
    train(["ieee33", "ieee69"], cfg, out=tmp_path / algo, progress=False, log=lambda m: None)
    run = open_run(tmp_path / algo)
    assert run.transferable and run.feeders == ["ieee33", "ieee69"]
    assert len(run.policy(feeder=gridrl.load_feeder("ieee141")).agents) == 22


def test_fine_tuning_is_selected_on_the_new_feeders_validation_days(several):
    from gridrl.cli import _finetune_settings, _settings_of
    from gridrl.marl.run import open_run

    run = open_run(several)
    assert _settings_of(run)["validation_days"] == 1  # chosen for the feeders it trained on
    # every validation day of an IEEE feeder, as `gridrl train ieee141` from scratch is selected on
    assert "validation_days" not in _finetune_settings(run, "ieee141")
    assert _finetune_settings(run, "mv-urban")["validation_days"] == 7
    assert _finetune_settings(run, "ieee141")["learner"]["hidden"] == 16  # the rest is the run's
