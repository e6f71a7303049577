"""Where a transferable policy loses more than doing nothing on a feeder it never saw (issue 25).

    python experiments/transfer_diagnose.py --feeder mv-rural --runs /work/runs/transfer/loo-mv-rural-dppo-seed{0,1,2}

On the feeder's **validation** days (never its test days), each run's policy (a transferable run's
zero-shot, or a run trained on the feeder itself, for contrast), deployed as
the comparisons deploy it (safety envelope and hand-over on), beside no control in the same
scenarios. Prints, and writes to ``--out`` (default ``reports/transfer/diagnosis/FEEDER.md``):

- the four static features of every agent of every feeder of the experiment (the feeder's against
  those of the feeders the run trained on);
- energy loss and its controllable part, per controller, and the extra loss over no control per
  hour of day;
- the reactive power the policy sends (signed, as a share of the headroom), per agent and per
  hour, and where the 1547-B deadband holds (0.98–1.02 p.u. at the own bus, where 1547-B and no
  control send nothing) how far the deterministic action lies from 0;
- how often the hand-over to 1547-B fires and how far each normalised input lies from the
  training statistics (the share of agent-steps beyond 3 and 6 standard deviations).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gridrl.control import make_controller
from gridrl.env import make_env
from gridrl.grid.feeder import load_feeder
from gridrl.grid.sensitivity import agent_loss_sensitivity
from gridrl.io import write_text
from gridrl.marl.run import deployed, open_run
from gridrl.marl.transfer import STATIC_NAMES, feeder_features

FEEDERS = ("ieee33", "ieee69", "ieee141", "mv-rural", "mv-urban")
LOSS = "dloss/dq ×1000"  # agent_loss_sensitivity, kW of loss per Mvar


def rollout(feeder, ctrl, days, env_config, *, policy=None, learned: bool | None = None,
            seen=None) -> dict[str, np.ndarray]:
    """Per-step records ``[T, B(, N)]`` of ``ctrl`` over whole ``days`` of the validation split;
    with ``policy`` also its deterministic action before the envelope and its normalised inputs.
    ``learned`` (default: whether ``policy`` is given): ``ctrl`` reads the step's message mask.
    ``seen``: what the controllers read instead of each observation (a probe, e.g. the clock held)."""
    import dataclasses

    cfg = dataclasses.replace(env_config, start_hour=0.0, episode_hours=24.0, day_sampling="cycle")
    env = make_env(feeder, split="val", num_envs=len(days), seed=0, days=days, config=cfg)
    obs = env.reset(days=days)
    if hasattr(ctrl, "reset"):
        ctrl.reset()
    names = list(env.obs_names)
    own, qa_col = names.index("dv_own_pu"), names.index("inv_q_avail_mvar")
    rec: dict[str, list] = {k: [] for k in ("loss_mw", "ctrl_loss_mw", "controllable", "a_policy", "a_sent", "handed", "v_own",
                                            "q_avail", "z")}
    mask = None
    learned = policy is not None if learned is None else learned
    for _ in range(env.episode_steps):
        x = torch.as_tensor(obs) if seen is None else seen(torch.as_tensor(obs).clone(), names)
        with torch.no_grad():
            if policy is not None:
                rec["a_policy"].append(policy.act(x, message_mask=mask).numpy())
                rec["z"].append(policy.obs_norm(x.to(torch.float32)).numpy())
            a = ctrl.act(x, env=env, message_mask=mask) if learned else ctrl.act(x, env=env)
        rec["a_sent"].append(np.asarray(a, dtype=np.float64))
        rec["v_own"].append(1.0 + x[..., own].numpy())
        rec["q_avail"].append(x[..., qa_col].numpy())
        rec["handed"].append(np.asarray((getattr(ctrl, "last_info", None) or {}).get(
            "handover", np.zeros(len(days))), dtype=float))
        obs, _, done, info = env.step(a)
        if env.config.message_dropout > 0:
            mask = info["message_mask"]
        rec["loss_mw"].append(info["loss_mw"].numpy())
        rec["controllable"].append(info["controllable"].numpy())
        rec["ctrl_loss_mw"].append((info["line_loss_mw"] + info["trafo_load_loss_mw"]).numpy())
        if bool(torch.as_tensor(done).all()):
            break
    out = {k: np.stack(v) for k, v in rec.items() if v}
    out["hours"] = env.step_hours
    out["names"] = names
    return out


def static_table(feeders) -> pd.DataFrame:
    rows = []
    for name in feeders:
        feeder = load_feeder(name)
        f = feeder_features(feeder)
        columns = {s: f.static[:, j] for j, s in enumerate(STATIC_NAMES)}
        columns[LOSS] = 1000.0 * agent_loss_sensitivity(feeder)
        for s, col in columns.items():
            rows.append({"feeder": name, "feature": s, "agents": len(col), "min": col.min(),
                         "median": float(np.median(col)), "max": col.max()})
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--feeder", required=True)
    ap.add_argument("--runs", type=Path, nargs="+", required=True)
    ap.add_argument("--days", type=int, default=0, help="only this many validation days, evenly spread (0: all)")
    ap.add_argument("--envelope", default="", help="envelope settings k=v,k=v (EnvelopeConfig fields)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    feeder = load_feeder(args.feeder)
    val = [int(d) for d in feeder.days("val")]
    days = val if not args.days else sorted({val[int((k + 0.5) * len(val) / args.days)] for k in range(args.days)})
    envelope = dict(_value(kv) for kv in args.envelope.split(",") if kv)
    lines = [f"# Transfer diagnosis: {args.feeder}, {len(days)} validation days", "",
             f"Command: `python experiments/transfer_diagnose.py --feeder {args.feeder} --runs "
             f"{' '.join(map(str, args.runs))}" + (f" --days {args.days}" if args.days else "")
             + (f" --envelope {args.envelope}" if args.envelope else "") + "`", ""]

    st = static_table(FEEDERS)
    lines += ["## Static features (per feeder: min / median / max over agents; the last row is not a policy input: d loss / d q of the agent at the feeder's mean sunny step of its training days, agent_loss_sensitivity)", "",
              "| feature | " + " | ".join(FEEDERS) + " |", "|---|" + "---|" * len(FEEDERS)]
    for s in (*STATIC_NAMES, LOSS):
        cells = [st[(st.feeder == f) & (st.feature == s)].iloc[0] for f in FEEDERS]
        lines.append(f"| {s} | " + " | ".join(f"{c['min']:.2f} / {c['median']:.2f} / {c['max']:.2f}" for c in cells)
                     + " |")

    run0 = open_run(args.runs[0])
    env_config = run0.evaluation_config()
    base = rollout(feeder, make_controller("none", feeder), days, env_config)
    h = base["hours"]
    steps_per_hour = int(round(1 / h))
    e0, c0 = base["loss_mw"].sum() * h, base["ctrl_loss_mw"].sum() * h
    lines += ["", "## Loss on the validation days", "", "| controller | controllable rate | energy loss MWh | controllable MWh | "
              "Δ vs none MWh | hand-over % agent-steps | mean sent action (deadband) | mean |action| (deadband) |",
              "|---|---|---|---|---|---|---|---|",
              f"| none | {base['controllable'].mean():.4f} | {e0:.3f} | {c0:.3f} | 0 | – | 0 | 0 |"]
    hourly, per_agent, zrows = {}, {}, []
    for path in args.runs:
        run = open_run(path)
        policy = run.policy(name=path.name, feeder=feeder)
        ctrl = deployed(policy, feeder, run.evaluation_config(), envelope=envelope, trained_on=run.feeders,
                        trained=run.env_config)
        r = rollout(feeder, ctrl, days, run.evaluation_config(), policy=policy)
        e, c = r["loss_mw"].sum() * h, r["ctrl_loss_mw"].sum() * h
        dead = (r["v_own"] >= 0.98) & (r["v_own"] <= 1.02) & (r["q_avail"] > 0)
        handed = r["handed"].sum() / r["a_sent"][..., 0].size / r["a_sent"].shape[-1]
        lines.append(f"| {path.name} | {r['controllable'].mean():.4f} | {e:.3f} | {c:.3f} | {e - e0:+.3f} ({100 * (e / e0 - 1):+.2f} %) | "
                     f"{100 * handed:.2f} | {r['a_sent'][dead].mean():+.3f} (policy {r['a_policy'][dead].mean():+.3f})"
                     f" | {np.abs(r['a_sent'][dead]).mean():.3f} |")
        d_loss = (r["loss_mw"] - base["loss_mw"]).reshape(-1, steps_per_hour, len(days)).sum((1, 2)) * h
        q = r["a_sent"] * r["q_avail"]                     # Mvar sent, positive injects
        hourly[path.name] = pd.DataFrame({
            "Δ loss MWh": d_loss,
            "Σ q Mvar (mean)": q.sum(-1).reshape(-1, steps_per_hour, len(days)).mean((1, 2)),
            "mean action": r["a_sent"].reshape(-1, steps_per_hour, len(days), q.shape[-1]).mean((1, 2, 3))})
        per_agent[path.name] = pd.DataFrame({"agent": policy.agents, "mean action": r["a_sent"].mean((0, 1)),
                                             "mean q Mvar": q.mean((0, 1)),
                                             "v own mean": r["v_own"].mean((0, 1)),
                                             "hand-over %": 100 * np.nan})
        z = np.abs(r["z"])
        for j, name in enumerate(getattr(policy.obs_norm, "feature_names", policy.obs_names)):
            zrows.append({"run": path.name, "feature": name, "mean z": float(r["z"][..., j].mean()),
                          ">3σ %": 100 * float((z[..., j] > 3).mean()), ">6σ %": 100 * float((z[..., j] > 6).mean())})
    lines += ["", "## Extra loss over no control and reactive power sent, per hour of day", ""]
    for name, df in hourly.items():
        lines += [f"### {name}", "", "| hour | " + " | ".join(df.columns) + " |", "|---|" + "---|" * len(df.columns)]
        lines += [f"| {i} | " + " | ".join(f"{v:+.3f}" for v in row) + " |" for i, row in df.iterrows()]
        lines.append("")
    static = feeder_features(feeder).static
    loss_sens = 1000.0 * agent_loss_sensitivity(feeder)
    lines += ["## Per agent (mean over the validation days; static features of the agent)", ""]
    for name, df in per_agent.items():
        df = df.drop(columns="hand-over %")
        for j, s in enumerate(STATIC_NAMES):
            df[s] = static[:, j]
        df[LOSS] = loss_sens
        df = df.reindex(df["mean q Mvar"].abs().sort_values(ascending=False).index)
        lines += [f"### {name} (ten agents of largest |mean q|; all {len(df)} agents: mean action "
                  f"{df['mean action'].mean():+.3f}, share injecting {100 * (df['mean action'] > 0).mean():.0f} %)", "",
                  _markdown(df.head(10), "+.3f"), ""]
        corr = {s: float(np.corrcoef(df["mean action"], df[s])[0, 1]) for s in (*STATIC_NAMES, LOSS)}
        injecting_costs = df[LOSS] > 0
        lines += [f"agents where injecting raises the losses ({LOSS} > 0): {int(injecting_costs.sum())} of {len(df)}, "
                  f"mean action there {df['mean action'][injecting_costs].mean():+.3f}, elsewhere "
                  f"{df['mean action'][~injecting_costs].mean():+.3f}", ""]
        lines += ["correlation of the mean action with " + ", ".join(f"{k} {v:+.2f}" for k, v in corr.items()), ""]
    zt = pd.DataFrame(zrows).groupby("feature", sort=False)[["mean z", ">3σ %", ">6σ %"]].mean().reset_index()
    lines += ["## Normalised inputs on this feeder (training statistics; mean over the runs)", "",
              _markdown(zt, ".2f"), ""]
    text = "\n".join(lines) + "\n"
    write_text(args.out or Path("reports/transfer/diagnosis") / f"{args.feeder}.md", text)
    print(text)
    return 0


def _markdown(df: pd.DataFrame, fmt: str) -> str:
    cell = lambda v: format(v, fmt) if isinstance(v, (float, np.floating)) else str(v)  # noqa: E731
    rows = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(rows + ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)])


def _value(kv: str):
    k, _, v = kv.partition("=")
    for cast in (int, float):
        try:
            return k, cast(v)
        except ValueError:
            pass
    return k, {"true": True, "false": False, "none": None}.get(v.lower(), v)


if __name__ == "__main__":
    sys.exit(main())
