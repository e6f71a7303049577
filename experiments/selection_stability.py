"""Is the selected policy stable? The same training run on one and on two threads, and with
another number of scenarios per iteration; per run, the step the selection rule picks on the
validation days (and the step the earlier rule, rate first then loss, would have picked), and
the chosen policy's figures on the test days.

    python experiments/selection_stability.py --feeder ieee33 --algo dppo --seeds 0,1,2
    python experiments/selection_stability.py --feeder ieee33 --config experiments/demo.toml --seeds 0

Each run trains in a fresh process (``GRIDRL_THREADS`` sets its threads) into
``out/stability/FEEDER-ALGO-VARIANT-seedK`` (finished runs are reused), without its own
comparison; the selected policy is then evaluated on every test day, and each such look is a row
of the results ledger (``reports/ledger.csv``). Writes ``reports/protocol/stability-FEEDER-ALGO.md``
(or ``--out``). ``--num-envs`` is the other chunking (default: half the config's).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TRAIN = """
import json, sys
from gridrl.marl import resolve_train_config, train
data = json.loads(sys.argv[1])
cfg = resolve_train_config(data, source="selection_stability")
train(sys.argv[2], cfg, out=sys.argv[3], resume=True, progress=False)
"""


def settings(feeder: str, algo: str | None, config: str | None) -> dict:
    """The training table: the config file's, else the published settings for ``algo``."""
    from gridrl.config import read_toml
    from gridrl.grid.feeder import load_feeder
    from gridrl.marl.train import published_settings

    if config:
        data = dict(read_toml(config))
        if algo:
            data["algo"] = algo
    else:
        data, _ = published_settings(load_feeder(feeder), algo or "dppo")
    data["compare"] = []
    data["eval_every_steps"] = 0
    return data


def old_rule(validations: list[dict]) -> dict:
    """The rule before the tolerance: the highest controllable rate, then the lowest loss."""
    return min(validations, key=lambda v: (-v["controllable_rate"], v["energy_loss_mwh"], v["env_steps"]))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--feeder", default="ieee33")
    p.add_argument("--algo", default=None, help="learner (default: the config's, else dppo)")
    p.add_argument("--config", default=None, help="training TOML (default: the published settings)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--num-envs", type=int, default=None, help="the other chunking (default: half the config's)")
    p.add_argument("--steps", type=int, default=None, help="budget (default: the config's)")
    p.add_argument("--only", default=None, help="comma-separated variants to run (threads1, threads2, envsN; "
                                                 "default: all), e.g. one per process")
    p.add_argument("--runs", default="out/stability")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    from gridrl import ledger
    from gridrl.evaluate import evaluate
    from gridrl.grid.feeder import load_feeder
    from gridrl.io import write_text
    from gridrl.ledger import config_hash
    from gridrl.marl.checkpoint import read_checkpoint
    from gridrl.marl.run import open_run

    base = settings(args.feeder, args.algo, args.config)
    if args.steps:
        base["steps"] = args.steps
    algo = base.get("algo", "dppo")
    feeder = load_feeder(args.feeder)
    n_envs = int(base.get("num_envs", 64))
    variants = {"threads1": ({"GRIDRL_THREADS": "1"}, {}), "threads2": ({"GRIDRL_THREADS": "2"}, {}),
                f"envs{args.num_envs or n_envs // 2}": ({"GRIDRL_THREADS": "1"},
                                                        {"num_envs": args.num_envs or n_envs // 2})}
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only.split(",")}
    tag = Path(args.config).stem if args.config else "published"
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name, (env, over) in variants.items():
            data = {**base, **over, "seed": seed}
            folder = Path(args.runs) / f"{args.feeder}-{algo}-{tag}-{name}-seed{seed}"
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", TRAIN, json.dumps(data), args.feeder, str(folder)],
                                  env={**os.environ, **env}, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"error: {folder}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
            ck = read_checkpoint(folder)
            vals = ck["driver"]["validations"]
            chosen, earlier = ck["driver"]["best"], old_rule(vals)
            run = open_run(folder)
            policy = run.policy()
            ev = evaluate(feeder, policy, split="test", env_config=run.evaluation_config()).days
            rate = float((ev["controllable_rate"] * ev["steps"]).sum() / ev["steps"].sum())
            loss = float(ev["energy_loss_mwh"].sum())
            # the same policy on the same days in batches of 8 days: the evaluation's own chunking
            ev8 = evaluate(feeder, policy, split="test", num_envs=8, env_config=run.evaluation_config()).days
            # (batched matrix products round by batch size: expect last-bit differences, no more)
            same_rate = bool((ev8["controllable_rate"].to_numpy() == ev["controllable_rate"].to_numpy()).all())
            chunk_diff = float(abs(ev8["energy_loss_mwh"].sum() - loss) / loss)
            ledger.append(feeder=args.feeder, algorithm=algo, variant=f"stability-{tag}-{name}", seed=seed,
                          selected_step=int(chosen["env_steps"]), test_days=len(ev), controllable_rate=rate,
                          energy_loss_mwh=loss, config=config_hash({"feeder_hash": feeder.spec.content_hash(), **data}),
                          source="python experiments/selection_stability.py " + " ".join(sys.argv[1:] if argv is None else argv),
                          note=f"run {folder}; selection-stability check ({name})")
            rows.append({"seed": seed, "variant": name, "selected": int(chosen["env_steps"]),
                         "earlier_rule": int(earlier["env_steps"]), "val_rate": chosen["controllable_rate"],
                         "val_mwh": chosen["energy_loss_mwh"], "test_rate": rate, "test_mwh": loss,
                         "batches_of_8_same_rate": same_rate, "batches_of_8_loss_rel_diff": chunk_diff,
                         "validations": " ".join(f"{v['env_steps'] // 1024}k:{v['controllable_rate']:.4f}/"
                                                 f"{v['energy_loss_mwh']:.2f}" for v in vals),
                         "minutes": (time.perf_counter() - t0) / 60})
            print(json.dumps(rows[-1]), file=sys.stderr)
    lines = [f"# Selection stability: {algo} on {args.feeder} ({tag} settings)", "",
             f"Command: `python experiments/selection_stability.py {' '.join(sys.argv[1:] if argv is None else argv)}`; "
             f"load average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}. Budget {base['steps']:,} "
             f"environment steps; every run validated on the feeder's validation days and was evaluated on all "
             f"{len(feeder.days('test'))} test days. `selected`: the step the selection rule (lowest loss within 3 "
             f"validation steps of the best rate) picked; `earlier rule`: the step the rule before it (rate first, "
             f"then loss) would have picked from the same validations.", "",
             "| seed | variant | selected | earlier rule | val rate | val MWh | test rate | test MWh | "
             "batches of 8 days: same rates, loss rel. diff | wall min |",
             "|---:|:---|---:|---:|---:|---:|---:|---:|:---|---:|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['variant']} | {r['selected']:,} | {r['earlier_rule']:,} | {r['val_rate']:.4f} | "
                     f"{r['val_mwh']:.3f} | {r['test_rate']:.4f} | {r['test_mwh']:.3f} | "
                     f"{'yes' if r['batches_of_8_same_rate'] else 'no'}, {r['batches_of_8_loss_rel_diff']:.1e} | "
                     f"{r['minutes']:.1f} |")
    lines += ["", "Validations (k steps: rate / MWh):", ""]
    lines += [f"- seed {r['seed']} {r['variant']}: {r['validations']}" for r in rows]
    out = Path(args.out or f"reports/protocol/stability-{args.feeder}-{algo}-{tag}.md")
    write_text(out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    from gridrl.errors import GridrlError

    try:
        main()
    except GridrlError as exc:
        sys.exit(f"error: {exc}")
