"""A comparison's results folder: where each cell keeps its tables, and reading them back.

::

    OUT/config.json                       what was asked (a different config here is an error)
    OUT/cells/<feeder>/<controller>/seed<k>/{voltages,agents,steps,days}.parquet, controller.json
    OUT/provenance.json                   who ran what, when, with which gridrl and feeder specs
    OUT/days.parquet                      the tidy table: one row per feeder × controller × seed × day
    OUT/summary.md, OUT/summary.csv       one row per feeder × controller, with the gap to ``opf``

This is the contract between the comparison that writes a folder (:mod:`gridrl.compare.run`) and
whatever reads one (:mod:`gridrl.report`); it runs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from gridrl.compare.config import CompareError

__all__ = ["CELL_IDENTITY_FILE", "CELL_TABLES", "cell_folder", "cell_identity", "collect", "readable"]

#: the tables every finished cell holds (``days`` written last: a cell is finished when it exists)
CELL_TABLES = ("voltages", "steps", "days")
#: a trained run's cell records the checkpoint it evaluated in this file
CELL_IDENTITY_FILE = "checkpoint.txt"


def cell_folder(out: str | Path, feeder: str, controller: str, seed: int) -> Path:
    """Where the cell of ``feeder`` × ``controller`` (its label) × ``seed`` keeps its tables."""
    return Path(out) / "cells" / _safe(feeder) / _safe(controller) / f"seed{seed}"


def cell_identity(folder: Path) -> str | None:
    """The identity a cell's tables were made with (see :class:`~gridrl.compare.cells.Cell`), if any."""
    try:
        return (folder / CELL_IDENTITY_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None


def readable(path: Path) -> bool:
    """Whether ``path`` is a parquet table (missing and damaged tables are not)."""
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(path)
    except (OSError, ValueError):  # missing, or not parquet (pyarrow's ArrowInvalid is a ValueError)
        return False
    return True


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "_"


def collect(out: str | Path, cells: Sequence[Any] | None = None, table: str = "days") -> pd.DataFrame:
    """One table (``days``, ``steps``, ``voltages`` or ``agents``) of every finished cell under ``out``,
    or of ``cells`` only (anything with a ``folder``; cells written before a table existed simply
    lack it)."""
    out = Path(out)
    files = ([c.folder / f"{table}.parquet" for c in cells] if cells is not None
             else sorted((out / "cells").glob(f"*/*/seed*/{table}.parquet")))
    frames = [_read_table(f, out) for f in files if f.exists()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _read_table(path: Path, out: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError):  # pyarrow's ArrowInvalid is a ValueError
        raise CompareError(f"{path} is damaged (not a readable parquet table); run the same comparison again "
                           f"with --out {out} to redo that cell") from None
