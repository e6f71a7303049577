"""A fresh clone's first hour: `make demo` installs what the demo needs and says how to go on;
`make test` adds what the tests need; the README's Quick start says how to reach `gridrl`.

The Makefile is read through `make -n` (what it would run, nothing run) with the virtual
environment pointed at a folder that does not exist, so every step of a fresh setup shows.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import typer.main

from gridrl.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _dry_run(target: str, venv: Path) -> list[str]:
    make = shutil.which("make")
    if make is None:
        pytest.fail("`make` is needed to read the Makefile (apt-get install -y make)", pytrace=False)
    done = subprocess.run([make, "-n", "-C", str(ROOT), target, f"VENV={venv}"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _installs(lines: list[str], venv: Path) -> list[str]:
    """What each `pip install` line installs."""
    return [ln.split(" install ", 1)[1] for ln in lines if ln.startswith(f"{venv}/bin/pip install")]


def _parses(words: list[str]) -> None:
    cmd = typer.main.get_command(app)
    while hasattr(cmd, "commands") and words and not words[0].startswith("-"):
        cmd, words = cmd.commands[words[0]], words[1:]
    cmd.make_context("gridrl", list(words))  # a usage error raises


def test_demo_installs_no_extras_and_ends_with_the_next_commands(tmp_path):
    venv = tmp_path / "fresh" / ".venv"
    lines = _dry_run("demo", venv)
    installs = _installs(lines, venv)
    assert "-q -e ." in installs, installs
    assert not any("[" in i for i in installs), f"the demo installs an extra: {installs}"
    echoed = [shlex.split(ln)[1] if len(shlex.split(ln)) > 1 else "" for ln in lines if ln.startswith("echo")]
    tail = "\n".join(echoed)
    assert f"source {venv}/bin/activate" in tail and f"{venv}/bin/gridrl feeders" in tail
    commands = [shlex.split(e, comments=True) for e in echoed if e.startswith("  gridrl ")]
    assert len(commands) >= 2, "the demo names commands to run next"
    for words in commands:
        _parses(words[1:])


def test_make_test_installs_the_extras_its_tests_need(tmp_path):
    venv = tmp_path / "fresh" / ".venv"
    lines = _dry_run("test", venv)
    installs = _installs(lines, venv)
    extras = {e for i in installs for m in re.findall(r"\[([\w,-]+)\]", i) for e in m.split(",")}
    assert {"test", "bench", "ray"} <= extras, installs
    assert installs.index("-q -e .") < next(k for k, i in enumerate(installs) if "[" in i), "the demo's set first"
    assert any("pytest" in ln for ln in lines)
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8"), "CI runs the README's test command"


def test_quick_start_says_how_to_reach_gridrl_and_what_each_target_installs(tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "source .venv/bin/activate" in quick and ".venv/bin/gridrl" in quick
    assert re.search(r"\d[\d.,]* GB", quick), "the Quick start says how much the demo installs"
    venv = tmp_path / ".venv"
    for target in ("demo", "test"):
        for what in (i for i in _installs(_dry_run(target, venv), venv) if " -e " in f" {i}"):  # gridrl itself
            shown = what.removeprefix("-q ")
            assert f"pip install {shown}" in quick, (f"`make {target}` runs `pip install {shown}`: say so in the "
                                                     f"README's Quick start, with the install's size re-measured")
