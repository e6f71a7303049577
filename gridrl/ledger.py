"""The results ledger: one row for every look at the test days, never removed.

``reports/ledger.csv`` in the project's checkout (``GRIDRL_LEDGER`` names another file) holds
one row per test-day evaluation of a trained policy made by ``gridrl train`` or an experiment
script: when, from which commit and configuration, what was evaluated (feeder, algorithm,
variant, seed, the selected step), on how many test days, and the figures. A headline in the
README cites the row it comes from; a re-run after a change adds rows, so the ledger also says
how often the test days were looked at and what came before.

Rows are only ever appended (:func:`append`): the new file is the old file plus the row, written
to a temporary file and renamed over the old one under an exclusive lock, so concurrent writers
(two experiment workers) lose nothing and a killed writer leaves the previous ledger intact.

    from gridrl.ledger import append, read
    append(feeder="ieee33", algorithm="dmpo", variant="forecast", seed=0, selected_step=24576,
           test_days=73, controllable_rate=1.0, energy_loss_mwh=35.59, config={...}, note="...")
    read()   # a DataFrame of every row
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gridrl.errors import GridrlError

__all__ = ["COLUMNS", "LedgerError", "append", "append_curve", "append_run", "curve_note", "config_hash", "describe", "ledger_path", "read", "selected",
           "rows_matching"]

COLUMNS = ("date", "commit", "config_hash", "feeder", "algorithm", "variant", "seed", "selected_step", "test_days",
           "controllable_rate", "energy_loss_mwh", "source", "note")
ENV_VAR = "GRIDRL_LEDGER"


class LedgerError(GridrlError, ValueError):
    """A row the ledger cannot take, or a ledger file that is not one."""


def ledger_path() -> Path | None:
    """Where rows go: ``$GRIDRL_LEDGER``, else ``reports/ledger.csv`` of the source checkout
    gridrl runs from; None when neither exists (an installed wheel without the variable)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "reports").is_dir():
        return root / "reports" / "ledger.csv"
    return None


def config_hash(config: Any) -> str:
    """First 12 hex digits of the SHA-256 of ``config`` (a mapping or a config dataclass) as
    sorted JSON: the same settings give the same hash in every process."""
    import dataclasses

    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        from gridrl.marl.checkpoint import config_dict

        config = config_dict(config)
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _commit() -> str:
    from gridrl.provenance import git_commit

    git = git_commit()
    if git is None:
        from gridrl import __version__

        return f"gridrl {__version__}"
    return git["commit"][:12] + ("+dirty" if git.get("dirty") else "")


def append(*, feeder: str, algorithm: str, variant: str = "", seed: int | str = "", selected_step: int | str = "",
           test_days: int, controllable_rate: float, energy_loss_mwh: float, config: Any = None,
           source: str = "", note: str = "", commit: str | None = None,
           date: str | None = None, path: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """Append one row; returns it (None when there is no ledger: see :func:`ledger_path`).

    config: the settings the figures depend on (a mapping or config dataclass), hashed into
        ``config_hash``; a string is taken as the hash itself. commit, date: default this checkout's commit (``+dirty`` with
        uncommitted changes) and now (UTC); give them to record figures measured earlier.
    source: the command or run folder the figures come from. note: anything a reader needs.
    Raises :class:`LedgerError` for a row it cannot take (a missing feeder or algorithm, figures
    that are not finite numbers, a rate outside [0, 1]) and when the file is not a ledger.
    """
    path = Path(path) if path is not None else ledger_path()
    if path is None:
        return None
    problems = [f"{name} is empty" for name, v in (("feeder", feeder), ("algorithm", algorithm)) if not str(v).strip()]
    for name, v in (("controllable_rate", controllable_rate), ("energy_loss_mwh", energy_loss_mwh)):
        if not isinstance(v, int | float) or not math.isfinite(v):
            problems.append(f"{name} must be a finite number, got {v!r}")
    if not problems and not 0.0 <= controllable_rate <= 1.0:
        problems.append(f"controllable_rate must be in [0, 1], got {controllable_rate}")
    if not isinstance(test_days, int) or test_days < 1:
        problems.append(f"test_days must be a whole number ≥ 1, got {test_days!r}")
    if problems:
        raise LedgerError(f"ledger row refused: {'; '.join(problems)}")
    row = {"date": date or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "commit": commit or _commit(),
           "config_hash": config if isinstance(config, str) else ("" if config is None else config_hash(config)),
           "feeder": feeder, "algorithm": algorithm, "variant": variant, "seed": seed,
           "selected_step": selected_step, "test_days": test_days,
           "controllable_rate": f"{controllable_rate:.6f}", "energy_loss_mwh": f"{energy_loss_mwh:.4f}",
           "source": source, "note": " ".join(str(note).split())}
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([row[c] for c in COLUMNS])
    _append_line(path, buf.getvalue())
    return row


def append_run(run_dir: str | os.PathLike, summary, *, label: str, variant: str = "", source: str | None = None,
               path: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The row of a ``gridrl train`` run folder compared on the test days: its figures are the
    ``summary`` row (:func:`gridrl.compare.summarize`'s table) of controller ``label``; feeder,
    algorithm, seed, settings hash and the selected step come from the run folder itself.
    Returns the row (None without a ledger or without the run in ``summary``)."""
    run_dir = Path(run_dir)
    mine = summary[summary["controller"] == label] if summary is not None and len(summary) else None
    if mine is None or mine.empty:
        return None
    r = mine.iloc[0]
    recorded = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    cfg, ident = recorded["config"], recorded["identity"]
    best = selected(run_dir)
    note = ("selected on validation days" if best is not None else "the last policy (no validation)")
    note = "; ".join(n for n in (note, curve_note(cfg)) if n)
    return append(feeder=ident["feeder"], algorithm=cfg["algo"], variant=variant, seed=cfg["seed"],
                  selected_step=best["env_steps"] if best is not None else "", test_days=int(r["days"]),
                  controllable_rate=float(r["controllable_rate"]), energy_loss_mwh=float(r["energy_loss_mwh"]),
                  config=ident, source=source if source is not None else str(run_dir), note=note, path=path)


def curve_note(config: Any) -> str:
    """What a run's learning curve looked at, for the note of its row: ``config`` is its training
    config (a :class:`~gridrl.marl.train.TrainConfig` or its recorded mapping). Empty when the
    curve was not on the test days."""
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k, None)
    if get("eval_split") != "test":
        return ""
    every = get("eval_every_steps")
    return f"learning curve on the test days {f'every {every:,} steps' if every else 'at the end'} (reported, chooses nothing)"


def append_curve(run_dir: str | os.PathLike, *, variant: str = "", test_days: int | None = None,
                 date: str | None = None, commit: str | None = None, note: str = "",
                 path: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The row of a ``gridrl train`` run whose learning curve looked at the test days and that no
    comparison followed (a comparison's row names the curve in its note): the curve's last point,
    the last policy (not the selected one), with variant ``curve`` (``VARIANT curve``). Returns the
    row (None without a ledger, or when the run's curve was not on the test days).
    ``test_days``: the number of days of a curve drawn before its points carried it (``eval/days``);
    ``date``, ``commit``, ``note``: for a look recorded later (see :func:`append`)."""
    import pandas as pd

    run_dir = Path(run_dir)
    recorded = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    cfg, ident = recorded["config"], recorded["identity"]
    if cfg.get("eval_split") != "test" or not (run_dir / "scalars.csv").is_file():
        return None
    sc = pd.read_csv(run_dir / "scalars.csv")
    ev = sc[sc["tag"].astype(str).str.startswith("eval/")]
    if ev.empty or ("eval/days" not in set(ev["tag"]) and test_days is None):
        return None
    last = ev[ev["env_steps"] == ev["env_steps"].max()].set_index("tag")["value"]
    points = int((ev["tag"] == "eval/energy_loss_mwh").sum())
    note = " ".join([f"learning curve on the test days: its last point ({points} in all), the last policy, not the "
                     f"selected one; reported, chooses nothing; no comparison followed", note]).strip()
    return append(feeder=ident["feeder"], algorithm=cfg["algo"], variant=f"{variant} curve".strip(), seed=cfg["seed"],
                  selected_step=int(ev["env_steps"].max()),
                  test_days=int(last["eval/days"]) if "eval/days" in last else int(test_days),
                  controllable_rate=float(last["eval/controllable_rate"]),
                  energy_loss_mwh=float(last["eval/energy_loss_mwh"]), config=ident, source=str(run_dir), note=note,
                  date=date, commit=commit, path=path)


def selected(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The validation record of the policy a ``gridrl train`` run selected (its ``env_steps``
    among them), or None for a run without validation (its policy is the last one)."""
    from gridrl.marl.checkpoint import read_checkpoint

    return read_checkpoint(Path(run_dir))["driver"].get("best")


def _append_line(path: Path, line: str) -> None:
    """The file becomes its old content plus ``line`` (a header first in a new file), atomically
    and under an exclusive lock beside it."""
    import fcntl

    from gridrl.io import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            old = path.read_text(encoding="utf-8") if path.exists() else ""
            header = ",".join(COLUMNS) + "\n"
            if old and not old.startswith(header):
                raise LedgerError(f"{path} is not a gridrl ledger (its first line is not {header.strip()!r}); "
                                  f"move it away or set {ENV_VAR} to another file")
            if old and not old.endswith("\n"):
                old += "\n"
            text = (old or header) + line

            def write(tmp: Path) -> None:
                tmp.write_text(text, encoding="utf-8")
            atomic_write(path, write)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read(path: str | os.PathLike | None = None):
    """Every row of the ledger as a DataFrame (an empty one with :data:`COLUMNS` when there is none)."""
    import pandas as pd

    path = Path(path) if path is not None else ledger_path()
    if path is None or not path.exists():
        return pd.DataFrame(columns=list(COLUMNS))
    df = pd.read_csv(path, dtype={"commit": str, "config_hash": str, "variant": str, "note": str, "source": str},
                     keep_default_na=False)
    if tuple(df.columns) != COLUMNS:
        raise LedgerError(f"{path} is not a gridrl ledger (columns {list(df.columns)})")
    return df


def rows_matching(df, **where: Any):
    """The rows of ``df`` (from :func:`read`) whose columns equal ``where``'s values (as text)."""
    mask = None
    for k, v in where.items():
        m = df[k].astype(str) == str(v)
        mask = m if mask is None else mask & m
    return df if mask is None else df[mask]


def describe(row: Mapping[str, Any]) -> str:
    """One row as a citation: ``ledger row: 2026-12-07 abc123 ieee33 dmpo seed 0 …``."""
    return (f"ledger row {str(row['date'])[:10]} {row['commit']} {row['feeder']} {row['algorithm']}"
            f"{(' ' + str(row['variant'])) if row['variant'] else ''} seed {row['seed']}: controllable "
            f"{float(row['controllable_rate']):.4f}, {float(row['energy_loss_mwh']):.2f} MWh on {row['test_days']} test days")
