"""The DMPO model fit, the code path of 2026-12-07 against today's, in one process on the same data:
seconds per agent per iteration and the fitted models' held-out errors; writes
reports/dmpo/bench_model_fit_<feeder>.md.

    python experiments/bench_model_fit.py --feeder ieee141 --variants 100x64,25x256,25x64

One learner collects ``--iterations`` blocks of real episodes (B scenarios × one 8-hour episode
each, the initial exploring policy, training days). Every setting then gets a fresh learner of
the same seed (the same initial model) and replays the blocks as training would: block i joins
the replay, then the model is fitted — the settings interleaved block by block, so a busy
machine slows them alike. After the last block each model is scored on the held-out scenarios
(one-step next voltages, zone losses, reward, H steps open loop: ``DMPO._model_errors``) and on
the true physics of an independent action (``DMPO.counterfactual_errors`` against ``env.peek``,
one episode of 4 scenarios on training days).

Settings: ``before`` is the fit loop as it stood before the training set was normalised once
per fit (each update built its minibatch from the replay: gather, features, normalisation) and
before passes were cut into 4 MB chunks instead of 16 MB, at the learner's 100 updates × 64
feeder-steps per member; ``UxM`` is the learner's present fit
with U updates of M feeder-steps per member, optionally ``:lrRATE`` (Adam's learning rate),
``:hWIDTH`` (the model's width), ``:bf16`` (the fit's matrix products in bfloat16) and
``:stopN`` (the held-out early stop, checked every N updates: ``model_stop_every``; the updates
a fit made are counted, and the table gives their mean). The
present fit at 100x64 draws the same minibatches as ``before``, so its parameters come out
identical where one chunk holds a whole minibatch (and within rounding where chunks differ):
the benchmark says which.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from gridrl.io import write_text

ERRORS = (("model/volt_rmse_pu", "one-step voltage RMSE (p.u.)"),
          ("model/volt_rmse_persist_pu", "persistence voltage RMSE (p.u.)"),
          ("model/loss_rmse_mw", "zone loss RMSE (MW)"),
          ("model/reward_rmse_physics", "reward RMSE (physics)"),
          ("model/cf_action_error_pu", "imagined action effect RMSE (p.u.)"),
          ("model/cf_action_effect_pu", "true action effect (p.u.)"))


def fit_before(learner) -> dict[str, float]:
    """The fit loop before this benchmark's change: every update gathers its minibatch from the
    replay, builds its features and normalises them, in chunks of 16 MB; returns its updates."""
    import gridrl.marl.model as model_module

    now, model_module.CHUNK_FLOATS = model_module.CHUNK_FLOATS, 1 << 22
    try:
        _fit_before(learner)
        return {"update/model_steps": float(learner.cfg.model_updates)}
    finally:
        model_module.CHUNK_FLOATS = now


def _fit_before(learner) -> None:
    cfg, m = learner.cfg, learner.model
    train = learner.replay.transitions(held_out=False)
    K, batch = m.size, cfg.model_batch
    for _ in range(cfg.model_updates):
        pick = train[torch.randint(len(train), (K * batch,), generator=learner.generator, device=learner.device)]
        x, y = learner._model_data(learner.replay.step(pick))
        learner.model_optimizer.zero_grad(set_to_none=True)
        m.backward(x.view(K, batch, *x.shape[1:]), y.view(K, batch, *y.shape[1:]))
        torch.nn.utils.clip_grad_norm_(m.parameters(), 10.0)
        learner.model_optimizer.step()


def setting(text: str) -> dict:
    """``before`` or ``UxM`` (U updates of M feeder-steps per member) with optional extras:
    ``:lrRATE`` (Adam's rate), ``:hWIDTH`` (model width), ``:bf16`` (the fit's products in
    bfloat16), ``:prior`` (the sensitivity prior), ``:physics`` (the prior alone carries the actions), ``:kHOPS``
    (the model's κ), ``:stopN`` (the held-out early stop every N updates), ``:uSTEPS`` (the loss
    unrolled over that many steps, ``model_unroll``)."""
    if text == "before":
        return {"name": "before", "updates": 100, "batch": 64, "learner": {}}
    size, *extras = text.split(":")
    updates, _, batch = size.partition("x")
    learner = {}
    for extra in extras:
        if extra.startswith("lr"):
            learner["model_lr"] = float(extra[2:])
        elif extra.startswith("stop") and extra[4:].isdigit():
            learner["model_stop_every"] = int(extra[4:])
        elif extra[:1] in ("h", "k", "u") and extra[1:].isdigit():
            learner[{"h": "model_hidden", "k": "model_hops", "u": "model_unroll"}[extra[0]]] = int(extra[1:])
        elif extra in ("bf16", "prior", "physics"):
            learner.update({"model_precision": "bfloat16"} if extra == "bf16" else
                           {"model_prior": "sensitivity" if extra == "prior" else "physics"})
        else:
            updates = ""
    if not (updates.isdigit() and batch.isdigit()):
        raise SystemExit(f"setting {text!r} is not 'before' or UPDATESxBATCH[:lrRATE][:hWIDTH][:bf16][:prior|:physics]"
                         "[:kHOPS][:stopN][:uSTEPS], "
                         "e.g. 25x256:lr2e-3")
    return {"name": text, "updates": int(updates), "batch": int(batch), "learner": learner}


def run(feeder: str, settings: list[dict], *, layout: str = "pool", num_envs: int = 4, iterations: int = 16,
        seed: int = 0, device: str = "cpu", check_split: str = "train") -> dict:
    """Collect the blocks, fit every setting on them (interleaved), score each model; returns
    ``env``, ``learners``, ``seconds`` and ``updates`` (per fit) and ``errors`` (per setting)."""
    from gridrl.env import make_env
    from gridrl.grid.feeder import load_feeder
    from gridrl.marl.ppo import Stopwatch
    from gridrl.marl.train import _with_band, learner_class, resolve_train_config

    fd = load_feeder(feeder)
    cfg = resolve_train_config({"env": {"zone_layout": layout}, "learner": {"model_check_every": 0}},
                               source="bench_model_fit", overrides={"algo": "dmpo"})
    cfg = _with_band(dataclasses.replace(cfg, num_envs=num_envs), fd)
    env = make_env(fd, split="train", num_envs=cfg.num_envs, seed=seed, config=cfg.env)
    DMPO = learner_class("dmpo")
    make = lambda learner_cfg: DMPO(env, learner_cfg, seed=seed, total_steps=10 ** 9, device=device)  # noqa: E731

    collector = make(cfg.learner)
    blocks = []
    for _ in range(iterations):
        rollout = collector._collect(Stopwatch())
        buf = collector.buffer
        blocks.append({"obs": torch.cat([buf["obs"], rollout.last_obs[None]], 0).clone(),
                       "valid": (buf["active"] & ~buf["terminal"]).clone(),
                       "action": buf["action"].clone(), "reward": buf["reward"].clone(),
                       "zone_loss_mw": buf["zone_loss_mw"].clone(), "voltage_cost": buf["reward_voltage"].clone()})

    learners = {}
    for s in settings:
        over = {"model_updates": s["updates"], "model_batch": s["batch"], **s["learner"]}
        learners[s["name"]] = make(dataclasses.replace(cfg.learner, **over))
    # before: Adam one parameter at a time, as it was (the learner's steps over all at once, the same values)
    if "before" in learners:
        learner = learners["before"]
        learner.model_optimizer = torch.optim.Adam(learner.model.parameters(), lr=cfg.learner.model_lr, foreach=False)
    seconds = {name: [] for name in learners}
    updates = {name: [] for name in learners}
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    for block in blocks:
        for s in settings:
            learner = learners[s["name"]]
            learner.remember(block["obs"], block["valid"], action=block["action"], reward=block["reward"],
                             zone_loss_mw=block["zone_loss_mw"], voltage_cost=block["voltage_cost"])
            t = time.perf_counter()
            stats = fit_before(learner) if s["name"] == "before" else learner._fit_model()
            if learner.device.type == "cuda":
                torch.cuda.synchronize()
            seconds[s["name"]].append(time.perf_counter() - t)
            updates[s["name"]].append(stats["update/model_steps"])
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())

    errors = {}
    for name, learner in learners.items():
        e = learner._model_errors()
        check = make_env(fd, split=check_split, num_envs=4, seed=seed + 1, config=cfg.env)
        e.update(learner.counterfactual_errors(check, seed=seed + 1))
        errors[name] = e
    return {"feeder": fd, "env": env, "learners": learners, "seconds": seconds, "updates": updates, "errors": errors,
            "load": (load_before, load_after)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--feeder", default="ieee141")
    p.add_argument("--layout", default="pool", choices=("pool", "pad"), help="observation zone layout")
    p.add_argument("--num-envs", type=int, default=4, help="scenarios per iteration")
    p.add_argument("--iterations", type=int, default=16, help="blocks of episodes, one fit after each")
    p.add_argument("--variants", default="100x64,25x256,25x64", help="comma-separated settings besides 'before'")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="markdown report (default reports/dmpo/bench_model_fit_<feeder>.md)")
    args = p.parse_args(argv)

    settings = [setting("before")] + [setting(v) for v in args.variants.split(",") if v]
    res = run(args.feeder, settings, layout=args.layout, num_envs=args.num_envs, iterations=args.iterations,
              seed=args.seed, device=args.device)
    fd, env, learners, seconds, errors = res["feeder"], res["env"], res["learners"], res["seconds"], res["errors"]
    updates = res["updates"]
    load_before, load_after = res["load"]
    collector = learners["before"]
    same = None
    if "100x64" in learners:
        same = max(float((a.double() - b.double()).abs().max())
                   for a, b in zip(learners["before"].model.state_dict().values(),
                                   learners["100x64"].model.state_dict().values()) if a.is_floating_point())

    N = env.n_agents
    base_s = statistics.median(seconds["before"][1:] or seconds["before"])
    base_total = sum(seconds["before"][1:] or seconds["before"])
    command = "python experiments/bench_model_fit.py " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} torch thread(s)"
    lines = [f"# DMPO model fit on {fd.name}: before and now, one process, the same data", "",
             f"Command: `{command.strip()}`", "",
             f"{N} agents, `{args.layout}` layout, {args.iterations} blocks of B = {args.num_envs} scenarios × "
             f"{env.episode_steps} steps (the initial exploring policy, training days); a fit after every block, "
             f"ensemble of {collector.model.size}. Device: {device}. Time per fit: median over blocks 2–{args.iterations} "
             f"(the replay grows to its full size; the total-time speed-up: their sum); load average {load_before} before, {load_after} after. Errors: "
             f"after the last fit, on the held-out scenarios and (imagined action effects) against `env.peek` of an "
             f"independent action. Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
             "| setting | updates (mean per fit) × feeder-steps per member | samples seen ÷ before | s / fit | "
             "ms / agent / fit | speed-up vs before | speed-up, total time | "
             + " | ".join(label for _, label in ERRORS) + " |",
             "|:---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(ERRORS)]
    for s in settings:
        t = statistics.median(seconds[s["name"]][1:] or seconds[s["name"]])
        total = sum(seconds[s["name"]][1:] or seconds[s["name"]])
        made = statistics.mean(updates[s["name"]])
        e = errors[s["name"]]
        lines.append(f"| {s['name']} | {made:.4g} × {s['batch']} | {made * s['batch'] / 6400:.2f} | "
                     f"{t:.3f} | {1000 * t / N:.1f} | {base_s / t:.2f}× | {base_total / total:.2f}× | "
                     + " | ".join(f"{e.get(k, math.nan):.5f}" for k, _ in ERRORS) + " |")
    if same is not None:
        lines += ["", f"`before` and `100x64` (the same minibatches): parameters after the last fit "
                  + ("identical." if same == 0 else f"differ by at most {same:.2e} (chunks of other sizes sum "
                                                    "the gradient in another order).")]
    text = "\n".join(lines) + "\n"
    write_text(Path(args.out or f"reports/dmpo/bench_model_fit_{fd.name}.md"), text)
    print(text)


if __name__ == "__main__":
    main()
