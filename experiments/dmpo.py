"""DMPO's quality and efficiency experiment in one command: train dmpo and the model-free learners
on a feeder, compare them with the rule-based controllers and the optimum on the test days, and
report the issue's targets (real environment steps to reach IEEE 1547-B droop's controllable
rate, dmpo's against dppo's; final losses against the tuned droop and the optimum; training time
to beat droop) and the model's errors.

    python experiments/dmpo.py --config experiments/dmpo_ieee33.toml

The experiment file has the format of ``experiments/learners.py`` (whose planning, training,
comparison and report this reuses; finished runs are skipped, interrupted ones resumed). Writes
``out`` of the config: ``summary.md`` (the learners' table, then the targets and the model
errors), ``runs.csv``, ``curves.csv``, ``compare/`` and ``report.html``, and one results-ledger
row per run (``reports/ledger.csv``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import learners  # noqa: E402  (the experiment machinery shared with the learners' experiment)

from gridrl.config import from_dict, read_toml  # noqa: E402
from gridrl.io import atomic_write, write_html, write_text  # noqa: E402

DROOP = "droop-ieee1547-b"
# model errors of a dmpo run, as logged every iteration (gridrl/marl/dmpo.py), last value per run
MODEL_TAGS = {"model/volt_rmse_pu": "one-step voltage RMSE, p.u.",
              "model/volt_rmse_persist_pu": "persistence (v_{t+1} = v_t) RMSE, p.u.",
              "model/volt_rmse_h4_pu": "4-step open-loop voltage RMSE, p.u.",
              "model/cf_volt_rmse_pu": "counterfactual voltage RMSE vs env.peek, p.u.",
              "model/cf_effect_rmse_pu": "size of the counterfactual change itself, p.u.",
              "model/reward_rmse_physics": "reward RMSE, physics reward from predicted voltages",
              "model/reward_rmse_learned": "reward RMSE, reward learned whole",
              "model/reward_std": "spread of the true reward (std)",
              "imagine/trusted_share": "share of imagined agent-steps trusted"}


def first_reaching(curves: pd.DataFrame, rate: float, *, loss_mwh: float | None = None,
                   x: str = "env_steps") -> float:
    """``x`` at the first evaluation of one run with a controllable rate ≥ ``rate`` (and an
    energy loss ≤ ``loss_mwh`` if given); NaN if none."""
    wide = curves.pivot_table(index=["iteration", x], columns="tag", values="value").reset_index().sort_values(x)
    ok = wide["eval/controllable_rate"] >= rate - 1e-12
    if loss_mwh is not None:
        ok &= wide["eval/energy_loss_mwh"] <= loss_mwh
    return float(wide.loc[ok, x].iloc[0]) if ok.any() else float("nan")


def targets_markdown(runs: pd.DataFrame, curves: pd.DataFrame, base: pd.DataFrame, *, main: str | None = None) -> str:
    """The issue's targets per feeder, from the test-day learning curves and final comparison.

    main: the variant the targets are read from (default: the first run's); the runs of other
    variants (ablations, e.g. κ = 0) are listed beside it and compared with it."""
    main = runs["variant"].iloc[0] if main is None else main
    lines = ["## DMPO's targets", ""]
    for feeder, g in runs.groupby("feeder", sort=False):
        b = base[base["feeder"] == feeder].set_index("controller")
        if DROOP not in b.index:
            continue
        rate, droop_loss = b.loc[DROOP, "controllable_rate"], b.loc[DROOP, "energy_loss_mwh"]
        tuned = b.loc["droop-tuned", "energy_loss_mwh"] if "droop-tuned" in b.index else None
        c = curves[curves["feeder"] == feeder]
        lines += [f"### {feeder}", "",
                  f"Reference: IEEE 1547-B droop, controllable {rate:.4f}, loss {droop_loss:.3f} MWh on the test days"
                  + ("." if tuned is None else f"; the tuned droop's loss {tuned:.3f} MWh."), "",
                  "| learner | seed | steps to droop's controllable rate | steps to beat droop (rate ≥, loss ≤) | "
                  + ("" if tuned is None else "steps to droop's rate at the tuned droop's loss | ")
                  + "training min to beat droop | final controllable | final loss MWh |",
                  "|:---|---:|---:|---:|" + ("" if tuned is None else "---:|") + "---:|---:|---:|"]
        reach, reach_tuned = {}, {}
        for _, r in g.iterrows():
            rc = c[(c["algo"] == r["algo"]) & (c["seed"] == r["seed"]) & (c["variant"] == r["variant"])]
            steps = first_reaching(rc, rate)
            beat = first_reaching(rc, rate, loss_mwh=droop_loss)
            beat_s = first_reaching(rc, rate, loss_mwh=droop_loss, x="train_s")
            name = r["algo"] if r["variant"] == main else f"{r['algo']} ({r['variant']})"
            reach.setdefault(name, []).append(steps)
            tuned_col = ""
            if tuned is not None:
                at_tuned = first_reaching(rc, rate, loss_mwh=tuned)
                reach_tuned.setdefault(name, []).append((at_tuned, rc["env_steps"].max()))
                tuned_col = f"{_num(at_tuned)} | "
            lines.append(f"| {name} | {r['seed']} | {_num(steps)} | {_num(beat)} | {tuned_col}"
                         f"{'–' if beat_s != beat_s else f'{beat_s / 60:.1f}'} | {r['controllable_rate']:.4f} | "
                         f"{r['energy_loss_mwh']:.3f} |")
        lines.append("")
        if "dmpo" in reach and "dppo" in reach:
            lines.append(_ratio_line(reach["dmpo"], reach["dppo"], title="sample efficiency",
                                     goal="droop's controllable rate"))
        if "dmpo" in reach_tuned and "dppo" in reach_tuned:
            lines.append(_ratio_line([x for x, _ in reach_tuned["dmpo"]], [x for x, _ in reach_tuned["dppo"]],
                                     title="sample efficiency at the tuned droop's loss",
                                     goal="droop's rate at the tuned droop's loss"))
        for name in [n for n in ("dmpo", "dppo", "ippo", "cppo") if n in reach_tuned]:
            got = [x for x, _ in reach_tuned[name] if x == x]
            budget = max(m for _, m in reach_tuned[name])
            lines.append(f"- {name} reaches droop's rate at the tuned droop's loss on {len(got)} of "
                         f"{len(reach_tuned[name])} seeds within {budget:,.0f} real steps"
                         + (f" (at {', '.join(f'{x:,.0f}' for x in got)})." if got else "."))
        d = g[(g["algo"] == "dmpo") & (g["variant"] == main)]
        if len(d) and "opf" in b.index:
            opf = b.loc["opf", "energy_loss_mwh"]
            gap = 100 * (d["energy_loss_mwh"] / opf - 1)
            met = gap.mean() <= 5 and d["controllable_rate"].mean() >= rate - 1e-12
            lines.append(f"- final loss against the optimum (target within 5 % at droop's controllable rate, moonshot "
                         f"2 %): dmpo {learners._spread(d['energy_loss_mwh'], 3)} MWh, opf {opf:.3f} MWh: gap "
                         f"{learners._spread(gap, 1)} %; controllable {learners._spread(d['controllable_rate'], 4)} "
                         f"(droop {rate:.4f}): {'met' if met else 'missed'} on the mean, "
                         f"{int(((gap <= 5) & (d['controllable_rate'] >= rate - 1e-12)).sum())} of {len(d)} seeds.")
        if len(d) and "droop-tuned" in b.index:
            tuned = b.loc["droop-tuned", "energy_loss_mwh"]
            below = int((d["energy_loss_mwh"] < tuned).sum())
            lines.append(f"- below the tuned droop's loss ({tuned:.3f} MWh): {below} of {len(d)} dmpo seeds.")
        for (algo, variant), a in g[g["variant"] != main].groupby(["algo", "variant"], sort=False):
            ref = g[(g["algo"] == algo) & (g["variant"] == main)]
            lines.append(f"- {algo} `{variant}` against {algo} `{main}`: loss {learners._spread(a['energy_loss_mwh'], 3)} "
                         f"against {learners._spread(ref['energy_loss_mwh'], 3)} MWh, controllable "
                         f"{learners._spread(a['controllable_rate'], 4)} against {learners._spread(ref['controllable_rate'], 4)}.")
        lines.append("")
    return "\n".join(lines)


def _ratio_line(dmpo: list[float], dppo: list[float], *, title: str, goal: str) -> str:
    """The sample-efficiency line: dmpo's mean real steps to reach ``goal`` over dppo's (target
    ≤ 1/3), from each run's steps (NaN: not reached), or why there is no ratio."""
    dm, dp = pd.Series(dmpo, dtype=float), pd.Series(dppo, dtype=float)
    if not (dm.notna().all() and dp.notna().all()):
        return (f"- {title} (target ≤ 1/3): no ratio, not every run reached {goal} within its budget "
                f"(dmpo {dm.notna().sum()} of {len(dm)}, dppo {dp.notna().sum()} of {len(dp)}).")
    ratio = dm.mean() / dp.mean()
    return (f"- {title} (target ≤ 1/3): dmpo needs {dm.mean():,.0f} real steps on average to reach {goal}, "
            f"dppo {dp.mean():,.0f}: ratio {ratio:.2f} ({'met' if ratio <= 1 / 3 else 'missed'}).")


def model_markdown(runs: list[dict]) -> str:
    """The model's last logged errors in every dmpo run (held-out real steps; the counterfactual
    check against the true physics from its last check)."""
    from gridrl.training_report import read_scalars

    rows = []
    for r in [r for r in runs if r["algo"] == "dmpo"]:
        sc = read_scalars(r["folder"])
        last = sc[sc["tag"].isin(MODEL_TAGS)].groupby("tag")["value"].last()
        rows.append({"run": f"{r['feeder']} {r['variant']} seed {r['seed']}", **last.to_dict()})
    if not rows:
        return ""
    df = pd.DataFrame(rows).set_index("run")
    cols = [t for t in MODEL_TAGS if t in df.columns]
    lines = ["## The model at the end of training", "",
             "Held-out real steps (scenarios never fitted); counterfactual: the policy plays one action draw, the "
             "model predicts what another draw would give, `env.peek` gives the truth (training days).", "",
             "| measure | " + " | ".join(df.index) + " |", "|:---|" + "---:|" * len(df.index)]
    for t in cols:
        lines.append(f"| {MODEL_TAGS[t]} | " + " | ".join(f"{v:.4g}" for v in df[t]) + " |")
    return "\n".join(lines) + "\n"


def _num(x: float) -> str:
    return "not reached" if x != x else f"{x:,.0f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="experiment TOML (experiments/learners.py's format)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--report-only", action="store_true", help="train nothing: compare and report the finished runs")
    p.add_argument("--worker", action="store_true",
                   help="train the runs no other process has claimed, then stop without reporting: start "
                        "one per core, then report with --report-only once all have ended")
    args = p.parse_args(argv)
    exp = from_dict(learners.Experiment, read_toml(args.config), source=args.config)
    planned = learners.plan(exp, args.config)
    progress = not args.no_progress
    if args.worker:
        learners.run_all(exp, planned, progress=progress, claim=True)
        return
    if not args.report_only:
        learners.run_all(exp, planned, progress=progress)
    runs = [r for r in planned if learners.finished(r)]
    if not runs:
        sys.exit("no run has finished yet; train first (drop --report-only)")
    exp = dataclasses.replace(exp, feeders=tuple(f for f in exp.feeders if any(r["feeder"] == f for r in runs)))
    learners.compare_all(exp, runs, progress=progress)
    runs_df, curves, base = learners.tables(exp, runs)
    command = "python experiments/dmpo.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if learners.ledger_rows(exp, runs_df, runs, command=command.strip()):
        print(f"ledger: {len(runs_df)} row(s) added", file=sys.stderr)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    md = learners.summary_markdown(runs_df, base, eval_split=runs[0]["config"].eval_split, command=command.strip(),
                                   load=load, on=learners.split_of(exp))
    md += "\n" + targets_markdown(runs_df, curves, base, main=next(iter(exp.variants))) + "\n" + model_markdown(runs)
    if len(runs) < len(planned):
        left = [f"{r['feeder']} {r['algo']} seed {r['seed']}" for r in planned if r not in runs]
        md += f"\nNot finished ({len(left)} of {len(planned)} planned runs): {'; '.join(left)}.\n"
    out = Path(exp.out)
    write_text(out / "summary.md", md)
    atomic_write(out / "runs.csv", lambda f: runs_df.to_csv(f, index=False))
    keep = ["feeder", "algo", "variant", "seed", "iteration", "env_steps", "wall_s", "train_s", "tag", "value"]
    atomic_write(out / "curves.csv", lambda f: curves[keep].to_csv(f, index=False))
    write_html(learners.report(exp, runs_df, curves, base, md), out / "report.html")
    print(md)


if __name__ == "__main__":
    from gridrl.errors import GridrlError

    try:
        main()
    except GridrlError as exc:  # a stale run folder, a comparison folder of other controllers, …: one line
        sys.exit(f"error: {exc}")
