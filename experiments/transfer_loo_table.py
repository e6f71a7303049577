"""The leave-one-out transfer experiment's tables, from its comparison folders.

    python experiments/transfer_loo_table.py [--root reports/transfer] [--out reports/transfer/loo-table.md]

Reads ``ROOT/loo-F-seedS/compare/summary.csv`` (written by ``experiments/transfer_loo.py``) for
every left-out feeder F and seed S found, and writes one markdown file: per feeder the baselines
(none, IEEE 1547-B, the tuned droop, the optimum; the same in every seed's comparison, so seed
0's) and the three learned policies per seed with their mean and range, then issue 25's targets
per feeder and seed, each with its gap: zero-shot rate and loss against 1547-B's, the aim (loss
against the tuned droop's) and fine-tuning (loss within 2 % of the feeder-specific learner's with
at most a quarter of its steps; the steps come from the ledger variant in each ``summary.md``).
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

import pandas as pd

FEEDERS = ("ieee33", "ieee69", "ieee141", "mv-rural", "mv-urban")
BASELINES = (("none", "none"), ("droop-ieee1547-b", "IEEE 1547-B"), ("droop-tuned", "droop tuned on the feeder"),
             ("opf", "opf (oracle)"))
LEARNED = (("transfer-zero-shot", "transfer, zero-shot"), ("transfer-fine-tuned", "transfer, fine-tuned"),
           ("feeder-specific", "feeder-specific dppo"))


def _runs(root: Path) -> dict[str, dict[int, pd.DataFrame]]:
    out: dict[str, dict[int, pd.DataFrame]] = {}
    for folder in sorted(root.glob("loo-*-seed*")):
        m = re.fullmatch(r"loo-(.+)-seed(\d+)", folder.name)
        summary = folder / "compare" / "summary.csv"
        if m and m.group(1) in FEEDERS and summary.is_file():
            out.setdefault(m.group(1), {})[int(m.group(2))] = pd.read_csv(summary).set_index("controller")
    return out


def _steps(folder: Path) -> tuple[int, int] | None:
    """(fine-tuning steps, the feeder-specific run's steps) from the summary's fine-tuning line."""
    text = (folder / "summary.md").read_text(encoding="utf-8") if (folder / "summary.md").is_file() else ""
    m = re.search(r"([\d,]+) of ([\d,]+) steps", text)
    return (int(m.group(1).replace(",", "")), int(m.group(2).replace(",", ""))) if m else None


def _spread(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} [{format(min(values), fmt)}, {format(max(values), fmt)}]"


def tables(root: Path) -> str:
    runs = _runs(root)
    lines = ["# Leave-one-out transfer: every left-out feeder and seed", "",
             f"`python experiments/transfer_loo_table.py --root {root}` from the comparisons "
             f"`{root}/loo-F-seedS/compare/` (73 test days of the left-out feeder F).", "",
             "| left out | controller | seeds | controllable rate, per seed | energy loss MWh, per seed | "
             "loss MWh, mean [min, max] |", "|---|---|---|---|---|---|"]
    for feeder in FEEDERS:
        seeds = sorted(runs.get(feeder, {}))
        if not seeds:
            continue
        first = runs[feeder][seeds[0]]
        for key, label in BASELINES:
            if key in first.index:
                r = first.loc[key]
                lines.append(f"| {feeder} | {label} | – | {r['controllable_rate']:.4f} | {r['energy_loss_mwh']:.2f} | |")
        for key, label in LEARNED:
            rates = [float(runs[feeder][s].loc[key, "controllable_rate"]) for s in seeds]
            losses = [float(runs[feeder][s].loc[key, "energy_loss_mwh"]) for s in seeds]
            lines.append(f"| {feeder} | {label} | {', '.join(map(str, seeds))} | "
                         f"{' / '.join(f'{x:.4f}' for x in rates)} | {' / '.join(f'{x:.2f}' for x in losses)} | "
                         f"{_spread(losses, '.2f')} |")
    lines += ["", "## Targets (per seed)", "",
              "| left out | seed | zero-shot rate − 1547-B's | zero-shot loss vs 1547-B's | aim: zero-shot loss vs "
              "tuned droop's | fine-tuned loss vs feeder-specific | steps, fine-tuned / feeder-specific | "
              "rates, fine-tuned / feeder-specific |", "|---|---|---|---|---|---|---|---|"]
    met = {"rate": 0, "loss": 0, "aim": 0, "fine": 0}
    total = 0
    for feeder in FEEDERS:
        for seed in sorted(runs.get(feeder, {})):
            s = runs[feeder][seed]
            z, b, t = s.loc["transfer-zero-shot"], s.loc["droop-ieee1547-b"], s.loc["droop-tuned"]
            f, sp = s.loc["transfer-fine-tuned"], s.loc["feeder-specific"]
            steps = _steps(root / f"loo-{feeder}-seed{seed}")
            d_rate = z["controllable_rate"] - b["controllable_rate"]
            d_loss = 100 * (z["energy_loss_mwh"] / b["energy_loss_mwh"] - 1)
            d_aim = 100 * (z["energy_loss_mwh"] / t["energy_loss_mwh"] - 1)
            d_fine = 100 * (f["energy_loss_mwh"] / sp["energy_loss_mwh"] - 1)
            few = steps is not None and 4 * steps[0] <= steps[1]
            ok = {"rate": d_rate >= 0, "loss": d_loss <= 0, "aim": d_aim <= 0, "fine": d_fine <= 2.0 and few}
            total += 1
            for k, v in ok.items():
                met[k] += int(v)
            word = lambda good: "met" if good else "**missed**"  # noqa: E731
            lines.append(f"| {feeder} | {seed} | {d_rate:+.4f} ({word(ok['rate'])}) | {d_loss:+.2f} % "
                         f"({word(ok['loss'])}) | {d_aim:+.2f} % ({word(ok['aim'])}) | {d_fine:+.2f} % "
                         f"({word(ok['fine'])}) | {f'{steps[0]:,} / {steps[1]:,}' if steps else '?'} | "
                         f"{f['controllable_rate']:.4f} / {sp['controllable_rate']:.4f} |")
    lines += ["", f"Met, of {total} left-out feeder × seed pairs: zero-shot rate {met['rate']}, zero-shot loss "
                  f"{met['loss']}, aim {met['aim']}, fine-tuning {met['fine']}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("reports/transfer"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    from gridrl.io import write_text

    text = tables(args.root)
    write_text(args.out or args.root / "loo-table.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
