"""Shared against decentralized training: the same learner, budget and seed, trained with one
weight set for all agents (pooled statistics, global advantage scaling) and with every agent
its own (``training = "decentralized"``), then judged on the feeder's test days; beside them, the
training traffic of each mode in floats per agent per iteration (local: to κ-hop neighbours;
global: to or from every agent — shared weights and pooled statistics).

    python experiments/training_modes.py                        # ieee33, dppo and dmpo, 16,384 steps
    python experiments/training_modes.py --feeder ieee141 --steps 40960 --algos dmpo

Trains into out/training_modes/FEEDER-ALGO-MODE (finished runs are only evaluated again) and
prints a Markdown table (``--out FILE`` writes it too). The learner settings are the demo's
(experiments/demo.toml: 64 wide, 32-float messages, band margin 0.005), nothing else changed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

SETTINGS = {"num_envs": 32, "eval_every_steps": 8192, "validate_every_steps": 8192, "band_margin_pu": 0.005,
            "compare": []}
LEARNER = {"hidden": 64, "message_dim": 32}


def run(feeder_name: str, algo: str, mode: str, steps: int, seed: int, root: Path) -> dict:
    """Train (or resume) one run and evaluate its selected policy on the test days."""
    import gridrl
    from gridrl.evaluate import evaluate
    from gridrl.marl.run import open_run
    from gridrl.marl.train import resolve_train_config, train

    out = root / f"{feeder_name}-{algo}-{mode}"
    cfg = resolve_train_config({**SETTINGS, "algo": algo, "steps": steps, "seed": seed,
                                "learner": {**LEARNER, "training": mode}}, source="training_modes.py")
    train(feeder_name, cfg, out=out, resume=out.exists(), progress=False, log=lambda m: None)
    feeder = gridrl.load_feeder(feeder_name)
    runf = open_run(out)
    ev = evaluate(feeder, runf.policy(), split="test", env_config=runf.evaluation_config())
    days = ev.days
    scalars = pd.read_csv(out / "scalars.csv")
    comm = scalars[scalars["tag"].str.startswith("comm/train_")].groupby("tag")["value"].mean()
    return {"feeder": feeder_name, "algo": algo, "training": mode, "steps": steps, "seed": seed,
            "test_days": len(days),
            "controllable": float((days["controllable_rate"] * days["steps"]).sum() / days["steps"].sum()),
            "loss_mwh": float(days["energy_loss_mwh"].sum()),
            "local_floats_per_agent_iter": float(comm.get("comm/train_local_floats", float("nan"))),
            "global_floats_per_agent_iter": float(comm.get("comm/train_global_floats", float("nan"))),
            "train_wall_s": float(scalars["wall_s"].max())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--feeder", default="ieee33")
    ap.add_argument("--algos", default="dppo,dmpo")
    ap.add_argument("--steps", type=int, default=16384)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=Path, default=Path("out/training_modes"))
    ap.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    args = ap.parse_args(argv)
    rows = [run(args.feeder, algo, mode, args.steps, args.seed, args.runs)
            for algo in args.algos.split(",") for mode in ("shared", "decentralized")]
    df = pd.DataFrame(rows)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    table = "\n".join(["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
                      + ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)])
    print(table)
    if args.out:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(table + "\n")
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
