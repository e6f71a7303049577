"""How much of a learned policy's gain survives as IEEE 1547-2018 volt-var curves.

    python experiments/export_curves.py --run /work/runs/stability/ieee33-dmpo-threads1-seed0 \\
        --run /work/runs/stability/ieee141-dmpo-threads1-seed0 --out reports/export

For each run: ``gridrl export RUN --format curves`` (one curve per inverter, fitted on the
feeder's training days to the deployed policy's own reactive power; ``OUT/curves/RUN.json`` and
``.csv``), then one comparison on every test day of the feeder: the learned policy (deployed:
through the safety envelope), its distilled curves (``droop:curves=FILE``), droop:tuned (the
feeder's committed fit, ``reports/baselines/cells/FEEDER/droop-tuned/seed0/curve.toml``, when
present) and IEEE 1547-B. Each look adds two rows to the results ledger (the learned policy and
its curves). Prints and writes ``OUT/curves.md`` (rows appended per run) and ``OUT/curves.json``.

The share of the learned gain kept is ``(loss_1547B − loss_curves) / (loss_1547B − loss_policy)``
on the test days; the target asks ≥ 50 % at a controllable rate ≥ 1547-B's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace


def one_run(run_dir: Path, out: Path, compare_root: Path, days: list[int] | None, split: str) -> dict:
    from gridrl import ledger
    from gridrl.compare import CompareConfig, ControllerSpec
    from gridrl.control.curvefile import read_agent_curves, read_curve_file
    from gridrl.export import export_curves
    from gridrl.marl.run import open_run
    from gridrl.pipeline import compare

    run = open_run(run_dir)
    name = run_dir.name
    t0 = time.perf_counter()
    path = out / "curves" / f"{name}.json"
    previous = read_agent_curves(path).get("fit", {}) if path.is_file() else {}
    if previous.get("checkpoint_sha256_16") == run.hash:  # fitted before from this very checkpoint
        curves = SimpleNamespace(json_path=path, fit=previous)
    else:
        curves = export_curves(run_dir, out / "curves" / name, progress=print)
    fit_s = time.perf_counter() - t0
    specs = [ControllerSpec(run=str(run_dir), label="learned"),
             ControllerSpec(name="droop", curve=read_agent_curves(curves.json_path), label="curves"),
             ControllerSpec(name="droop", preset="ieee1547-b")]
    tuned = Path(__file__).resolve().parents[1] / "reports/baselines/cells" / run.feeder / "droop-tuned/seed0/curve.toml"
    if tuned.is_file():
        specs.insert(2, ControllerSpec(name="droop", curve=read_curve_file(tuned), label="droop-tuned"))
    cfg = CompareConfig(feeders=(run.feeder,), controllers=tuple(specs), split=split,
                        days=None if days is None else tuple(days))
    from gridrl.ledger import config_hash

    # one folder per run, split and curves: a refit never meets the comparison of earlier curves
    folder = compare_root / f"{name}-{split}-{config_hash(specs[1].curve)[:8]}"
    result = compare(cfg, out=folder, progress=False, report=False)
    s = result.summary.set_index("controller")
    row = {k: {"controllable_rate": float(s.loc[k, "controllable_rate"]), "energy_loss_mwh": float(s.loc[k, "energy_loss_mwh"])}
           for k in s.index}
    b, learned, dist = row["droop-ieee1547-b"], row["learned"], row["curves"]
    gain = b["energy_loss_mwh"] - learned["energy_loss_mwh"]
    kept = (b["energy_loss_mwh"] - dist["energy_loss_mwh"]) / gain if gain > 0 else float("nan")
    test_days = int(s.loc["learned", "days"])
    source = f"experiments/export_curves.py --run {run_dir}"
    summary = {"run": str(run_dir), "feeder": run.feeder, "algo": run.algo, "seed": run.header["seed"], "split": split,
               "days": test_days, "rows": row, "kept_share": kept,
               "rate_at_least_1547b": dist["controllable_rate"] >= b["controllable_rate"] - 1e-12,
               "fit_seconds": round(fit_s, 1), "curves": str(curves.json_path),
               "fit_r2": {a: f["r2"] for a, f in curves.fit["agents"].items()}}
    if split != "test":  # a look at validation days chooses nothing and is no result: no ledger row
        return summary
    ledger.append_run(run_dir, result.summary, label="learned", variant="export", source=source)
    best = ledger.selected(run_dir)
    ledger.append(feeder=run.feeder, algorithm=run.algo, variant="export-curves", seed=run.header["seed"],
                  selected_step=best["env_steps"] if best else "", test_days=test_days,
                  controllable_rate=dist["controllable_rate"], energy_loss_mwh=dist["energy_loss_mwh"],
                  config=curves.fit, source=source,
                  note=f"IEEE 1547-2018 volt-var curves distilled from the run's deployed policy on the training days "
                       f"({curves.json_path.name}); kept {kept:.0%} of its loss saving over 1547-B")
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True, help="a run folder (repeat for more)")
    p.add_argument("--out", default="reports/export")
    p.add_argument("--compare-root", default="out/export-compare", help="where the comparisons go")
    p.add_argument("--days", default=None, help="only these days of the split (default: every one)")
    p.add_argument("--split", default="test", help="test (the result, ledger rows) or val (a look that decides nothing)")
    args = p.parse_args(argv)

    from gridrl import set_threads
    from gridrl.io import write_json, write_text

    set_threads(1)
    out = Path(args.out)
    days = None if args.days is None else [int(d) for d in args.days.split(",")]
    path_json = out / ("curves.json" if args.split == "test" else f"curves-{args.split}.json")
    done = json.loads(path_json.read_text()) if path_json.is_file() else []
    for run in args.run:
        r = one_run(Path(run), out, Path(args.compare_root), days, args.split)
        done = [d for d in done if d["run"] != r["run"]] + [r]
        write_json(path_json, done)
    lines = [f"| feeder | run | {args.split} days | learned: rate / MWh | curves: rate / MWh | droop-tuned: rate / MWh | "
             "1547-B: rate / MWh | gain kept | rate ≥ 1547-B | fit R² (median over agents) |",
             "|:--|:--|--:|--:|--:|--:|--:|--:|:--|--:|"]
    import numpy as np

    for r in done:
        cell = lambda k: (f"{r['rows'][k]['controllable_rate']:.4f} / {r['rows'][k]['energy_loss_mwh']:.2f}"  # noqa: E731
                          if k in r["rows"] else "–")
        r2 = [v for v in r["fit_r2"].values() if v is not None]
        lines.append(f"| {r['feeder']} | {Path(r['run']).name} | {r['days']} | {cell('learned')} | {cell('curves')} | "
                     f"{cell('droop-tuned')} | {cell('droop-ieee1547-b')} | {r['kept_share']:.0%} | "
                     f"{'yes' if r['rate_at_least_1547b'] else 'no'} | {np.median(r2):.2f} |")
    write_text(path_json.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
