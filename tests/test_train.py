"""`gridrl train` end to end on a tiny budget: run folders, checkpoints and resume, the NaN guard,
trained runs as controllers, and one clear line for every mistake."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import gridrl
from gridrl.cli import app
from gridrl.compare import CompareConfig, ControllerSpec, run_compare
from gridrl.config import read_toml
from gridrl.errors import CheckpointError, SpecError
from gridrl.marl.checkpoint import read_checkpoint
from gridrl.marl.train import TrainingDiverged, resolve_train_config, train

from conftest import assert_identical, one_line_error

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

# two iterations of 4 scenarios × 8 steps (2-hour episodes), small networks, one test day
TINY = """
steps = 64
num_envs = 4
checkpoint_every_s = 0
eval_every_steps = 32
eval_days = [{day}]
compare = ["none", "droop"]
compare_days = [{day}]
validation_days = 2
validate_every_steps = 32
[env]
episode_hours = 2.0
[learner]
hidden = 16
message_dim = 8
epochs = 2
minibatches = 2
"""


@pytest.fixture(scope="module")
def day(sunny_days):
    return sunny_days[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, day):
    path = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    path.write_text(TINY.format(day=day))
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny):
    """One finished tiny dppo run on ieee33, through the CLI."""
    out = tmp_path_factory.mktemp("runs") / "ieee33-dppo"
    res = runner.invoke(app, ["train", "ieee33", "--config", str(tiny), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    return out


# --------------------------------------------------------------------------------------------
# a run end to end
# --------------------------------------------------------------------------------------------


def test_train_writes_a_complete_run_folder(run_dir, day):
    for name in ("config.json", "checkpoint.pt", "scalars.csv", "report.html", "compare/summary.csv"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tb").glob("events.out.tfevents.*"))
    cfg = json.loads((run_dir / "config.json").read_text())["config"]
    # resolved: every default written out, the training band narrowed by the margin
    assert cfg["algo"] == "dppo" and cfg["learner"]["hops"] == 1 and cfg["env"]["start_hour"] is None
    assert cfg["env"]["v_min_pu"] == pytest.approx(0.955) and cfg["env"]["v_max_pu"] == pytest.approx(1.045)
    sc = pd.read_csv(run_dir / "scalars.csv")
    assert list(sc.columns) == ["iteration", "env_steps", "wall_s", "tag", "value"]
    assert sorted(set(sc["iteration"])) == [1, 2] and sc["env_steps"].max() == 64
    ev = sc[sc["tag"] == "eval/energy_loss_mwh"]
    assert ev["env_steps"].tolist() == [32, 64] and (ev["value"] > 0).all()
    for tag in ("train/episode_return", "loss/value", "time/env_s", "time/update_s", "time/steps_per_s"):
        assert (sc["tag"] == tag).sum() == 2, tag
    summary = pd.read_csv(run_dir / "compare" / "summary.csv")
    # the selected policy (validated at every curve point) is the comparison's: the curve point
    # of the selected steps is the comparison's figure, the same policy on the same day
    val = sc[sc["tag"] == "val/energy_loss_mwh"]
    assert val["env_steps"].tolist() == [32, 64] and (val["value"] > 0).all()
    chosen = int(sc.loc[sc["tag"] == "val/selected_env_steps", "value"].iloc[-1])
    assert chosen in (32, 64)
    name = run_dir.name  # the run is named by its folder, as `gridrl compare` and `evaluate` name it
    dppo = summary.set_index("controller").loc[name]
    at = lambda tag: sc[(sc["tag"] == tag) & (sc["env_steps"] == chosen)]["value"].item()  # noqa: E731
    assert at("eval/energy_loss_mwh") == pytest.approx(dppo["energy_loss_mwh"], rel=1e-9)
    assert at("eval/controllable_rate") == pytest.approx(dppo["controllable_rate"], rel=1e-9)
    assert summary["controller"].tolist() == ["none", "droop-ieee1547-b", name]
    comm = summary.set_index("controller")["communication"]
    assert comm[name] > 0 and comm["none"] == 0  # messages to 1-hop neighbours are counted
    acting = sc.loc[sc["tag"] == "comm/acting", "value"].iloc[-1]
    training = sc.loc[sc["tag"] == "comm/training", "value"].iloc[-1]
    # deployed, each agent also sends its neighbours one float of the envelope's outage alerts
    feeder = gridrl.load_feeder("ieee33")
    alerts = float((feeder.hop_distance == 1).sum()) / len(feeder.agents)
    assert comm[name] == pytest.approx(acting + alerts) and training > acting  # critic messages, advantage sums
    html = (run_dir / "report.html").read_text()
    assert "Training" in html and "Evaluation on whole days" in html and "droop-ieee1547-b" in html


def test_validation_days_are_held_out_of_training_and_select_the_run_policy(tiny, tmp_path, monkeypatch):
    from gridrl.marl.train import TrainError, select, validation_split

    feeder = gridrl.load_feeder("ieee33")
    train_days, pool = feeder.days("train"), feeder.days("val")
    rest, val = validation_split(feeder, 20)
    assert rest == train_days and len(val) == 20 and set(val) <= set(pool)
    assert val[0] in pool[:2] and val[-1] in pool[-2:]  # spread through the validation days
    assert validation_split(feeder) == (train_days, pool) and validation_split(feeder, 0) == (train_days, [])
    with pytest.raises(TrainError, match="has 37 validation days"):
        validation_split(feeder, len(pool) + 1)

    # the training environment never draws a validation day
    cfg = resolve_train_config(read_toml(tiny), source="tiny", overrides={"steps": 96})
    seen: list[int] = []
    from gridrl.env.core import VoltageControlEnv
    real_reset = VoltageControlEnv.reset

    def spy(self, *a, **k):
        obs = real_reset(self, *a, **k)
        if self.num_envs == cfg.num_envs:
            seen.extend(int(d) for d in self.day_pool)
        return obs
    monkeypatch.setattr(VoltageControlEnv, "reset", spy)
    res = train("ieee33", cfg, out=tmp_path / "run", progress=False, log=lambda m: None)
    _, val2 = validation_split(feeder, 2)
    assert seen and not set(seen) & set(val2)
    # the run's policy is the one the selection rule picks among the validations, stored with
    # the checkpoint (2 validation days of 8 steps: the tolerance of 3 steps is a rate of 3/16)
    sc = res.scalars
    v = sc[sc["tag"].isin(["val/controllable_rate", "val/energy_loss_mwh"])].pivot(
        index="env_steps", columns="tag", values="value")
    best = select([{"env_steps": int(k), "controllable_rate": r["val/controllable_rate"],
                    "energy_loss_mwh": r["val/energy_loss_mwh"]} for k, r in v.iterrows()], 3 / 16)["env_steps"]
    ckpt = read_checkpoint(tmp_path / "run")
    assert ckpt["driver"]["best"]["env_steps"] == best
    assert [x["env_steps"] for x in ckpt["driver"]["validations"]] == v.index.tolist()
    loaded = gridrl.load_policy(tmp_path / "run").state_dict()
    for k, t in ckpt["selected"].items():
        assert torch.equal(loaded[k], t), k
    same_as_last = all(torch.equal(t, ckpt["learner"]["policy"][k]) for k, t in ckpt["selected"].items())
    assert same_as_last == (best == 96)


def test_a_run_without_a_comparison_puts_its_curve_look_in_the_ledger(tiny, tmp_path, monkeypatch):
    """Every look at the test days goes into the ledger: with no comparison to name the learning
    curve, the curve's last point is a row of its own (variant ``VARIANT curve``: the config's name); a curve on the
    validation days is no look at the test days and adds none."""
    from gridrl import ledger

    book = tmp_path / "ledger.csv"
    monkeypatch.setenv("GRIDRL_LEDGER", str(book))
    cfg = tmp_path / "nocompare.toml"
    cfg.write_text(tiny.read_text().replace('compare = ["none", "droop"]', "compare = []"))
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "ieee33", "--config", str(cfg), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = ledger.read(book)
    assert len(rows) == 1 and rows["variant"].iloc[0] == "nocompare curve" and int(rows["selected_step"].iloc[0]) == 64
    sc = pd.read_csv(out / "scalars.csv")
    last = sc[sc["env_steps"] == 64].set_index("tag")["value"]
    assert int(rows["test_days"].iloc[0]) == int(last["eval/days"]) == 1
    assert float(rows["energy_loss_mwh"].iloc[0]) == pytest.approx(last["eval/energy_loss_mwh"], abs=1e-4)
    assert "not the selected one" in rows["note"].iloc[0]
    recorded = json.loads((out / "config.json").read_text())
    recorded["config"]["eval_split"] = "val"
    (out / "config.json").write_text(json.dumps(recorded))
    assert ledger.append_curve(out) is None and len(ledger.read(book)) == 1


def test_load_policy_acts_without_an_environment(run_dir, day):
    policy = gridrl.load_policy(run_dir)
    run = gridrl.marl.open_run(run_dir)
    assert policy.hops == 1 and policy.name == run_dir.name and run.algo == "dppo"
    env = gridrl.make_env("ieee33", split="test", num_envs=2, days=[day, day],
                          config=gridrl.marl.run.evaluation_env_config(run.env_config))
    obs = env.reset()
    a = policy.act(obs)
    assert a.shape == (2, 6) and torch.equal(a[0], a[1])  # deterministic: same day, same action
    ckpt = read_checkpoint(run_dir)
    assert ckpt["header"]["feeder"] == "ieee33" and ckpt["header"]["algo"] == "dppo"


def test_run_folders_are_controllers_in_evaluate_and_compare(run_dir, day, tmp_path):
    res = runner.invoke(app, ["evaluate", str(run_dir), "--days", str(day), "--out", str(tmp_path / "ev"),
                              "--no-report"])
    assert res.exit_code == 0, res.output
    days = pd.read_parquet(tmp_path / "ev" / "days.parquet")
    assert days["controller"].tolist() == [run_dir.name] and days["hops"].tolist() == [1]
    res = runner.invoke(app, ["compare", "--feeders", "ieee33", "--controllers", f"none,{run_dir}", "--days", str(day),
                              "--out", str(tmp_path / "cmp"), "--no-report"])
    assert res.exit_code == 0, res.output
    assert set(pd.read_parquet(tmp_path / "cmp" / "days.parquet")["controller"]) == {"none", run_dir.name}
    # the same policy, the same day, the same name: the same figures as the run's own comparison
    own = pd.read_parquet(run_dir / "compare" / "days.parquet").set_index("controller")
    got = days.set_index("controller")
    assert got.loc[run_dir.name, "energy_loss_mwh"] == pytest.approx(own.loc[run_dir.name, "energy_loss_mwh"])
    # a comparison TOML takes run folders too
    toml = tmp_path / "cmp.toml"
    toml.write_text(f'feeders = ["ieee33"]\ndays = [{day}]\n[[controllers]]\nrun = "{run_dir}"\nlabel = "mine"\n')
    res = runner.invoke(app, ["compare", "--config", str(toml), "--out", str(tmp_path / "cmp2"), "--no-report"])
    assert res.exit_code == 0, res.output


def test_a_deployed_run_hands_over_on_its_agents_own_statistics(run_dir):
    """A run with shared weights keeps, beside its pooled normaliser, each agent's own statistics
    of the same observations (their count-weighted average over agents is the pooled mean); the
    checkpoint brings them back and the deployed policy's hand-over tests them, not the pool."""
    from gridrl.env import EnvConfig
    from gridrl.marl.run import deployed

    policy = gridrl.load_policy(run_dir)
    own, pooled = policy.own_statistics, policy.obs_norm
    assert own is policy.agent_norm and own.per_agent and not pooled.per_agent
    assert own.mean.shape == (6, len(policy.obs_names))
    w = own.count * own.valid
    torch.testing.assert_close((own.mean * w).sum(0) / w.sum(0).clamp(min=1), pooled.mean * (w.sum(0) > 0))
    assert not torch.equal(own.mean[0], own.mean[1])
    feeder = gridrl.load_feeder("ieee33")
    mean, std, _ = deployed(policy, feeder, EnvConfig())._stats
    torch.testing.assert_close(mean, own.mean)
    assert "pooled" not in deployed(policy, feeder, EnvConfig()).information
    ablation = deployed(policy, feeder, EnvConfig(), envelope={"handover_statistics": "pooled"})
    assert ablation._stats[0].shape == pooled.mean.shape and "(pooled statistics)" in ablation.information


def test_a_run_is_refused_on_another_feeder(run_dir, tmp_path):
    res = runner.invoke(app, ["compare", "--feeders", "ieee141", "--controllers", f"none,{run_dir}",
                              "--out", str(tmp_path / "x")])
    one_line_error(res, "was trained on feeder 'ieee33', not 'ieee141'")
    res = runner.invoke(app, ["evaluate", str(run_dir), "--feeder", "ieee69", "--out", str(tmp_path / "y")])
    one_line_error(res, "was trained on feeder 'ieee33', not 'ieee69'")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_retrained_run_is_never_served_a_stale_cell(run_dir, day, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(run_dir, run)
    cfg = CompareConfig(feeders=("ieee33",), controllers=(ControllerSpec(run=str(run)),), days=(day,))
    first = run_compare(cfg, out=tmp_path / "cmp", progress=False)
    again = run_compare(cfg, out=tmp_path / "cmp", progress=False)
    assert (first.ran, again.ran) == (1, 0)
    # "retrain": another checkpoint in the same folder (weights changed)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    served = ckpt["selected"]  # the run's policy: the best validated one
    key = next(k for k in served if k.endswith("head.2.bias"))
    served[key] += 0.5
    torch.save(ckpt, run / "checkpoint.pt")
    third = run_compare(cfg, out=tmp_path / "cmp", progress=False)
    assert third.ran == 1
    assert third.days["energy_loss_mwh"].iloc[0] != first.days["energy_loss_mwh"].iloc[0]


def test_report_of_a_run_folder(run_dir, tmp_path):
    res = runner.invoke(app, ["report", str(run_dir), "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    html = (tmp_path / "r.html").read_text()
    assert "Where the time went" in html and "plotly" in html


# --------------------------------------------------------------------------------------------
# resume: a killed run, resumed, ends exactly where an uninterrupted one ends
# --------------------------------------------------------------------------------------------


def _final_state(run: Path) -> dict:
    c = read_checkpoint(run)
    return {"learner": c["learner"], "env_rng": c["env_rng"], "selected": c.get("selected"),
            "best": c["driver"].get("best"), "scalars": pd.read_csv(run / "scalars.csv")}


# dmpo: a tiny model, imagination from the second iteration, a physics check every third
TINY_DMPO = "[learner]\nensemble = 2\nmodel_updates = 4\nmodel_batch = 8\nimagine_from = 1\nmodel_check_every = 3\n"


@pytest.mark.parametrize("algo", ["dppo", "dmpo", pytest.param("cppo", marks=pytest.mark.slow)])
def test_resume_after_a_kill_ends_where_an_uninterrupted_run_ends(algo, tmp_path, day):
    cfg_file = tmp_path / "run.toml"
    text = TINY.format(day=day).replace("steps = 64", "steps = 320").replace(
        'compare = ["none", "droop"]', "compare = []").replace("eval_every_steps = 32", "eval_every_steps = 160")
    cfg_file.write_text(text.replace("[learner]\n", TINY_DMPO) if algo == "dmpo" else text)
    cfg = resolve_train_config(read_toml(cfg_file), source=str(cfg_file), overrides={"algo": algo})
    whole = tmp_path / "whole"
    train("ieee33", cfg, out=whole, progress=False, log=lambda m: None)

    cut = tmp_path / "cut"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "gridrl.cli", "train", "ieee33", "--algo", algo, "--config",
                             str(cfg_file), "--out", str(cut), "--no-progress"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (cut / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed = read_checkpoint(cut)
    killed_at, cpu_at_kill = killed["learner"]["iteration"], killed["driver"]["cpu_s"]
    assert 1 <= killed_at < 10, "the run was not killed mid-way"
    res = runner.invoke(app, ["train", "ieee33", "--out", str(cut), "--resume", "--no-progress"])
    assert res.exit_code == 0, res.output
    a, b = _final_state(whole), _final_state(cut)
    assert a["learner"]["iteration"] == 10
    assert_identical(a["learner"], b["learner"])
    assert_identical(a["env_rng"], b["env_rng"])
    # the validated choice carries over the kill: the same policy chosen at the same step
    assert a["best"] is not None and a["best"] == b["best"]
    assert_identical(a["selected"], b["selected"])
    keep = ["iteration", "env_steps", "tag", "value"]
    not_time = lambda df: df[~df["tag"].str.startswith("time/")][keep].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(not_time(a["scalars"]), not_time(b["scalars"]))
    # the CPU time carries over the kill: it keeps growing from the checkpoint's, never restarts
    cpu = b["scalars"].loc[b["scalars"]["tag"] == "time/cpu_s", "value"]
    assert 0 < cpu_at_kill < cpu.iloc[-1] and cpu.is_monotonic_increasing


# --------------------------------------------------------------------------------------------
# bad input: one line, nothing lost
# --------------------------------------------------------------------------------------------


def test_a_run_folder_that_exists_needs_resume(run_dir, tiny):
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    res = runner.invoke(app, ["train", "ieee33", "--config", str(tiny), "--out", str(run_dir)])
    one_line_error(res, "already exists; add --resume")
    assert before == {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    res = runner.invoke(app, ["train", "ieee33", "--config", str(tiny), "--out", str(run_dir), "--resume",
                              "--seed", "7"])
    one_line_error(res, "holds a run with other settings (seed differ)")


def test_train_config_problems_are_listed_together(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('stepz = 10\nnum_envs = 0\n[env]\nforecast_step = 1\n[learner]\nhops = -1\nlr = "fast"\n')
    with pytest.raises(SpecError) as exc:
        resolve_train_config(read_toml(bad), source=str(bad))
    msg = str(exc.value)
    for part in ("stepz: unknown key", "env.forecast_step: unknown key", "learner.lr: expected a number"):
        assert part in msg, msg
    values = tmp_path / "values.toml"
    values.write_text('num_envs = 0\n[env]\nepisode_hours = 30.0\n[learner]\nhops = -1\n')
    with pytest.raises(SpecError) as exc:
        resolve_train_config(read_toml(values), source=str(values))
    for part in ("num_envs must be ≥ 1", "episode_hours must lie in (0, 24]", "hops must be ≥ 0"):
        assert part in str(exc.value), str(exc.value)
    res = runner.invoke(app, ["train", "ieee33", "--config", str(bad), "--out", str(tmp_path / "r")])
    one_line_error(res, "stepz: unknown key")
    res = runner.invoke(app, ["train", "ieee33", "--algo", "sac", "--out", str(tmp_path / "r")])
    one_line_error(res, "unknown algorithm 'sac'")
    ipo = tmp_path / "ippo.toml"
    ipo.write_text("algo = 'ippo'\n[learner]\nhops = 2\n")
    res = runner.invoke(app, ["train", "ieee33", "--config", str(ipo), "--out", str(tmp_path / "r")])
    one_line_error(res, "ippo has no neighbours (hops = 0)")
    assert not (tmp_path / "r").exists()


def test_damaged_or_foreign_checkpoints_are_one_line(run_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is damaged or not a gridrl checkpoint"):
        gridrl.load_policy(broken)
    res = runner.invoke(app, ["train", "ieee33", "--out", str(broken), "--resume"])
    one_line_error(res, "is damaged or not a gridrl checkpoint")
    res = runner.invoke(app, ["evaluate", str(broken)])
    one_line_error(res, "is damaged or not a gridrl checkpoint")

    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    ckpt = torch.load(other / "checkpoint.pt", weights_only=True)
    ckpt["header"]["layout_version"] = 99
    torch.save(ckpt, other / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="has checkpoint layout 99"):
        gridrl.load_policy(other)
    ckpt["header"]["layout_version"] = 1
    ckpt["header"]["algo"] = "ippo"
    torch.save(ckpt, other / "checkpoint.pt")
    res = runner.invoke(app, ["train", "ieee33", "--out", str(other), "--resume"])
    one_line_error(res, "is a ippo checkpoint on ieee33")
    with pytest.raises(CheckpointError, match="holds no checkpoint.pt"):
        gridrl.load_policy(tmp_path)


def test_nan_in_an_update_stops_and_keeps_the_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    from gridrl.marl.dppo import DPPO

    real = DPPO._update

    def poisoned(self, samples):
        out = real(self, samples)
        if self.iteration == 1:  # the second update goes wrong
            with torch.no_grad():
                next(self.policy.actor.parameters()).fill_(float("nan"))
        return out

    monkeypatch.setattr(DPPO, "_update", poisoned)
    out = tmp_path / "nan"
    res = runner.invoke(app, ["train", "ieee33", "--config", str(tiny), "--out", str(out), "--no-progress"])
    one_line_error(res, "NaN in the update of iteration 2", "last good checkpoint (iteration 1) is kept")
    ckpt = read_checkpoint(out)
    assert ckpt["learner"]["iteration"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["learner"]["policy"].values() if v.is_floating_point())
    with pytest.raises(TrainingDiverged):
        cfg = resolve_train_config(read_toml(tiny), source="tiny")
        train("ieee33", cfg, out=tmp_path / "nan2", progress=False, log=lambda m: None)


# --------------------------------------------------------------------------------------------
# the training benchmark's machinery (tiny sizes; the figures come from experiments/bench_train.py)
# --------------------------------------------------------------------------------------------


def test_train_bench_splits_the_time_and_compares_in_one_process():
    from gridrl.marl.bench import run_train_bench, to_markdown

    r = run_train_bench("ieee33", num_envs=4, rounds=2, pandapower_steps=2)
    assert r["iteration_steps"] == 4 * r["episode_steps"] and r["torch_threads"] >= 1
    shares = r["env_share"] + r["act_share"] + r["update_share"]
    assert 0.5 < shares <= 1.0 + 1e-9  # the three phases are (nearly) the whole iteration
    assert r["train_vs_env_alone"] == pytest.approx(r["train_steps_per_s"] / r["env_alone_steps_per_s"])
    assert 0 < r["train_vs_env_alone"] < 1  # learning costs time: never faster than the env alone
    text = to_markdown(r, command="x")
    assert "feeder-steps / s, training end to end" in text and "Target: ≥ 2,000" in text
    res = runner.invoke(app, ["bench", "train", "--algo", "sac"])
    one_line_error(res, "unknown algorithm 'sac'")


def test_the_quality_experiment_runs_end_to_end_on_a_tiny_budget(tmp_path, day):
    """experiments/learners.py: train, compare, summarize and report, with its own config format."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("learners_exp", ROOT / "experiments" / "learners.py")
    exp = importlib.util.module_from_spec(spec)
    sys.modules["learners_exp"] = exp  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(exp)
    cfg = tmp_path / "exp.toml"
    cfg.write_text(f"""
feeders = ["ieee33"]
algos = ["ippo"]
seeds = 1
baselines = ["none"]
days = [{day}]
runs = "{tmp_path / 'runs'}"
out = "{tmp_path / 'out'}"
[steps]
ieee33 = 32
[variants.forecast]
[variants.no-forecast]
env = {{ forecast_steps = 0 }}
[train]
num_envs = 4
eval_days = [{day}]
[train.env]
episode_hours = 2.0
[train.learner]
hidden = 8
message_dim = 4
""")
    # a worker skips runs that a live process has claimed, takes over a dead process's claim,
    # trains, releases its claims and stops without reporting
    taken = tmp_path / "runs" / "ieee33" / "ippo-forecast-seed0.claim"
    taken.parent.mkdir(parents=True)
    taken.write_text(str(os.getpid()))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / "runs" / "ieee33" / "ippo-no-forecast-seed0.claim").write_text(str(gone.pid))
    exp.main(["--config", str(cfg), "--no-progress", "--worker"])
    assert (tmp_path / "runs" / "ieee33" / "ippo-no-forecast-seed0" / "checkpoint.pt").exists()
    assert not (tmp_path / "runs" / "ieee33" / "ippo-forecast-seed0").exists() and not (tmp_path / "out").exists()
    assert [p.name for p in taken.parent.glob("*.claim")] == [taken.name]
    taken.unlink()
    from gridrl import ledger

    looked = len(ledger.read())
    exp.main(["--config", str(cfg), "--no-progress"])
    rows = ledger.read().iloc[looked:]  # one ledger row per reported run, with its selected step
    curve = rows["variant"] == "curve"  # and one for the learning curve of the run trained in this call
    assert curve.sum() == 1 and rows[curve]["source"].str.endswith("ippo-forecast-seed0").all()
    rows = rows[~curve]
    assert sorted(rows["variant"]) == ["forecast", "no-forecast"] and (rows["test_days"] == 1).all()
    assert (rows["algorithm"] == "ippo").all() and rows["source"].str.startswith("python experiments/learners.py").all()
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert sorted(runs["variant"]) == ["forecast", "no-forecast"] and (runs["env_steps"] == 32).all()
    assert (runs["train_cpu_s"] > 0).all() and (runs["train_cpu_s"] < 600).all()  # CPU time is logged
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| none |" in summary and "| ippo forecast | 1 |" in summary
    curves = pd.read_csv(tmp_path / "out" / "curves.csv")
    assert set(curves["tag"]) >= {"eval/controllable_rate", "eval/energy_loss_mwh"}
    assert (tmp_path / "out" / "report.html").stat().st_size > 100_000
    assert set(pd.read_parquet(tmp_path / "out" / "compare" / "ieee33" / "days.parquet")["day"]) == {day}
    no_fc = read_checkpoint(tmp_path / "runs" / "ieee33" / "ippo-no-forecast-seed0")["header"]
    assert no_fc["env_config"]["forecast_steps"] == 0 and not any("forecast" in n for n in no_fc["obs_names"])
    exp.main(["--config", str(cfg), "--no-progress"])  # again: every run is finished, nothing retrains
    # a finished run is never reported under settings it was not trained with (a default or the
    # file changed since): the experiment stops with one line naming what differs
    cfg.write_text(cfg.read_text().replace("message_dim = 4", "message_dim = 4\ngamma = 0.9"))
    stamp = (tmp_path / "runs" / "ieee33" / "ippo-forecast-seed0" / "checkpoint.pt").stat().st_mtime_ns
    with pytest.raises(SpecError, match=r"trained with other settings than planned \(learner.gamma differ\)"):
        exp.main(["--config", str(cfg), "--no-progress"])
    assert (tmp_path / "runs" / "ieee33" / "ippo-forecast-seed0" / "checkpoint.pt").stat().st_mtime_ns == stamp
    # a variant may be limited to some algorithms, never to one the experiment does not train
    two = exp.Experiment(feeders=("ieee33", "ieee69"), algos=("ippo", "dppo"), seeds=1, steps={"ieee33": 32, "ieee69": 32},
                         variants={"a": {"feeders": ["ieee33"]}, "b": {"algos": ["dppo"], "learner": {"hidden": 8}}})
    assert [(r["algo"], r["variant"], r["feeder"]) for r in exp.plan(two, "t")] == [
        ("ippo", "a", "ieee33"), ("dppo", "a", "ieee33"), ("dppo", "b", "ieee33"), ("dppo", "b", "ieee69")]
    with pytest.raises(SpecError, match="not in algos"):
        exp.plan(dataclasses.replace(two, algos=("ippo",)), "t")
    with pytest.raises(SpecError, match="not in feeders"):
        exp.plan(dataclasses.replace(two, feeders=("ieee69",)), "t")
    # a feeder's budget may differ per algorithm, and then names every algorithm trained
    per_algo = dataclasses.replace(two, steps={"ieee33": {"ippo": 64, "dppo": 16}, "ieee69": 32})
    assert [(r["algo"], r["variant"], r["config"].steps) for r in exp.plan(per_algo, "t") if r["feeder"] == "ieee33"] == [
        ("ippo", "a", 64), ("dppo", "a", 16), ("dppo", "b", 16)]
    own = dataclasses.replace(two, variants={"a": {"steps": 8}, "b": {"steps": 0}})
    with pytest.raises(SpecError, match="variants.b.steps: a number of environment steps"):
        exp.plan(own, "t")
    assert {r["config"].steps for r in exp.plan(dataclasses.replace(own, variants={"a": {"steps": 8}}), "t")} == {8}
    with pytest.raises(SpecError, match="no budget for algorithm 'dppo'"):
        exp.plan(dataclasses.replace(two, steps={"ieee33": {"ippo": 64}, "ieee69": 32}), "t")


def test_training_configs_of_the_experiments_load_and_tuning_sees_validation_days_only():
    """Every training TOML in experiments/ resolves; every tuning config is marked as one and
    evaluates on validation days only; with a test day in it, it is refused."""
    for path in sorted((ROOT / "experiments").glob("t*_ieee*.toml")):
        cfg = resolve_train_config(read_toml(path), source=str(path))
        assert cfg.algo == ("dmpo" if "dmpo" in path.name else "dppo"), path
    tunes = sorted((ROOT / "experiments").glob("tune_*.toml"))
    assert len(tunes) == 4
    for path in tunes:
        tune = resolve_train_config(read_toml(path), source="tune")
        assert tune.tuning and tune.eval_split == "val" and tune.eval_days is None and not tune.compare, path
        for change in ({"eval_split": "test"}, {"compare": ["droop"]}):
            with pytest.raises(SpecError, match="tuning = true evaluates on validation days only"):
                resolve_train_config({**read_toml(path), **change}, source="tune")


def test_validations_keep_the_trained_reactive_capability_at_night_and_nothing_random():
    """A run trained with q_at_night = true is validated (and its learning curve drawn) with
    night-time reactive power too; the training's randomisation, noise and narrowed band are not
    carried into the whole-day evaluations."""
    from gridrl.env import EnvConfig
    from gridrl.marl.train import TRAIN_ENV_DEFAULTS, _whole_days_config

    trained = EnvConfig(**{**TRAIN_ENV_DEFAULTS, "q_at_night": True, "v_min_pu": 0.955, "v_max_pu": 1.045})
    got = _whole_days_config(trained)
    assert got.q_at_night is True and got.start_hour == 0.0 and got.episode_hours == 24.0
    assert got.observation == trained.observation
    default = EnvConfig()
    for k in ("sensor_noise_pu", "message_dropout", "outage_prob", "load_scale_range", "pv_scale_range", "v_min_pu"):
        assert getattr(got, k) == getattr(default, k), k
    assert _whole_days_config(EnvConfig(**TRAIN_ENV_DEFAULTS)).q_at_night is None  # the feeder's own
