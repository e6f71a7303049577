"""The feeder library: which feeder specs exist and where, without building any feeder.

Specs are ``<name>.toml`` files in ``$GRIDRL_FEEDER_PATH`` (``:``-separated) and the project's
``feeders/``. Finding and validating a spec needs no numerical package, so a command that is
given an unknown feeder says so at once, before pandas or torch load.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from gridrl.errors import FeederNotFound
from gridrl.grid.spec import FeederSpec, load_spec

__all__ = ["feeder_dirs", "list_feeders", "resolve_spec"]


def feeder_dirs() -> list[Path]:
    """Folders searched for ``<name>.toml`` specs: ``$GRIDRL_FEEDER_PATH`` (``:``-separated), then
    the project's ``feeders/``."""
    dirs = [Path(p) for p in os.environ.get("GRIDRL_FEEDER_PATH", "").split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parents[2] / "feeders")
    return [d for d in dirs if d.is_dir()]


def _spec_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in feeder_dirs():
        for f in sorted(d.glob("*.toml"), key=_natural):
            found.setdefault(f.stem, f)
    return found


def _natural(path: Path) -> list:
    """ieee33 < ieee69 < ieee141: digits compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.stem)]


def list_feeders() -> list[str]:
    """Names of every feeder spec that ships with gridrl or lies on ``$GRIDRL_FEEDER_PATH``."""
    return list(_spec_files())


def resolve_spec(name_or_path: str | os.PathLike) -> FeederSpec:
    """A feeder name, or a path to a ``.toml`` spec, as a validated :class:`FeederSpec`."""
    text = str(name_or_path)
    if text.endswith(".toml") or os.sep in text:
        spec = load_spec(Path(text))
    else:
        files = _spec_files()
        if text not in files:
            raise FeederNotFound(text, list(files))
        spec = load_spec(files[text])
    return spec
