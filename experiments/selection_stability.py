"""Is the selected policy stable? The same training run on one and on two threads and with its
scenarios solved in chunks (``env_chunk``), beside a run with another number of scenarios per
iteration; per run, the step the selection rule picks on the validation days (and the step the
earlier rule, rate first then loss, would have picked), and the chosen policy's figures on the
test days.

    python experiments/selection_stability.py --feeder ieee33 --algo dppo --seeds 0,1,2
    python experiments/selection_stability.py --feeder ieee33 --config experiments/demo.toml --seeds 0

Each run trains in a fresh process (``GRIDRL_THREADS`` sets its threads) into
``RUNS/FEEDER-ALGO-TAG-VARIANT-seedK`` (``--runs``, default ``out/stability``), without its own
comparison; the selected policy is then evaluated on every test day, and each such look is a row
of the results ledger (``reports/ledger.csv``). A run's figures are kept in its folder
(``stability.json``): a later call with the same settings reuses them without training, evaluating
or adding a ledger row, so the table can be built up over several calls (``--only``, ``--seeds``)
and ``--table-only`` writes it from what has finished. Writes
``reports/protocol/stability-FEEDER-ALGO-TAG.md`` (or ``--out``), with the criterion: across the
variants threads1, threads2 and chunkC (the same training batched differently: ``--env-chunk``,
default half the config's ``num_envs``), a seed's chosen policy's test loss spans no more than
the seeds' spread (the span of the threads1 runs' test losses). The variant envsN (``--num-envs``,
default half the config's) trains with N scenarios per iteration: another training run, a
hyperparameter variant, reported beside the criterion and outside it. Every run's ``checkpoint``
column is its state fingerprint (:func:`gridrl.marl.checkpoint.state_fingerprint`): equal
fingerprints are the same training, validations and selection, bit for bit.
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


KEPT = "stability.json"


def _kept(folder: Path, hashed: str) -> dict | None:
    """The figures a finished run of these settings (``hashed``) left in ``folder``, or None."""
    try:
        row = json.loads((folder / KEPT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return row if row.get("config_hash") == hashed else None


def in_criterion(variant: str) -> bool:
    """The variants that batch the same training differently (threads, chunks); envsN is another
    training run."""
    return not variant.startswith("envs")


def criterion(rows: list[dict]) -> dict:
    """The stability criterion: for every seed with more than one variant of the same training
    (:func:`in_criterion`), the span of the chosen policies' test losses across them, against the
    seeds' spread (the span of the threads1 runs' test losses); met when no seed's span exceeds
    the spread."""
    by_seed: dict[int, list[float]] = {}
    for r in rows:
        if in_criterion(r["variant"]):
            by_seed.setdefault(r["seed"], []).append(r["test_mwh"])
    base = [r["test_mwh"] for r in rows if r["variant"] == "threads1"]
    spread = max(base) - min(base) if len(base) > 1 else None
    spans = {s: max(v) - min(v) for s, v in sorted(by_seed.items()) if len(v) > 1}
    met = None if spread is None or not spans else all(v <= spread for v in spans.values())
    return {"spread": spread, "seeds": len(base), "spans": spans, "met": met}


def report(rows: list[dict], missing: list[str], *, feeder: str, algo: str, tag: str, steps: int,
           test_days: int, command: str) -> list[str]:
    """The markdown report: the runs' table, the criterion, the validations."""
    commands = sorted({r.get("command", command) for r in rows})
    lines = [f"# Selection stability: {algo} on {feeder} ({tag} settings)", "",
             "Commands: " + "; ".join(f"`python experiments/selection_stability.py {c}`" for c in commands) + ". "
             f"Budget {steps:,} environment steps; every run validated on the feeder's validation days and was "
             f"evaluated on all {test_days} test days. `selected`: the step the selection rule (lowest loss within 3 "
             f"validation steps of the best rate) picked; `earlier rule`: the step the rule before it (rate first, "
             f"then loss) would have picked from the same validations. `checkpoint`: the run's state fingerprint "
             f"(all it holds but the clock; equal: the same training, bit for bit). `train CPU/wall min`: training alone "
             f"(validations aside), from the checkpoint; `wall min`: the whole run in this script, training, "
             f"validations and the test-day evaluations; load: the load average (1 min) when it ended.", "",
             "| seed | variant | checkpoint | selected | earlier rule | val rate | val MWh | test rate | test MWh | "
             "batches of 8 days: same rates, loss rel. diff | train CPU min | train wall min | wall min | load |",
             "|---:|:---|:---|---:|---:|---:|---:|---:|---:|:---|---:|---:|---:|---:|"]
    for r in rows:
        shown = f"`{r['fingerprint']}`" if r.get("fingerprint") else "–"  # runs before fingerprints were kept
        lines.append(f"| {r['seed']} | {r['variant']} | {shown} | {r['selected']:,} | "
                     f"{r['earlier_rule']:,} | {r['val_rate']:.4f} | "
                     f"{r['val_mwh']:.3f} | {r['test_rate']:.4f} | {r['test_mwh']:.3f} | "
                     f"{'yes' if r['batches_of_8_same_rate'] else 'no'}, {r['batches_of_8_loss_rel_diff']:.1e} | "
                     f"{r.get('train_cpu_min', float('nan')):.1f} | {r.get('train_wall_min', float('nan')):.1f} | "
                     f"{r['minutes']:.1f} | {r.get('load', '').split(' ')[0]} |")
    if missing:
        lines += ["", "Not run: " + ", ".join(missing) + "."]
        if any("chunk" in m for m in missing):
            lines[-1] += (" A chunked run is its threads1 run bit for bit by construction (the solver's scenarios "
                          "never meet, every draw is the whole batch's; tests/test_chunking.py holds all four "
                          "learners to it), shown at full scale by the equal fingerprints where it ran.")
    c = criterion(rows)
    lines += ["", "## Criterion", ""]
    if c["spread"] is None or not c["spans"]:
        lines.append("Not decidable yet: it needs the threads1 runs of at least two seeds and, for a seed, a second "
                     "variant.")
    else:
        spans = ", ".join(f"seed {s} {v:.3f} MWh ({v / c['spread']:.0%} of the spread)" if c["spread"] else
                          f"seed {s} {v:.3f} MWh" for s, v in c["spans"].items())
        over = max(c["spans"].values()) - c["spread"]
        lines.append(f"Seeds' spread (threads1, {c['seeds']} seeds): {c['spread']:.3f} MWh. Span of the chosen "
                     f"policy's test loss across the variants: {spans}. "
                     + (f"**Met**: no seed's variants span more than the seeds' spread." if c["met"] else
                        f"**Missed**: the largest span exceeds the seeds' spread by {over:.3f} MWh."))
    for other in sorted({r["variant"] for r in rows} - {"threads1"}):
        pairs = [(a, b) for a in rows for b in rows if a["seed"] == b["seed"] and
                 (a["variant"], b["variant"]) == ("threads1", other)]
        if not pairs:
            continue
        same = sum(a["selected"] == b["selected"] and a["validations"] == b["validations"] and
                   a["test_mwh"] == b["test_mwh"] and a["test_rate"] == b["test_rate"] for a, b in pairs)
        prints = sum(bool(a.get("fingerprint")) and a.get("fingerprint") == b.get("fingerprint") for a, b in pairs)
        if in_criterion(other):
            known = sum(bool(a.get("fingerprint") and b.get("fingerprint")) for a, b in pairs)
            lines.append(f"threads1 against {other}: the same selected step, validations and test figures (every "
                         f"digit kept) for {same} of {len(pairs)} seeds"
                         + (f", the same checkpoint fingerprint for {prints} of {known}." if known else "."))
        else:
            spans = ", ".join(f"seed {a['seed']} {abs(b['test_mwh'] - a['test_mwh']):.3f} MWh" for a, b in pairs)
            lines.append(f"{other}, outside the criterion: {other[4:]} scenarios per iteration instead of the "
                         f"config's, so another training run (an update after every {other[4:]} episodes: more updates "
                         f"over the budget, other days drawn, other minibatches), a hyperparameter variant, not a batching of the same "
                         f"run. Its chosen policy's test loss differs from threads1's by: {spans}.")
    lines += ["", "Validations (k steps: rate / MWh):", ""]
    lines += [f"- seed {r['seed']} {r['variant']}: {r['validations']}" for r in rows]
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--feeder", default="ieee33")
    p.add_argument("--algo", default=None, help="learner (default: the config's, else dppo)")
    p.add_argument("--config", default=None, help="training TOML (default: the published settings)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--env-chunk", type=int, default=None,
                   help="scenarios per chunk of the chunkC variant (default: half the config's num_envs)")
    p.add_argument("--num-envs", type=int, default=None,
                   help="scenarios per iteration of the envsN variant, another training run (default: half the "
                        "config's)")
    p.add_argument("--steps", type=int, default=None, help="budget (default: the config's)")
    p.add_argument("--only", default=None, help="comma-separated variants to run (threads1, threads2, chunkC, envsN; "
                                                 "default: all), e.g. one per process")
    p.add_argument("--runs", default="out/stability")
    p.add_argument("--out", default=None)
    p.add_argument("--table-only", action="store_true",
                   help="train and evaluate nothing: the table of the runs whose figures are kept")
    args = p.parse_args(argv)

    from gridrl import ledger
    from gridrl.evaluate import evaluate
    from gridrl.grid.feeder import load_feeder
    from gridrl.io import write_text
    from gridrl.ledger import config_hash
    from gridrl.marl.checkpoint import CHECKPOINT, read_checkpoint, state_fingerprint
    from gridrl.marl.run import open_run

    base = settings(args.feeder, args.algo, args.config)
    if args.steps:
        base["steps"] = args.steps
    algo = base.get("algo", "dppo")
    feeder = load_feeder(args.feeder)
    n_envs = int(base.get("num_envs", 64))
    chunk, fewer = args.env_chunk or n_envs // 2, args.num_envs or n_envs // 2
    variants = {"threads1": ({"GRIDRL_THREADS": "1"}, {}), "threads2": ({"GRIDRL_THREADS": "2"}, {}),
                f"chunk{chunk}": ({"GRIDRL_THREADS": "1"}, {"env_chunk": chunk}),
                f"envs{fewer}": ({"GRIDRL_THREADS": "1"}, {"num_envs": fewer})}
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only.split(",")}
    tag = Path(args.config).stem if args.config else "published"
    command = " ".join(sys.argv[1:] if argv is None else argv)
    rows, missing = [], []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name, (env, over) in variants.items():
            data = {**base, **over, "seed": seed}
            folder = Path(args.runs) / f"{args.feeder}-{algo}-{tag}-{name}-seed{seed}"
            hashed = config_hash({"feeder_hash": feeder.spec.content_hash(), **data})
            kept = _kept(folder, hashed)
            if kept is not None or args.table_only:
                if kept is None:
                    missing.append(f"seed {seed} {name}")
                else:
                    rows.append(kept)
                continue
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
                          energy_loss_mwh=loss, config=hashed,
                          source="python experiments/selection_stability.py " + command,
                          note=f"run {folder}; selection-stability check ({name})")
            rows.append({"seed": seed, "variant": name, "fingerprint": state_fingerprint(ck),
                         "selected": int(chosen["env_steps"]),
                         "earlier_rule": int(earlier["env_steps"]), "val_rate": chosen["controllable_rate"],
                         "val_mwh": chosen["energy_loss_mwh"], "test_rate": rate, "test_mwh": loss,
                         "batches_of_8_same_rate": same_rate, "batches_of_8_loss_rel_diff": chunk_diff,
                         "validations": " ".join(f"{v['env_steps'] // 1024}k:{v['controllable_rate']:.4f}/"
                                                 f"{v['energy_loss_mwh']:.2f}" for v in vals),
                         "minutes": (time.perf_counter() - t0) / 60,
                         "train_wall_min": (ck["driver"]["wall_s"] - ck["driver"].get("eval_s", 0.0)) / 60,
                         "train_cpu_min": ck["driver"]["cpu_s"] / 60,
                         "checkpoint_mb": (folder / CHECKPOINT).stat().st_size / 1e6,
                         "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
                         "config_hash": hashed, "command": command})
            write_text(folder / KEPT, json.dumps(rows[-1], indent=1) + "\n")
            print(json.dumps(rows[-1]), file=sys.stderr)
    lines = report(rows, missing, feeder=args.feeder, algo=algo, tag=tag, steps=base["steps"],
                   test_days=len(feeder.days("test")), command=command)
    out = Path(args.out or f"reports/protocol/stability-{args.feeder}-{algo}-{tag}.md")
    write_text(out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    from gridrl.errors import GridrlError

    try:
        main()
    except GridrlError as exc:
        sys.exit(f"error: {exc}")
