"""Every snippet of README.md works, found automatically (the README is edited by many hands).

- ``python`` blocks run, in order, in one namespace, as a reader would paste them;
- ``toml`` blocks that are feeder specs are built for real: the spec is written next to a
  pandapower JSON net that has what it names (sgens of those names), then loaded;
- ``bash`` blocks: every ``gridrl …`` line is parsed by the real command line (an unknown command
  or option, a missing required option or a value of the wrong type fails), and the cheap ones
  run for real in a scratch folder (``feeders``, ``feeders show``, ``evaluate`` on one day);
  every ``make …`` line names a target of the Makefile.

A block of another language fails the test until this file learns how to check it.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from gridrl.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")
runner = CliRunner()


@dataclass(frozen=True)
class Snippet:
    lang: str
    line: int  # 1-based line of the opening fence
    code: str

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.lang})"


def snippets(text: str) -> list[Snippet]:
    """Fenced code blocks (indented ones inside lists too), dedented."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, start, body = m["indent"], i + 1, []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        assert i < len(lines), f"README.md:{start}: code block never closed"
        out.append(Snippet(m["lang"] or "text", start, "\n".join(body) + "\n"))
        i += 1
    return out


SNIPPETS = snippets(README.read_text(encoding="utf-8"))
CHECKED = {"python", "toml", "bash"}


def _of(lang: str) -> list[Snippet]:
    return [s for s in SNIPPETS if s.lang == lang]


def test_the_readme_has_snippets_of_every_kind_and_no_unchecked_ones():
    assert {"python", "toml", "bash"} <= {s.lang for s in SNIPPETS}
    unchecked = [str(s) for s in SNIPPETS if s.lang not in CHECKED]
    assert not unchecked, f"no check for these blocks; teach tests/test_readme.py: {unchecked}"


def test_python_snippets_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRIDRL_OUT_DIR", str(tmp_path / "out"))
    namespace: dict = {"__name__": "readme"}
    for snip in _of("python"):
        exec(compile(snip.code, str(snip), "exec"), namespace)  # noqa: S102 - the README's own code
    # the quick tour's objects are what it says they are
    if "res" in namespace and "env" in namespace:
        assert bool(namespace["res"].converged.all())
        assert tuple(namespace["actions"].shape) == (namespace["env"].num_envs, namespace["env"].n_agents)


# --------------------------------------------------------------------------------------------
# toml: feeder specs
# --------------------------------------------------------------------------------------------


def _net_for(spec: dict, folder: Path) -> None:
    """A pandapower JSON net for a README spec: case33bw (Baran & Wu) with one PV sgen per name
    the spec lists, on buses spread along the feeder."""
    import pandapower as pp
    import pandapower.networks as pn

    net = pn.case33bw()
    names = spec.get("pv", {}).get("sgen_names", [])
    buses = list(net.bus.index)
    for k, name in enumerate(names):
        pp.create_sgen(net, buses[(k + 1) * len(buses) // (len(names) + 1)], p_mw=0.5, name=name, type="PV")
    pp.to_json(net, str(folder / spec["source"]["case"]))


def test_feeder_spec_snippets_build(tmp_path):
    import gridrl

    specs = [s for s in _of("toml") if "[source]" in s.code]
    assert specs, "the README shows how to write a feeder spec"
    for k, snip in enumerate(specs):
        folder = tmp_path / f"spec{k}"
        folder.mkdir()
        spec = tomllib.loads(snip.code)
        if spec["source"]["kind"] == "json":
            _net_for(spec, folder)
        path = folder / f"{spec['name']}.toml"
        path.write_text(snip.code, encoding="utf-8")
        feeder = gridrl.load_feeder(path, cache=False)
        assert feeder.name == spec["name"], snip
        names = spec.get("pv", {}).get("sgen_names")
        if names:
            assert len(feeder.inverters) == len(names), snip


def test_other_toml_snippets_parse():
    for snip in _of("toml"):
        tomllib.loads(snip.code)


# --------------------------------------------------------------------------------------------
# shell: gridrl commands and make targets
# --------------------------------------------------------------------------------------------


def _commands(prefix: str) -> list[tuple[Snippet, list[str]]]:
    out = []
    for snip in _of("bash"):
        for line in snip.code.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == prefix:
                out.append((snip, words[1:]))
    return out


def _command(words: list[str]):
    """The command a ``gridrl`` line calls and its parsed context (raises on a usage error)."""
    cmd, path = typer.main.get_command(app), ["gridrl"]
    while hasattr(cmd, "commands") and words and not words[0].startswith("-"):
        sub = cmd.commands.get(words[0])
        assert sub is not None, f"`gridrl {' '.join(path[1:] + words[:1])}`: no such command"
        cmd, path, words = sub, path + [words[0]], words[1:]
    assert not (hasattr(cmd, "commands") and words), f"`{' '.join(path)}` takes a command, got {words}"
    return " ".join(path[1:]), cmd.make_context(" ".join(path), list(words))


GRIDRL_LINES = _commands("gridrl")


@pytest.mark.parametrize("snip, words", GRIDRL_LINES, ids=[" ".join(w) for _, w in GRIDRL_LINES])
def test_gridrl_lines_parse(snip, words):
    try:
        _command(list(words))
    except Exception as exc:  # the vendored click's UsageError and friends
        pytest.fail(f"{snip}: `gridrl {' '.join(words)}` does not parse: {exc}", pytrace=False)


def test_cheap_gridrl_lines_run(tmp_path, monkeypatch):
    import gridrl

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRIDRL_OUT_DIR", str(tmp_path / "out"))
    ran = []
    for snip, words in GRIDRL_LINES:
        name, ctx = _command(list(words))
        args = list(words)
        if name == "evaluate" and ctx.params.get("run") is not None:
            continue  # a trained run folder: the train tests run these
        if name == "evaluate":
            feeder = gridrl.load_feeder(ctx.params["feeder"])
            if ctx.params["days"] is None:  # one day is enough to show the line works
                args += ["--days", str(feeder.days(ctx.params["split"])[0])]
            args += ["--no-report"]
        elif name not in ("feeders", "feeders show"):
            continue
        r = runner.invoke(app, args)
        assert r.exit_code == 0, f"{snip}: `gridrl {' '.join(args)}` failed:\n{r.output}"
        ran.append(name)
    assert {"feeders", "feeders show", "evaluate"} <= set(ran)
    assert not (tmp_path / "reports").exists() and (tmp_path / "out").is_dir()


def test_make_lines_name_makefile_targets():
    targets = set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M))
    lines = _commands("make")
    assert lines
    for snip, words in lines:
        for target in (w for w in words if not w.startswith("-") and "=" not in w):
            assert target in targets, f"{snip}: `make {target}`: no such target in the Makefile"
