"""Does the DMPO model know what actions do? Imagined action effects against ``env.peek`` on test
days, for model variants fitted on the same data; writes reports/dmpo/action_effects_<feeder>.md.

    python experiments/dmpo_action_effects.py --feeder ieee141 --variants 100x64,100x64:prior,100x64:k3:prior

Data and fitting are ``experiments/bench_model_fit.py``'s (``--iterations`` blocks of B
scenarios with the initial exploring policy; every variant fitted after every block, the same
blocks). The check (:meth:`~gridrl.marl.dmpo.DMPO.counterfactual_errors`, one episode of 4
scenarios on test days): the agents play one policy draw ``a``, the model imagines an
independent draw ``a'`` anchored on the real step, and the power flow says what each gives.

- ``action effect``: RMS of the true change ``peek(a') − peek(a)`` of the agents' voltage
  features; ``action error``: RMS of the imagined change less the true one. The target: error
  within 25 % of the effect.
- ``cf voltage RMSE`` and ``ignore-actions RMSE`` (what reports/dmpo/ gave before): the imagined
  next voltages and the real next observation against ``peek(a')``. Both carry the
  ``observation floor``: the observed next voltages differ from the step's power flow by
  sensor noise and, with measured observations, by the next interval's load.

- ``one agent``: each agent j alone redraws its action (every 8th step of the episode); the
  true change of the voltage features of the agents within the model's κ hops of j against the
  imagined change — what agent j's policy gradient needs from its model — and the share of j's
  whole effect (all agents' features) that falls within κ hops.

The locality bound: every agent redraws its action, and agent i's voltages move with the
reactive power of agents beyond its κ hops, which a κ-hop model cannot see. The bound is what
the exact sensitivity prior (:func:`~gridrl.marl.model.voltage_sensitivity`) alone gets wrong
at each κ: the linear prediction from the neighbourhood's Q changes against ``peek`` of random
action pairs (the initial policy's spread) on test days.
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from bench_model_fit import run, setting
from gridrl.io import write_text

COLUMNS = (("model/volt_rmse_pu", "one-step voltage RMSE"),
           ("model/volt_rmse_h4_pu", "4-step voltage RMSE (own voltages)"), ("model/cf_volt_rmse_pu", "cf voltage RMSE"),
           ("model/cf_effect_rmse_pu", "ignore-actions RMSE"), ("model/cf_obs_floor_pu", "observation floor"),
           ("model/cf_action_effect_pu", "action effect"), ("model/cf_action_error_pu", "action error"))


@torch.no_grad()
def locality_bound(feeder: str, hops: list[int], *, layout: str, seed: int = 0, steps: int = 32,
                   spread: float = 0.22) -> dict[int, float]:
    """Error ÷ size of the exact κ-hop sensitivity prior's action effects, per κ (see above)."""
    from gridrl.env import make_env
    from gridrl.grid.feeder import load_feeder
    from gridrl.marl.graph import Neighbourhood
    from gridrl.marl.model import ObservationRoles, sensitivity_probe, voltage_sensitivity
    from gridrl.marl.train import _with_band, resolve_train_config

    fd = load_feeder(feeder)
    cfg = _with_band(resolve_train_config({"env": {"zone_layout": layout}}, source="bound", overrides={"algo": "dmpo"}), fd)
    probe = sensitivity_probe(fd, cfg.env, seed=seed)
    roles = ObservationRoles.from_env(probe)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k in hops:
        g = Neighbourhood(probe.hop_distance, k if k >= 0 else int(probe.hop_distance.max()))
        sens = voltage_sensitivity(probe, roles, g)
        env = make_env(fd, split="test", num_envs=4, seed=seed + 1, config=cfg.env)
        env.reset(seed=seed + 1)
        err = size = 0.0
        mask = roles.volt_valid.to(torch.float64)
        for _ in range(steps):
            a, b = (spread * torch.randn(4, env.n_agents, generator=gen, dtype=torch.float64) for _ in range(2))
            pa, pb = env.peek(a), env.peek(b)
            ok = (pa["converged"] & pb["converged"]).to(torch.float64)[:, None, None]
            true = (roles.volts_from_buses(pb["vm_pu"]) - roles.volts_from_buses(pa["vm_pu"])).double()
            q = lambda p: torch.zeros(4, env.n_agents, dtype=torch.float64).index_add_(  # noqa: E731
                1, env.inverter_agent, torch.nan_to_num(p["q_mvar"]).double())
            dq = q(pb) - q(pa)
            pred = torch.zeros_like(true).index_add_(1, g.receiver, dq[:, g.sender, None] * sens.double())
            err += float(((pred - true) ** 2 * mask * ok).sum())
            size += float((true ** 2 * mask * ok).sum())
            env.step(a)
        out[k] = math.sqrt(err / max(size, 1e-30))
    return out


@torch.no_grad()
def local_action_errors(learner, env, *, seed: int, every: int = 8) -> dict[str, float]:
    """The effect of one agent's action on its neighbourhood: at every ``every``-th step of one
    episode, each agent j alone redraws its action (``a`` with ``a'_j``); the true change of the
    voltage features of every agent within the model's κ hops of j (``peek``) against the
    anchored imagined change. Returns its size and error (RMS over those agents' features) and
    the share of j's whole effect (over all agents) that lies within κ hops."""
    roles, policy, N = learner.roles, learner.policy, env.n_agents
    near = learner.model_graph.mask().T.to(torch.float64)                # [j, i]: i within κ of j
    mask = roles.volt_valid.to(torch.float64)                               # [N, V]
    sums = {"size": 0.0, "error": 0.0, "within": 0.0, "all": 0.0}
    obs = env.reset(seed=seed)
    for t in range(env.episode_steps):
        mean, log_std = policy.actor(policy.obs_norm(obs))
        a, a2 = (mean + log_std.exp() * torch.randn(mean.shape, generator=learner.generator) for _ in range(2))
        if t % every == 0:
            played = env.peek(a)
            v_played = roles.volts_from_buses(played["vm_pu"]).double()
            true, variants = [], []
            for j in range(N):
                aj = a.clone()
                aj[:, j] = a2[:, j]
                p = env.peek(aj)
                ok = (p["converged"] & played["converged"]).to(torch.float64)[:, None, None]
                true.append((roles.volts_from_buses(p["vm_pu"]).double() - v_played) * ok)
                variants.append(aj)
        next_obs, reward, done, info = env.step(a)
        if t % every == 0:
            B = obs.shape[0]
            real = {"obs": obs, "next_obs": next_obs, "action": a, "reward": reward,
                    "zone_loss_mw": info["zone_loss_mw"].float(), "voltage_cost": info["reward_voltage"].float()}
            rep = {k: v.repeat(N, *([1] * (v.ndim - 1))) for k, v in real.items()}
            imagined = learner._predict_next(rep["obs"], torch.cat(variants), rep).volts.mean(0).double()
            imagined = imagined - learner._predict_next(obs, a, real).volts.mean(0).double().repeat(N, 1, 1)
            ok = info["active"] & info["converged"]
            for j in range(N):
                w = mask * near[j][:, None] * ok.to(torch.float64)[:, None, None]
                tj, ij = true[j], imagined[j * B:(j + 1) * B]
                sums["size"] += float((tj ** 2 * w).sum())
                sums["error"] += float(((ij - tj) ** 2 * w).sum())
                sums["within"] += float((tj ** 2 * w).sum())
                sums["all"] += float((tj ** 2 * mask * ok.to(torch.float64)[:, None, None]).sum())
        obs = next_obs
        if bool(done.all()):
            break
    return {"local_effect": math.sqrt(sums["size"]), "local_error": math.sqrt(sums["error"]),
            "within_share": sums["within"] / max(sums["all"], 1e-30)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--feeder", default="ieee141")
    p.add_argument("--layout", default="pool", choices=("pool", "pad"))
    p.add_argument("--num-envs", type=int, default=4)
    p.add_argument("--iterations", type=int, default=16)
    p.add_argument("--variants", default="100x64,100x64:prior,100x64:k3:prior")
    p.add_argument("--bound-hops", default="1,2,3,-1", help="κ of the locality bound (-1: the whole feeder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    settings = [setting(v) for v in args.variants.split(",") if v]
    t0 = time.time()
    res = run(args.feeder, settings, layout=args.layout, num_envs=args.num_envs, iterations=args.iterations,
              seed=args.seed, check_split="test")
    from gridrl.env import make_env

    for s in settings:
        learner = res["learners"][s["name"]]
        check = make_env(res["feeder"], split="test", num_envs=4, seed=args.seed + 1, config=res["env"].config)
        res["errors"][s["name"]].update(local_action_errors(learner, check, seed=args.seed + 1))
    hops = [int(h) for h in args.bound_hops.split(",") if h]
    bound = locality_bound(args.feeder, hops, layout=args.layout, seed=args.seed)
    fd, env = res["feeder"], res["env"]
    command = "python experiments/dmpo_action_effects.py " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
    lines = [f"# DMPO: imagined action effects on {fd.name} (test days)", "", f"Command: `{command.strip()}`", "",
             f"{env.n_agents} agents, `{args.layout}` layout, default environment (measured observations, sensor "
             f"noise); {args.iterations} blocks of B = {args.num_envs} scenarios fitted, the same blocks for every "
             f"variant; ensemble of 5. Variants: `UxM` U updates of M feeder-steps per member each iteration, "
             f"`:prior` the sensitivity prior, `:physics` the prior alone carries the actions, `:kH` the model's κ = H (default 1), `:hW` width W, `:uS` the loss unrolled over S steps. Voltage "
             f"figures in p.u.; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{time.time() - t0:.0f} s.", "",
             "| variant | " + " | ".join(label for _, label in COLUMNS) + " | action error ÷ effect | "
             "one agent: error ÷ effect within κ | one agent: share of its effect within κ | fit s (median) |",
             "|:---|" + "---:|" * (len(COLUMNS) + 4)]
    for s in settings:
        e = res["errors"][s["name"]]
        ratio = e["model/cf_action_error_pu"] / max(e["model/cf_action_effect_pu"], 1e-30)
        local = e["local_error"] / max(e["local_effect"], 1e-30)
        fit_s = statistics.median(res["seconds"][s["name"]][1:] or res["seconds"][s["name"]])
        lines.append(f"| {s['name']} | " + " | ".join(f"{e[k]:.5f}" if k in e else "–" for k, _ in COLUMNS)
                     + f" | {ratio:.2f} | {local:.2f} | {e['within_share']:.2f} | {fit_s:.2f} |")
    lines += ["", "Locality bound — the exact sensitivity prior alone, error ÷ effect, every agent redrawing:", "",
              "| model κ | " + " | ".join("whole feeder" if k < 0 else str(k) for k in hops) + " |",
              "|:---|" + "---:|" * len(hops),
              "| error ÷ effect | " + " | ".join(f"{bound[k]:.2f}" for k in hops) + " |"]
    text = "\n".join(lines) + "\n"
    write_text(Path(args.out or f"reports/dmpo/action_effects_{fd.name}.md"), text)
    print(text)


if __name__ == "__main__":
    main()
