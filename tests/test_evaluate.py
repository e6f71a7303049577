"""Evaluation tables, resumable comparisons and the evaluate/compare CLI, bad input included."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from gridrl.cli import app
import gridrl
from gridrl.compare import (CellProgress, CompareConfig, CompareError, ControllerSpec, cells_of, config_problems,
                            load_config, parse_controllers, prepare_out, run_compare, step_cost, summarize)
from gridrl.control import make_controller
from gridrl.env import EnvConfig
from gridrl.errors import SpecError
from gridrl.evaluate import DAY_COLUMNS, DaysNotInSplit, evaluate
from gridrl.pipeline import compare

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def day(sunny_days):
    """The sunniest test day: the band binds at noon without control."""
    return sunny_days[0]


@pytest.fixture(scope="module")
def small(tmp_path_factory, day):
    """A comparison of none, droop (mapdn) and opf on one sunny ieee33 day."""
    out = tmp_path_factory.mktemp("cmp") / "run"
    cfg = CompareConfig(feeders=("ieee33",), controllers=parse_controllers("none,droop:mapdn,opf"), days=(day,))
    return cfg, run_compare(cfg, out=out, progress=False)


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def test_evaluate_tables_are_consistent(feeder, day):
    days = [day, feeder.days("test")[0]]
    ev = evaluate(feeder, make_controller("none", feeder), days=days, voltage_days=[day])
    d, s, v = ev.days, ev.steps, ev.voltages
    assert list(d.columns) == DAY_COLUMNS and d["day"].tolist() == days
    assert len(s) == 2 * 96 and set(s["day"]) == set(days)
    assert len(v) == 96 * len(feeder.net.bus) and set(v["day"]) == {day} and v["vm_pu"].dtype == np.float32
    for _, row in d.iterrows():
        g = s[s["day"] == row["day"]]
        assert row["energy_loss_mwh"] == pytest.approx(g["loss_mw"].sum() * 0.25)
        assert row["controllable_rate"] == pytest.approx(g["controllable"].mean())
        assert row["share_out_of_band"] == pytest.approx(g["share_out_of_band"].mean())
        assert row["max_abs_dv_pu"] == pytest.approx(max((g["v_max_pu"] - 1).max(), (1 - g["v_min_pu"]).max()))
    sunny = d.set_index("day").loc[day]
    assert sunny["controllable_rate"] < 1 and sunny["violation_bus_hours"] > 0
    assert (d["reactive_energy_mvarh"] == 0).all() and (d["communication"] == 0).all()
    # the heat-map voltages are the per-step envelope's
    assert v["monitored"].sum() == 96 * int(np.sum(feeder.monitored))
    vv = v[v["monitored"]].groupby("step")["vm_pu"].max().to_numpy()
    mon_max = s[s["day"] == day]["v_max_pu"].to_numpy()
    np.testing.assert_allclose(vv, mon_max, atol=1e-6)


def test_agent_table_adds_up_to_the_feeder(feeder, day):
    """The per-agent table of the detail day agrees with the per-step totals, the inverter limits,
    the bus voltages and the feeder's profiles."""
    ev = evaluate(feeder, make_controller("droop", feeder, preset="mapdn"), days=[day], voltage_days=[day])
    a, s, v = ev.agents, ev.steps, ev.voltages
    assert len(a) == 96 * len(feeder.agents) and a["agent"].tolist()[:len(feeder.agents)] == list(feeder.agents)
    assert a["q_mvar"].dtype == np.float32
    by_step = a.groupby("step")[["q_mvar", "p_mw"]].sum()
    np.testing.assert_allclose(by_step["q_mvar"], s["q_mvar"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(by_step["p_mw"], s["pv_p_mw"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.groupby("step")["q_mvar"].apply(lambda q: q.abs().sum()), s["q_abs_mvar"],
                               rtol=1e-5, atol=1e-5)
    assert (a["q_mvar"].abs() <= a["q_avail_mvar"] + 1e-5).all()
    assert (a["q_mvar"] < 0).any(), "the sunny day pushes mapdn's droop to absorb"
    bus_of = feeder.inverters.drop_duplicates("agent").set_index("agent")["bus"]
    own = v.merge(a.assign(bus=a["agent"].map(bus_of)), on=["step", "bus"], suffixes=("_bus", "_agent"))
    np.testing.assert_array_equal(own["vm_pu_bus"], own["vm_pu_agent"])
    prof = feeder.profiles
    np.testing.assert_allclose(s["load_p_mw"], prof.load_p_mw[prof.day_steps(day)].sum(axis=1), rtol=1e-5)


def test_days_outside_the_split_are_refused(feeder):
    with pytest.raises(DaysNotInSplit) as exc:
        evaluate(feeder, make_controller("none", feeder), days=[0, 1, 2])
    assert str(exc.value) == ("day(s) 0, 1 are not test days of feeder 'ieee33' "
                              "(test days: 2, 7, 12, 17, 22, …, 362 (73 days))")


# --------------------------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------------------------


def test_compare_writes_tidy_results_and_summary(small):
    cfg, res = small
    out = res.out
    assert res.ran == 3 and res.skipped == 0
    days = pd.read_parquet(out / "days.parquet")
    assert len(days) == 3 and days["controller"].tolist() == ["none", "droop-mapdn", "opf"]
    for key in ("none", "droop-mapdn", "opf"):
        for table in ("days", "steps", "voltages"):
            assert (out / "cells" / "ieee33" / key / "seed0" / f"{table}.parquet").exists()
    s = res.summary.set_index("controller")
    assert s.loc["opf", "loss_gap_to_opf_pct"] == 0.0
    assert s.loc["opf", "controllable_rate"] == 1.0 and s.loc["none", "controllable_rate"] < 1.0
    assert s.loc["droop-mapdn", "loss_gap_to_opf_pct"] > 0
    assert s.loc["opf", "communication"] > 0 and s.loc["none", "communication"] == 0
    md = (out / "summary.md").read_text()
    assert md.startswith("| feeder | controller | days | controllable | out of band % |") and "| ieee33 | opf |" in md
    assert "- **floats/agent/step**: numbers each agent sends per step" in md, "the glossary follows the table"
    assert json.loads((out / "config.json").read_text())["feeders"] == ["ieee33"]
    droop = json.loads((out / "cells" / "ieee33" / "droop-mapdn" / "seed0" / "controller.json").read_text())
    assert droop["v_pu"] == [0.95, 1.0, 1.05] and droop["reference"] == "q_avail"


def test_compare_records_its_provenance(small):
    from gridrl.grid.feeder import resolve_spec
    from gridrl.provenance import read_provenance

    cfg, res = small
    prov = read_provenance(res.out)
    assert prov["config"] == json.loads(json.dumps(cfg.identity()))
    assert prov["feeders"]["ieee33"]["spec_hash"] == resolve_spec("ieee33").content_hash()
    first = prov["runs"][0]
    assert first["cells_to_run"] == 3 and first["gridrl_version"] and first["packages"]["pandapower"]
    assert first["date_utc"].endswith("+00:00") and first["command"]
    if (ROOT / ".git").exists():
        assert len(first["git"]["commit"]) == 40 and isinstance(first["git"]["dirty"], bool)


def test_compare_resumes_and_skips_finished_cells(small):
    cfg, res = small
    cells = res.out / "cells"
    before = _mtimes(cells)
    runs = len(json.loads((res.out / "provenance.json").read_text())["runs"])
    again = run_compare(cfg, out=res.out, progress=False)
    assert again.ran == 0 and again.skipped == 3 and _mtimes(cells) == before
    pd.testing.assert_frame_equal(again.days, res.days)
    # an interrupted run: one cell never finished
    (cells / "ieee33" / "droop-mapdn" / "seed0" / "days.parquet").unlink()
    resumed = run_compare(cfg, out=res.out, progress=False)
    assert resumed.ran == 1 and resumed.skipped == 2
    prov = json.loads((res.out / "provenance.json").read_text())["runs"]
    assert len(prov) == runs + 1 and prov[-1]["cells_to_run"] == 1, \
        "a run that did nothing adds no entry to provenance.json; the resumed one does"
    after = _mtimes(cells)
    assert {k: v for k, v in after.items() if "droop" not in k} == {k: v for k, v in before.items() if "droop" not in k}
    same = lambda df: df.drop(columns="seconds")  # noqa: E731 - wall time is the one non-deterministic column
    pd.testing.assert_frame_equal(same(resumed.days), same(res.days), check_exact=False)


def test_compare_refuses_an_out_dir_of_another_configuration(small, tmp_path):
    cfg, res = small
    before = _mtimes(res.out)
    other = CompareConfig(feeders=("ieee33",), controllers=parse_controllers("none,opf"), days=cfg.days)
    with pytest.raises(CompareError) as exc:
        run_compare(other, out=res.out, progress=False)
    assert str(exc.value) == (f"{res.out} holds a comparison of a different configuration (controllers differ); "
                              "use another --out or delete it")
    assert _mtimes(res.out) == before
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    with pytest.raises(CompareError, match="exists and holds no gridrl comparison"):
        run_compare(other, out=stray, progress=False)
    assert [p.name for p in stray.iterdir()] == ["notes.txt"]
    # a folder holding only hidden files (e.g. the .gitignore of a committed results folder) is free
    (stray / "notes.txt").unlink()
    (stray / ".gitignore").write_text("report.html\n")
    prepare_out(other, stray)
    assert (stray / "config.json").exists() and (stray / ".gitignore").read_text() == "report.html\n"


def test_compare_config_lists_every_problem(tmp_path):
    cfg = CompareConfig(feeders=("ieee33", "nowhere"), split="test", days=(0,),
                        controllers=(ControllerSpec(name="pid"), ControllerSpec(name="droop", preset="x"),
                                     ControllerSpec(name="none"), ControllerSpec(name="none")))
    with pytest.raises(CompareError) as exc:
        run_compare(cfg, out=tmp_path / "o", progress=False)
    msg = str(exc.value)
    for part in ("unknown controller 'pid'", "unknown droop preset 'x'", "controller 'none' is listed twice",
                 "unknown feeder 'nowhere'", "day(s) 0 are not test days of feeder 'ieee33'"):
        assert part in msg
    assert not (tmp_path / "o").exists()


def test_experiment_configs_load(tmp_path):
    cfg = load_config(ROOT / "experiments" / "compare_baselines.toml")
    stress = load_config(ROOT / "experiments" / "compare_stress.toml")
    assert stress.feeders == ("ieee33", "ieee69", "ieee141") and stress.out == "reports/stress"
    assert stress.env == EnvConfig(load_scale=1.2, pv_scale=1.5)
    assert [c.key for c in stress.controllers] == ["none", "droop-ieee1547-b", "droop-mapdn", "opf"]
    assert set(cfg.feeders) == set(gridrl.list_feeders()) and cfg.split == "test"
    assert [c.key for c in cfg.controllers] == ["none", "droop-ieee1547-a", "droop-ieee1547-b", "droop-mapdn",
                                                "droop-tuned", "opf"]
    assert not config_problems(cfg)
    days = {c.feeder: c.days for c in cells_of(cfg, tmp_path / "baselines")}
    test_days = gridrl.load_feeder("mvlv-rural").days("test")
    assert days["mvlv-rural"] == tuple(test_days[::4]) and days["ieee33"] is None  # every test day
    bad = tmp_path / "bad.toml"
    bad.write_text('feeders = ["ieee33"]\nseed = 3\n[[controllers]]\nname = "none"\ncolour = "red"\n')
    with pytest.raises(SpecError) as exc:
        load_config(bad)
    assert "seed: unknown key" in str(exc.value) and "controllers[0].colour: unknown key" in str(exc.value)


def test_compare_env_table_runs_every_cell_in_that_scenario(tmp_path, feeder, day, small):
    toml = tmp_path / "stress.toml"
    toml.write_text(f'feeders = ["ieee33"]\ndays = [{day}]\n[[controllers]]\nname = "none"\n'
                    f'[env]\nload_scale = 1.3\npv_scale = 1.5\n')
    cfg = load_config(toml)
    assert cfg.env == EnvConfig(load_scale=1.3, pv_scale=1.5)
    assert cfg.identity()["env"] == {"load_scale": 1.3, "pv_scale": 1.5}
    assert "env" not in small[0].identity()  # the default environment leaves the identity as it was
    res = run_compare(cfg, out=tmp_path / "s", progress=False)
    want = evaluate(feeder, make_controller("none", feeder), days=[day], env_config=cfg.env).days
    got, base = res.days.iloc[0], small[1].days.set_index("controller").loc["none"]
    assert got["energy_loss_mwh"] == pytest.approx(want["energy_loss_mwh"].iloc[0], rel=1e-12)
    assert got["max_abs_dv_pu"] > base["max_abs_dv_pu"]  # 50 % more PV on a sunny day
    other = dataclasses.replace(cfg, env=EnvConfig(load_scale=1.2, pv_scale=1.5))
    with pytest.raises(CompareError, match=r"different configuration \(env differ\)"):
        run_compare(other, out=tmp_path / "s", progress=False)


def test_compare_env_table_is_validated(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text('feeders = ["ieee33"]\n[[controllers]]\nname = "none"\n[env]\nload_scale = -1\n')
    with pytest.raises(SpecError, match="env: load_scale must be a number > 0, got -1.0"):
        load_config(toml)
    cfg = CompareConfig(feeders=("ieee33",), controllers=parse_controllers("none"),
                        env=EnvConfig(start_hour=6.0, episode_hours=12.0, outage_agents=("bus99",)))
    with pytest.raises(CompareError) as exc:
        run_compare(cfg, out=tmp_path / "o", progress=False)
    msg = str(exc.value)
    assert ("env.start_hour, env.episode_hours: a comparison runs every day of the split whole, from midnight, "
            "once; remove them from the [env] table") in msg
    assert "env.outage_agents: feeder 'ieee33' has no agent 'bus99'" in msg
    assert not (tmp_path / "o").exists()


def test_day_stride_is_checked(tmp_path):
    cfg = CompareConfig(feeders=("ieee33",), controllers=parse_controllers("none"), day_stride={"ieee69": 0})
    problems = config_problems(cfg)
    assert "day_stride names 'ieee69', which is not a feeder of the comparison" in problems
    assert "day_stride.ieee69 must be a whole number ≥ 1, got 0" in problems
    plain = CompareConfig(feeders=("ieee33",), controllers=parse_controllers("none"))
    assert "day_stride" not in plain.identity()  # older comparisons' config.json stays valid


def test_a_controller_can_be_limited_to_some_feeders(tmp_path, day):
    toml = tmp_path / "some.toml"
    toml.write_text(f'feeders = ["ieee33", "ieee69"]\ndays = [{day}]\n[[controllers]]\nname = "none"\n'
                    f'[[controllers]]\nname = "opf"\nfeeders = ["ieee33"]\n')
    cfg = load_config(toml)
    assert [(c.feeder, c.controller.key) for c in cells_of(cfg, tmp_path / "o")] == [
        ("ieee33", "none"), ("ieee33", "opf"), ("ieee69", "none")]
    assert "feeders" not in cfg.identity()["controllers"][0]  # unrestricted controllers keep their identity
    res = compare(cfg, out=tmp_path / "o", progress=False, report=True)  # the comparison, then its report
    summary = res.summary.set_index(["feeder", "controller"])
    assert sorted(summary.index) == [("ieee33", "none"), ("ieee33", "opf"), ("ieee69", "none")]
    assert summary.loc[("ieee33", "none"), "loss_gap_to_opf_pct"] > 0
    assert np.isnan(summary.loc[("ieee69", "none"), "loss_gap_to_opf_pct"])  # no optimum ran there
    assert (tmp_path / "o" / "report.html").is_file()
    bad = dataclasses.replace(cfg, controllers=(ControllerSpec(name="none", feeders=("ieee141",)),
                                                ControllerSpec(name="opf", feeders=())))
    problems = config_problems(bad)
    assert "controller 'none': feeders 'ieee141' is not among the comparison's feeders (ieee33, ieee69)" in problems
    assert "controller 'opf': feeders is empty (omit it to run on every feeder)" in problems


class _Bar:
    """Stands in for tqdm: records what the comparison tells its progress bar."""

    def __init__(self):
        self.n = 0.0
        self.total = 0.0
        self.desc = ""

    def update(self, x):
        self.n += x

    def set_description(self, text):
        self.desc = text


def test_progress_weighs_cells_by_their_cost(tmp_path):
    """The issue's case: at 90 % of the cells the bar said 1:12 left when 4:25 were left, because
    the last cell (the optimum on the largest feeder) counted like no control on the smallest."""
    cfg = CompareConfig(feeders=("ieee33", "mv-rural"), controllers=parse_controllers("none,droop:mapdn,opf"))
    cells = cells_of(cfg, tmp_path)
    bar = _Bar()
    prog = CellProgress(bar, cells)
    bar.total = prog.total
    assert set(prog.steps.values()) == {96}  # one batch of all test days: one step per quarter hour
    for cell in cells[:-1]:  # everything but the optimum on mv-rural
        for n in range(1, 97):
            prog.reach(cell, n)
    assert bar.desc == "mv-rural · droop-mapdn · seed 0"
    done = bar.n / prog.total
    assert 5 / 6 == pytest.approx(len(cells[:-1]) / len(cells))
    assert done < 0.5  # five of six cells done, but most of the work is still ahead
    # a retried task counts from zero again: nothing is added until it passes its first attempt
    prog.reach(cells[-1], 60)
    at = bar.n
    prog.reach(cells[-1], 10)
    assert bar.n == at
    prog.reach(cells[-1], 500)  # more steps than planned: never past the end
    assert bar.n == pytest.approx(prog.total)
    prog.finish(cells[-1])
    assert bar.n == pytest.approx(prog.total)
    # the estimate orders cells as their cost does
    none, droop, opf = (ControllerSpec(name="none"), ControllerSpec(name="droop", preset="mapdn"),
                        ControllerSpec(name="opf"))
    small, large = (33, 6, 1), (5479, 571, 1)
    assert step_cost(*small, none) < step_cost(*small, droop) < step_cost(*small, opf)
    assert step_cost(*large, none) < step_cost(*large, droop) < step_cost(*large, opf)
    assert step_cost(*large, opf) > 100 * step_cost(*small, opf)
    assert step_cost(33, 6, 10, none) == pytest.approx(10 * step_cost(33, 6, 1, none))


def test_summary_gap_is_relative_to_opf():
    rows = []
    for ctrl, loss in (("none", 2.0), ("opf", 1.6)):
        for seed in (0, 1):
            rows.append(dict(feeder="f", controller=ctrl, seed=seed, day=1, steps=96, controllable_rate=1.0,
                             share_out_of_band=0.0, mean_abs_dv_pu=0.01, max_abs_dv_pu=0.02, energy_loss_mwh=loss,
                             reactive_energy_mvarh=0.0, violation_bus_hours=0.0, unsettled_steps=0,
                             infeasible_steps=0, diverged_steps=0, communication=0.0))
    s = summarize(pd.DataFrame(rows)).set_index("controller")
    assert s.loc["none", "energy_loss_mwh"] == 2.0  # per seed, not summed over seeds
    assert s.loc["none", "loss_gap_to_opf_pct"] == pytest.approx(25.0)


# --------------------------------------------------------------------------------------------
# CLI: end to end and bad input (one red line, exit 2, nothing overwritten)
# --------------------------------------------------------------------------------------------


def _one_line_error(result, text: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_cli_evaluate_end_to_end(tmp_path, day):
    out = tmp_path / "ev"
    r = runner.invoke(app, ["evaluate", "--feeder", "ieee33", "--controller", "droop", "--preset", "ieee1547-b",
                            "--days", str(day), "--out", str(out), "--no-report"])
    assert r.exit_code == 0, r.output
    assert "droop-ieee1547-b" in r.stdout and "1 cell(s) run" in r.stdout
    assert (out / "cells" / "ieee33" / "droop-ieee1547-b" / "seed0" / "steps.parquet").exists()
    assert len(pd.read_parquet(out / "days.parquet")) == 1


@pytest.mark.parametrize("args, text", [
    (["--controller", "pid"], "unknown controller 'pid' — known controllers: none, droop, opf"),
    (["--controller", "droop", "--preset", "ieee1547-z"],
     "unknown droop preset 'ieee1547-z' — known presets: ieee1547-a, ieee1547-b, mapdn"),
    (["--controller", "droop", "--days", "0,2"],
     "day(s) 0 are not test days of feeder 'ieee33' (test days: 2, 7, 12, 17, 22, …, 362 (73 days))"),
    (["--controller", "droop", "--days", "two"], "--days takes comma-separated day numbers"),
    (["--controller", "droop", "--days", "2,,7"],
     "--days has an empty item in '2,,7'; give comma-separated day numbers, e.g. 2,7,12"),
    (["--controller", "droop", "--days", "2,7,"], "--days has an empty item in '2,7,'"),
    (["--controller", "none", "--load-scale", "0"],
     "--load-scale / --pv-scale: load_scale must be a number > 0, got 0.0"),
])
def test_cli_evaluate_bad_input(tmp_path, args, text):
    out = tmp_path / "ev"
    r = runner.invoke(app, ["evaluate", "--feeder", "ieee33", "--out", str(out), *args])
    _one_line_error(r, text)
    assert not out.exists()


def test_cli_curve_with_non_monotone_breakpoints(tmp_path):
    curve = tmp_path / "curve.toml"
    curve.write_text("v_pu = [0.95, 1.02, 1.0, 1.05]\nq = [0.4, 0.0, 0.0, -0.4]\n")
    out = tmp_path / "ev"
    r = runner.invoke(app, ["evaluate", "--feeder", "ieee33", "--controller", "droop", "--curve", str(curve),
                            "--out", str(out)])
    _one_line_error(r, "droop curve: v_pu breakpoints must increase strictly, got [0.95, 1.02, 1, 1.05]")
    assert not out.exists()


@pytest.mark.parametrize("body, text", [
    ('v_pu = "abc"\nq = [1, -1]\n',
     "droop curve: v_pu must be a list of numbers, e.g. v_pu = [0.95, 1.0, 1.05], got 'abc'"),
    ("v_pu = [0.95, 1.05]\n", "droop curve: missing q (a curve needs v_pu = [...] and q = [...])"),
])
def test_cli_curve_of_wrong_types_or_missing_keys(tmp_path, body, text):
    curve = tmp_path / "curve.toml"
    curve.write_text(body)
    out = tmp_path / "ev"
    r = runner.invoke(app, ["evaluate", "--feeder", "ieee33", "--curve", str(curve), "--out", str(out)])
    _one_line_error(r, f"{curve}: {text}")
    assert not out.exists()


def test_cli_compare_bad_input(small, tmp_path):
    cfg, res = small
    before = _mtimes(res.out)
    r = runner.invoke(app, ["compare", "--feeders", "ieee33", "--controllers", "none,opf", "--days",
                            str(cfg.days[0]), "--out", str(res.out)])
    _one_line_error(r, "holds a comparison of a different configuration (controllers differ); "
                       "use another --out or delete it")
    assert _mtimes(res.out) == before
    r = runner.invoke(app, ["compare", "--feeders", "ieee33", "--controllers", "none,droop:cat-c",
                            "--out", str(tmp_path / "x")])
    _one_line_error(r, "unknown droop preset 'cat-c'")
    r = runner.invoke(app, ["compare", "--config", str(ROOT / "experiments" / "compare_baselines.toml"),
                            "--feeders", "ieee33", "--out", str(tmp_path / "y")])
    _one_line_error(r, "--config already says what to compare; drop --feeders")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_compare_resumes(small):
    cfg, res = small
    r = runner.invoke(app, ["compare", "--feeders", "ieee33", "--controllers", "none,droop:mapdn,opf",
                            "--days", str(cfg.days[0]), "--out", str(res.out), "--no-report"])
    assert r.exit_code == 0, r.output
    assert "0 cell(s) run, 3 already done" in r.stdout and "opf" in r.stdout


def test_custom_droop_curve_from_an_experiment_file(tmp_path, day):
    toml = tmp_path / "cmp.toml"
    toml.write_text(f'feeders = ["ieee33"]\ndays = [{day}]\n'
                    '[[controllers]]\nname = "droop"\nlabel = "steep"\n'
                    'curve = {{v_pu = [0.97, 1.0, 1.03], q = [0.5, 0.0, -0.5], reference = "s_max"}}\n'
                    .replace("{{", "{").replace("}}", "}"))
    cfg = load_config(toml)
    res = run_compare(cfg, out=tmp_path / "out", progress=False)
    row = res.summary.iloc[0]
    assert row["controller"] == "steep" and row["reactive_energy_mvarh"] > 0
    assert (tmp_path / "out" / "cells" / "ieee33" / "steep" / "seed0" / "days.parquet").exists()


def test_compare_reruns_a_damaged_cell(small):
    cfg, res = small
    table = res.out / "cells" / "ieee33" / "none" / "seed0" / "steps.parquet"
    table.write_bytes(b"not parquet")
    r = runner.invoke(app, ["report", str(res.out)])
    _one_line_error(r, f"{table} is damaged (not a readable parquet table); run the same comparison again "
                       f"with --out {res.out} to redo that cell")
    again = run_compare(cfg, out=res.out, progress=False)
    assert again.ran == 1 and again.skipped == 2
    assert len(pd.read_parquet(table)) == 96
    same = lambda df: df.drop(columns="seconds")  # noqa: E731 - wall time is the one non-deterministic column
    pd.testing.assert_frame_equal(same(again.days), same(res.days), check_exact=False)
