"""Anchored against free imagined rollouts at several horizons: dmpo trained on a feeder with each
setting, compared on the validation days; writes reports/dmpo/imagination_<feeder>.md.

    python experiments/dmpo_imagination.py --feeder ieee33 --horizons 1,4,15 --steps 16384

Every run is ``experiments/dmpo_ieee33.toml``'s training (32 scenarios per iteration, networks
64 wide, 32-float messages, the learner's defaults otherwise) with ``anchor`` and ``horizon``
changed, seed 0, as a tuning run: it validates on the feeder's validation days every 4,096
steps, chooses its policy there and never sees a test day. ``anchor = true`` uses the model as
a difference to the recorded continuation (errors do not compound); ``false`` rolls the model on
its own voltages (the usual Dyna/MBPO rollout). Both replay the recorded loads and PV of the
episode the rollout branched from: a "free" rollout whose model also predicts loads and PV is
not built. The imagined feeder-steps per real one are the same at every horizon
(``model_ratio``), so longer rollouts start from fewer real states.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

from gridrl.io import write_text

COLUMNS = (("val/controllable_rate", "validation controllable rate", "{:.4f}"),
           ("val/energy_loss_mwh", "validation loss (MWh)", "{:.3f}"),
           ("val/selected_env_steps", "chosen at step", "{:,.0f}"),
           ("imagine/trusted_share", "trusted imagined share (last)", "{:.2f}"),
           ("model/volt_rmse_pu", "one-step voltage RMSE (last)", "{:.5f}"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--feeder", default="ieee33")
    p.add_argument("--horizons", default="1,4,15")
    p.add_argument("--steps", type=int, default=16384)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default=None, help="run folders go here (default: a temporary folder)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    from gridrl.marl.train import resolve_train_config, train

    runs = Path(args.runs or tempfile.mkdtemp(prefix="dmpo-imagination-"))
    rows = []
    for anchor in (True, False):
        for h in (int(x) for x in args.horizons.split(",")):
            data = {"algo": "dmpo", "steps": args.steps, "seed": args.seed, "num_envs": 32, "eval_every_steps": 0,
                    "eval_split": "val", "compare": [], "tuning": True, "validate_every_steps": 4096,
                    "band_margin_pu": 0.005,
                    "learner": {"hidden": 64, "message_dim": 32, "anchor": anchor, "horizon": h}}
            cfg = resolve_train_config(data, source="dmpo_imagination")
            name = f"{'anchored' if anchor else 'free'}-h{h}"
            t = time.time()
            res = train(args.feeder, cfg, out=runs / name, progress=False, log=lambda m: None)
            df = res.scalars
            last = df.sort_values("env_steps").groupby("tag")["value"].last()
            rows.append({"name": name, "anchor": anchor, "horizon": h, "seconds": time.time() - t,
                         **{k: float(last.get(k, float("nan"))) for k, _, _ in COLUMNS}})
            print(name, {k: rows[-1][k] for k, _, _ in COLUMNS}, file=sys.stderr)
    command = "python experiments/dmpo_imagination.py " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
    lines = [f"# DMPO on {args.feeder}: anchored against free imagined rollouts", "", f"Command: `{command.strip()}`", "",
             f"{args.steps:,} environment steps per run, seed {args.seed}, validation days only (tuning runs). "
             f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
             "| rollout | horizon | " + " | ".join(label for _, label, _ in COLUMNS) + " | wall s |",
             "|:---|---:|" + "---:|" * (len(COLUMNS) + 1)]
    for r in rows:
        lines.append(f"| {'anchored' if r['anchor'] else 'free'} | {r['horizon']} | "
                     + " | ".join(fmt.format(r[k]) for k, _, fmt in COLUMNS) + f" | {r['seconds']:.0f} |")
    text = "\n".join(lines) + "\n"
    write_text(Path(args.out or f"reports/dmpo/imagination_{args.feeder}.md"), text)
    print(text)


if __name__ == "__main__":
    main()
