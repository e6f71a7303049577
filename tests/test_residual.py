"""Policies trained as a residual on the tuned droop curve: with no residual they send the
one-shot droop action at the agent's own measured voltage; training, validation, deployment and
export add the same base; the curve travels with the run; bad settings are one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import one_line_error
from typer.testing import CliRunner

from gridrl.cli import app
from gridrl.control.droop import DroopController
from gridrl.env import EnvConfig, make_env
from gridrl.errors import CheckpointError, SpecError
from gridrl.marl import resolve_train_config, train
from gridrl.marl.run import deployed, open_run
from gridrl.marl.train import TrainError

#: a curve of droop:tuned's family (ieee33's fit, rounded): absorbs steeply above 1.037 p.u.
CURVE = {"v_pu": [0.9376, 1.0182, 1.0374, 1.0575], "q": [0.2807, 0.0358, 0.0358, -0.4182], "reference": "s_max",
         "fit": {"feeder": "ieee33", "key": "test"}}
SETTINGS = {"steps": 1024, "num_envs": 8, "compare": [], "validation_days": 2, "validate_every_steps": 1024,
            "eval_days": [2], "residual": "droop:tuned", "learner": {"hidden": 16, "message_dim": 8}}
runner = CliRunner()


def _config(**extra):
    return resolve_train_config({**SETTINGS, **extra}, source="test")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("residual") / "run"
    train("ieee33", _config(), out=out, progress=False, residual_curve=CURVE)
    return out


def _observations(feeder, run):
    """Measured observations of a test day's morning to evening, and the environment."""
    env = make_env(feeder, split="test", num_envs=2, days=[2, 7], config=run.evaluation_config())
    obs = [env.reset(days=[2, 7])]
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        o, *_ = env.step(2 * torch.rand(2, env.n_agents, generator=gen, dtype=torch.float64) - 1)
        obs.append(o)
    return torch.cat(obs), env


def test_zero_residual_sends_the_one_shot_tuned_droop_action(run_dir, feeder):
    run = open_run(run_dir)
    policy = run.policy()
    with torch.no_grad():  # the policy's own part: nothing
        last = policy.actor.net.head[-1]
        last.weight.zero_()
        last.bias.zero_()
    obs, env = _observations(feeder, run)
    cols = policy.residual.columns
    x = obs.to(torch.float64)
    droop = DroopController(feeder, curve={k: CURVE[k] for k in ("v_pu", "q", "reference")})
    s_max = env.s_max_mva.to(torch.float64).numpy() @ droop._incidence.T
    want = droop.target(1.0 + x[..., cols[0]].numpy(), x[..., cols[2]].numpy(), s_max_mva=s_max)
    got = policy.act(obs).numpy()
    assert np.abs(got - want).max() < 1e-6
    assert np.abs(want).max() > 0.05 and (want == 0).any()  # the curve acted, and gave nothing without headroom


def test_a_damped_base_moves_part_of_the_way_from_the_reactive_power_now(run_dir, feeder):
    from gridrl.env.residual import ResidualBase

    run = open_run(run_dir)
    obs, _ = _observations(feeder, run)
    names = run.header["obs_names"]
    once = ResidualBase("droop:tuned", CURVE, names)(obs)
    damped = ResidualBase("droop:tuned", CURVE, names, damping=0.3)
    x = obs.to(torch.float64)
    qa, q = x[..., names.index("inv_q_avail_mvar")], x[..., names.index("inv_q_mvar")]
    now = torch.where(qa > 0, q / qa.clamp(min=1e-12), torch.zeros_like(q))
    assert torch.allclose(damped(obs), now + 0.3 * (once - now), atol=1e-12)
    assert (damped(obs) - once).abs().max() > 0.05
    assert "residual on droop:tuned (damped 0.3)" == damped.label


def test_training_validation_deployment_and_export_add_the_same_base(run_dir, feeder, tmp_path):
    run = open_run(run_dir)
    policy = run.policy()
    obs, _ = _observations(feeder, run)
    with torch.no_grad():  # the learners' path: the actor's mean shifted by the base
        mean, _ = policy.actor(policy.obs_norm(obs))
        learner_mean = policy.shift(mean, obs).clamp(-1, 1).to(torch.float64)
    assert torch.equal(learner_mean, policy.act(obs))
    assert (policy.act(obs) - mean.clamp(-1, 1).to(torch.float64)).abs().max() > 0.05  # the base matters
    # as compared and exported: through the envelope, labelled with what it knew
    wrapped = deployed(policy, feeder, run.evaluation_config())
    assert "residual on droop:tuned" in wrapped.information
    pytest.importorskip("onnxruntime")
    from gridrl.export import export_onnx
    from gridrl.export.onnx_graph import DeployedAgents

    exported = export_onnx(run_dir, tmp_path / "onnx")
    assert exported.description["residual"]["curve"]["v_pu"] == CURVE["v_pu"]
    a, _ = DeployedAgents(exported.folder).act(obs.numpy())
    assert np.abs(a - wrapped.act(obs).numpy()).max() <= 1e-5
    # a damped base in the graphs too (the run's record changed on a copy)
    import shutil

    damped = tmp_path / "damped"
    shutil.copytree(run_dir, damped)
    ckpt = torch.load(damped / "checkpoint.pt", weights_only=True)
    ckpt["header"]["residual"]["damping"] = 0.3
    torch.save(ckpt, damped / "checkpoint.pt")
    run = open_run(damped)
    ref = deployed(run.policy(), feeder, run.evaluation_config()).act(obs).numpy()
    assert np.abs(ref - wrapped.act(obs).numpy()).max() > 0.01
    a, _ = DeployedAgents(export_onnx(damped, tmp_path / "onnx-damped").folder).act(obs.numpy())
    assert np.abs(a - ref).max() <= 1e-5


def test_the_update_reads_the_log_probabilities_the_rollout_wrote(feeder):
    """Before its first gradient step PPO's ratio is 1 only if the update shifts the mean as the
    rollout did (without the base its KL estimate is far from 0)."""
    from gridrl.env.residual import ResidualBase
    from gridrl.marl.dppo import DPPO

    cfg = _config()
    env = make_env(feeder, split="train", num_envs=8, seed=0, config=cfg.env)
    learner = DPPO(env, dataclasses_replace(cfg.learner, epochs=1, minibatches=1), seed=0, total_steps=1024)
    learner.policy.residual = ResidualBase("droop:tuned", CURVE, env.obs_names)
    stats = learner.iterate()
    assert abs(stats["loss/approx_kl"]) < 1e-6 and stats["loss/clip_fraction"] == 0.0


def dataclasses_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


def test_the_run_records_its_curve_and_refuses_to_act_without_it(run_dir, tmp_path):
    import shutil

    record = json.loads((run_dir / "config.json").read_text())
    assert record["config"]["residual"] == "droop:tuned"
    assert record["residual_curve"]["v_pu"] == CURVE["v_pu"]
    assert open_run(run_dir).header["residual"]["curve"]["q"] == CURVE["q"]
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    ckpt = torch.load(broken / "checkpoint.pt", weights_only=True)
    del ckpt["header"]["residual"]
    torch.save(ckpt, broken / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="residual on droop:tuned|records no curve"):
        open_run(broken).policy()
    # resumed with another curve: refused before anything moves
    with pytest.raises(TrainError, match="residual_curve"):
        train("ieee33", _config(), out=run_dir, resume=True, progress=False,
              residual_curve={**CURVE, "q": [0.3, 0.0, 0.0, -0.4]})


def test_bad_residual_settings_are_refused(tmp_path):
    with pytest.raises(SpecError, match="residual must be 'droop:tuned'"):
        _config(residual="droop:ieee1547-b")
    with pytest.raises(SpecError, match="transferable"):
        resolve_train_config({**SETTINGS, "learner": {"transfer": True}}, source="test")
    with pytest.raises(TrainError, match="needs its curve"):
        train("ieee33", _config(), out="/nonexistent/never", progress=False)
    with pytest.raises(TrainError, match="sets no residual"):
        train("ieee33", _config(residual=None), out="/nonexistent/never", progress=False, residual_curve=CURVE)
    from gridrl.env.envelope import EnvelopeError
    from gridrl.env.residual import ResidualBase

    names = ["dv_pu[0]", "inv_p_mw", "inv_q_avail_mvar"]
    with pytest.raises(EnvelopeError, match="v_pu must increase strictly"):
        ResidualBase("droop:tuned", {"v_pu": [1.05, 0.95], "q": [0.0, 0.0]}, names)
    with pytest.raises(EnvelopeError, match="damping must lie in"):
        ResidualBase("droop:tuned", CURVE, names, damping=0.0)
    with pytest.raises(SpecError, match="residual_damping"):
        _config(residual=None, residual_damping=0.5)
    with pytest.raises(SpecError, match="residual_damping must lie"):
        _config(residual_damping=1.5)
    with pytest.raises(EnvelopeError, match="inv_q_avail_mvar"):
        ResidualBase("droop:tuned", CURVE, names[:2])
    cfg = tmp_path / "train.toml"
    cfg.write_text("steps = 8\ncompare = []\n")
    res = runner.invoke(app, ["train", "ieee33", "--config", str(cfg), "--residual", "droop:tunned"])
    one_line_error(res, "residual must be 'droop:tuned'", "droop:tunned")
