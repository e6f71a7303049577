"""Shared against decentralized training: the same learner, budget and seeds, trained with one
weight set for all agents (pooled statistics, global advantage scaling) and with every agent
its own (``training = "decentralized"``), then deployed as ``gridrl compare`` deploys a run
(through the safety envelope, :func:`gridrl.marl.run.deployed`) on the feeder's test days; beside
them none, IEEE 1547-B droop and droop:tuned (the committed fit of ``reports/baselines``) on the
same days, and the training traffic of each mode in floats per agent per iteration (local: to
κ-hop neighbours; global: to or from every agent — shared weights and pooled statistics).

    python experiments/training_modes.py --feeder ieee141 --seeds 0,1,2 --runs /work/runs/modes
    python experiments/training_modes.py --feeder ieee141 --seeds 0,1,2 --train-only     # no test-day look
    python experiments/training_modes.py --feeder ieee141 --seeds 0,1,2 --evaluate-only  # finished runs only

Trains into RUNS/FEEDER-ALGO-MODE-seedK (a finished run is only evaluated again; ``--evaluate-only``
regenerates the tables from the finished runs and lists the missing ones as not run) and prints
Markdown tables: one row per run and baseline, mean ± sd over seeds per algorithm and mode, and
the paired difference decentralized − shared per seed (``--out FILE`` writes them too). Every
test-day evaluation of a run appends a row to the results ledger (``reports/ledger.csv``).

Training uses today's defaults (:data:`gridrl.marl.train.TRAIN_ENV_DEFAULTS`: measured
observations, sensor noise, message dropout, outages, randomised load and PV) with the demo's
learner (experiments/demo.toml: 64 wide, 32-float messages, band margin 0.005); the policy is
selected on validation days, and no learning curve looks at the test days. The test days are
evaluated in the default environment with each run's observation settings, as ``gridrl compare``
does; the table says what each controller knew.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

SETTINGS = {"num_envs": 32, "eval_every_steps": 0, "validate_every_steps": 8192, "band_margin_pu": 0.005,
            "compare": []}
LEARNER = {"hidden": 64, "message_dim": 32}
MODES = ("shared", "decentralized")
# none, IEEE 1547-B droop and the committed droop:tuned fit (read, never fitted again here)
TUNED_CURVE = "reports/baselines/cells/{feeder}/droop-tuned/seed0/curve.toml"


def run_folder(root: Path, feeder: str, algo: str, mode: str, seed: int) -> Path:
    return root / f"{feeder}-{algo}-{mode}-seed{seed}"


def train_run(feeder_name: str, algo: str, mode: str, steps: int, seed: int, root: Path) -> Path:
    """Train (or resume; a finished run is left as it is) one run."""
    from gridrl.marl.train import resolve_train_config, train

    out = run_folder(root, feeder_name, algo, mode, seed)
    cfg = resolve_train_config({**SETTINGS, "algo": algo, "steps": steps, "seed": seed,
                                "learner": {**LEARNER, "training": mode}}, source="training_modes.py")
    train(feeder_name, cfg, out=out, resume=out.exists(), progress=False, log=lambda m: None)
    return out


def figures(days: pd.DataFrame) -> dict:
    """Controllable rate (step-weighted over the days) and energy loss (MWh) of a day table."""
    return {"test_days": len(days),
            "controllable": float((days["controllable_rate"] * days["steps"]).sum() / days["steps"].sum()),
            "loss_mwh": float(days["energy_loss_mwh"].sum())}


def evaluate_run(feeder, out: Path, *, command: str, commit: str | None = None) -> dict:
    """The run of ``out`` deployed as ``gridrl compare`` deploys it, on the test days; its row
    goes to the results ledger (``commit``: the checkout's, taken before the first row made it
    dirty; default: now)."""
    from gridrl import ledger
    from gridrl.evaluate import evaluate
    from gridrl.marl.run import deployed, open_run

    run = open_run(out)
    env_config = run.evaluation_config()
    ctrl = deployed(run.policy(feeder=feeder), feeder, env_config, trained_on=run.feeders, trained=run.env_config)
    ctrl.name = out.name
    t0 = time.perf_counter()
    got = figures(evaluate(feeder, ctrl, split="test", env_config=env_config).days)
    eval_s = time.perf_counter() - t0
    recorded = json.loads((out / "config.json").read_text(encoding="utf-8"))
    cfg, ident = recorded["config"], recorded["identity"]
    best = ledger.selected(out)
    mode = cfg["learner"].get("training", "shared")
    ledger.append(feeder=feeder.name, algorithm=cfg["algo"], variant=f"training {mode}", seed=cfg["seed"],
                  selected_step=best["env_steps"] if best is not None else "", test_days=got["test_days"],
                  controllable_rate=got["controllable"], energy_loss_mwh=got["loss_mwh"], config=ident,
                  source=command, commit=commit,
                  note=f"run {out}; {cfg['steps']:,} steps; selected on validation days; "
                       f"deployed as: {ctrl.information}")
    scalars = pd.read_csv(out / "scalars.csv")
    comm = scalars[scalars["tag"].str.startswith("comm/train_")].groupby("tag")["value"].mean()
    return {"controller": cfg["algo"], "training": mode, "seed": cfg["seed"], **got,
            "selected_step": best["env_steps"] if best is not None else None,
            "local_floats_per_agent_iter": float(comm.get("comm/train_local_floats", float("nan"))),
            "global_floats_per_agent_iter": float(comm.get("comm/train_global_floats", float("nan"))),
            "train_wall_s": float(scalars["wall_s"].max()), "eval_s": eval_s, "knew": ctrl.information}


def evaluate_baselines(feeder) -> list[dict]:
    """none, IEEE 1547-B droop and droop:tuned (the committed fit, when there is one) on the test
    days in the default environment."""
    from gridrl.control import make_controller
    from gridrl.control.curvefile import read_curve_file
    from gridrl.env import EnvConfig
    from gridrl.evaluate import evaluate

    env_config = EnvConfig()
    ctrls = [("none", make_controller("none", feeder), "nothing (no control)"),
             ("1547-B", make_controller("droop", feeder, preset="ieee1547-b"), "its own voltage")]
    tuned = Path(TUNED_CURVE.format(feeder=feeder.name))
    if tuned.is_file():
        curve = read_curve_file(tuned)
        ctrls.append(("droop:tuned", make_controller("droop", feeder, curve=curve, env_config=env_config),
                      f"its own voltage; curve {tuned}"))
    rows = []
    for label, ctrl, knew in ctrls:
        ctrl.name = label
        t0 = time.perf_counter()
        got = figures(evaluate(feeder, ctrl, split="test", env_config=env_config).days)
        rows.append({"controller": label, "training": "", "seed": None, **got, "eval_s": time.perf_counter() - t0,
                     "knew": knew})
    return rows


def paired(runs: pd.DataFrame) -> pd.DataFrame:
    """Per algorithm and seed with both modes: decentralized − shared (loss in % of shared's)."""
    rows = []
    for (algo, seed), g in runs.groupby(["controller", "seed"]):
        by = g.set_index("training")
        if not set(MODES) <= set(by.index):
            continue
        s, d = by.loc["shared"], by.loc["decentralized"]
        rows.append({"algo": algo, "seed": int(seed), "shared_loss_mwh": s["loss_mwh"], "dec_loss_mwh": d["loss_mwh"],
                     "loss_diff_pct": 100 * (d["loss_mwh"] / s["loss_mwh"] - 1),
                     "rate_diff": d["controllable"] - s["controllable"]})
    return pd.DataFrame(rows)


def mean_sd(values) -> str:
    values = list(values)
    if len(values) < 2:
        return f"{values[0]:.4g} (1 seed)" if values else "–"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"


def markdown(df: pd.DataFrame) -> str:
    fmt = lambda v: "" if v is None or v is pd.NA or (isinstance(v, float) and v != v) else (  # noqa: E731
        f"{v:.4g}" if isinstance(v, float) else str(v))
    return "\n".join(["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
                     + ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)])


def report(feeder_name: str, rows: list[dict], missing: list[str], *, steps: int, commit: str) -> str:
    df = pd.DataFrame(rows)
    runs = df[df["training"] != ""]
    per_run = df[["controller", "training", "seed", "test_days", "controllable", "loss_mwh", "selected_step",
                  "local_floats_per_agent_iter", "global_floats_per_agent_iter", "train_wall_s", "eval_s"]]
    per_run = per_run.astype({"seed": "Int64", "selected_step": "Int64"})
    parts = [f"{feeder_name}, {steps:,} steps, evaluated at {commit}", "", markdown(per_run), ""]
    knew = dict.fromkeys(f"{r['controller']}: {r['knew']}" for r in rows if r["training"] == "")
    knew.update(dict.fromkeys(f"{r['controller']} {r['training']}: {r['knew']}" for r in rows if r["training"]))
    parts += ["What each controller knew:", ""] + [f"- {k}" for k in knew] + [""]
    if not runs.empty:
        summary = [{"algo": a, "training": m, "seeds": len(g), "controllable": mean_sd(g["controllable"]),
                    "loss_mwh": mean_sd(g["loss_mwh"]), "global_floats_per_agent_iter": mean_sd(
                        g["global_floats_per_agent_iter"]), "train_wall_s": mean_sd(g["train_wall_s"])}
                   for (a, m), g in runs.groupby(["controller", "training"], sort=False)]
        parts += ["Mean ± sd over seeds:", "", markdown(pd.DataFrame(summary)), ""]
        pairs = paired(runs)
        if not pairs.empty:
            parts += ["Paired, decentralized − shared (loss in % of shared's):", "", markdown(pairs), ""]
            for algo, g in pairs.groupby("algo"):
                parts.append(f"- {algo}: loss {mean_sd(g['loss_diff_pct'])} % over {len(g)} seed(s) "
                             f"(worst {g['loss_diff_pct'].max():+.2f} %), rate {mean_sd(g['rate_diff'])}")
            parts.append("")
    if missing:
        parts += ["Not run: " + ", ".join(missing), ""]
    return "\n".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--feeder", default="ieee33")
    ap.add_argument("--algos", default="dppo,dmpo")
    ap.add_argument("--steps", type=int, default=16384)
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    ap.add_argument("--runs", type=Path, default=Path("out/training_modes"))
    ap.add_argument("--out", type=Path, default=None, help="also write the Markdown tables here")
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--train-only", action="store_true", help="train the missing runs, evaluate nothing")
    what.add_argument("--evaluate-only", action="store_true",
                      help="evaluate the finished runs only (train nothing; the missing are listed as not run)")
    ap.add_argument("--no-baselines", action="store_true", help="leave none, 1547-B and droop:tuned out")
    args = ap.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        print(f"error: --seeds {args.seeds!r}: give whole numbers separated by commas, e.g. --seeds 0,1,2",
              file=sys.stderr)
        return 2
    import gridrl
    from gridrl.errors import GridrlError
    from gridrl.provenance import git_commit

    command = "python experiments/training_modes.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    plan = [(algo, mode, seed) for algo in args.algos.split(",") for seed in seeds for mode in MODES]
    try:
        feeder = gridrl.load_feeder(args.feeder)
        outs, missing = [], []
        for algo, mode, seed in plan:
            out = run_folder(args.runs, args.feeder, algo, mode, seed)
            if args.evaluate_only:
                (outs if (out / "checkpoint.pt").is_file() and _complete(out, args.steps) else missing).append(out)
            else:
                outs.append(train_run(args.feeder, algo, mode, args.steps, seed, args.runs))
        if args.train_only:
            return 0
        git = git_commit()
        commit = None if git is None else git["commit"][:12] + ("+dirty" if git.get("dirty") else "")
        rows = [] if args.no_baselines else evaluate_baselines(feeder)
        rows += [evaluate_run(feeder, out, command=command, commit=commit) for out in outs]
    except GridrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = report(args.feeder, rows, [m.name for m in missing], steps=args.steps, commit=commit or "an unknown commit")
    print(text)
    if args.out:
        from gridrl.io import write_text

        write_text(args.out, text)
    return 0


def _complete(out: Path, steps: int) -> bool:
    """Whether the run of ``out`` trained its ``steps``: its last scalars reach them."""
    try:
        return int(pd.read_csv(out / "scalars.csv", usecols=["env_steps"])["env_steps"].max()) >= steps
    except (OSError, ValueError, KeyError):
        return False


if __name__ == "__main__":
    sys.exit(main())
