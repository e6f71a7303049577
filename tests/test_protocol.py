"""The experiment protocol: three disjoint day sets, a selection rule that one out-of-band step
does not flip, tuning that never sees a test day, the results ledger, the published settings as
`gridrl train`'s defaults, and progress that reads well in a log."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import gridrl
from gridrl import ledger
from gridrl.cli import app
from gridrl.grid.spec import SplitSpec
from gridrl.marl.train import published_settings, resolve_train_config, select

from conftest import one_line_error

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


# --------------------------------------------------------------------------------------------
# days
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ieee33", "ieee141"])
def test_three_disjoint_day_sets_cover_the_year_and_test_days_are_unchanged(name):
    feeder = gridrl.load_feeder(name)
    train, val, test = (feeder.days(s) for s in ("train", "val", "test"))
    assert test == list(range(2, 366, 5))  # every fifth day from day 2, as before the validation set
    assert val == [d for d in range(4, 366, 10)] and len(val) == 37  # every tenth from day 4: never a test day
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert sorted(train + val + test) == feeder.days("all") and len(train) == 256
    with pytest.raises(ValueError, match="'train', 'val', 'test' or 'all'"):
        feeder.days("validation")


def test_a_validation_rule_that_only_hits_test_days_is_refused():
    with pytest.raises(ValueError, match="every validation day .* is a test day"):
        SplitSpec(test_every=5, test_offset=2, val_every=5, val_offset=2)
    SplitSpec(val_every=5, val_offset=4)  # one in five: fine


def test_environments_accept_validation_days_and_keep_the_sets_apart():
    env = gridrl.make_env("ieee33", split="val", num_envs=2)
    assert set(env.day_pool) <= set(env.feeder.days("val"))
    with pytest.raises(gridrl.env.core.EnvError, match="not val days"):
        gridrl.make_env("ieee33", split="val", num_envs=1, days=[2])  # a test day
    with pytest.raises(gridrl.env.core.EnvError, match="not train days"):
        gridrl.make_env("ieee33", split="train", num_envs=1, days=[4])  # a validation day


def test_feeders_show_lists_the_three_sets(tmp_path):
    res = runner.invoke(app, ["feeders", "show", "ieee33", "--out", str(tmp_path / "m.html")])
    assert res.exit_code == 0, res.output
    lines = {ln.split()[0]: ln for ln in res.output.splitlines() if ln.strip().split()[:2] in
             (["train", "days"], ["val", "days"], ["test", "days"])}
    assert set(lines) == {"train", "val", "test"}
    assert "256:" in lines["train"] and "37:" in lines["val"] and "73:" in lines["test"]
    assert "every 10th day from day 4" in lines["val"] and "every 5th day from day 2" in lines["test"]


# --------------------------------------------------------------------------------------------
# the selection rule
# --------------------------------------------------------------------------------------------


def _v(steps, rate, loss):
    return {"env_steps": steps, "controllable_rate": rate, "energy_loss_mwh": loss}


def test_selection_does_not_flip_on_one_out_of_band_step():
    step = 1 / 3552  # one step of 37 validation days of 96 steps
    tol = 3 * step
    early, late = _v(8192, 1.0, 12.0), _v(24576, 1.0, 9.8)
    assert select([early, late], tol) is late
    # the same run where one validation step of the later policy left the band (another
    # machine's rounding): the old rule (rate first) fell back to the early, lossier policy
    late_one_out = _v(24576, 1.0 - step, 9.8)
    assert select([early, late_one_out], tol) is late_one_out
    assert select([early, late_one_out], 0.0) is early  # what a rule without tolerance does
    # beyond the tolerance keeping the band wins again
    assert select([early, _v(24576, 1.0 - 4 * step, 9.8)], tol)["env_steps"] == 8192
    # ties on loss: the earlier policy
    assert select([_v(2, 1.0, 5.0), _v(1, 1.0, 5.0)], tol)["env_steps"] == 1
    with pytest.raises(ValueError):
        select([], tol)


# --------------------------------------------------------------------------------------------
# tuning never sees a test day
# --------------------------------------------------------------------------------------------


def test_a_tuning_config_with_a_test_day_is_refused_with_one_line(tmp_path):
    src = (ROOT / "experiments" / "tune_dmpo_ieee33_val.toml").read_text()
    for old, new in (('eval_split = "val"', 'eval_split = "test"'), ("compare = []", 'compare = ["droop"]')):
        bad = tmp_path / "tune.toml"
        bad.write_text(src.replace(old, new))
        res = runner.invoke(app, ["train", "ieee33", "--config", str(bad), "--out", str(tmp_path / "run")])
        one_line_error(res, "tuning = true evaluates on validation days only")
        assert not (tmp_path / "run").exists()
    # test days given by number in a tuning config's validation split: refused too
    cfg = resolve_train_config({"tuning": True, "eval_split": "val", "eval_days": [2], "compare": [],
                                "steps": 32, "num_envs": 1}, source="t")
    from gridrl.evaluate import DaysNotInSplit, check_days
    with pytest.raises(DaysNotInSplit, match="not val days"):
        check_days(gridrl.load_feeder("ieee33"), cfg.eval_split, cfg.eval_days)


# --------------------------------------------------------------------------------------------
# the ledger
# --------------------------------------------------------------------------------------------

ROW = dict(feeder="ieee33", algorithm="dmpo", variant="demo", seed=0, selected_step=24576, test_days=73,
           controllable_rate=1.0, energy_loss_mwh=35.59, config={"a": 1}, note="n")


def test_ledger_rows_are_appended_never_removed(tmp_path):
    path = tmp_path / "ledger.csv"
    a = ledger.append(**ROW, path=path)
    before = path.read_text()
    b = ledger.append(**{**ROW, "seed": 1, "note": "two\nlines, and a comma"}, path=path)
    assert path.read_text().startswith(before)  # the old content is kept, byte for byte
    df = ledger.read(path)
    assert list(df.columns) == list(ledger.COLUMNS) and len(df) == 2
    assert df["seed"].tolist() == [0, 1] and df["note"].iloc[1] == "two lines, and a comma"
    assert a["config_hash"] == b["config_hash"] == ledger.config_hash({"a": 1}) and len(a["config_hash"]) == 12
    assert a["commit"]  # this checkout's commit (or the version of an installed gridrl)
    assert not list(tmp_path.glob(".ledger.csv.*.tmp"))  # nothing half-written left behind
    assert len(ledger.rows_matching(df, seed=1)) == 1 and "35.59 MWh" in ledger.describe(df.iloc[0])


def test_a_row_names_the_learning_curve_that_looked_at_the_test_days():
    """A run whose curve evaluated the test days says so in its row's note, from its recorded
    config or its config object alike; a curve on validation days is no look at the test days."""
    from gridrl.marl.train import resolve_train_config

    cfg = resolve_train_config({"algo": "dppo", "steps": 64, "eval_every_steps": 32, "eval_split": "test"}, source="t")
    note = "learning curve on the test days every 32 steps (reported, chooses nothing)"
    assert ledger.curve_note(cfg) == ledger.curve_note({"eval_split": "test", "eval_every_steps": 32}) == note
    assert ledger.curve_note({"eval_split": "test", "eval_every_steps": None}).startswith("learning curve on the test days at the end")
    assert ledger.curve_note({"eval_split": "val", "eval_every_steps": 32}) == ""


def test_ledger_refuses_bad_rows_and_foreign_files(tmp_path):
    path = tmp_path / "ledger.csv"
    with pytest.raises(ledger.LedgerError, match="controllable_rate must be in"):
        ledger.append(**{**ROW, "controllable_rate": 1.5}, path=path)
    with pytest.raises(ledger.LedgerError, match="energy_loss_mwh must be a finite number"):
        ledger.append(**{**ROW, "energy_loss_mwh": float("nan")}, path=path)
    assert not path.exists()
    path.write_text("x,y\n1,2\n")
    with pytest.raises(ledger.LedgerError, match="is not a gridrl ledger"):
        ledger.append(**ROW, path=path)
    assert path.read_text() == "x,y\n1,2\n"


def test_concurrent_writers_lose_no_row(tmp_path):
    path = tmp_path / "ledger.csv"
    code = ("import sys; from gridrl import ledger\n"
            "for i in range(15): ledger.append(feeder='ieee33', algorithm='dppo', seed=int(sys.argv[1]), "
            "selected_step=i, test_days=1, controllable_rate=1.0, energy_loss_mwh=1.0, path=sys.argv[2])")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(k), str(path)]) for k in range(3)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    df = ledger.read(path)
    assert len(df) == 45 and sorted(df.groupby("seed").size().tolist()) == [15, 15, 15]


def test_the_committed_ledger_is_a_ledger_and_holds_the_readme_figures():
    df = ledger.read(ROOT / "reports" / "ledger.csv")
    assert len(df) >= 1 and (df["test_days"] >= 1).all()
    assert ((df["controllable_rate"] >= 0) & (df["controllable_rate"] <= 1)).all()
    # the figure the README's quick start cites comes from a row
    demo = df[(df["algorithm"] == "dmpo") & (df["feeder"] == "ieee33") & (df["variant"] == "demo")]
    assert len(demo) >= 1


def test_a_finished_train_run_appends_its_test_day_row(tmp_path, monkeypatch, sunny_days):
    path = tmp_path / "ledger.csv"
    monkeypatch.setenv("GRIDRL_LEDGER", str(path))
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(f"""steps = 32
num_envs = 4
compare = ["none"]
compare_days = [{sunny_days[0]}]
validation_days = 2
validate_every_steps = 32
[env]
episode_hours = 2.0
[learner]
hidden = 8
message_dim = 4
epochs = 1
""")
    res = runner.invoke(app, ["train", "ieee33", "--config", str(cfg), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    df = ledger.read(path)
    assert len(df) == 1
    r = df.iloc[0]
    assert (r["feeder"], r["algorithm"], r["variant"], r["seed"], r["test_days"]) == ("ieee33", "dppo", "tiny", 0, 1)
    assert r["selected_step"] == 32 and r["source"] == str(tmp_path / "run")
    summary = {row["controller"]: row for row in csv.DictReader(open(tmp_path / "run" / "compare" / "summary.csv"))}
    assert float(r["energy_loss_mwh"]) == pytest.approx(float(summary["run"]["energy_loss_mwh"]), abs=1e-4)
    # progress without a terminal: one line per validation, no carriage return
    assert "\r" not in res.output
    assert sum("validation: controllable" in ln for ln in res.output.splitlines()) == 1
    # resumed, the finished run is compared again: a second look, a second row
    res = runner.invoke(app, ["train", "ieee33", "--config", str(cfg), "--out", str(tmp_path / "run"), "--resume"])
    assert res.exit_code == 0, res.output
    assert len(ledger.read(path)) == 2


def test_a_sweep_appends_a_row_per_run_it_evaluates_on_test_days(tmp_path, monkeypatch, sunny_days):
    path = tmp_path / "ledger.csv"
    monkeypatch.setenv("GRIDRL_LEDGER", str(path))
    cfg = tmp_path / "tiny.toml"
    cfg.write_text("steps = 32\nnum_envs = 4\ncheckpoint_every_s = 0\n[env]\nepisode_hours = 2.0\n"
                   "[learner]\nhidden = 8\nmessage_dim = 4\nepochs = 1\n")
    out = tmp_path / "sweep"
    args = ["sweep", "--feeders", "ieee33", "--algos", "dppo", "--seeds", "2", "--config", str(cfg), "--baselines",
            "none", "--days", str(sunny_days[0]), "--out", str(out), "--no-progress", "--no-report"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    df = ledger.read(path)
    assert sorted(df["seed"]) == [0, 1] and set(df["variant"]) == {"sweep"} and set(df["test_days"]) == {1}
    assert set(df["feeder"]) == {"ieee33"} and set(df["algorithm"]) == {"dppo"}
    summary = {r["controller"]: r for r in csv.DictReader(open(out / "compare" / "summary.csv"))}
    for _, r in df.iterrows():
        mine = summary[f"ieee33-dppo-seed{r['seed']}"]
        assert float(r["energy_loss_mwh"]) == pytest.approx(float(mine["energy_loss_mwh"]), abs=1e-4)
        assert r["source"] == f"gridrl sweep --out {out}" and r["selected_step"] == 32
    # resumed with one run's cell gone: that run is evaluated again (a row), the other is not
    import shutil

    shutil.rmtree(next((out / "compare" / "cells").glob("*/ieee33-dppo-seed1/seed0")))
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    df = ledger.read(path)
    assert len(df) == 3 and df.iloc[-1]["seed"] == 1


# --------------------------------------------------------------------------------------------
# defaults and progress
# --------------------------------------------------------------------------------------------


def test_train_defaults_are_the_published_settings_per_feeder_size():
    small, line = published_settings(gridrl.load_feeder("ieee33"), "dmpo")
    assert small["steps"] == 40960 and small["num_envs"] == 32 and small["learner"] == {"hidden": 64, "message_dim": 32}
    assert "experiments/dmpo_ieee33.toml" in line and "2.9 min in all" in line and "1.4 CPU min" in line
    _, quoted = published_settings(gridrl.load_feeder("ieee141"), "ippo")  # not timed with the defaults
    assert "1.5 CPU min of training" in quoted
    mid, _ = published_settings(gridrl.load_feeder("ieee141"), "dppo")
    assert mid["steps"] == 147456 and mid["validate_every_steps"] == 8192
    for path, feeder in (("dmpo_ieee33.toml", "ieee33"), ("dmpo_ieee141.toml", "ieee141")):
        from gridrl.config import read_toml

        exp = read_toml(ROOT / "experiments" / path)
        for algo in ("dmpo", "dppo"):
            data, _ = published_settings(gridrl.load_feeder(feeder), algo)
            budget = exp["steps"][feeder]
            assert data["steps"] == (budget[algo] if isinstance(budget, dict) else budget)
            for k, v in exp["train"].items():
                assert data[k] == v, (path, k)
    resolve_train_config(small, source="defaults")


def test_the_bar_shows_the_latest_validation():
    from gridrl.marl.train import _postfix, _progress_line

    stats = {"val/controllable_rate": 1.0, "val/energy_loss_mwh": 9.775, "val/selected_env_steps": 24576.0}
    assert "val ctrl 1.0000, val MWh 9.78, selected 24,576" in _postfix(stats)
    line = _progress_line(24576, 40960, 61.0, stats)
    assert "\r" not in line and "\n" not in line and "selected: the policy of 24,576 steps" in line


def test_is_terminal_follows_the_stream_and_the_override(monkeypatch):
    import io

    from gridrl.terminal import is_terminal

    class Tty(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.delenv("GRIDRL_PROGRESS", raising=False)
    assert is_terminal(Tty()) and not is_terminal(io.StringIO())
    monkeypatch.setenv("GRIDRL_PROGRESS", "lines")
    assert not is_terminal(Tty())
    monkeypatch.setenv("GRIDRL_PROGRESS", "bar")
    assert is_terminal(io.StringIO())


def test_piped_training_writes_lines_and_a_terminal_gets_the_bar(tmp_path, sunny_days):
    """A real process, its stderr a pipe: no carriage return anywhere in the log."""
    cfg = tmp_path / "t.toml"
    cfg.write_text("""steps = 64
num_envs = 4
compare = []
eval_every_steps = 32
eval_days = [2]
validation_days = 2
validate_every_steps = 32
[env]
episode_hours = 2.0
[learner]
hidden = 8
message_dim = 4
epochs = 1
""")
    env = {k: v for k, v in os.environ.items() if k != "GRIDRL_PROGRESS"}
    gridrl_cmd = str(Path(sys.executable).parent / "gridrl")
    proc = subprocess.run([gridrl_cmd, "train", "ieee33", "--config", str(cfg), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("step ")]
    assert len(lines) == 2 and all("validation: controllable" in ln and "evaluation: controllable" in ln
                                   for ln in lines)


def test_a_tuning_experiment_compares_on_validation_days_and_refuses_test_days():
    import importlib.util

    from gridrl.errors import SpecError

    spec = importlib.util.spec_from_file_location("learners_protocol", ROOT / "experiments" / "learners.py")
    exp = importlib.util.module_from_spec(spec)
    sys.modules["learners_protocol"] = exp  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(exp)
    tune = exp.Experiment(feeders=("ieee33",), algos=("dppo",), seeds=1, steps={"ieee33": 32}, tuning=True)
    runs = exp.plan(tune, "t")
    assert runs and all(r["config"].tuning and r["config"].eval_split == "val" for r in runs)
    assert exp.split_of(tune) == "val" and exp.split_of(exp.Experiment(feeders=("ieee33",), algos=("dppo",))) == "test"
    assert exp.ledger_rows(tune, None, runs, command="x") == 0  # a tuning experiment writes no ledger row
    with pytest.raises(SpecError, match="tuning = true evaluates on validation days only"):
        exp.plan(exp.Experiment(feeders=("ieee33",), algos=("dppo",), seeds=1, steps={"ieee33": 32}, tuning=True,
                                train={"eval_split": "test"}), "t")


def test_the_stability_criterion_compares_the_variants_span_with_the_seeds_spread():
    import importlib.util

    spec = importlib.util.spec_from_file_location("stability_protocol", ROOT / "experiments" / "selection_stability.py")
    exp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exp)
    rows = [{"seed": s, "variant": v, "test_mwh": m} for s, v, m in
            ((0, "threads1", 42.0), (0, "threads2", 42.0), (0, "chunk16", 42.5),
             (1, "threads1", 41.0), (2, "threads1", 43.0), (1, "chunk16", 41.9))]
    c = exp.criterion(rows)
    assert c["spread"] == pytest.approx(2.0) and c["seeds"] == 3
    assert c["spans"] == {0: pytest.approx(0.5), 1: pytest.approx(0.9)} and c["met"] is True
    # another number of scenarios per iteration is another training run: beside the criterion, not in it
    assert exp.criterion(rows + [{"seed": 2, "variant": "envs16", "test_mwh": 45.5}]) == c
    rows.append({"seed": 2, "variant": "chunk16", "test_mwh": 45.5})  # 2.5 MWh from its threads1 run
    assert exp.criterion(rows)["met"] is False
    assert exp.criterion(rows[:3])["met"] is None  # one seed: no spread to compare with
