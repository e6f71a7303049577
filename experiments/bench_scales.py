"""Measure the scales an RL researcher needs: observation features and reward components per feeder.

For every feeder (default: all but mvlv-rural, whose 5,479 buses take minutes per day) this runs
whole days of the training split from midnight (``--days`` evenly spread training days, one
batch) and records

* every observation feature under uniform random actions (what a fresh policy sees), pooled over
  agents, real zone buses (padding excluded) and steps — twice: the default layout
  (``zone_layout="pad"``) and ``zone_layout="pool"`` with a one-step forecast, so every feature
  kind is measured;
* the reward's components per agent and step — voltage barrier, loss share and |q| cost, each
  weighted as the reward subtracts them, and the local reward itself — under no control, IEEE
  1547-B droop and uniform random actions, with the mean day's return (all agents summed).

It writes ``gridrl/env/scales.json`` (read by ``gridrl.env.spec.obs_spec`` / ``reward_spec``)
and renders ``docs/scales.md`` from it.

    python experiments/bench_scales.py                  # all feeders but mvlv-rural
    python experiments/bench_scales.py --feeders ieee33 --days 4 --out-json /tmp/s.json --out-md /tmp/s.md
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import gridrl
from gridrl.env import EnvConfig, make_env
from gridrl.env.spec import FEATURES, feature_of
from gridrl.io import write_text

DEFAULT_FEEDERS = ["ieee33", "ieee69", "ieee141", "mv-rural", "mv-urban"]
PCTS = {"p01": 1, "p50": 50, "p99": 99}


def _pct(x: np.ndarray) -> dict:
    x = x[np.isfinite(x)]
    out = {k: float(np.percentile(x, q)) for k, q in PCTS.items()}
    out["mean"] = float(x.mean())
    return out


def _days(feeder, n: int) -> list[int]:
    pool = feeder.days("train")
    idx = np.linspace(0, len(pool) - 1, n).round().astype(int)
    return [pool[i] for i in dict.fromkeys(idx)]


def _rollout(feeder, days, cfg, policy, seed=0):
    """obs [T+1, B, N, D] and the per-step info of whole days under ``policy``."""
    env = make_env(feeder, split="train", num_envs=len(days), seed=seed, days=days,
                   config=dataclasses.replace(cfg, start_hour=0.0, episode_hours=24.0, day_sampling="cycle"))
    g = torch.Generator().manual_seed(seed)
    obs = env.reset()
    frames, infos = [obs], []
    for _ in range(env.episode_steps):
        if policy == "random":
            a = 2 * torch.rand(env.num_envs, env.n_agents, generator=g, dtype=torch.float64) - 1
        else:
            a = policy.act(obs, env=env)
        obs, reward, done, info = env.step(a)
        info["reward"] = reward
        frames.append(obs)
        infos.append(info)
    return env, torch.stack(frames).numpy(), infos


def _obs_features(env, obs: np.ndarray) -> dict:
    names = env.obs_names
    pos = {n: i for i, n in enumerate(names)}
    pooled: dict[str, list[np.ndarray]] = {}
    for i, name in enumerate(names):
        feature, slot = feature_of(name)
        x = obs[..., i]
        if slot is not None and feature != "mask" and f"mask[{slot}]" in pos:
            x = x[obs[..., pos[f"mask[{slot}]"]] > 0.5]
        pooled.setdefault(feature, []).append(x.reshape(-1))
    return {f: _pct(np.concatenate(v)) for f, v in pooled.items()}


def _rewards(env, infos) -> dict:
    cfg = env.config
    parts = {"voltage": ("reward_voltage", cfg.voltage_weight),
             "loss": ("reward_loss", cfg.loss_weight_per_mw),
             "q": ("reward_q", cfg.q_weight_per_mvar)}
    out = {k: _pct(np.concatenate([(w * i[key]).numpy().reshape(-1) for i in infos]))
           for k, (key, w) in parts.items()}
    rewards = np.stack([i["reward"].numpy() for i in infos])  # [T, B, N]
    out["reward"] = _pct(rewards.reshape(-1))
    out["episode_return"] = float(rewards.sum(axis=(0, 2)).mean())
    return out


def measure(name: str, n_days: int) -> dict:
    feeder = gridrl.load_feeder(name)
    days = _days(feeder, n_days)
    env, obs, _ = _rollout(feeder, days, EnvConfig(), "random")
    features = _obs_features(env, obs)
    env_pool, obs_pool, _ = _rollout(feeder, days, EnvConfig(zone_layout="pool", forecast_steps=1), "random")
    for f, v in _obs_features(env_pool, obs_pool).items():
        features.setdefault(f, v)
    reward = {}
    for label, policy in (("none", gridrl.make_controller("none", feeder)),
                          ("droop", gridrl.make_controller("droop", feeder, preset="ieee1547-b")),
                          ("random", "random")):
        e, _, infos = _rollout(feeder, days, EnvConfig(), policy)
        reward[label] = _rewards(e, infos)
    return {"days": days, "n_agents": env.n_agents, "obs_dim": env.obs_dim, "obs": features,
            "reward": reward}


def _fmt(x: float) -> str:
    if abs(x) < 1e-9:  # rounding noise of sin/cos and of q ≈ 0, not a scale
        return "0"
    return f"{x:.3g}" if abs(x) >= 1e-3 else f"{x:.2e}"


def render(data: dict) -> str:
    meta = data["meta"]
    lines = ["# Observation and reward scales per feeder", "",
             f"Measured by `{meta['command']}` at commit {meta['commit']} ({meta['date']}); "
             f"{meta['days']} training days per feeder, whole days from midnight, default "
             "`EnvConfig` (bowl barrier, weights voltage 1, loss 1 per MW, |q| 0.01 per MVAr). "
             "Shipped as `gridrl/env/scales.json`: `gridrl.env.spec.obs_spec(env)` and "
             "`reward_spec(feeder)` return these tables.", "",
             "**Observations** (per feature: pooled over agents, real zone buses — padding "
             "excluded — and steps; uniform random actions). Pad-layout features come from the "
             "default layout, the pool-layout and forecast features from "
             "`EnvConfig(zone_layout='pool', forecast_steps=1)`. Layout per agent, in "
             "`env.obs_names` order: for each zone slot z the four entries "
             "`dv_pu[z], p_mw[z], q_mvar[z], mask[z]`, then `inv_p_mw, inv_q_mvar, "
             "inv_q_avail_mvar, sin_time, cos_time`, then forecasts.", ""]
    feeders = list(data["feeders"])
    lines += ["| feature | unit | " + " | ".join(f"{f} p01 / p50 / p99" for f in feeders) + " |",
              "|:---|:---|" + "---:|" * len(feeders)]
    for feature, (unit, _) in FEATURES.items():
        cells = []
        for f in feeders:
            p = data["feeders"][f]["obs"].get(feature)
            cells.append("–" if p is None else f"{_fmt(p['p01'])} / {_fmt(p['p50'])} / {_fmt(p['p99'])}")
        lines.append(f"| `{feature}` | {unit} | " + " | ".join(cells) + " |")
    lines += ["", "| feeder | agents | obs_dim (default) |", "|:---|---:|---:|"]
    lines += [f"| {f} | {d['n_agents']} | {d['obs_dim']} |" for f, d in data["feeders"].items()]
    lines += ["", "**Rewards** per agent and step: the reward is −(voltage + loss + q); columns are "
              "those weighted costs and the reward itself (p01 / p50 / p99, mean), and the mean "
              "day's return summed over agents (96 steps).", "",
              "| feeder | controller | voltage cost | loss cost | q cost | reward | day return |",
              "|:---|:---|---:|---:|---:|---:|---:|"]
    for f, d in data["feeders"].items():
        for ctrl, r in d["reward"].items():
            cell = lambda p: f"{_fmt(p['p01'])} / {_fmt(p['p50'])} / {_fmt(p['p99'])} ({_fmt(p['mean'])})"  # noqa: E731
            lines.append(f"| {f} | {ctrl} | {cell(r['voltage'])} | {cell(r['loss'])} | {cell(r['q'])} | "
                         f"{cell(r['reward'])} | {r['episode_return']:.2f} |")
    lines += ["", "Feature descriptions: `gridrl.env.spec.FEATURES`; the reward's definition: "
              "`VoltageControlEnv`'s docstring and `EnvConfig`.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--feeders", default=",".join(DEFAULT_FEEDERS))
    ap.add_argument("--days", type=int, default=16)
    ap.add_argument("--out-json", default="gridrl/env/scales.json")
    ap.add_argument("--out-md", default="docs/scales.md")
    ap.add_argument("--render-only", action="store_true", help="re-render --out-md from --out-json")
    args = ap.parse_args()
    if args.render_only:
        write_text(Path(args.out_md), render(json.loads(Path(args.out_json).read_text())))
        return
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    data = {"meta": {"command": "python experiments/bench_scales.py " + " ".join(sys.argv[1:]),
                     "commit": commit, "date": dt.date.today().isoformat(), "days": args.days},
            "feeders": {}}
    for name in args.feeders.split(","):
        print(f"measuring {name} …", flush=True)
        data["feeders"][name] = measure(name, args.days)
    write_text(Path(args.out_json), json.dumps(data, indent=1) + "\n")
    write_text(Path(args.out_md), render(data))
    print(f"wrote {args.out_json} and {args.out_md}")


if __name__ == "__main__":
    main()
