"""What the CLI prints fits the terminal without cutting a name or a number: at 80 and 120
columns tables are split into panels that repeat the key columns; piped output is whole."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

import gridrl.cli
from gridrl.cli import app
from gridrl.compare import format_days, format_summary
from gridrl.terminal import layout_panels, print_table, table_width

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def baselines(tmp_path_factory):
    """The committed baseline comparison, copied, with the config it was made with (the
    experiment file may have grown since): re-running it skips every cell and prints the summary
    whose names used to be cut (droop-ieee1547-a vs -b)."""
    out = tmp_path_factory.mktemp("term") / "baselines"
    shutil.copytree(ROOT / "reports" / "baselines", out)
    made_with = json.loads((out / "config.json").read_text())
    made_with.pop("version")
    (out.parent / "config.toml").write_text(_toml(made_with))
    return out


def _toml(config: dict) -> str:
    """A comparison config as TOML (scalars, lists of scalars and tables of scalars suffice)."""
    # JSON strings, numbers, booleans and lists of them are TOML too
    lines = [f"{k} = {json.dumps(v)}" for k, v in config.items()
             if k != "controllers" and v is not None and not isinstance(v, dict)]
    for k, v in config.items():
        if isinstance(v, dict):
            lines += [f"[{k}]"] + [f'"{kk}" = {json.dumps(vv)}' for kk, vv in v.items()]
    for c in config["controllers"]:
        lines += ["[[controllers]]"] + [f"{kk} = {json.dumps(vv)}" for kk, vv in c.items() if vv is not None]
    return "\n".join(lines) + "\n"


def _compare(out: Path):
    return runner.invoke(app, ["compare", "--config", str(out.parent / "config.toml"), "--out", str(out), "--no-report"])


def _terminal(width: int) -> Console:
    return Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None)


def _every_value_readable(text: str, rows: list[dict]) -> None:
    for row in rows:
        line = next((ln for ln in text.splitlines() if re.match(rf"\s*{re.escape(str(row['feeder']))}\s+"
                                                                  rf"{re.escape(str(row['controller']))}\s", ln)), None)
        assert line is not None, f"row {row['controller']} printed whole"
    for row in rows:
        for header, value in row.items():
            assert str(value) in text, f"{header} = {value} of {row['controller']} printed in full"


@pytest.mark.parametrize("width", [80, 120])
def test_summary_fits_the_terminal_and_cuts_nothing(baselines, monkeypatch, width):
    console = _terminal(width)
    monkeypatch.setattr(gridrl.cli, "console", console)
    r = _compare(baselines)
    assert r.exit_code == 0, r.output
    text = console.file.getvalue()
    assert "…" not in text
    assert max(len(ln) for ln in text.splitlines()) <= width, "no line is wider than the terminal"
    rows = format_summary(pd.read_csv(baselines / "summary.csv"))
    assert len(rows) >= 10
    _every_value_readable(text, rows)
    panels = text.count("comparison summary")
    if width == 80:
        assert panels >= 2 and f"the full table is in {baselines / 'summary.md'}" in " ".join(text.split())
        # each panel repeats feeder and controller, so every row reads on its own
        assert text.count("droop-ieee1547-a") == panels * (pd.read_csv(baselines / "summary.csv")["controller"]
                                                      == "droop-ieee1547-a").sum()
    else:
        # 21 columns (losses split, loading, tap, information model, night setting) take three
        # panels at 120 columns, more at 80
        assert panels <= 3 and (panels == 1) == ("split into" not in text)


def test_piped_summary_is_one_whole_table(baselines):
    r = _compare(baselines)  # CliRunner's stdout is not a terminal, like a pipe
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "(continued)" not in out and "split into" not in out and "…" not in out
    _every_value_readable(out, format_summary(pd.read_csv(baselines / "summary.csv")))
    header = next(ln for ln in out.splitlines() if ln.startswith("feeder"))
    assert "controllable" in header and "flagged" in out, "all columns side by side"


def test_per_day_table_at_80_columns(baselines):
    days = pd.read_parquet(baselines / "days.parquet")
    days = days[days["controller"] == "droop-ieee1547-a"].head(5)
    console = _terminal(80)
    print_table(console, format_days(days), title="per day", keys=("day", "date"))
    text = console.file.getvalue()
    assert max(len(ln) for ln in text.splitlines()) <= 80 and "…" not in text
    for day, date in zip(days["day"], days["date"]):
        assert re.search(rf"^\s*{day}\s+{date}\s", text, re.M), "day and date lead every row"
    for rec in format_days(days):
        assert all(str(v) in text for v in rec.values())


def test_panels_balance_and_keep_the_keys():
    widths = [8, 16, 4, 12, 6, 6, 6, 7, 6, 8, 10, 7]
    panels = layout_panels(widths, keys=2, max_width=80)
    assert len(panels) == 2
    assert all(p[:2] == [0, 1] for p in panels)
    assert sorted(j for p in panels for j in p[2:]) == list(range(2, len(widths)))
    assert all(table_width([widths[j] for j in p]) <= 80 for p in panels)
    assert layout_panels(widths, keys=2, max_width=None) == [list(range(len(widths)))]
    # narrower than the keys plus one column: still one column per panel, never an empty panel
    assert layout_panels(widths, keys=2, max_width=20) == [[0, 1, j] for j in range(2, len(widths))]


def test_a_header_wraps_but_a_cell_never_does():
    console = _terminal(40)
    rows = [{"name": "simbench:1-MVLV-rural-all-0-sw", "floats/agent/step": 12.7, "out of band %": "0.001"}]
    print_table(console, rows, title="t", keys=("name",))
    text = console.file.getvalue()
    assert "simbench:1-MVLV-rural-all-0-sw" in text and "12.7" in text and "0.001" in text
    assert "floats/" in text and "agent/step" in text
