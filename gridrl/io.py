"""Writing files at the edge, and where they go when nobody says.

Every write is atomic (temp file in the same folder, then rename), so an interrupted run never
leaves a half-written table, report or checkpoint behind.

One rule for default outputs: a command not given ``--out`` writes under ``./out/`` (relative to
the current folder; ``out/`` is git-ignored), or under ``$GRIDRL_OUT_DIR`` when that is set:
``out/feeders/NAME.html``, ``out/evaluate/FEEDER-CONTROLLER-SPLIT/``, ``out/compare/``,
``out/runs/…``. Paths given explicitly (``--out``, a config's ``out``) are used as given.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gridrl.errors import OutputError

__all__ = ["OUT_DIR_ENV", "atomic_write", "default_out", "write_html", "write_json", "write_parquet", "write_text"]

OUT_DIR_ENV = "GRIDRL_OUT_DIR"


def default_out(*parts: str) -> Path:
    """Where output goes when no path was given: ``./out/<parts…>``, or ``$GRIDRL_OUT_DIR/<parts…>``.

    Never a folder of the package's own (``reports/`` holds committed results only)."""
    base = os.environ.get(OUT_DIR_ENV, "").strip() or "out"
    return Path(base).expanduser().joinpath(*parts)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one step.

    Raises :class:`~gridrl.errors.OutputError` when ``path`` cannot be written; whatever was
    there before is left as it was.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _output_error(path, exc) from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make reports unreadable to others
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _output_error(path, exc) from None
        raise
    return path


def _output_error(path: Path, exc: OSError) -> OutputError:
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            return OutputError(f"cannot write {path}: {parent} is a file, not a folder; choose another path")
    return OutputError(f"cannot write {path}: {exc.strerror or exc}; choose another path or fix its permissions")


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically (sorted keys, indented)."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet(path: str | os.PathLike, df) -> Path:
    """Write a DataFrame as parquet atomically."""
    return atomic_write(path, lambda p: df.to_parquet(p, index=False))


def write_html(fig_or_html, path: str | os.PathLike, *, post_script: str | None = None) -> Path:
    """Write a plotly figure (plotly.js embedded: opens offline) or an HTML string atomically.

    post_script: JavaScript run after the figure is drawn (plotly fills in ``{plot_id}``)."""
    if isinstance(fig_or_html, str):
        return write_text(path, fig_or_html)
    return atomic_write(path, lambda p: fig_or_html.write_html(str(p), include_plotlyjs=True, full_html=True,
                                                               post_script=post_script))
