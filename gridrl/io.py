"""Writing files at the edge: every write is atomic (temp file in the same folder, then rename),
so an interrupted run never leaves a half-written table, report or checkpoint behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make reports unreadable to others
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically (sorted keys, indented)."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet(path: str | os.PathLike, df) -> Path:
    """Write a DataFrame as parquet atomically."""
    return atomic_write(path, lambda p: df.to_parquet(p, index=False))


def write_html(fig_or_html, path: str | os.PathLike) -> Path:
    """Write a plotly figure (plotly.js embedded: opens offline) or an HTML string atomically."""
    if isinstance(fig_or_html, str):
        return write_text(path, fig_or_html)
    return atomic_write(path, lambda p: fig_or_html.write_html(str(p), include_plotlyjs=True, full_html=True))
