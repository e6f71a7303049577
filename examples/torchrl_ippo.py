"""IPPO on gridrl with TorchRL: the batched env, TorchRL's GAE and ClipPPOLoss, one shared policy.

Every agent acts on its own observation (κ = 0) with one parameter-shared Gaussian policy
(state-independent standard deviation; the environment clips samples to [-1, 1]) and one shared
critic, as in TorchRL's multi-agent PPO tutorial; the
environment is ``VoltageControlTorchRLEnv`` (B scenarios stepped as one batch) behind an
``ObservationNorm`` whose scales come from ``gridrl.env.spec.obs_loc_scale``. The training reward
is gridrl's learners' default: line losses plus a steep penalty outside a band 0.005 p.u. inside
the feeder's, on 8-hour episodes from random training days and times; the agents observe only
their own sensors (no forecast). The trained policy is scored with ``gridrl.score`` on the
task's test days, beside IEEE 1547-B droop.

    python examples/torchrl_ippo.py --minutes 10          # train for 10 minutes, then score ieee33-v0
    python examples/torchrl_ippo.py --iterations 5 --no-score
    gridrl score ieee33-v0 --controller examples/torchrl_ippo.py:saved   # the saved policy, again

The trained policy is saved to ``out/examples/torchrl_ippo.pt`` (``--save``); :func:`saved` is
that policy as a plain function (``$GRIDRL_TORCHRL_POLICY`` names another file), which is how
``gridrl score`` takes a policy from any library.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from tensordict.nn import TensorDictModule
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torch import nn
from torchrl.envs import ObservationNorm, TransformedEnv
from torchrl.modules import IndependentNormal, ProbabilisticActor, ValueOperator
from torchrl.objectives import ClipPPOLoss, ValueEstimators

import gridrl
from gridrl.env import EnvConfig
from gridrl.env.spec import obs_loc_scale
from gridrl.env.torchrl import VoltageControlTorchRLEnv

OBS, ACTION = ("agents", "observation"), ("agents", "action")


@dataclass(frozen=True, kw_only=True)
class Config:
    """feeder: where to train; num_envs: scenarios per batch; episode_hours: episode length;
    iterations / minutes: budget (whichever ends first; minutes None: iterations only);
    epochs, minibatches: PPO passes over each batch; lr; gamma, lmbda: GAE (γ 0: a step's reward
    depends on that step's reactive power alone, inverters hold no state); entropy_coeff;
    hidden: MLP width; init_log_std: the policy's initial log standard deviation;
    band_margin_pu: the training band's margin inside the feeder's; seed."""

    feeder: str = "ieee33"
    num_envs: int = 64
    episode_hours: float = 8.0
    iterations: int = 200
    minutes: float | None = None
    epochs: int = 8
    minibatches: int = 4
    lr: float = 3e-4
    gamma: float = 0.0
    lmbda: float = 0.9
    entropy_coeff: float = 0.0
    hidden: int = 64
    init_log_std: float = -2.5
    band_margin_pu: float = 0.005
    seed: int = 0


def train_config(cfg: Config) -> EnvConfig:
    feeder = gridrl.load_feeder(cfg.feeder)
    m = cfg.band_margin_pu
    return EnvConfig(start_hour=None, episode_hours=cfg.episode_hours, barrier="courant_beltrami",
                     voltage_weight=1000.0, loss_weight_per_mw=10.0, q_weight_per_mvar=0.001,
                     v_min_pu=feeder.v_min_pu + m, v_max_pu=feeder.v_max_pu - m)


def make_env(cfg: Config) -> tuple[TransformedEnv, torch.Tensor, torch.Tensor]:
    base = VoltageControlTorchRLEnv(cfg.feeder, num_envs=cfg.num_envs, seed=cfg.seed, config=train_config(cfg))
    loc, scale = obs_loc_scale(base, seed=cfg.seed)
    # ObservationNorm computes obs · scale + loc: -loc/scale and 1/scale give (obs − loc) / scale
    env = TransformedEnv(base, ObservationNorm(loc=-loc / scale, scale=1 / scale, in_keys=[OBS],
                                               standard_normal=False))
    return env, loc, scale


class GaussianHead(nn.Module):
    """An MLP's mean beside a learned, state-independent standard deviation (PPO's usual head)."""

    def __init__(self, d: int, hidden: int, init_log_std: float):
        super().__init__()
        self.mean = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                  nn.Linear(hidden, 1))
        with torch.no_grad():  # start near q = 0 (no control), not at a random corner
            self.mean[-1].weight.mul_(0.01)
            self.mean[-1].bias.zero_()
        self.log_std = nn.Parameter(torch.full((1,), init_log_std))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.mean(x)
        return mean, self.log_std.exp().expand_as(mean)


def make_modules(env: TransformedEnv, cfg: Config):
    d = env.base_env.core.obs_dim
    net = GaussianHead(d, cfg.hidden, cfg.init_log_std)
    module = TensorDictModule(net, in_keys=[OBS], out_keys=[("agents", "loc"), ("agents", "scale")])
    actor = ProbabilisticActor(module, in_keys=[("agents", "loc"), ("agents", "scale")], out_keys=[ACTION],
                               distribution_class=IndependentNormal, return_log_prob=True)
    value = nn.Sequential(nn.Linear(d, cfg.hidden), nn.Tanh(), nn.Linear(cfg.hidden, cfg.hidden), nn.Tanh(),
                          nn.Linear(cfg.hidden, 1))
    critic = ValueOperator(value, in_keys=[OBS], out_keys=[("agents", "state_value")])
    return actor, critic, net


def train(cfg: Config, *, log=print) -> dict:
    """Train; returns ``policy`` (deterministic callable obs → actions for ``gridrl.score``),
    ``history`` (per iteration: steps, seconds, mean reward, controllable share) and ``seconds``."""
    torch.manual_seed(cfg.seed)
    env, loc, scale = make_env(cfg)
    actor, critic, net = make_modules(env, cfg)
    loss = ClipPPOLoss(actor, critic, clip_epsilon=0.2, entropy_coeff=cfg.entropy_coeff,
                       normalize_advantage=True)
    loss.set_keys(reward=("agents", "reward"), action=ACTION, value=("agents", "state_value"),
                  sample_log_prob=("agents", "action_log_prob"), done=("agents", "done"),
                  terminated=("agents", "terminated"))
    loss.make_value_estimator(ValueEstimators.GAE, gamma=cfg.gamma, lmbda=cfg.lmbda)
    optim = torch.optim.Adam(loss.parameters(), lr=cfg.lr)
    steps_per_episode = env.base_env.core.episode_steps
    # advantages are normalised over scenarios, steps and agents together, on purpose
    warnings.filterwarnings("ignore", message="You requested advantage normalization")
    history, t0, steps = [], time.perf_counter(), 0
    for it in range(cfg.iterations):
        if cfg.minutes is not None and time.perf_counter() - t0 > 60 * cfg.minutes:
            break
        with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):  # sample, not the mean
            data = env.rollout(steps_per_episode, actor, break_when_any_done=False)
            shape = data["next", "agents", "reward"].shape
            for key in ("done", "terminated"):
                data.set(("next", "agents", key), data["next", key].unsqueeze(-1).expand(shape))
            loss.value_estimator(data, params=loss.critic_network_params, target_params=loss.target_critic_network_params)
        flat = data.reshape(-1)
        n = flat.shape[0]
        for _ in range(cfg.epochs):
            perm = torch.randperm(n)
            for idx in perm.chunk(cfg.minibatches):
                out = loss(flat[idx])
                total = out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]
                optim.zero_grad()
                total.backward()
                nn.utils.clip_grad_norm_(loss.parameters(), 1.0)
                optim.step()
        steps += n
        rec = {"iteration": it, "steps": steps, "seconds": time.perf_counter() - t0,
               "reward": float(data["next", "agents", "reward"].mean()),
               "action_std": float(data["agents", "action"].std()),
               "controllable": float(data["next", "metrics", "controllable"].float().mean())}
        history.append(rec)
        if log is not None and (it % 10 == 0 or it == cfg.iterations - 1):
            log(f"iteration {it}: {steps:,} scenario-steps, {rec['seconds']:.0f} s, reward {rec['reward']:.4f}, "
                f"controllable {rec['controllable']:.3f}")

    state = {"net": net.state_dict(), "loc": loc, "scale": scale, "obs_dim": net.mean[0].in_features,
             "hidden": cfg.hidden, "feeder": cfg.feeder}
    return {"policy": _policy(net, loc, scale), "state": state, "history": history,
            "seconds": time.perf_counter() - t0}


def _policy(net: GaussianHead, loc: torch.Tensor, scale: torch.Tensor):
    def policy(obs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            mean, _ = net((obs - loc) / scale)  # the Gaussian's mean; the env clips to [-1, 1] too
            return mean[..., 0].clamp(-1.0, 1.0)

    policy.hops, policy.communication = 0, 0.0
    return policy


def load(path: str | Path):
    """A policy saved by :func:`main` as a callable obs [B, N, D] → actions [B, N]."""
    state = torch.load(path, weights_only=True)
    net = GaussianHead(state["obs_dim"], state["hidden"], 0.0)
    net.load_state_dict(state["net"])
    return _policy(net, state["loc"], state["scale"])


@lru_cache(maxsize=1)
def _saved():
    return load(os.environ.get("GRIDRL_TORCHRL_POLICY", "out/examples/torchrl_ippo.pt"))


def saved(obs: torch.Tensor) -> torch.Tensor:
    """The saved policy (``$GRIDRL_TORCHRL_POLICY``, default ``out/examples/torchrl_ippo.pt``)."""
    return _saved()(obs)


saved.hops, saved.communication = 0, 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=Config.iterations)
    ap.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--num-envs", type=int, default=Config.num_envs)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--band-margin", type=float, default=Config.band_margin_pu,
                    help="the training band's margin inside the feeder's, p.u.")
    ap.add_argument("--task", default="ieee33-v0")
    ap.add_argument("--no-score", action="store_true")
    ap.add_argument("--save", default="out/examples/torchrl_ippo.pt")
    args = ap.parse_args()
    from gridrl.io import atomic_write
    from gridrl.score import CallablePolicy, get_task, score

    task = get_task(args.task)
    cfg = dataclasses.replace(Config(), feeder=task.feeder, iterations=args.iterations, minutes=args.minutes,
                              num_envs=args.num_envs, seed=args.seed, band_margin_pu=args.band_margin)
    result = train(cfg)
    print(f"trained for {result['seconds']:.0f} s; policy saved to {args.save}")
    atomic_write(args.save, lambda tmp: torch.save(result["state"], tmp))
    if args.no_score:
        return
    for ctrl in (CallablePolicy(result["policy"], name="torchrl-ippo"), "droop", "none"):
        m, _ = score(task, ctrl)
        print(f"{m['controller']:>18} on {task.name}: controllable rate {m['controllable_rate']:.4f}, "
              f"energy loss {m['energy_loss_mwh']:.2f} MWh, violation bus-hours {m['violation_bus_hours']:.2f}")


if __name__ == "__main__":
    main()
