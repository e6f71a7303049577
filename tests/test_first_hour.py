"""A new user's first hour with `gridrl`: help texts that keep every word, mistakes that are one
line at once and leave nothing behind, and an interrupted run that says what it kept."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from rich.markup import render
from typer.testing import CliRunner

from gridrl.cli import app

from conftest import one_line_error

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

# one iteration of 4 scenarios × 8 steps on ieee33, nothing after training
TINY = """
steps = 32
num_envs = 4
validation_days = 0
compare = []
[env]
episode_hours = 2.0
[learner]
hidden = 16
message_dim = 8
epochs = 1
minibatches = 1
"""


@pytest.fixture()
def tiny(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


# --------------------------------------------------------------------------------------------
# --help keeps every word
# --------------------------------------------------------------------------------------------


def _commands(command, path: tuple[str, ...] = ()):
    yield path, command
    if hasattr(command, "list_commands"):  # a group (typer's own click, or click's)
        ctx = command.context_class(command)
        for name in command.list_commands(ctx):
            yield from _commands(command.get_command(ctx, name), (*path, name))


COMMANDS = list(_commands(typer.main.get_command(app)))


def _texts(command) -> list[str]:
    return [t for t in [command.help, *(getattr(p, "help", None) for p in command.params)] if t]


def test_every_command_is_walked():
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"train", "compare", "evaluate", "sweep", "tune-droop", "report", "feeders show", "bench env"} <= names


@pytest.mark.parametrize("path, command", COMMANDS, ids=[" ".join(p) or "gridrl" for p, _ in COMMANDS])
def test_help_texts_lose_no_word_to_markup(path, command):
    """Help texts are rich markup: a bracketed word (``[env]``, ``gridrl[ray]``) must be written
    ``\\[env]`` or it vanishes from ``--help``. Every bracketed word is then on the screen."""
    for text in _texts(command):
        assert render(text).plain == text.replace("\\[", "["), (
            f"`gridrl {' '.join(path)}`: markup would eat part of {text!r}; write a literal [ as \\\\[")
    words = {w for text in _texts(command) for w in re.findall(r"\\?(\[[^\]\s]*\])", text)}
    out = runner.invoke(app, [*path, "--help"], terminal_width=250).output
    flat = " ".join(out.replace("│", " ").split())
    for word in words:
        assert word.lstrip("\\") in flat, f"`gridrl {' '.join(path)} --help` lost {word}"


def test_the_words_once_lost_are_shown():
    train = runner.invoke(app, ["train", "--help"], terminal_width=250).output
    assert "[env]" in train and "[learner]" in train
    compare = runner.invoke(app, ["compare", "--help"], terminal_width=250).output
    assert "gridrl[ray]" in compare


# --------------------------------------------------------------------------------------------
# one line, at once, nothing written
# --------------------------------------------------------------------------------------------


def test_a_wrong_feeder_is_one_line_before_torch_or_pandas_load():
    """The argument checks come before the heavy imports (measured: 4.5–5.4 s before, under half a
    second after, on a loaded 2-core machine)."""
    probe = ("import sys\nfrom gridrl.cli import app\n"
             "try:\n    app(['train', 'nosuchfeeder'])\nexcept SystemExit as e:\n    code = e.code\n"
             "print(code, sorted(m for m in ('torch', 'pandas', 'pandapower') if m in sys.modules))\n")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.stdout.split("\n")[0] == "2 []", res.stdout + res.stderr
    assert "unknown feeder 'nosuchfeeder'" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_cuda_without_a_device_writes_nothing(tiny, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "ieee33", "--config", str(tiny), "--device", "cuda", "--out", str(out),
                              "--no-progress"])
    one_line_error(res, "no CUDA device is available here; use --device cpu")
    assert not out.exists()  # so the corrected command is not refused


@pytest.mark.parametrize("name, parts", [
    ("compare_baselines.toml", ("is a comparison config, not a training config",
                                "gridrl compare --config experiments/compare_baselines.toml")),
    ("learners.toml", ("is an experiment of several training runs",
                       "python experiments/learners.py --config experiments/learners.toml")),
])
def test_a_config_of_another_kind_says_what_it_is(name, parts, tmp_path):
    res = runner.invoke(app, ["train", "ieee33", "--config", f"experiments/{name}", "--out", str(tmp_path / "r")])
    one_line_error(res, *parts)
    assert len(res.output) < 250 and not (tmp_path / "r").exists()


def test_compare_and_sweep_say_the_same_of_a_file_of_another_kind(tmp_path):
    res = runner.invoke(app, ["compare", "--config", "experiments/demo.toml", "--out", str(tmp_path / "c")])
    one_line_error(res, "is a training config, not a comparison config",
                   "gridrl train FEEDER --config experiments/demo.toml")
    res = runner.invoke(app, ["sweep", "--feeders", "ieee33", "--config", "experiments/compare_stress.toml",
                              "--out", str(tmp_path / "s")])
    one_line_error(res, "is a comparison config, not a training config")
    assert not (tmp_path / "c").exists() and not (tmp_path / "s").exists()


@pytest.mark.parametrize("args", [["compare", "--feeders", "ieee33,nosuchfeeder", "--controllers", "none"],
                                  ["evaluate", "--feeder", "nosuchfeeder"], ["tune-droop", "--feeder", "nosuchfeeder"],
                                  ["sweep", "--feeders", "nosuchfeeder", "--out", "unused"]])
def test_every_command_names_an_unknown_feeder_first(args):
    one_line_error(runner.invoke(app, args), "unknown feeder 'nosuchfeeder'")


def test_unknown_keys_list_the_allowed_ones_once(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("stepz = 10\nseedz = 3\nhops = 1\n")
    res = runner.invoke(app, ["train", "ieee33", "--config", str(bad), "--out", str(tmp_path / "r")])
    one_line_error(res, "stepz: unknown key (allowed: ", "seedz: unknown key", "hops: unknown key")
    assert res.output.count("allowed:") == 1


# --------------------------------------------------------------------------------------------
# interrupted before the first checkpoint, and --resume
# --------------------------------------------------------------------------------------------


def _interrupt_training(monkeypatch):
    from gridrl.marl.dppo import DPPO

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(DPPO, "iterate", interrupted)


def test_ctrl_c_before_the_first_checkpoint_claims_none(tiny, tmp_path, monkeypatch):
    _interrupt_training(monkeypatch)
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "ieee33", "--config", str(tiny), "--algo", "dppo", "--out", str(out),
                              "--no-progress"])
    assert res.exit_code == 130, res.output
    assert "before the first checkpoint" in res.output and "keeps its last checkpoint" not in res.output
    assert "starts the run again from the beginning" in res.output
    assert not (out / "checkpoint.pt").exists()
    # --resume says that it starts from the beginning (it used to do so silently)
    res = runner.invoke(app, ["train", "ieee33", "--out", str(out), "--resume", "--no-progress"])
    assert "holds no checkpoint (the run stopped before its first): starting it again from the beginning" in res.output
    assert json.loads((out / "config.json").read_text())["config"]["steps"] == 32  # its own settings


def test_resume_into_an_empty_folder_says_it_starts_a_new_run(tiny, tmp_path, monkeypatch):
    _interrupt_training(monkeypatch)
    out = tmp_path / "new"
    res = runner.invoke(app, ["train", "ieee33", "--config", str(tiny), "--out", str(out), "--resume",
                              "--no-progress"])
    assert f"nothing to resume in {out}: starting a new run there" in " ".join(res.output.split())


def test_a_run_compared_before_runs_were_named_by_folder_keeps_its_comparison(tmp_path):
    """A run whose comparison was written when runs were labelled by their algorithm resumes into
    that comparison under the same label (else its folder would refuse the comparison)."""
    from gridrl.pipeline import _own_label

    folder = tmp_path / "run" / "compare"
    assert _own_label(folder) is None  # a new comparison: the run's folder name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"controllers": [{"name": "none"},
                                                                    {"run": str(tmp_path / "run"), "label": "dmpo"}]}))
    assert _own_label(folder) == "dmpo"
