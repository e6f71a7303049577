"""``gridrl train --device``: a dmpo run end to end (collection with message dropout, model fit,
held-out errors, the physics check against ``env.peek``, imagination, PPO, validation through the
safety envelope, the checkpoint, a resume) with every learner tensor on the device asked for.
The CPU case runs everywhere; the CUDA case runs where a GPU is present."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from gridrl.cli import app
from gridrl.marl.checkpoint import read_checkpoint

runner = CliRunner()

CONFIG = """
steps = 192
num_envs = 4
checkpoint_every_s = 0
eval_every_steps = 96
eval_days = [{day}]
compare = []
validation_days = 1
validate_every_steps = 96
[env]
episode_hours = 2.0
message_dropout = 0.2
[learner]
hidden = 16
message_dim = 8
epochs = 2
minibatches = 2
ensemble = 2
model_updates = 4
model_batch = 8
imagine_from = 1
model_check_every = 2
"""

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                   reason="no CUDA device on this machine"))]


@pytest.fixture(scope="module")
def day(sunny_days):
    return sunny_days[0]


@pytest.mark.parametrize("device", DEVICES)
def test_dmpo_trains_end_to_end_on_the_device(device, tmp_path, day, monkeypatch):
    from gridrl.marl import dmpo

    seen = {}
    iterate = dmpo.DMPO.iterate

    def spy(self):  # every tensor the learner keeps lives on the device it was asked for
        out = iterate(self)
        tensors = [*self.model.parameters(), *self.model.buffers(), *self.policy.parameters(),
                   *self.critic.parameters(), self.replay.obs, self.roles.volt_cols, self.roles.q_coef]
        seen["devices"] = {t.device.type for t in tensors}
        seen["iterations"] = seen.get("iterations", 0) + 1
        return out

    monkeypatch.setattr(dmpo.DMPO, "iterate", spy)
    cfg = tmp_path / "run.toml"
    cfg.write_text(CONFIG.format(day=day))
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "ieee33", "--algo", "dmpo", "--config", str(cfg), "--out", str(out),
                              "--device", device, "--no-progress"])
    assert res.exit_code == 0, res.output
    assert seen["devices"] == {device} and seen["iterations"] >= 3
    state = read_checkpoint(out)
    assert state["learner"]["iteration"] == seen["iterations"]
    res = runner.invoke(app, ["train", "ieee33", "--out", str(out), "--resume", "--device", device, "--no-progress"])
    assert res.exit_code == 0, res.output
