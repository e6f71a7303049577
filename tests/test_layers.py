"""gridrl's layers, written down once, and the imports held to them.

Every ``import`` in ``gridrl/`` — at module level or inside a function, where the lazy imports
that keep the CLI quick live — is read with :mod:`ast`. The tests fail on an import circle
between modules, on an import from a lower layer to a higher one, on an import between two
peers of one layer (controllers and learners know nothing of each other), and on a module that
belongs to no layer (a new module must be placed here).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gridrl"

#: The layers, lowest first. Each layer is a list of peer groups; a group is a list of module
#: prefixes (``gridrl.grid`` is every module under ``gridrl/grid/``). A module may import its own
#: group and any group of a lower layer; never a higher layer, never a peer group of its own layer.
LAYERS: list[tuple[str, list[list[str]]]] = [
    # utilities every layer uses; they know nothing of feeders, environments or learners
    ("utilities", [["gridrl.errors", "gridrl.version", "gridrl.config", "gridrl.io", "gridrl.threads",
                    "gridrl.terminal", "gridrl.provenance", "gridrl.cluster"]]),
    ("grid", [["gridrl.grid"]]),                          # feeders, power flow, sensitivities
    ("env", [["gridrl.env"]]),                            # the batched environment and its adapters
    ("control | marl", [["gridrl.control"], ["gridrl.marl"]]),  # controllers and learners: peers
    ("api", [["gridrl"]]),                                # the package root: the public façade over the above
    ("ledger", [["gridrl.ledger"]]),                      # the results ledger: rows from run folders and figures
    ("evaluate | sweep", [["gridrl.evaluate"], ["gridrl.sweep"]]),  # rollouts on days; training runs en masse
    ("score", [["gridrl.score"]]),                        # a policy scored on the task suite (by evaluate)
    ("export", [["gridrl.export"]]),                      # a trained policy as ONNX or IEEE 1547 curves
    ("compare", [["gridrl.compare"]]),                    # batch comparisons (no report)
    ("robustness", [["gridrl.robustness"]]),              # the fault and growth suite: comparisons per condition
    ("report", [["gridrl.report", "gridrl.training_report", "gridrl.plots"]]),  # reads results folders
    ("pipeline", [["gridrl.pipeline"]]),                  # train → compare → report, chained
    ("cli", [["gridrl.cli"]]),                            # the command line
]

#: What the report may read of a comparison: its configuration, its folder layout, its summary
#: tables — nothing of how it ran (cells, backends, the package root that re-exports them).
REPORT_READS = {"gridrl.compare.config", "gridrl.compare.folder", "gridrl.compare.summary"}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _target(name: str) -> str | None:
    """The gridrl module that ``import name`` loads last (a name inside a module: that module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> dict[str, int]:
    """Every gridrl module ``module`` imports, anywhere in its body, with the first line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            # ``from gridrl.compare import cells`` imports the submodule; ``from gridrl.compare
            # import run_compare`` the package
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for name in names:
            if name == "gridrl" or name.startswith("gridrl."):
                target = _target(name)
                if target is not None and target != module:
                    found.setdefault(target, node.lineno)
    return found


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _place(module: str) -> tuple[int, int] | None:
    """(layer, group) of ``module``: the longest prefix that names it (``gridrl`` names the root only)."""
    best, where = -1, None
    for i, (_, groups) in enumerate(LAYERS):
        for j, prefixes in enumerate(groups):
            for prefix in prefixes:
                inside = module.startswith(prefix + ".") and prefix != "gridrl"  # the root names itself only
                if (module == prefix or inside) and len(prefix) > best:
                    best, where = len(prefix), (i, j)
    return where


def _where(module: str, target: str) -> str:
    return f"{MODULES[module].relative_to(PACKAGE.parent)}:{GRAPH[module][target]}"


def test_the_walk_sees_function_level_imports():
    # cli imports nearly everything inside its commands; a walk of module level alone sees little
    assert "gridrl.pipeline" in GRAPH["gridrl.cli"]
    assert "gridrl.control.droop" in GRAPH["gridrl.compare.config"]  # inside ControllerSpec.key


def test_every_module_has_a_layer():
    lost = [m for m in MODULES if _place(m) is None]
    assert not lost, f"modules in no layer (add them to LAYERS in {Path(__file__).name}): {lost}"


def test_no_import_climbs_a_layer_or_crosses_to_a_peer():
    wrong = []
    for module, targets in GRAPH.items():
        (layer, group) = _place(module)
        for target in targets:
            (t_layer, t_group) = _place(target)
            if t_layer > layer:
                wrong.append(f"{_where(module, target)}: {module} ({LAYERS[layer][0]}) imports {target} "
                             f"({LAYERS[t_layer][0]}), a higher layer")
            elif t_layer == layer and t_group != group:
                wrong.append(f"{_where(module, target)}: {module} imports its peer {target} "
                             f"({LAYERS[layer][0]})")
    assert not wrong, "\n".join(wrong)


def _circles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for root in GRAPH:
        if root in index:
            continue
        work = [(root, iter(GRAPH[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            advanced = False
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(GRAPH[nxt])))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.append(m)
                    if m == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circles():
    circles = _circles()
    described = []
    for circle in circles:
        members = set(circle)
        edges = [f"{m} → {t} ({_where(m, t)})" for m in circle for t in GRAPH[m] if t in members]
        described.append("; ".join(edges))
    assert not circles, "import circles:\n" + "\n".join(described)


def test_the_report_reads_a_results_folder_and_nothing_of_how_the_comparison_ran():
    wrong = [f"{_where(m, t)}: {m} imports {t}"
             for m in GRAPH if _place(m) == _place("gridrl.report")
             for t in GRAPH[m] if (t == "gridrl.compare" or t.startswith("gridrl.compare.")) and t not in REPORT_READS]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("source, expected", [
    ("from gridrl.compare import run_compare\n", {"gridrl.compare"}),
    ("from gridrl.compare import folder\n", {"gridrl.compare.folder"}),
    ("def f():\n    from gridrl.marl.train import train\n", {"gridrl.marl.train"}),
    ("import gridrl.grid.feeder as f\n", {"gridrl.grid.feeder"}),
    ("from . import summary\n", {"gridrl.compare.summary"}),
    ("import numpy\n", set()),
])
def test_the_walk_reads_each_kind_of_import(tmp_path, source, expected):
    path = tmp_path / "probe.py"
    path.write_text(source, encoding="utf-8")
    assert set(_imports("gridrl.compare.probe", path)) == expected


def test_a_circle_and_an_upward_import_are_caught(monkeypatch):
    """The checks fail when they should: a function-level import from the environment to a
    learner climbs a layer and closes a circle."""
    graph = {m: dict(t) for m, t in GRAPH.items()}
    graph["gridrl.env.core"]["gridrl.marl.dppo"] = 1
    graph["gridrl.marl.dppo"]["gridrl.env.core"] = 1
    monkeypatch.setitem(globals(), "GRAPH", graph)
    assert ["gridrl.env.core", "gridrl.marl.dppo"] in [sorted(c) for c in _circles()]
    climbs = "gridrl.env.core .env. imports gridrl.marl.dppo .control . marl., a higher layer"
    with pytest.raises(AssertionError, match=climbs):
        test_no_import_climbs_a_layer_or_crosses_to_a_peer()
