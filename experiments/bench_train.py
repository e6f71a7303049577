"""Training throughput of a learner, end to end, against the environment alone and a pandapower
step in the same process; writes reports/bench/train.md.

    python experiments/bench_train.py --feeder ieee141 --algo dppo

The measurement lives in :mod:`gridrl.marl.bench` (also behind ``gridrl bench train``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from gridrl.io import write_text
from gridrl.marl.bench import run_train_bench, to_markdown


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--feeder", default="ieee141", help="feeder to train on")
    p.add_argument("--algo", default="dppo", help="dppo, ippo or cppo")
    p.add_argument("--num-envs", type=int, default=None, help="scenarios per iteration (default: training default)")
    p.add_argument("--rounds", type=int, default=5, help="timed iterations (medians are reported)")
    p.add_argument("--threads", type=int, default=None, help="threads for this run (default: gridrl's policy)")
    p.add_argument("--out", default="reports/bench/train.md", help="markdown report path")
    args = p.parse_args(argv)
    result = run_train_bench(args.feeder, algo=args.algo, num_envs=args.num_envs, rounds=args.rounds,
                             threads=args.threads)
    command = "python experiments/bench_train.py " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
    text = to_markdown(result, command=command.strip())
    write_text(Path(args.out), text + "\n")
    print(text)


if __name__ == "__main__":
    main()
