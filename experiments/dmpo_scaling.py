"""Seconds per DMPO training iteration against the number of agents (ieee141 → mv-urban →
mvlv-rural), each beside the environment alone in the same process; writes
reports/dmpo/scaling.md.

    python experiments/dmpo_scaling.py

Every feeder runs the same iteration: B scenarios × one 8-hour episode, the model fitted and
``model_ratio`` imagined steps per real one from the first iteration on (``imagine_from = 0``),
PPO on real and imagined samples. The iteration's time per agent should stay flat (linear
growth) if nothing in dmpo is worse than linear in agents. ``--layout`` picks the observation
layout: ``pool`` (four voltage summaries per zone; what a 571-agent feeder needs, since a padded
zone of mvlv-rural is 213 floats of which the median agent uses about 35) or ``pad``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from gridrl.io import write_text
from gridrl.marl.bench import run_train_bench


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--feeders", default="ieee141,mv-urban,mvlv-rural", help="comma-separated feeders")
    p.add_argument("--num-envs", type=int, default=4, help="scenarios per iteration (the same on every feeder)")
    p.add_argument("--rounds", type=int, default=2, help="timed iterations per feeder (medians are reported)")
    p.add_argument("--layout", default="pool", choices=("pool", "pad"), help="observation zone layout")
    p.add_argument("--out", default="reports/dmpo/scaling.md", help="markdown report path")
    args = p.parse_args(argv)
    over = {"env": {"zone_layout": args.layout}, "learner": {"imagine_from": 0}}
    rows = []
    for feeder in args.feeders.split(","):
        r = run_train_bench(feeder, algo="dmpo", num_envs=args.num_envs, rounds=args.rounds, pandapower_steps=4,
                            overrides=over)
        rows.append(r)
        print(f"{feeder}: {r['n_agents']} agents, {r['iteration_s']:.2f} s per iteration", file=sys.stderr)
    base = rows[0]
    command = "python experiments/dmpo_scaling.py " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
    lines = ["# DMPO: seconds per training iteration against the number of agents", "",
             f"Command: `{command.strip()}`", "",
             f"dmpo, `{args.layout}` layout, B = {args.num_envs} scenarios × {base['episode_steps']} steps per iteration "
             f"(model fit, imagination and update in every iteration), medians of {args.rounds} rounds after a warm-up. "
             "The environment alone steps the same batch in the same process (its time grows with buses, not agents): "
             "the last column, iteration ÷ environment alone, cancels the machine's load.", "",
             "| feeder | agents | s / iteration | ms / iteration / agent | × agents vs first | × time vs first | "
             "time in env / act / model / imagine / update | iteration ÷ env alone | load average before → after |",
             "|:---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        env_alone_s = r["iteration_steps"] / r["env_alone_steps_per_s"]
        lines.append(f"| {r['feeder']} | {r['n_agents']} | {r['iteration_s']:.2f} | "
                     f"{1000 * r['iteration_s'] / r['n_agents']:.1f} | {r['n_agents'] / base['n_agents']:.1f} | "
                     f"{r['iteration_s'] / base['iteration_s']:.1f} | "
                     + " / ".join(f"{100 * r[f'{k}_share']:.0f} %" for k in ("env", "act", "model", "imagine", "update"))
                     + " | "
                     f"{r['iteration_s'] / env_alone_s:.1f} | {r['load_average_before']} → {r['load_average_after']} |")
    last = rows[-1]
    growth = (last["iteration_s"] / base["iteration_s"]) / (last["n_agents"] / base["n_agents"])
    lines += ["", f"Growth from {base['feeder']} to {last['feeder']}: time × {last['iteration_s'] / base['iteration_s']:.1f} "
              f"for agents × {last['n_agents'] / base['n_agents']:.1f}, i.e. {growth:.2f} of linear "
              f"({'at most linear' if growth <= 1.0 else 'worse than linear'})."]
    text = "\n".join(lines) + "\n"
    write_text(Path(args.out), text)
    print(text)


if __name__ == "__main__":
    main()
