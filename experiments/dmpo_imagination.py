"""Anchored, model and free imagined rollouts at several horizons: dmpo trained on a feeder with
each setting, compared on the validation days; writes reports/dmpo/imagination_<feeder>.md.

    python experiments/dmpo_imagination.py --feeder ieee33 --horizons 1,4,15 --steps 16384 \\
        --rollouts anchored,model,free --seeds 0,1,2 --runs out/imagination/ieee33

Every run is ``experiments/dmpo_ieee33.toml``'s training (32 scenarios per iteration, networks
64 wide, 32-float messages, the learner's defaults otherwise) with the rollout and ``horizon``
changed, one run per seed, each a tuning run: it validates on the feeder's validation days every
``--validate-every`` steps, chooses its policy there and never sees a test day. The rollouts
(:mod:`gridrl.marl.dmpo`):

- ``anchored`` (``anchor = true``, the default): the model as a difference to the recorded
  continuation; errors do not compound;
- ``model`` (``anchor = false``): the model rolled on its own voltages, loads and PV replayed
  from the recorded episode;
- ``free`` (``anchor = false``, ``exogenous = "predicted"``): the model rolled on its own
  voltages *and* its own predicted loads and PV — the usual Dyna/MBPO rollout;
- ``none`` (``model_ratio = 0``): no imagined data, the model fitted and scored only — the
  reference that says whether imagination helps at this budget at all.

``--learner`` adds learner settings to every run (JSON; e.g. a faster model fit) and ``--tag``
names such runs' folders apart. The imagined feeder-steps per real one are the same at every horizon (``model_ratio``), so
longer rollouts start from fewer real states. A run folder under ``--runs``
(``ROLLOUT-hH-seedS``) that already reached ``--steps`` is read back, not retrained (runs can be
split over several invocations; ``--no-train`` writes the report from finished runs alone). The
tables give means over the seeds that have a run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

from gridrl.io import write_text

ROLLOUTS = {"anchored": {"anchor": True}, "model": {"anchor": False},
            "free": {"anchor": False, "exogenous": "predicted"}, "none": {"model_ratio": 0.0}}

COLUMNS = (("val/controllable_rate", "validation controllable rate", "{:.4f}"),
           ("val/energy_loss_mwh", "validation loss (MWh)", "{:.3f}"),
           ("val/selected_env_steps", "chosen at step", "{:,.0f}"),
           ("imagine/trusted_share", "trusted imagined share (last)", "{:.2f}"),
           ("model/volt_rmse_pu", "one-step voltage RMSE (last)", "{:.5f}"),
           ("model/volt_rmse_h{H}_pu", "H-step voltage RMSE, recorded loads and PV (last)", "{:.5f}"))

# the free rollout's imagined-against-real errors on held-out episodes (free runs only)
FREE_COLUMNS = (("model/free_volt_rmse_h{H}_pu", "voltage RMSE (p.u.)", "{:.5f}"),
                ("model/free_net_p_rmse_mw_h{H}", "zone net P RMSE (MW)", "{:.5f}"),
                ("model/free_net_p_rmse_persist_mw_h{H}", "… persistence", "{:.5f}"),
                ("model/free_pv_rmse_mw_h{H}", "PV RMSE (MW)", "{:.5f}"),
                ("model/free_pv_rmse_persist_mw_h{H}", "… persistence", "{:.5f}"))


def _last(df, key: str, h: int) -> float:
    tag = key.format(H=h)
    rows = df[df["tag"] == tag].sort_values("env_steps")
    return float(rows["value"].iloc[-1]) if len(rows) else float("nan")


def _mean_late(df, key: str, h: int) -> float:
    """The mean over the run's second half (the logged errors move with the policy's data)."""
    tag = key.format(H=h)
    rows = df[df["tag"] == tag].sort_values("env_steps")
    rows = rows[rows["env_steps"] > rows["env_steps"].max() / 2]
    return float(rows["value"].mean()) if len(rows) else float("nan")


def _sd(x: float) -> str:
    """A standard deviation over seeds, '—' for one seed."""
    return "—" if x != x else f"{x:.2f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--feeder", default="ieee33")
    p.add_argument("--horizons", default="1,4,15")
    p.add_argument("--rollouts", default="anchored,model,free", help=f"comma-separated, of {', '.join(ROLLOUTS)}")
    p.add_argument("--steps", type=int, default=16384)
    p.add_argument("--validate-every", type=int, default=4096)
    p.add_argument("--seeds", default="0")
    p.add_argument("--runs", default=None, help="run folders go here (default: a temporary folder)")
    p.add_argument("--out", default=None)
    p.add_argument("--learner", default="{}",
                   help='further learner settings for every run, as JSON (e.g. \'{"model_updates": 25}\')')
    p.add_argument("--tag", default="", help="run folders ROLLOUT-hH-TAG-seedS (runs with --learner settings)")
    p.add_argument("--train-only", action="store_true", help="train the missing runs, write no report")
    p.add_argument("--no-train", action="store_true",
                   help="train nothing: the report from the finished runs alone (missing ones left out)")
    args = p.parse_args(argv)
    rollouts = [r for r in args.rollouts.split(",") if r]
    unknown = [r for r in rollouts if r not in ROLLOUTS]
    if unknown:
        sys.exit(f"error: unknown rollout(s) {', '.join(unknown)}; choose from {', '.join(ROLLOUTS)}")
    try:
        extra = json.loads(args.learner)
    except json.JSONDecodeError as e:
        sys.exit(f"error: --learner is not JSON ({e}); write e.g. '{{\"model_updates\": 25}}'")
    if not isinstance(extra, dict):
        sys.exit("error: --learner must be a JSON object of learner settings, e.g. '{\"model_updates\": 25}'")
    horizons = [int(x) for x in args.horizons.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]

    import pandas as pd

    from gridrl.marl.train import SCALARS_FILE, resolve_train_config, train

    runs = Path(args.runs or tempfile.mkdtemp(prefix="dmpo-imagination-"))
    rows = []
    for rollout, h, seed in ((r, h, s) for r in rollouts for h in horizons for s in seeds):
        name = f"{rollout}-h{h}-{args.tag + '-' if args.tag else ''}seed{seed}"
        scalars = runs / name / SCALARS_FILE
        t = time.time()
        df = pd.read_csv(scalars) if scalars.exists() else None
        finished = df is not None and df["env_steps"].max() >= args.steps
        if not finished and args.no_train:
            continue
        if not finished:
            data = {"algo": "dmpo", "steps": args.steps, "seed": seed, "num_envs": 32,
                    "eval_every_steps": 0, "eval_split": "val", "compare": [], "tuning": True,
                    "validate_every_steps": args.validate_every, "band_margin_pu": 0.005,
                    "learner": {"hidden": 64, "message_dim": 32, "horizon": h, **ROLLOUTS[rollout], **extra}}
            cfg = resolve_train_config(data, source="dmpo_imagination")
            df = train(args.feeder, cfg, out=runs / name, progress=False, log=lambda m: None).scalars
            seconds = time.time() - t
        else:
            seconds = float(df["wall_s"].max())
        row = {"rollout": rollout, "horizon": h, "seed": seed, "seconds": seconds,
               **{k: _last(df, k, h) for k, _, _ in COLUMNS},
               **{k: _mean_late(df, k, h) for k, _, _ in FREE_COLUMNS}}
        rows.append(row)
        print(name, {k.format(H=h): row[k] for k, _, _ in COLUMNS}, file=sys.stderr, flush=True)
    if args.train_only:
        return
    command = "python experiments/dmpo_imagination.py " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
    table = pd.DataFrame(rows)
    mean = table.groupby(["rollout", "horizon"], sort=False).mean(numeric_only=True).reset_index()
    loss_by_seed = table.groupby(["rollout", "horizon"], sort=False)["val/energy_loss_mwh"].agg(
        lambda v: " / ".join(f"{x:.2f}" for x in v))
    loss_sd = table.groupby(["rollout", "horizon"], sort=False)["val/energy_loss_mwh"].std()
    lines = [f"# DMPO on {args.feeder}: anchored, model and free imagined rollouts", "",
             f"Command: `{command.strip()}`", "",
             f"{args.steps:,} environment steps per run, seeds {', '.join(map(str, sorted(set(table['seed']))))} "
             f"(means over those with a run), "
             f"validation days only (tuning runs; validated every {args.validate_every:,} steps, the policy "
             f"chosen there). Table written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
             "| rollout | horizon | " + " | ".join(label for _, label, _ in COLUMNS)
             + " | validation loss by seed | loss sd over seeds | wall s |", "|:---|---:|" + "---:|" * (len(COLUMNS) + 3)]
    for _, r in mean.iterrows():
        lines.append(f"| {r['rollout']} | {r['horizon']} | "
                     + " | ".join(fmt.format(r[k]) if r[k] == r[k] else "—" for k, _, fmt in COLUMNS)
                     + f" | {loss_by_seed[(r['rollout'], r['horizon'])]} | {_sd(loss_sd[(r['rollout'], r['horizon'])])} "
                     f"| {r['seconds']:.0f} |")
    free = mean[mean["rollout"] == "free"]
    if len(free):
        lines += ["", "The free rollout's imagined against real, H steps open loop from held-out real states "
                  "with the real actions (mean over each run's second half; persistence: the branch state's "
                  "value held):", "",
                  "| horizon | " + " | ".join(label for _, label, _ in FREE_COLUMNS) + " |",
                  "|---:|" + "---:|" * len(FREE_COLUMNS)]
        for _, r in free.iterrows():
            lines.append(f"| {r['horizon']} | " + " | ".join(fmt.format(r[k]) for k, _, fmt in FREE_COLUMNS) + " |")
    text = "\n".join(lines) + "\n"
    write_text(Path(args.out or f"reports/dmpo/imagination_{args.feeder}.md"), text)
    print(text)


if __name__ == "__main__":
    main()
