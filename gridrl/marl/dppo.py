"""DPPO: decentralized PPO over κ-hop neighbourhoods (Ma et al., 2024; the model-free baseline
of DMPO).

Agent *i* acts on its κ-hop neighbourhood's observations, which reach it as messages (see
:mod:`gridrl.marl.nets`); its critic is an *extended value function* ``V_i`` over the same
neighbourhood, fitted to *i*'s own local reward. Per-agent GAE gives local advantages ``A_j``;
agent *i*'s policy advantage is their sum over its κ-hop neighbourhood, ``Σ_{j ∈ N_κ(i)} A_j``
— the agents whose rewards its action can move. By default weights are shared by all agents
(with an agent embedding), observation statistics pooled and advantages standardised over all
agents — fast, but every gradient step is then a global exchange; ``training = "decentralized"``
gives every agent its own weights, statistics and advantage scale (see :class:`DppoConfig`).
Each iteration reports its training traffic, local and global (:meth:`DPPO._communication`).

One iteration, top to bottom in :meth:`DPPO.iterate`:

1. **collect** — every scenario starts a new episode (a random training day and start time, from
   the environment's seeded generators) and runs it to its end with Gaussian actions;
2. **advantages** — rewards divided by each agent's running return scale, per-agent GAE, local
   advantages scaled back to reward units and summed over each neighbourhood, then standardised;
3. **update** — ``epochs`` passes of minibatch PPO (clipped surrogate, value loss, gradient
   clipping), stopped early once the approximate KL exceeds 1.5 × ``target_kl`` (the paper's
   rule); the learning rate decays linearly over the run;
4. **statistics** — the rollout's observations are folded into the running normaliser, after
   the update, so that collection and update of one iteration see the same inputs.

Starting every iteration with new episodes means a checkpoint between iterations holds the whole
state of training (weights, optimizer, normalisers, generators): a resumed run ends where an
uninterrupted one does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from gridrl.marl.buffer import RolloutBuffer, minibatch_indices
from gridrl.marl.gae import gae
from gridrl.marl.graph import Neighbourhood
from gridrl.marl.nets import ACTOR_SETTINGS, NeighbourhoodNet, build_actor
from gridrl.marl.normalize import ReturnScale, RunningNorm, observation_masks
from gridrl.marl.policy import Policy
from gridrl.marl.ppo import (Stopwatch, clipped_surrogate, episode_stats, gaussian_log_prob, linear_lr,
                             ppo_problems, shared_floats, weighted_mean)
from gridrl.marl.transfer import TransferNorm, feeder_features

__all__ = ["DPPO", "Collected", "DppoConfig"]


@dataclass(frozen=True, kw_only=True)
class DppoConfig:
    """Settings of DPPO (defaults: the paper's where it gives them, else tuned on training days).

    Tuned on ieee33's training days (20 of them, 150k steps, seed 0; experiments/tune_ieee33.toml
    lists the variants): with learning rate 3e-4 and the paper's initial log-std −0.5 the
    deterministic policy ended at controllable 0.956 and 68.4 MWh (1547-B droop: 0.9995,
    12.30 MWh on those days); lr 1e-3 → 1e-4 with initial log-std −1.5 (floor −3.0) reached
    controllable 1.0 at 11.27 MWh, the default.

    Network width was then chosen for speed at equal quality (experiments/tune_ieee141.toml lists
    every variant with its figures): 32 wide with 16-float messages instead of 64 and 32 trains
    1.9× faster on ieee141 (2,863 against 1,504 feeder-steps/s in one process) and ended at
    11.59 MWh on those ieee33 days (64 wide: 11.27; one seed each) and at controllable 0.9979 /
    45.85 MWh on 20 ieee141 training days after 400k steps (64 wide: 0.9974 / 44.08; 1547-B
    droop: 1.0 / 50.71). Two epochs instead of four and a critic narrower than the actor were
    measured too and cost more quality for the speed they gave. (A band margin of 0.01, measured
    beside them, is ieee141's per-feeder setting: ``TrainConfig.band_margin_pu``.)

    The discount is 0.5, not the usual 0.99. A step's reward depends on that step's reactive
    power and the exogenous loads and sun, not on earlier actions (the inverters hold no state),
    so returns far ahead add variance and no signal. On 20 held-out ieee33 training days (seed 0,
    40,960 steps, the best validated policy; reports/dmpo/tuning.md): dmpo 10.81 MWh at γ 0.99,
    10.12 at 0.9, 9.78 at 0.5, 9.75 at 0 (opf 9.40), all at controllable 1.0; dppo 11.30, 10.95,
    10.88. 0.5 keeps a short look-ahead for what the observations carry from step to step.

    hops: κ, how far on the agent graph an agent's inputs (actor and critic) reach.
    gamma: discount per step. gae_lambda: GAE's λ (the paper: 0.5).
    clip: PPO's ratio clip. target_kl: epochs stop once the approximate KL of a minibatch exceeds
        1.5 × this (the paper: 0.01).
    epochs: passes over each rollout. minibatches: minibatches per pass (each holds whole feeder
        steps, all agents together).
    lr, lr_end: Adam's learning rate, decayed linearly from ``lr`` to ``lr_end`` over the run.
    vf_coef: weight of the value loss. ent_coef: weight of the entropy bonus.
    max_grad_norm: gradients are clipped to this global norm.
    hidden: width of the networks' layers. message_dim: floats in one agent's message.
    critic_hidden: width of the critic's hidden layers, whatever the critic: the encoder and
        head of a neighbourhood critic (dppo, ippo, dmpo), the two layers of cppo's critic on
        the global state. ``None``: the actor's ``hidden``, the default here; cppo's default is
        128, as its critic reads the whole feeder.
    critic_message_dim: floats in one message of a neighbourhood critic (``None``: the actor's
        ``message_dim``); cppo's critic reads the state at one place, sends no messages and
        refuses it.
    embed_dim: size of the learned agent embedding.
    log_std_init: initial log standard deviation of the actions (the paper: −0.5).
    log_std_min: floor on the log standard deviation.
    training: ``shared`` — one set of weights for all agents (with the agent embedding),
        observation statistics pooled over all agents and advantages standardised over all of
        them: every gradient step sums every agent's gradient, a global exchange. ``decentralized``
        — every agent its own weights, its own observation statistics and its own advantage
        scale: training talks to κ-hop neighbours only (their messages and the gradients back
        along them, and the local advantages it sums). Every iteration reports both kinds of
        traffic: ``comm/train_local_floats`` and ``comm/train_global_floats``, floats per agent
        per iteration (see :meth:`DPPO._communication`).
    transfer: a feeder-agnostic policy (see :mod:`gridrl.marl.transfer`): no agent embedding,
        one action spread for all agents, inputs that mean the same on every feeder (the
        ``pool`` zone layout, powers per unit of the agent's rating, four local physical
        features); its run acts on any feeder and can train on several at once. Needs
        ``training = "shared"``. The critic is built the same way (cppo's global one aside).
    """

    hops: int = 1
    gamma: float = 0.5
    gae_lambda: float = 0.5
    clip: float = 0.2
    target_kl: float = 0.01
    epochs: int = 4
    minibatches: int = 4
    lr: float = 1e-3
    lr_end: float = 1e-4
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5
    hidden: int = 32
    message_dim: int = 16
    critic_hidden: int | None = None
    critic_message_dim: int | None = None
    embed_dim: int = 8
    log_std_init: float = -1.5
    log_std_min: float = -3.0
    training: Literal["shared", "decentralized"] = "shared"
    transfer: bool = False

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """Everything wrong with these settings, one line each (a learner's config that adds
        settings adds its checks to its parent's)."""
        problems = ppo_problems(self)
        if self.hops < 0:
            problems.append(f"hops must be ≥ 0, got {self.hops}")
        for name in ("critic_hidden", "critic_message_dim"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"{name} must be ≥ 1 (or left out: the actor's), got {getattr(self, name)}")
        if self.training not in ("shared", "decentralized"):
            problems.append(f"training must be 'shared' or 'decentralized', got {self.training!r}")
        if self.transfer and self.training == "decentralized":
            problems.append("transfer = true shares one set of weights among all agents of every feeder: it needs "
                            "training = 'shared'")
        return problems


@dataclass(frozen=True)
class Collected:
    """What one collection leaves beside the rollout buffer: the episodes that ended (their
    ``info["episode"]`` dicts), the observation after the last step and the critic's value of
    it (GAE's bootstrap)."""

    episodes: list[dict[str, torch.Tensor]]
    last_obs: torch.Tensor
    last_value: torch.Tensor


class DPPO:
    """The DPPO learner on a training environment (see the module docstring).

    env: a :class:`~gridrl.env.VoltageControlEnv` on training days; every iteration runs one
        episode in each of its scenarios. total_steps: the run's budget in feeder steps (for the
        learning-rate schedule). seed: weights, action noise and minibatch order.

    The steps of :meth:`iterate` — :meth:`_schedule_lr`, :meth:`_collect`,
    :meth:`_rollout_samples`, :meth:`_learn`, :meth:`_finish_iteration` — are what a learner
    built on this one (dmpo) calls in its own iteration. What a learner with another critic
    (cppo) overrides is the critic's block of hooks below: each is handed what it needs.
    """

    algo = "dppo"
    Config = DppoConfig

    def __init__(self, env, config: DppoConfig, *, seed: int, total_steps: int, device: str = "cpu",
                 name: str | None = None):
        self.env, self.cfg = env, config
        self.total_steps = int(total_steps)
        self.device = torch.device(device)
        N, D = env.n_agents, env.obs_dim
        self.decentralized = config.training == "decentralized"
        self.graph = Neighbourhood(env.hop_distance, config.hops)
        valid, keep = observation_masks(env)
        if config.transfer:
            norm = TransferNorm(env.obs_names).bind(feeder_features(env.feeder))
            self.input_dim = norm.dim
        else:
            norm = RunningNorm(D, valid=valid, keep=keep, per_agent=self.decentralized)
            self.input_dim = D
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            actor = build_actor(self.input_dim, self.graph, **{k: getattr(config, k) for k in ACTOR_SETTINGS})
            self.critic = self._make_critic()
        own = None if self.decentralized or config.transfer else RunningNorm(D, valid=valid, keep=keep, per_agent=True)
        self.policy = Policy(actor, norm, self.graph, agents=env.agents, obs_names=env.obs_names,
                             name=name or self.algo, agent_norm=own).to(self.device)
        self.critic.to(self.device)
        streams = self._value_shape()[0] if self._value_shape() else 1  # one return per value
        self.reward_scale = ReturnScale(streams, gamma=config.gamma).to(self.device)
        # fused: one kernel per parameter instead of a dozen small operations (4× faster per step)
        self.optimizer = torch.optim.Adam([*self.policy.actor.parameters(), *self.critic.parameters()],
                                          lr=config.lr, eps=1e-5, fused=True)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.env_steps = 0
        self.iteration = 0
        self.dropout = env.config.message_dropout > 0
        T, B = env.episode_steps, env.num_envs
        fields = {"obs": ((N, D), torch.float32), "action": ((N,), torch.float32),
                  "logp": ((N,), torch.float32), "value": (self._value_shape(), torch.float32),
                  "reward": ((N,), torch.float32), "active": ((), torch.bool), "terminal": ((), torch.bool),
                  "end": ((), torch.bool), **self._critic_fields(), **self._info_fields()}
        if self.dropout:
            fields["delivered"] = ((self.graph.n_pairs,), torch.bool)
        self.buffer = RolloutBuffer(T, B, fields, device=self.device)
        self._warm_up_statistics()

    # -- the critic: what CPPO replaces ------------------------------------------------------
    def _make_critic(self) -> torch.nn.Module:
        """The extended value function: agent i's value over its κ-hop neighbourhood."""
        cfg = self.cfg
        return NeighbourhoodNet(self.input_dim, self.graph, out_dim=1, hidden=cfg.critic_hidden or cfg.hidden,
                                message_dim=self._critic_message_dim(), embed_dim=0 if cfg.transfer else cfg.embed_dim,
                                own_weights=self.decentralized)

    def _critic_message_dim(self) -> int:
        return self.cfg.critic_message_dim or self.cfg.message_dim

    def _value_shape(self) -> tuple[int, ...]:
        """Shape of one sample's value: one per agent."""
        return (self.env.n_agents,)

    def _critic_fields(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Extra rollout fields the critic reads (none: it reads the observations); they reach
        :meth:`_values` as the minibatch's ``inputs``."""
        return {}

    def _info_fields(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Extra rollout fields taken from each step's ``info`` (none; a model-based learner
        keeps the reward's parts)."""
        return {}

    def _critic_step(self, x: torch.Tensor, delivered: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Values of the current step from normalised observations ``x`` (plus any fields to store)."""
        return {"value": self.critic(x, delivered)[..., 0]}

    def _values(self, x: torch.Tensor, delivered: torch.Tensor | None, inputs: dict[str, torch.Tensor]
                ) -> torch.Tensor:
        """The critic's values of a minibatch: ``x`` its normalised observations, ``delivered``
        its message deliveries (or None), ``inputs`` its :meth:`_critic_fields`."""
        return self.critic(x, delivered)[..., 0]

    def _critic_reward(self, reward: torch.Tensor) -> torch.Tensor:
        """The reward the critic predicts the return of: each agent's own."""
        return reward

    def _advantages(self, last_value: torch.Tensor, *, standardize: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-agent GAE in scaled reward units (``last_value``: the bootstrap after the last
        step); policy advantages ``[T, B, N]`` summed over neighbourhoods in reward units (so
        every agent's reward counts at its true weight), then standardised over the active
        samples if ``standardize`` (dmpo standardises them together with imagined ones): over
        all agents, or each agent's over its own when training is decentralized."""
        buf, scale = self.buffer, self.reward_scale.scale.to(torch.float32)
        values = buf["value"]
        next_values = torch.cat([values[1:], last_value[None]], 0)
        local, returns = gae(buf["reward"] / scale, values, next_values, terminal=buf["terminal"][..., None],
                             end=buf["end"][..., None], gamma=self.cfg.gamma, lam=self.cfg.gae_lambda)
        advantage = self.graph.neighbourhood_sum(local * scale)
        if standardize and self.decentralized:
            a = advantage[buf["active"]]
            advantage = (advantage - a.mean(0)) / (a.std(0) + 1e-8)
        elif standardize:
            a = advantage[buf["active"]]
            advantage = (advantage - a.mean()) / (a.std() + 1e-8)
        return advantage, returns

    def _communication(self, *, real_steps: float, update_stats: dict[str, float]) -> dict[str, float]:
        """Training traffic of one iteration, floats per agent (averaged over agents), split
        into ``local`` (to κ-hop neighbours) and ``global`` (to or from every agent):

        - local: at every collected step the actor's and the critic's messages and each local
          advantage to every agent that sums it; in the update, every sample's messages again
          and the gradients of the loss with respect to them, back along the same links;
        - global, in both modes: two scalars per agent and gradient step, its share of the
          global gradient norm (the clip) and of the approximate KL (the early stop);
        - global, shared training only: every gradient step sums each agent's gradient of the
          shared weights (counted as those weights' floats sent once per agent and step),
          the observation statistics are pooled (count, mean, variance per column) and the
          advantages standardised over all agents (count, mean, variance).
        """
        g, D, steps = self.graph, self.env.obs_dim, update_stats["update/steps"]
        messages = g.relay_floats(self.cfg.message_dim) + g.relay_floats(self._critic_message_dim())
        local = real_steps * (messages + g.relay_floats(1.0)) + 2.0 * messages * update_stats["update/samples"]
        scalars = 2.0 * steps
        shared = 0.0 if self.decentralized else shared_floats(self.policy.actor, self.critic) * steps + 3.0 * D + 3.0
        return {"comm/train_local_floats": local, "comm/train_global_floats": scalars + shared}

    @property
    def communication_training(self) -> float:
        """Floats per agent per step during training: actor and critic messages to the κ-hop
        neighbourhood, plus each local advantage sent to every agent that sums it."""
        return (self.graph.relay_floats(self.cfg.message_dim)
                + self.graph.relay_floats(self._critic_message_dim()) + self.graph.relay_floats(1.0))

    # ---------------------------------------------------------------------------------------
    # one iteration
    # ---------------------------------------------------------------------------------------
    def iterate(self) -> dict[str, float]:
        """Collect one episode per scenario, then update; returns the iteration's scalars."""
        watch = Stopwatch()
        lr = self._schedule_lr()
        rollout = self._collect(watch)
        with watch("update"):
            stats = self._learn(self._rollout_samples(rollout.last_value, standardize=True))
        stats.update(self._communication(real_steps=self._real_steps(), update_stats=stats))
        return self._finish_iteration(rollout, stats, lr, watch, phases=("env", "act", "update"))

    def _schedule_lr(self) -> float:
        """Set and return this iteration's learning rate (linear decay over the run's budget)."""
        lr = linear_lr(self.cfg.lr, self.cfg.lr_end, self.env_steps / max(self.total_steps, 1))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _collect(self, watch: Stopwatch) -> Collected:
        """One episode per scenario with Gaussian actions, into the rollout buffer."""
        env, buf, policy = self.env, self.buffer, self.policy
        with watch("env"):
            obs = env.reset().to(self.device)
        self.reward_scale.reset()
        delivered = None
        if self.dropout:  # the first observation's messages: all links up (no step has run yet)
            delivered = torch.ones(env.num_envs, self.graph.n_pairs, dtype=torch.bool, device=self.device)
        episodes = []
        for t in range(buf.steps):
            with watch("act"), torch.no_grad():
                x = policy.obs_norm(obs)
                mean, log_std = policy.actor(x, delivered)
                mean = policy.shift(mean, obs)
                action = mean + log_std.exp() * torch.randn(mean.shape, generator=self.generator, device=self.device)
                logp = gaussian_log_prob(action, mean, log_std)
                critic = self._critic_step(x, delivered)
            with watch("env"):
                next_obs, reward, done, info = env.step(action)
            active = info["active"].to(self.device)
            buf.store(t, obs=obs, action=action, logp=logp, reward=reward.to(self.device), **critic,
                      **{k: info[k].to(self.device) for k in self._info_fields()},
                      active=active, terminal=active & ~info["converged"].to(self.device),
                      end=(active & done.to(self.device)) | (t == buf.steps - 1))
            if self.dropout:
                buf.store(t, delivered=delivered)
                delivered = self.graph.delivered(info["message_mask"].to(self.device))
            self.reward_scale.update(self._critic_reward(reward.to(self.device)), done.to(self.device), active)
            if "episode" in info:
                episodes.append(info["episode"])
            obs = next_obs.to(self.device)
        with watch("act"), torch.no_grad():
            last_value = self._critic_step(policy.obs_norm(obs), delivered)["value"]
        return Collected(episodes, obs, last_value)

    def _rollout_samples(self, last_value: torch.Tensor, *, standardize: bool) -> dict[str, torch.Tensor | None]:
        """The rollout as flat update samples ``[S, …]`` (S = T·B, one feeder step each):
        ``obs, action, logp, advantage, returns, value`` (the critic's values at collection),
        ``delivered`` (or None), ``where [S]`` (samples to use), the optional per-agent weights
        ``policy_weight`` / ``value_weight [S, N]`` (None: every agent counts) and the fields the
        critic reads (:meth:`_critic_fields`). Advantages as :meth:`_advantages`."""
        advantage, returns = self._advantages(last_value, standardize=standardize)
        buf = self.buffer
        return {"obs": buf.flat("obs"), "action": buf.flat("action"), "logp": buf.flat("logp"),
                "advantage": advantage.reshape(-1, advantage.shape[-1]),
                "returns": returns.reshape(-1, *returns.shape[2:]), "value": buf.flat("value"),
                "delivered": buf.flat("delivered") if self.dropout else None,
                "where": buf["active"].reshape(-1), "policy_weight": None, "value_weight": None,
                **{name: buf.flat(name) for name in self._critic_fields()}}

    def _learn(self, samples: dict[str, torch.Tensor | None]) -> dict[str, float]:
        """PPO's epochs over ``samples``, then the observation statistics of the real rollout
        (after the update that used the old ones); returns the losses."""
        stats = self._update(samples)
        self._update_statistics()
        return stats

    def _real_steps(self) -> float:
        """Feeder steps of the rollout that ran (all agents together)."""
        return float(self.buffer["active"].sum())

    def _finish_iteration(self, rollout: Collected, stats: dict[str, float], lr: float, watch: Stopwatch, *,
                          phases: tuple[str, ...]) -> dict[str, float]:
        """Count the iteration and its real steps; return its scalars: episode statistics,
        ``stats``, the learning rate, the policy's mean standard deviation, the seconds of each
        of ``phases`` and the real steps."""
        self.iteration += 1
        steps = int(self.buffer["active"].sum())
        self.env_steps += steps
        return {**episode_stats(rollout.episodes), **stats, "lr": lr,
                "policy/std": float(self.policy.actor.log_std.detach().exp().mean()),
                **{f"time/{k}_s": watch.seconds.get(k, 0.0) for k in phases}, "iteration_steps": float(steps)}

    def _update(self, samples: dict[str, torch.Tensor | None]) -> dict[str, float]:
        """``epochs`` passes of minibatch PPO over ``samples`` (see :meth:`_rollout_samples`)."""
        cfg, policy = self.cfg, self.policy
        # the statistics stay fixed during the update: normalise every sample once, not per epoch,
        # and lay it out agent-major, as the networks compute (a minibatch is then a transposed view)
        obs = policy.obs_norm(samples["obs"]).transpose(0, 1).contiguous()
        base = None if policy.residual is None else policy.residual(samples["obs"])  # [S, N]: the residual's base
        action, old_logp = samples["action"], samples["logp"]
        adv, ret, delivered = samples["advantage"], samples["returns"], samples["delivered"]
        pw, vw, where = samples["policy_weight"], samples["value_weight"], samples["where"]
        critic_inputs = {name: samples[name] for name in self._critic_fields()}
        count = self._minibatch_count(int(where.sum()))
        params = [*policy.actor.parameters(), *self.critic.parameters()]
        sums = {"loss/policy": 0.0, "loss/value": 0.0, "loss/approx_kl": 0.0, "loss/clip_fraction": 0.0}
        n = used = 0
        stop = False
        for epoch in range(cfg.epochs):
            for idx in minibatch_indices(len(where), count, generator=self.generator, where=where):
                x = obs[:, idx].transpose(0, 1)
                d = None if delivered is None else delivered[idx]
                mean, log_std = policy.actor(x, d)
                if base is not None:
                    mean = mean + base[idx]
                logp = gaussian_log_prob(action[idx], mean, log_std)
                pg_loss, approx_kl, clip_fraction = clipped_surrogate(
                    logp, old_logp[idx], adv[idx], cfg.clip, weight=None if pw is None else pw[idx])
                values = self._values(x, d, {name: v[idx] for name, v in critic_inputs.items()})
                v_loss = 0.5 * weighted_mean((values - ret[idx]) ** 2, None if vw is None else vw[idx])
                entropy = log_std.mean()  # the Gaussian entropy up to a constant
                loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                self.optimizer.step()
                for key, v in zip(sums, (pg_loss, v_loss, approx_kl, clip_fraction)):
                    sums[key] += float(v.detach())
                n += 1
                used += len(idx)
                if float(approx_kl) > 1.5 * cfg.target_kl:
                    stop = True
                    break
            if stop:
                break
        out = {k: v / max(n, 1) for k, v in sums.items()}
        v, r = samples["value"][where], ret[where]
        if vw is not None:
            keep = vw[where] > 0
            v, r = v[keep], r[keep]
        out["loss/explained_variance"] = float(1.0 - (r - v).var() / r.var().clamp(min=1e-12))
        out["loss/epochs"] = float(epoch + (0 if stop else 1))
        out["update/steps"], out["update/samples"] = float(n), float(used)
        return out

    def _minibatch_count(self, samples: int) -> int:
        """Minibatches per pass: ``minibatches`` for one rollout's worth of samples."""
        return self.cfg.minibatches

    # ---------------------------------------------------------------------------------------
    # set-up and checkpoints
    # ---------------------------------------------------------------------------------------
    def _update_statistics(self) -> None:
        """Fold the rollout's observations into the normaliser (after the update that used the
        old statistics)."""
        self.policy.update_statistics(self.buffer["obs"][self.buffer["active"]])

    def _warm_up_statistics(self) -> None:
        """First observation statistics from the initial states of one batch of episodes, so the
        first rollout already sees inputs of order one."""
        self.policy.update_statistics(self.env.reset().to(self.device))

    def state_dict(self) -> dict[str, Any]:
        """Everything that changes during training (the environment's generators are saved by
        the caller)."""
        return {"policy": self.policy.state_dict(), "critic": self.critic.state_dict(),
                "reward_scale": self.reward_scale.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "env_steps": self.env_steps, "iteration": self.iteration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.reward_scale.load_state_dict(state["reward_scale"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.env_steps = int(state["env_steps"])
        self.iteration = int(state["iteration"])
