"""Chunking changes no number: an environment that solves its scenarios C at a time steps exactly
as one that solves them all at once, and a training run with ``env_chunk`` ends on the checkpoint
of the run without it, bit for bit, for every learner. Bad chunk sizes are one line."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from gridrl.cli import app
from gridrl.env import EnvConfig, make_env
from gridrl.marl.checkpoint import CLOCK_KEYS, read_checkpoint, state_fingerprint
from gridrl.marl.train import resolve_train_config, train

from conftest import assert_identical, one_line_error

runner = CliRunner()

# three iterations of 4 scenarios × 8 steps (2-hour episodes), small networks, two validations
TINY = {"steps": 96, "num_envs": 4, "checkpoint_every_s": 0, "compare": [], "validation_days": 2,
        "validate_every_steps": 64, "env": {"episode_hours": 2.0},
        "learner": {"hidden": 16, "message_dim": 8, "epochs": 2, "minibatches": 2}}
# dmpo: a tiny model, imagination from the second iteration, a physics check every second
TINY_DMPO = {"ensemble": 2, "model_updates": 4, "model_batch": 8, "imagine_from": 1, "model_check_every": 2}


@pytest.mark.parametrize("feeder, config", [("ieee33", EnvConfig()),
                                            ("ieee33", EnvConfig(source_regulator=True, sensor_noise_pu=0.002,
                                                                 message_dropout=0.2, outage_prob=0.1)),
                                            ("ieee141", EnvConfig(observation="previous_step"))])
def test_a_chunked_environment_steps_exactly_as_the_whole_batch(feeder, config):
    whole = make_env(feeder, num_envs=6, seed=3, config=config)
    parts = [make_env(feeder, num_envs=6, seed=3, config=config, chunk=c) for c in (1, 4)]
    gen = torch.Generator().manual_seed(0)
    outs = [[e.reset()] for e in (whole, *parts)]
    for _ in range(10):
        a = torch.rand(6, whole.n_agents, generator=gen) * 2 - 1
        for env, out in zip((whole, *parts), outs):
            out.append(env.step(a))
    for out in outs[1:]:
        assert_identical(outs[0], out, "steps")
    assert_identical(whole.peek(torch.zeros(6, whole.n_agents)), parts[0].peek(torch.zeros(6, whole.n_agents)), "peek")


@pytest.mark.parametrize("algo", ["dppo", "dmpo", "ippo", "cppo"])
def test_a_chunked_training_run_ends_on_the_same_checkpoint(algo, tmp_path):
    data = {**TINY, "algo": algo}
    if algo == "dmpo":
        data["learner"] = {**TINY["learner"], **TINY_DMPO}
    checkpoints = []
    for chunk in (None, 1):
        cfg = resolve_train_config(data, source="test", overrides={"env_chunk": chunk})
        out = tmp_path / f"chunk{chunk}"
        train("ieee33", cfg, out=out, progress=False, log=lambda m: None)
        checkpoints.append(read_checkpoint(out))
    assert checkpoints[0]["learner"]["iteration"] == 3 and len(checkpoints[0]["driver"]["validations"]) == 2
    whole, chunked = ({**ck, "driver": {k: v for k, v in ck["driver"].items() if k not in CLOCK_KEYS}}
                      for ck in checkpoints)
    assert_identical(whole, chunked)
    assert state_fingerprint(checkpoints[0]) == state_fingerprint(checkpoints[1])
    # the fingerprint sees a change of one weight's last bit
    state = checkpoints[1]["learner"]["policy"]
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key].view(-1)[0] = torch.nextafter(state[key].view(-1)[0], torch.tensor(math.inf))
    assert state_fingerprint(checkpoints[0]) != state_fingerprint(checkpoints[1])


@pytest.mark.parametrize("chunk", ["3", "0", "-2", "8"])
def test_a_chunk_that_does_not_divide_the_batch_is_one_line(chunk, tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text("steps = 32\nnum_envs = 4\ncompare = []\n[env]\nepisode_hours = 2.0\n")
    res = runner.invoke(app, ["train", "ieee33", "--config", str(cfg), "--env-chunk", chunk,
                              "--out", str(tmp_path / "run"), "--no-progress"])
    one_line_error(res, f"env_chunk must be a divisor of num_envs (4) of at least 1, got {chunk}", "e.g. 1, 2")
    assert not (tmp_path / "run").exists()


def test_an_environment_refuses_a_chunk_below_one():
    with pytest.raises(ValueError, match="chunk must be ≥ 1 scenarios"):
        make_env("ieee33", num_envs=2, chunk=0)
