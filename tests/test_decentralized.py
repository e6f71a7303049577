"""Decentralized training (``training = "decentralized"``): every agent its own weights, its own
observation statistics and its own advantage scale, so training talks to neighbours only — and
the traffic of every mode counted, shared weights and pooled statistics as global traffic."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import gridrl
from gridrl.env import EnvConfig, make_env
from gridrl.marl.graph import Neighbourhood
from gridrl.marl.nets import NeighbourhoodNet
from gridrl.marl.ppo import Stopwatch
from gridrl.marl.train import TRAIN_ENV_DEFAULTS, learner_class, resolve_train_config, train

TRAIN_ENV = EnvConfig(**{**TRAIN_ENV_DEFAULTS, "episode_hours": 2.0})
SMALL = {"hidden": 16, "message_dim": 8, "embed_dim": 4, "minibatches": 2, "epochs": 2}
DMPO = {"ensemble": 2, "horizon": 2, "model_ratio": 1.0, "imagine_from": 1, "model_updates": 3, "model_batch": 8,
        "model_hidden": 16, "model_message_dim": 8, "model_check_every": 0}


def _own_like(shared: NeighbourhoodNet, own: NeighbourhoodNet) -> None:
    """Give every agent of ``own`` the shared net's weights."""
    N = shared.graph.n_agents
    with torch.no_grad():
        for name, p in shared.named_parameters():
            q = own.get_parameter(name)
            if name == "embed":
                q.copy_(p)
            elif name.endswith("weight"):  # nn.Linear [out, in] → one [in, out] per agent
                q.copy_(p.T.expand(N, -1, -1))
            else:
                q.copy_(p.expand(N, 1, -1))


@pytest.mark.parametrize("hops", [0, 1, 2])
def test_own_weights_compute_the_shared_function_per_agent_and_stay_local(hops):
    d = gridrl.load_feeder("ieee33").hop_distance
    g = Neighbourhood(d, hops)
    N = g.n_agents
    torch.manual_seed(0)
    shared = NeighbourhoodNet(7, g, out_dim=2, hidden=16, message_dim=5, embed_dim=3)
    own = NeighbourhoodNet(7, g, out_dim=2, hidden=16, message_dim=5, embed_dim=3, own_weights=True)
    assert sum(p.numel() for p in own.parameters()) > (N - 1) * sum(p.numel() for p in shared.parameters())
    _own_like(shared, own)
    obs = torch.randn(5, N, 7, generator=torch.Generator().manual_seed(1))
    links = (torch.rand(5, N, N, generator=torch.Generator().manual_seed(2)) < 0.6) | torch.eye(N, dtype=torch.bool)
    for delivered in (None, g.delivered(links)):
        torch.testing.assert_close(own(obs, delivered), shared(obs, delivered))
    base = own(obs)
    for j in range(N):
        # agent j's head is its alone; its encoder reaches the agents its message reaches
        for layer, reach in ((own.head[-1], torch.as_tensor(np.arange(N) == j)),
                             (own.enc_out[0], torch.as_tensor(d[:, j] <= hops))):
            kept = layer.weight.detach().clone()
            with torch.no_grad():
                layer.weight[j] += 0.5
            moved = (own(obs) - base).abs().amax((0, 2)) > 0
            with torch.no_grad():
                layer.weight.copy_(kept)
            assert torch.equal(moved, reach), (j, layer)


def _learner(algo, training, *, feeder="ieee33", **extra):
    env = make_env(gridrl.load_feeder(feeder), num_envs=4, seed=3, config=TRAIN_ENV)
    cls = learner_class(algo)
    return cls(env, cls.Config(**SMALL, **extra, training=training), seed=3, total_steps=10_000), env


@pytest.mark.parametrize("algo", ["dppo", "dmpo"])
def test_decentralized_training_keeps_weights_statistics_and_advantages_per_agent(algo):
    extra = DMPO if algo == "dmpo" else {}
    learner, env = _learner(algo, "decentralized", **extra)
    N, D = env.n_agents, env.obs_dim
    assert learner.policy.obs_norm.mean.shape == (N, D)
    # observation statistics: one agent's inputs do not move another's scale
    norm, x = learner.policy.obs_norm, env.reset()
    plain, scaled = copy.deepcopy(norm), copy.deepcopy(norm)
    plain.update(x)
    x[:, 0] *= 100.0
    scaled.update(x)
    assert not torch.equal(plain.var[0], scaled.var[0]) and torch.equal(plain.var[1:], scaled.var[1:])
    # every parameter belongs to one agent: its leading axis is the agents (or members × agents)
    nets = [learner.policy.actor.net, learner.critic] + ([learner.model.net] if algo == "dmpo" else [])
    for net in nets:
        assert net.own_weights
        for name, p in net.named_parameters():
            lead = (N,) if net.members is None else (net.members, N)  # the embeddings: [(K,) N, E]
            assert p.shape[0] == N * (net.members or 1) or p.shape[:len(lead)] == lead, name
    if algo == "dmpo":
        assert learner.model.input_norm.mean.shape[0] == N
    # advantages: each agent's standardised over its own samples
    rollout = learner._collect(Stopwatch())
    adv, _ = learner._advantages(rollout.last_value, standardize=True)
    a = adv[learner.buffer["active"]]
    torch.testing.assert_close(a.mean(0), torch.zeros(N), atol=1e-5, rtol=0)
    torch.testing.assert_close(a.std(0), torch.ones(N), atol=1e-4, rtol=0)
    stats = learner.iterate()
    stats = learner.iterate()
    # globally only the clip's and the early stop's scalars
    assert stats["comm/train_global_floats"] == 2 * stats["update/steps"] + stats.get("update/model_steps", 0)
    assert stats["comm/train_local_floats"] > 0
    assert all(np.isfinite(v) for v in stats.values())


def _local_floats(learner, s):
    """Local traffic of an iteration with scalars ``s``, from its definition (8-float messages)."""
    g = learner.graph
    messages = 2 * g.relay_floats(8)
    want = s["iteration_steps"] * (messages + g.relay_floats(1)) + 2 * messages * s["update/samples"]
    if learner.algo == "dmpo":
        model = learner.model_graph.relay_floats(8) * 2      # two members
        # anchored: the imagined and the real step; free: the loads and PV, then the step
        # (whose fit trains both networks)
        nets = 2 if learner.cfg.exogenous == "predicted" else 1
        want += (s["imagine/steps"] * (messages + 2 * model + g.relay_floats(1))
                 + s["update/model_steps"] * 8 * 2 * model * nets)   # minibatches of 8, forward and back
    return want


def _shared(module, skip=("embed", "log_std")):
    return sum(p.numel() for n, p in module.named_parameters() if not n.endswith(skip))


@pytest.mark.parametrize("algo", ["dppo", "ippo", "cppo", "dmpo", "dmpo-free"])
def test_training_communication_is_counted_for_every_mode(algo):
    extra = {"dmpo": DMPO, "dmpo-free": {**DMPO, "anchor": False, "exogenous": "predicted"}}.get(algo, {})
    algo = algo.partition("-")[0]
    shared, env = _learner(algo, "shared", **extra)
    for _ in range(2):
        s = shared.iterate()
    g, D = shared.graph, env.obs_dim
    steps, used = s["iteration_steps"], s["update/samples"]
    actor = _shared(shared.policy.actor)
    if algo == "cppo":
        # every observation to the critic's place and the advantage back, the actor's gradients, the statistics
        assert s["comm/train_global_floats"] == pytest.approx(steps * (D + 1) + (actor + 2) * s["update/steps"] + 3 * D)
        assert s["comm/train_local_floats"] == pytest.approx((steps + 2 * used) * g.relay_floats(8))
        return
    model = 0
    if algo == "dmpo":
        model = (_shared(shared.model) + 1) * s["update/model_steps"] + 3 * shared.model.in_dim
    assert s["comm/train_global_floats"] == pytest.approx(
        (actor + _shared(shared.critic) + 2) * s["update/steps"] + 3 * D + 3 + model)
    assert s["comm/train_local_floats"] == pytest.approx(_local_floats(shared, s))
    if algo == "ippo":
        assert s["comm/train_local_floats"] == 0.0  # no neighbours, no local traffic
    decentral, _ = _learner(algo, "decentralized", **extra)
    for _ in range(2):
        d = decentral.iterate()
    assert d["comm/train_global_floats"] == 2 * d["update/steps"] + d.get("update/model_steps", 0)
    assert d["comm/train_global_floats"] < s["comm/train_global_floats"] / 100
    assert d["comm/train_local_floats"] == pytest.approx(_local_floats(decentral, d))


def test_cppo_refuses_decentralized_training():
    with pytest.raises(gridrl.errors.GridrlError, match="cppo trains with a centralized critic"):
        resolve_train_config({"algo": "cppo", "learner": {"training": "decentralized"}}, source="x.toml")


def test_a_decentralized_run_folder_is_a_controller(tmp_path, sunny_days):
    cfg = resolve_train_config({"steps": 32, "num_envs": 4, "checkpoint_every_s": 0, "eval_every_steps": 32,
                                "eval_days": [sunny_days[0]], "compare": [], "env": {"episode_hours": 2.0},
                                "learner": {**SMALL, "training": "decentralized"}}, source="t.toml")
    out = tmp_path / "run"
    train("ieee33", cfg, out=out, progress=False, log=lambda m: None)
    policy = gridrl.marl.load_policy(out)
    assert policy.actor.net.own_weights and policy.obs_norm.mean.ndim == 2
    env = make_env("ieee33", num_envs=2, seed=0, config=TRAIN_ENV)
    a = policy.act(env.reset())
    assert a.shape == (2, env.n_agents) and torch.isfinite(a).all()


def test_the_training_modes_experiment_deploys_runs_through_the_envelope_and_pairs_seeds(tmp_path, sunny_days,
                                                                                         monkeypatch):
    """experiments/training_modes.py: a run is judged as `gridrl compare` deploys it (the safety
    envelope, a label saying what it knew), each look is a ledger row, and the seeds pair up."""
    import importlib
    import importlib.util
    from pathlib import Path

    import pandas as pd

    from gridrl import ledger

    spec = importlib.util.spec_from_file_location(
        "training_modes_exp", Path(__file__).resolve().parents[1] / "experiments" / "training_modes.py")
    exp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exp)
    cfg = resolve_train_config({"steps": 32, "num_envs": 4, "checkpoint_every_s": 0, "compare": [],
                                "env": {"episode_hours": 2.0}, "learner": {**SMALL, "training": "decentralized"}},
                               source="t.toml")
    out = exp.run_folder(tmp_path, "ieee33", "dppo", "decentralized", 0)
    train("ieee33", cfg, out=out, progress=False, log=lambda m: None)
    module = importlib.import_module("gridrl.evaluate")
    evaluated, real = {}, module.evaluate

    def one_day(feeder, ctrl, **kw):  # the script imports evaluate where it uses it: one test day
        evaluated["ctrl"] = ctrl
        return real(feeder, ctrl, **{**kw, "days": [sunny_days[0]]})

    monkeypatch.setattr(module, "evaluate", one_day)
    before = len(ledger.read())
    row = exp.evaluate_run(gridrl.load_feeder("ieee33"), out, command="python experiments/training_modes.py x")
    from gridrl.env.envelope import SafetyEnvelope

    assert isinstance(evaluated["ctrl"], SafetyEnvelope) and row["knew"] == evaluated["ctrl"].information
    assert row["knew"].startswith("measured") and "envelope" in row["knew"] and row["global_floats_per_agent_iter"] > 0
    added = ledger.read().iloc[before:]
    assert list(added["variant"]) == ["training decentralized"] and (added["test_days"] == 1).all()
    assert exp._complete(out, 32) and not exp._complete(out, 10_000)
    # decentralized − shared per seed, only where both modes ran
    runs = pd.DataFrame([{"controller": "dmpo", "training": m, "seed": s, "loss_mwh": loss, "controllable": 0.99}
                         for m, s, loss in (("shared", 0, 100.0), ("decentralized", 0, 103.0),
                                            ("shared", 1, 100.0), ("decentralized", 1, 99.0), ("shared", 2, 90.0))])
    pairs = exp.paired(runs)
    assert list(pairs["seed"]) == [0, 1] and list(pairs["loss_diff_pct"].round(6)) == [3.0, -1.0]
    assert exp.mean_sd([3.0, -1.0]) == "1 ± 2.8"
    assert exp.main(["--seeds", "0,a"]) == 2
