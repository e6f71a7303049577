"""Where one DMPO training iteration spends its time on a feeder, with the model's passes chunked
(the default) and in one piece, in the same process; writes reports/dmpo/profile.md.

    python experiments/dmpo_profile.py --feeder mvlv-rural

The iteration is the scaling benchmark's (``experiments/dmpo_scaling.py``: pool layout, B
scenarios × one 8-hour episode, model fit, imagination and update every iteration). Rounds
alternate the two settings, so a busy machine slows both alike; the report gives the medians of
every phase per agent and the functions with the most own time (cProfile) of the last round of
each. "One piece" sets :data:`gridrl.marl.model.CHUNK_FLOATS` so high that no pass is cut:
the code before chunking.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import os
import pstats
import shlex
import statistics
import sys
import time
from pathlib import Path

from gridrl.io import write_text

PHASES = ("env", "act", "model", "imagine", "update")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--feeder", default="mvlv-rural")
    p.add_argument("--num-envs", type=int, default=4, help="scenarios per iteration")
    p.add_argument("--model-updates", type=int, default=20,
                   help="model gradient steps per iteration (default 20, a fifth of the learner's, to keep this short)")
    p.add_argument("--rounds", type=int, default=2, help="timed iterations of each setting")
    p.add_argument("--top", type=int, default=12, help="functions listed per setting")
    p.add_argument("--out", default="reports/dmpo/profile.md")
    args = p.parse_args(argv)

    import gridrl.marl.model as model_module
    from gridrl.env import make_env
    from gridrl.grid.feeder import load_feeder
    from gridrl.marl.train import _with_band, learner_class, resolve_train_config

    fd = load_feeder(args.feeder)
    cfg = resolve_train_config({"env": {"zone_layout": "pool"},
                                "learner": {"imagine_from": 0, "model_updates": args.model_updates,
                                            "model_check_every": 0}},
                               source="profile", overrides={"algo": "dmpo"})
    cfg = _with_band(dataclasses.replace(cfg, num_envs=args.num_envs), fd)
    env = make_env(fd, split="train", num_envs=cfg.num_envs, seed=0, config=cfg.env)
    learner = learner_class("dmpo")(env, cfg.learner, seed=0, total_steps=10 ** 9)
    learner.iterate()  # warm-up
    chunked = model_module.CHUNK_FLOATS
    settings = {"chunked": chunked, "one piece": 1 << 62}
    times = {name: [] for name in settings}
    profiles = {}
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    for _ in range(args.rounds):
        for name, floats in settings.items():
            model_module.CHUNK_FLOATS = floats
            prof = cProfile.Profile()
            t = time.perf_counter()
            prof.enable()
            stats = learner.iterate()
            prof.disable()
            times[name].append({"wall": time.perf_counter() - t, **{k: stats[f"time/{k}_s"] for k in PHASES}})
            profiles[name] = prof
    model_module.CHUNK_FLOATS = chunked
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())

    N = env.n_agents
    med = {name: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for name, rows in times.items()}
    command = "python experiments/dmpo_profile.py " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
    lines = [f"# DMPO: one training iteration on {fd.name}, profiled", "", f"Command: `{command.strip()}`", "",
             f"{N} agents, pool layout, B = {cfg.num_envs} scenarios × {env.episode_steps} steps, "
             f"{args.model_updates} model updates per iteration; medians of {args.rounds} rounds per setting, the "
             f"settings alternating in one process; load average {load_before} before, {load_after} after.", "",
             "| setting | s / iteration | ms / agent | " + " | ".join(f"{k} s" for k in PHASES) + " |",
             "|:---|---:|---:|" + "---:|" * len(PHASES)]
    for name, m in med.items():
        lines.append(f"| {name} | {m['wall']:.2f} | {1000 * m['wall'] / N:.1f} | "
                     + " | ".join(f"{m[k]:.2f}" for k in PHASES) + " |")
    ratio = med["one piece"]["wall"] / med["chunked"]["wall"]
    lines += ["", f"One piece ÷ chunked: {ratio:.2f}× the time per iteration.", ""]
    for name, prof in profiles.items():
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(args.top)
        body = s.getvalue().replace(os.getcwd() + os.sep, "").strip().splitlines()
        start = next(i for i, line in enumerate(body) if line.strip().startswith("ncalls"))
        lines += [f"## Own time by function, {name} (last round)", "", "```", *body[start:], "```", ""]
    text = "\n".join(lines)
    write_text(Path(args.out), text)
    print(text)


if __name__ == "__main__":
    main()
