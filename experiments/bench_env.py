"""Environment throughput and the thread policy quiet vs contended; writes reports/bench/env.md.

    python experiments/bench_env.py --feeder ieee141 --num-envs 256

The measurement lives in :mod:`gridrl.env.bench` (also behind ``gridrl bench env``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from gridrl.env.bench import run_env_bench, to_markdown
from gridrl.io import write_text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--feeder", default="ieee141", help="feeder for env vs pandapower")
    p.add_argument("--num-envs", type=int, default=256, help="batch size B of the environment")
    p.add_argument("--steps", type=int, default=48, help="env steps timed per episode")
    p.add_argument("--pandapower-steps", type=int, default=24, help="pandapower steps timed")
    p.add_argument("--agent-feeder", default="mvlv-rural", help="feeder for agent-steps/s ('' to skip)")
    p.add_argument("--agent-num-envs", type=int, default=16, help="batch size on the agent feeder")
    p.add_argument("--agent-steps", type=int, default=8, help="env steps timed on the agent feeder")
    p.add_argument("--repeats", type=int, default=3, help="timed episodes; the best counts")
    p.add_argument("--no-contention", action="store_true",
                   help="skip the quiet/contended comparison of thread settings")
    p.add_argument("--rounds", type=int, default=6, help="quiet/contended rounds")
    p.add_argument("--out", default="reports/bench/env.md", help="markdown report path")
    args = p.parse_args(argv)
    result = run_env_bench(args.feeder, num_envs=args.num_envs, steps=args.steps,
                           pandapower_steps=args.pandapower_steps,
                           agent_feeder=args.agent_feeder or None,
                           agent_num_envs=args.agent_num_envs, agent_steps=args.agent_steps,
                           repeats=args.repeats, contention=not args.no_contention,
                           contention_rounds=args.rounds)
    command = "python experiments/bench_env.py " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
    text = to_markdown(result, command=command.strip())
    write_text(Path(args.out), text + "\n")
    print(text)


if __name__ == "__main__":
    main()
