"""The command line end to end: tables, maps, and one clear line for every user mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from typer.testing import CliRunner

from gridrl.cli import app
from gridrl.errors import OutputError
from gridrl.io import write_text

runner = CliRunner()


def test_feeders_table_lists_the_library():
    res = runner.invoke(app, ["feeders"])
    assert res.exit_code == 0, res.output
    for name in ("ieee33", "ieee69", "ieee141", "mv-rural", "mv-urban", "mvlv-rural"):
        assert name in res.output
    assert "pandapower:case33bw" in res.output and "simbench:1-MVLV-rural-all-0-sw" in res.output


def test_feeders_show_writes_a_self_contained_map(tmp_path):
    out = tmp_path / "map.html"
    res = runner.invoke(app, ["feeders", "show", "ieee33", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "agents" in res.output and "202.7 kW" in res.output
    html = out.read_text()
    assert "plotly" in html and "<script src=\"http" not in html  # plotly.js embedded, opens offline
    assert "PV inverters" in html and "bus13" in html


def test_unknown_feeder_is_one_line_exit_2_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "gridrl.cli", "feeders", "show", "ieee14l"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1
    assert "unknown feeder 'ieee14l'" in lines[0] and "ieee33, ieee69, ieee141" in lines[0]


def test_bad_spec_file_lists_its_problems(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text('name = "x"\ndescription = "d"\n[source]\nkind = "json"\ncase = "nope.json"\n'
                    '[pv]\nplacement = "spread"\n[profiles]\nmapping = "assign"\n')
    res = runner.invoke(app, ["feeders", "show", str(spec)])
    assert res.exit_code == 2
    assert "pv.count must be at least 1" in res.output


def test_public_api_names_resolve():
    import gridrl

    for name in gridrl.__all__:
        assert getattr(gridrl, name) is not None
    env = gridrl.make_env("ieee33", num_envs=2, seed=0)
    assert env.n_agents == 6
    assert gridrl.make_controller("none", gridrl.load_feeder("ieee33")).hops == 0


def test_output_path_in_the_way_is_one_line(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("keep me")
    folder, under_file = tmp_path / "folder", tmp_path / "file" / "map.html"
    for out, text in ((folder, f"cannot write {folder}: it is a folder; give a file path"),
                      (under_file, f"cannot write {under_file}: {tmp_path / 'file'} is a file, not a folder; "
                                   "choose another path")):
        res = runner.invoke(app, ["feeders", "show", "ieee33", "--out", str(out)])
        assert res.exit_code == 2, res.output
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert lines == [f"error: {text}"]
    assert (tmp_path / "file").read_text() == "keep me"


def test_unwritable_output_is_an_output_error(tmp_path, monkeypatch):
    target = tmp_path / "summary.md"
    target.write_text("old")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", denied)
    with pytest.raises(OutputError) as exc:
        write_text(target, "new")
    assert str(exc.value) == f"cannot write {target}: Permission denied; choose another path or fix its permissions"
    assert target.read_text() == "old"


def test_config_that_is_a_folder_or_not_text(tmp_path):
    res = runner.invoke(app, ["compare", "--config", str(tmp_path)])
    assert res.exit_code == 2 and res.stderr.strip() == f"error: {tmp_path}: is a folder; give the path of a .toml file"
    binary = tmp_path / "cmp.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    res = runner.invoke(app, ["compare", "--config", str(binary)])
    assert res.exit_code == 2 and res.stderr.strip() == f"error: {binary}: not a text file (TOML is UTF-8 text)"


def test_report_of_a_missing_folder(tmp_path):
    res = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert res.exit_code == 2
    assert res.stderr.strip() == (f"error: {tmp_path / 'nope'} does not exist; give the --out folder of a "
                                  "`gridrl compare`, `gridrl evaluate` or `gridrl train` run")


def test_unknown_split_is_one_line():
    for cmd in (["evaluate", "--feeder", "ieee33", "--split", "holdout"],
                ["compare", "--feeders", "ieee33", "--controllers", "none", "--split", "holdout"]):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 2, res.output
        assert "split must be test, val, train or all, got 'holdout'" in res.output


def test_default_outputs_go_under_out_or_gridrl_out_dir(tmp_path, monkeypatch):
    from gridrl.io import default_out

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GRIDRL_OUT_DIR", raising=False)
    res = runner.invoke(app, ["feeders", "show", "ieee33"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "feeders" / "ieee33.html").is_file()
    assert not (tmp_path / "reports").exists(), "nothing lands in the package's committed folders"
    assert default_out("compare") == Path("out/compare")
    assert default_out("evaluate", "ieee33-none-test") == Path("out/evaluate/ieee33-none-test")
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setenv("GRIDRL_OUT_DIR", str(elsewhere))
    res = runner.invoke(app, ["feeders", "show", "ieee33"])
    assert res.exit_code == 0, res.output
    assert (elsewhere / "feeders" / "ieee33.html").is_file()
    assert default_out("runs", "ieee33-dmpo") == elsewhere / "runs" / "ieee33-dmpo"
