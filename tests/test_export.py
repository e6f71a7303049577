"""gridrl export: ONNX graphs that act as the torch policy does, a description that says how
to wire them, IEEE 1547 curves distilled from the policy, and one line for every bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import one_line_error
from typer.testing import CliRunner

from gridrl.cli import app
from gridrl.control.curvefile import POINTS, points_curve, read_agent_curves
from gridrl.control.droop import PRESETS, AGENTS, DroopController, DroopCurve, agent_curves
from gridrl.control.base import CurveError
from gridrl.control.distill import edge_violation, fit_agent_curve, imitation_loss
from gridrl.control.tuning import CATEGORY_B, TuneConfig, curve_from_unit
from gridrl.export import deployed_run, export_curves, export_onnx, record_observations
from gridrl.export.onnx_graph import DeployedAgents

pytest.importorskip("onnxruntime")
runner = CliRunner()
TOL = 1e-5


def _train(path, learner):
    from gridrl.marl import resolve_train_config, train

    cfg = resolve_train_config({"steps": 2048, "num_envs": 16, "compare": [], "validation_days": 0, "eval_days": [2],
                                "learner": learner}, source="test")
    train("ieee33", cfg, out=path, progress=False)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny dppo run of ieee33 (shared weights, κ = 1)."""
    return _train(tmp_path_factory.mktemp("export") / "run", {"hops": 1})


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    return export_onnx(run_dir, tmp_path_factory.mktemp("onnx") / "policy")


def _stressed(obs: np.ndarray, seed: int = 0) -> np.ndarray:
    """Recorded observations pushed around: voltages near and past the band's edges (the
    envelope acts), some features far outside the training statistics (the hand-over acts)."""
    rng = np.random.default_rng(seed)
    x = obs.copy()
    x[..., 0] += rng.normal(0.0, 0.04, x.shape[:-1]).astype(np.float32)  # own voltage deviation
    far = rng.random(x.shape[:-1]) < 0.05
    x[far, 1] *= 50.0
    return x


def test_onnx_graphs_act_as_the_torch_policy_on_recorded_and_random_observations(run_dir, exported):
    obs, sent = record_observations(run_dir, days=[2, 7])
    _, _, _, policy = deployed_run(run_dir)
    rand = _stressed(obs)
    ref_rand = policy.act(torch.as_tensor(rand)).numpy()
    assert (policy.last_info["envelope"].sum() > 0) and (policy.last_info["handover"].sum() > 0)
    agents = DeployedAgents(exported.folder)
    import onnxruntime as ort

    network = ort.InferenceSession(str(exported.folder / "network.onnx"), providers=["CPUExecutionProvider"])
    for x, ref in ((obs, sent), (rand, ref_rand)):
        a, q = agents.act(x)
        assert np.abs(a - ref).max() <= TOL
        assert np.abs(network.run(None, {"obs": x})[0] - ref).max() <= TOL
        np.testing.assert_allclose(q, a * x[..., policy.own_columns[2]], rtol=1e-6, atol=1e-7)
    # one inverter's step on its own (batch 1) is the same action
    a, _ = agents.act(obs[:1])
    h = agents.description["messages"]["floats"]
    msgs = np.stack([agents.agent_step(obs[0, j], j, np.zeros(h), np.zeros(1))[0] for j in range(obs.shape[1])])
    from gridrl.export.onnx_graph import numpy_pool

    pooled, heard = numpy_pool(msgs[None], agents.receives, agents.hops)
    _, a0 = agents.agent_step(obs[0, 3], 3, pooled[0, 3], heard[0, 3])
    assert abs(a0 - a[0, 3]) <= TOL


def test_lost_messages_are_left_out_as_in_the_torch_policy(run_dir, exported):
    obs, _ = record_observations(run_dir, days=[2])
    _, _, _, policy = deployed_run(run_dir)
    graph = policy.inner.graph
    mask = torch.as_tensor(np.random.default_rng(1).random((len(obs), graph.n_agents, graph.n_agents)) > 0.4)
    ref = policy.act(torch.as_tensor(obs), message_mask=mask).numpy()
    delivered = np.zeros(mask.shape, dtype=bool)
    delivered[:, graph.receiver.numpy(), graph.sender.numpy()] = graph.delivered(mask).numpy()
    a, _ = DeployedAgents(exported.folder).act(obs, delivered)
    assert np.abs(a - ref).max() <= TOL
    assert np.abs(a - DeployedAgents(exported.folder).act(obs)[0]).max() > 1e-3  # the losses mattered


def test_own_weights_and_two_hops_export_alike(tmp_path):
    run = _train(tmp_path / "run2", {"hops": 2, "training": "decentralized"})
    out = export_onnx(run, tmp_path / "onnx2")
    obs, sent = record_observations(run, days=[7])
    assert "its own weights" in out.description["graph_choice"]
    assert np.abs(DeployedAgents(out.folder).act(obs)[0] - sent).max() <= TOL
    hops = {r["hop"] for a in out.description["agents"] for r in a["receives"]}
    assert hops == {1, 2}


def test_the_description_says_what_every_agent_sends_and_receives(run_dir, exported):
    desc = json.loads((exported.folder / "policy.json").read_text())
    _, feeder, _, policy = deployed_run(run_dir)
    graph = policy.inner.graph
    assert [a["name"] for a in desc["agents"]] == list(feeder.agents)
    for i, a in enumerate(desc["agents"]):
        listed = sorted(feeder.agent_index(r["from"]) for r in a["receives"])
        assert listed == sorted(j for j in range(graph.n_agents) if graph.mask()[i, j] and j != i)
        for s in a["sends"]:  # only neighbours on the agent graph are sent to
            assert feeder.hop_distance[i, feeder.agent_index(s["to"])] == 1
    alerts = desc["messages"]["outage_alert_floats_per_agent_step"]  # one float to each neighbour (the default)
    assert alerts == pytest.approx(float((feeder.hop_distance == 1).sum()) / len(feeder.agents))
    assert desc["messages"]["floats_per_agent_step_mean"] + alerts == pytest.approx(policy.communication)
    names = [f["name"] for f in desc["inputs"]["obs"]["features"]]
    assert names == list(policy.obs_names)
    assert all(f["unit"] != "?" for f in desc["inputs"]["obs"]["features"])
    assert desc["envelope"]["mechanism"] == "clamp" and desc["outputs"]["q_mvar"]["unit"] == "MVAr"
    assert desc["envelope"]["edge_settle"] and "volt-var function" in desc["envelope"]["settle"]  # what the inverter holds
    alerts_rule = desc["envelope"]["outage_alerts"]  # kept beside the graphs, which keep no state
    assert alerts_rule["outage_alert_hops"] == 3 and alerts_rule["in_graph"] is False
    assert "v_max - outage_margin_pu" in alerts_rule["rule"]
    assert all(desc["graphs"][g]["bytes"] == (exported.folder / f"{g}.onnx").stat().st_size for g in desc["graphs"])


# --------------------------------------------------------------------------------------------
# curves
# --------------------------------------------------------------------------------------------
def test_the_fit_recovers_a_curve_of_the_family_from_its_own_reactive_power():
    space = TuneConfig(q_limit=0.44)
    truth = curve_from_unit(np.array([0.6, 0.4, 0.55, 0.3, 0.2, 0.7, 0.8]), space)
    rng = np.random.default_rng(0)
    v = rng.uniform(0.9, 1.1, 4000)
    q_avail = rng.uniform(0.2, 1.0, 4000)
    q = np.clip(truth(v), -q_avail, q_avail)
    fit = fit_agent_curve(v, q, q_avail, space=space, design=128, starts=4, generations=80)
    assert fit.mse < 1e-5 < fit.var
    assert fit.mse < imitation_loss([PRESETS["ieee1547-b"]], v, q, q_avail)[0] / 100


def test_the_edge_rule_keeps_curves_at_least_as_corrective_as_1547b_near_the_edges():
    b, a = PRESETS["ieee1547-b"], PRESETS["ieee1547-a"]
    assert edge_violation([b], (0.96, 1.04))[0] == 0
    assert edge_violation([a], (0.96, 1.04))[0] == pytest.approx(0.44 - 0.20)  # A absorbs 0.2 at 1.08, B 0.44
    # a curve that copies data absorbing nothing is pushed to 1547-B at the edges, free inside
    rng = np.random.default_rng(1)
    v = rng.uniform(0.9, 1.1, 3000)
    flat = fit_agent_curve(v, np.zeros_like(v), np.ones_like(v), space=TuneConfig(), edges=(0.96, 1.04),
                           design=64, starts=2, generations=40)
    assert flat.edge_violation == 0 and flat.curve(np.array([1.0]))[0] == pytest.approx(0.0, abs=1e-6)
    assert flat.curve(np.array([1.08]))[0] <= b(np.array([1.08]))[0] + 1e-9


def test_per_agent_curves_act_per_agent(feeder):
    from gridrl.env import make_env

    b = PRESETS["ieee1547-b"]
    same = {AGENTS: {a: {"v_pu": list(b.v_pu), "q": list(b.q)} for a in feeder.agents}}
    env = make_env(feeder, split="test", num_envs=2, days=[2, 7])
    obs = env.reset(days=[2, 7])
    env.step(torch.zeros(2, env.n_agents))
    one = DroopController(feeder, preset="ieee1547-b").act(obs, env=env)
    torch.testing.assert_close(DroopController(feeder, curve=same).act(obs, env=env), one)
    own = {a: {"v_pu": [0.9, 1.1], "q": [0.5, 0.5], "reference": "q_avail"} for a in feeder.agents}
    own[feeder.agents[0]] = {"v_pu": [0.9, 1.1], "q": [0.3, 0.3], "reference": "q_avail"}
    a = DroopController(feeder, curve={AGENTS: own}).act(obs, env=env)
    torch.testing.assert_close(a[:, 0], torch.full((2,), 0.3, dtype=a.dtype), atol=1e-3, rtol=0)  # settled to tol
    torch.testing.assert_close(a[:, 1:], torch.full((2, env.n_agents - 1), 0.5, dtype=a.dtype), atol=1e-3, rtol=0)
    with pytest.raises(CurveError, match=r"no curve for agent .*; the feeder has no agent 'bus99'"):
        agent_curves({AGENTS: {"bus99": {"v_pu": [0.9, 1.1], "q": [0.1, 0.0]}}}, feeder.agents)


def test_distilled_curves_lie_inside_category_b_and_evaluate_as_droop(run_dir, tmp_path, feeder):
    out = export_curves(run_dir, tmp_path / "curves", days=feeder.days("train")[:6], design=32, generations=5)
    assert out.json_path.name == "curves.json" and out.csv_path.is_file()
    for r in out.inverters:
        v = [r[f"V{k}"] for k in range(1, 5)]
        q = [r[f"Q{k}"] / 100 for k in range(1, 5)]
        assert CATEGORY_B["v_ref_min_pu"] - 1e-9 <= r["VRef"] <= CATEGORY_B["v_ref_max_pu"] + 1e-9
        assert r["VRef"] - 0.03 - 1e-6 <= v[1] <= r["VRef"] <= v[2] <= r["VRef"] + 0.03 + 1e-6
        assert v[1] - v[0] >= 0.02 - 1e-6 and v[3] - v[2] >= 0.02 - 1e-6
        assert r["VRef"] - v[0] <= 0.18 + 1e-6 and v[3] - r["VRef"] <= 0.18 + 1e-6
        assert q[0] >= 0 >= q[3] and q[0] >= q[1] == q[2] >= q[3]
        assert max(abs(x) for x in q) <= CATEGORY_B["q_limit"] + 1e-9
    edges = tuple(out.fit["edges_pu"])
    assert edges == pytest.approx((0.96, 1.04))  # the envelope's edge regions of ieee33's band
    for r in out.inverters:  # as the deployed policy: never weaker than 1547-B near the band's edges
        assert edge_violation([DroopCurve(**points_curve(r))], edges)[0] == 0
    from_json, from_csv = read_agent_curves(out.json_path), read_agent_curves(out.csv_path)
    assert from_json[AGENTS] == from_csv[AGENTS] and set(from_json[AGENTS]) == set(feeder.agents)
    assert from_json["fit"]["feeder"] == "ieee33" and "mean over the recorded steps" in from_json["fit"]["objective"]
    assert set(POINTS) <= set(out.csv_path.read_text().splitlines()[0].split(","))
    res = runner.invoke(app, ["compare", "--feeders", "ieee33", "--controllers", f"droop:curves={out.json_path}",
                              "--days", "2", "--out", str(tmp_path / "cmp"), "--no-report"])
    assert res.exit_code == 0, res.output
    assert "droop-curves" in res.output


# --------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing half-written
# --------------------------------------------------------------------------------------------
def test_a_folder_that_is_no_run_or_of_another_layout_is_one_line(run_dir, tmp_path):
    res = runner.invoke(app, ["export", str(tmp_path), "--out", str(tmp_path / "x")])
    one_line_error(res, "holds no checkpoint.pt")
    other = tmp_path / "other"
    other.mkdir()
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    ckpt["header"]["layout_version"] = 99
    torch.save(ckpt, other / "checkpoint.pt")
    res = runner.invoke(app, ["export", str(other), "--format", "curves", "--out", str(tmp_path / "c")])
    one_line_error(res, "has checkpoint layout 99")
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob("c.*"))


def test_a_corrupt_checkpoint_is_one_line(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "checkpoint.pt").write_bytes(b"not a checkpoint")
    res = runner.invoke(app, ["export", str(broken), "--out", str(tmp_path / "x")])
    one_line_error(res, "is damaged or not a gridrl checkpoint")
    assert not (tmp_path / "x").exists()


def test_an_unwritable_output_is_one_line_and_leaves_nothing(run_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    res = runner.invoke(app, ["export", str(run_dir), "--out", str(blocker / "onnx")])
    one_line_error(res, "is a file, not a folder")
    res = runner.invoke(app, ["export", str(run_dir), "--format", "curves", "--out", str(blocker / "curves")])
    one_line_error(res, "is a file, not a folder")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    res = runner.invoke(app, ["export", str(run_dir), "--out", str(foreign)])
    one_line_error(res, "holds other files")
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    # a failure half-way through leaves a previous export as it was and no temporary folder
    out = tmp_path / "onnx"
    export_onnx(run_dir, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import gridrl.export.onnx_graph as graphs

    def half_way(deployed, folder):
        (folder / "message.onnx").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(graphs, "export_graphs", half_way)
    res = runner.invoke(app, ["export", str(run_dir), "--out", str(out)])
    one_line_error(res, "No space left on device")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "foreign", "onnx"]


def test_a_loss_guard_holding_agents_is_refused_one_holding_none_exports(run_dir, tmp_path):
    from gridrl.export import ExportError

    with pytest.raises(ExportError, match="loss guard holds 6 of 6 agents on ieee33, which the exported graphs do "
                                          "not carry; export with loss_guard off"):
        export_onnx(run_dir, tmp_path / "guarded", envelope={"loss_guard": "all"})
    assert not (tmp_path / "guarded").exists()
    # on the feeder it trained on, ``unseen`` holds no agent: the graphs act as the guarded policy does
    result = export_onnx(run_dir, tmp_path / "unseen", envelope={"loss_guard": "unseen"})
    assert result.description["envelope"]["loss_guarded"] == 0
