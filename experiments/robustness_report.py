"""The robustness report: the fault and growth suite's tables and the issue's targets, checked.

    python experiments/robustness_report.py [--out reports/robustness/README.md]

Reads what ``gridrl robustness`` wrote (``reports/robustness/ieee33*/table.csv``) and the optimum's
comparison (``reports/robustness/ieee33-opf``), and writes one markdown report: the suite's table,
the ablations, and per target whether it is met, with the gap.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

ROOT = Path("reports/robustness")
LEARNERS = ("dmpo", "dppo")
BASELINE_B = "droop-ieee1547-b"
TUNED = "droop-tuned"


def _mean(t: pd.DataFrame) -> pd.DataFrame:
    return t.groupby(["condition", "description", "group"], sort=False)[["controllable_rate", "energy_loss_mwh",
                                                                         "handover_pct"]].mean().reset_index()


def targets(tidy: pd.DataFrame, opf_loss: float | None) -> list[str]:
    m = _mean(tidy).set_index(["condition", "group"])
    out = ["| target | learner | value | reference | met | gap |", "|:---|:---|---:|---:|:---:|---:|"]
    nom = m.xs("nominal", level="condition")
    tuned_rate, tuned_loss = nom.loc[TUNED, "controllable_rate"], nom.loc[TUNED, "energy_loss_mwh"]
    for g in LEARNERS:
        if g not in nom.index:
            continue
        r, l = nom.loc[g, "controllable_rate"], nom.loc[g, "energy_loss_mwh"]
        out.append(f"| nominal rate ≥ tuned droop's | {g} | {r:.4f} | {tuned_rate:.4f} | "
                   f"{'yes' if r >= tuned_rate else 'no'} | {r - tuned_rate:+.4f} |")
        out.append(f"| nominal loss ≤ 0.97 × tuned droop's | {g} | {l:.2f} MWh | {0.97 * tuned_loss:.2f} MWh | "
                   f"{'yes' if l <= 0.97 * tuned_loss else 'no'} | {100 * (l / (0.97 * tuned_loss) - 1):+.1f} % |")
        if opf_loss:
            out.append(f"| nominal loss within 5 % of the optimum (aim) | {g} | {l:.2f} MWh | {1.05 * opf_loss:.2f} MWh "
                       f"| {'yes' if l <= 1.05 * opf_loss else 'no'} | {100 * (l / opf_loss - 1):+.1f} % over opf |")
    for cond in dict.fromkeys(tidy["condition"]):
        sub = m.xs(cond, level="condition")
        if BASELINE_B not in sub.index:
            continue
        b_rate, b_loss = sub.loc[BASELINE_B, "controllable_rate"], sub.loc[BASELINE_B, "energy_loss_mwh"]
        best = [g for g in LEARNERS if g in sub.index]
        if not best:
            continue
        # a learner that meets the target if one does, else the one with the best rate
        g = max(best, key=lambda x: (bool(sub.loc[x, "controllable_rate"] >= b_rate and sub.loc[x, "energy_loss_mwh"] <= b_loss),
                                     sub.loc[x, "controllable_rate"], -sub.loc[x, "energy_loss_mwh"]))
        r, l = sub.loc[g, "controllable_rate"], sub.loc[g, "energy_loss_mwh"]
        ok = r >= b_rate and l <= b_loss
        desc = tidy.loc[tidy["condition"] == cond, "description"].iloc[0]
        out.append(f"| {desc}: rate ≥ and loss ≤ 1547-B's | {g} (best) | {r:.4f} / {l:.2f} | {b_rate:.4f} / {b_loss:.2f} "
                   f"| {'yes' if ok else 'no'} | {r - b_rate:+.4f} / {l - b_loss:+.2f} MWh |")
    return out


def append_ledger(suites) -> None:
    """One ledger row per trained run × condition of each suite folder (under
    ``reports/robustness``): the test days were looked at for each."""
    import json

    from gridrl.ledger import append, selected

    for table in (ROOT / name / "table.csv" for name in suites):
        tidy = pd.read_csv(table, keep_default_na=False, na_values=[""])
        runs = tidy[tidy["controller"].str.contains("/")]
        for rec in runs.to_dict("records"):
            run = rec["controller"].split("/", 1)[1]
            algo = "dmpo" if "dmpo" in run else "dppo"
            seed = int(run.rsplit("-s", 1)[1])
            agent = rec["agent"] if isinstance(rec["agent"], str) else ""
            days = pd.read_parquet(table.parent / rec["condition"] / agent / "days.parquet")
            n_days = int(days["day"].nunique())
            run_dir = Path("out/robustness/runs") / run
            cfg = json.loads((run_dir / "config.json").read_text())
            best = selected(run_dir)
            append(feeder="ieee33", algorithm=algo, variant=f"robustness:{rec['group']}:{rec['condition']}",
                   seed=seed, selected_step=best["env_steps"] if best is not None else "", test_days=n_days, controllable_rate=float(rec["controllable_rate"]),
                   energy_loss_mwh=float(rec["energy_loss_mwh"]), config=cfg,
                   source=f"gridrl robustness ({table.parent}; run out/robustness/runs/{run})",
                   note=f"{rec['description']}{' (' + agent + ' out)' if agent else ''}; "
                        f"{rec['information']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "README.md"))
    ap.add_argument("--ledger", nargs="+", metavar="SUITE", help="append every run's test-day figures per "
                    "condition of these suites (e.g. ieee33-norand) to the results ledger (once per evaluation)")
    args = ap.parse_args()
    if args.ledger:
        append_ledger(args.ledger)
    parts = [(ROOT / "header.md").read_text()]
    main_table = ROOT / "ieee33" / "table.csv"
    tidy = pd.read_csv(main_table, keep_default_na=False, na_values=[""])
    opf_loss = None
    opf_days = ROOT / "ieee33-opf" / "days.parquet"
    if opf_days.exists():
        d = pd.read_parquet(opf_days)
        opf_loss = float(d["energy_loss_mwh"].sum())
        parts.append(f"The optimum (`opf`, the same test days, nominal): controllable rate "
                     f"{(d['controllable_rate'] * d['steps']).sum() / d['steps'].sum():.4f}, loss {opf_loss:.2f} MWh "
                     f"(`gridrl compare --feeders ieee33 --controllers opf --out reports/robustness/ieee33-opf`).\n")
    parts += ["## The fault and growth suite (ieee33)\n", (ROOT / "ieee33" / "summary.md").read_text(),
              "## Targets of the issue (ieee33, test days, mean of 3 seeds)\n", "\n".join(targets(tidy, opf_loss)) + "\n"]
    for name, title in (("ieee33-envelope", "Ablation: the safety envelope (off, clamp, ramp)"),
                        ("ieee33-norand", "Ablation: no robust training")):
        path = ROOT / name / "summary.md"
        if path.exists():
            parts += [f"## {title}\n", path.read_text()]
    from gridrl.io import write_text

    write_text(args.out, "\n".join(parts))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
