"""Record in the results ledger the learning-curve looks at the test days of run folders that no
comparison row names (runs trained with ``compare = []`` before ``gridrl train`` recorded them
itself, :func:`gridrl.ledger.append_curve`): one row per run, its curve's last point, dated by the
run's ``scalars.csv``, commit ``unrecorded`` (the run folder does not keep it), skipped when the
ledger already has the run's curve row.

    python experiments/ledger_curves.py /work/runs          # every run folder below
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from gridrl import ledger
from gridrl.grid.feeder import load_feeder


def curve_days(config: dict, feeders: list[str], cache: dict[str, int]) -> int:
    """Days of the run's learning curve: its ``eval_days``, else every test day of its feeders."""
    if config.get("eval_days"):
        return len(config["eval_days"]) * len(feeders)
    for f in feeders:
        if f not in cache:
            cache[f] = len(load_feeder(f).days("test"))
    return sum(cache[f] for f in feeders)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs="+", type=Path, help="folders searched for run folders (config.json + scalars.csv)")
    args = ap.parse_args(argv)
    book = ledger.read()
    known = set(book.loc[book["variant"].astype(str).str.endswith("curve"), "source"].astype(str))
    cache: dict[str, int] = {}
    added = 0
    for cfg_file in sorted(p for root in args.roots for p in root.rglob("config.json")):
        run = cfg_file.parent
        try:
            recorded = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        cfg = recorded.get("config", {})
        if "algo" not in cfg or cfg.get("compare") or cfg.get("eval_split") != "test" or str(run) in known:
            continue
        if not (run / "scalars.csv").is_file():
            continue
        ident = recorded.get("identity", {})
        feeders = ident.get("feeders") or [ident.get("feeder") or recorded["feeder"]]
        when = dt.datetime.fromtimestamp((run / "scalars.csv").stat().st_mtime, dt.timezone.utc)
        row = ledger.append_curve(run, test_days=curve_days(cfg, list(feeders), cache),
                                  date=when.isoformat(timespec="seconds"), commit="unrecorded",
                                  note="(recorded later from the run folder by experiments/ledger_curves.py)")
        added += row is not None
    print(f"ledger: {added} learning-curve row(s) added")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
