"""The environment step with the tap changer on against the step of a base commit, in one process.

    python experiments/bench_tap.py --feeder ieee141 --num-envs 256 --base 17f4c73

The base commit's ``gridrl`` is extracted (``git archive``) into a temporary folder and its
environment is built while ``import gridrl`` resolves there; then its modules are set aside and
this tree's ``gridrl`` is imported and its environment built with the tap changer on (on a feeder
without a substation transformer: the source regulator, ``EnvConfig(source_regulator=True)``).
Both step the same day with the same random actions; rounds alternate base and new so a change
in the machine's load hits both alike. Prints the median and best per-step times and their
ratio; writes ``--out`` (markdown) when given.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _extract(commit: str, dest: Path) -> None:
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "gridrl", "feeders"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=tar, check=True)


def _drop_gridrl() -> dict:
    mods = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "gridrl" or k.startswith("gridrl.")}
    importlib.invalidate_caches()
    return mods


def _build(feeder_name: str, num_envs: int, day: int | None, config_kwargs: dict):
    import gridrl
    from gridrl.env import EnvConfig, make_env

    feeder = gridrl.load_feeder(feeder_name)
    day = feeder.days("train")[0] if day is None else day
    env = make_env(feeder, split="train", num_envs=num_envs, seed=0, config=EnvConfig(**config_kwargs))
    env.reset(days=[day] * num_envs)
    return env, day, gridrl.__file__


def _episode(env, day, acts) -> float:
    env.reset(days=[day] * env.num_envs)
    t = time.perf_counter()
    for a in acts:
        env.step(a)
    return (time.perf_counter() - t) / len(acts)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--feeder", default="ieee141")
    p.add_argument("--num-envs", type=int, default=256)
    p.add_argument("--steps", type=int, default=48, help="steps per timed episode")
    p.add_argument("--rounds", type=int, default=7, help="alternating base/new episodes")
    p.add_argument("--base", default="17f4c73", help="commit to compare with")
    p.add_argument("--out", default="", help="markdown report path")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        _extract(args.base, Path(tmp))
        sys.path.insert(0, tmp)
        _drop_gridrl()
        base_env, day, base_file = _build(args.feeder, args.num_envs, None, {})
        sys.path.remove(tmp)
        _drop_gridrl()
        sys.path.insert(0, str(ROOT))
        new_cfg = {"source_regulator": True}
        new_env, _, new_file = _build(args.feeder, args.num_envs, day, new_cfg)
        assert base_file != new_file, (base_file, new_file)
        g = torch.Generator().manual_seed(0)
        acts = 2 * torch.rand(args.steps, args.num_envs, base_env.n_agents, generator=g) - 1
        _episode(base_env, day, acts[:4])
        _episode(new_env, day, acts[:4])
        base_t, new_t = [], []
        for _ in range(args.rounds):
            base_t.append(_episode(base_env, day, acts))
            new_t.append(_episode(new_env, day, acts))
    tap = new_env.tap_changer.describe() if new_env.tap_changer is not None else "none"
    med_b, med_n = float(np.median(base_t)), float(np.median(new_t))
    best_b, best_n = min(base_t), min(new_t)
    command = "python experiments/bench_tap.py " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
    text = "\n".join([
        f"# Environment step: tap changer on vs {args.base}",
        "",
        f"`{command.strip()}`",
        "",
        f"{args.feeder}, B = {args.num_envs}, {args.steps} steps per episode, {args.rounds} alternating rounds; "
        f"tap changer: {tap}.",
        "",
        "| | median ms/step | best ms/step |",
        "|---|---|---|",
        f"| base {args.base} | {1e3 * med_b:.3f} | {1e3 * best_b:.3f} |",
        f"| this tree (tap changer on) | {1e3 * med_n:.3f} | {1e3 * best_n:.3f} |",
        f"| ratio | {med_n / med_b:.3f} | {best_n / best_b:.3f} |",
    ])
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
