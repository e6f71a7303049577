"""DMPO: decentralized model-based policy optimisation (Ma et al., *Efficient and scalable
reinforcement learning for large-scale network control*, Nature Machine Intelligence 2024).

Every agent learns a model of its own part of the feeder (:mod:`gridrl.marl.model`: its next
voltages and local reward from its κ-hop neighbourhood's observations and actions, an ensemble)
and improves its policy on many short rollouts imagined with those models, in which agents pass
their *predicted* observations to their neighbours — so it needs far fewer real interactions
than dppo, while acting, learning and imagining only ever talk to neighbours. Policy and critic
are dppo's (κ-hop actor, extended value function, summed neighbourhood advantages; this learner
is a :class:`~gridrl.marl.dppo.DPPO` whose iteration adds the model).

One iteration, top to bottom in :meth:`DMPO.iterate`:

1. **collect** — as dppo: one real episode per scenario with the current (exploring) policy;
2. **remember** — the episodes join the replay of the last ``replay_iterations`` iterations
   (:mod:`gridrl.marl.replay`); a few scenarios of each are held out from model fitting;
3. **fit the model** — ``model_updates`` minibatch steps for every ensemble member (the loss one
   step ahead, or unrolled over ``model_unroll`` steps on the model's own voltages); held-out
   one-step and H-step errors are logged (``model/…``);
4. **imagine** — ``model_ratio`` imagined feeder-steps per real one, as rollouts of ``horizon``
   steps branched from real replay states (from iteration ``imagine_from`` on);
5. **advantages** — per-agent GAE on the real episodes and on the imagined rollouts, local
   advantages summed over κ-hop neighbourhoods (dppo's), standardised together;
6. **update** — dppo's PPO epochs over real and imagined samples together, with as many more
   minibatches as there are more samples;
7. **statistics** — the observation normaliser, from the real episodes only.

**An imagined step** (:meth:`DMPO._imagine`). A rollout branched from step t of a real episode
stays on that episode's day: loads, PV and time of its steps t + 1, t + 2, … are the recorded
ones. They do not depend on the agents' actions, so the real continuation *is* their model —
exact, clouds included, where a learned one would regress to a smooth mean. Each agent's next
observation is then the real one with what its imagined action changes: its inverters' Q
(exactly, ``a·q_avail``) and its zone's voltages, predicted by its model from its neighbours'
*imagined* observations and actions (the messages of the paper's rollouts), one ensemble member
drawn per step and rollout. With ``anchor`` (default) the prediction is used as a difference:
``v' = v_real + (model(imagined inputs) − model(real inputs))`` with the same member — the
model's bias at the real trajectory cancels, and its errors do not compound along a rollout (the
power flow has no memory, and neither does the anchor). ``anchor = false`` rolls the model
forward on its own voltages instead, still on the recorded day. ``exogenous = "predicted"``
(with ``anchor = false``: the free rollout, the usual Dyna/MBPO one) also leaves the recorded
day: every agent's model predicts its own next loads, PV and headroom (the ensemble's mean, from
its neighbourhood's imagined observations, :meth:`~gridrl.marl.model.DynamicsEnsemble.next_exogenous`),
and the imagined step is built from those; only the clock and whether an agent's inverters are
in service come from the recorded step.

Rewards of imagined steps: ``reward_model = "physics"`` (default) computes the local reward as
the environment does, from the predicted voltages (the barrier; learned whole in the pool
layout, whose four summaries cannot give it), the predicted zone loss share and the exact |q|;
``"learned"`` takes the model's whole-reward output. Both are scored on held-out steps every
iteration (``model/reward_rmse_physics``, ``model/reward_rmse_learned``).

**Trust.** Where the ensemble members disagree about an agent's next voltages by more than
``disagreement_pu`` (standard deviation, worst zone bus), that agent's rollout stops there: its
later imagined steps are left out and its advantage bootstraps from the value before; an agent's
policy sample counts only while every agent whose reward it sums is still trusted.

**Communication.** Acting: dppo's (the policy's messages over κ hops). Training adds, per
imagined step, every agent's model messages (all K members, twice with ``anchor``, and the
exogenous network's as well when loads and PV are predicted) relayed over the model's κ hops;
``model_hops = 0`` (or ``hops = 0`` with ``model_hops`` unset) is the no-communication ablation.
Message dropout of the environment applies to real steps; imagined steps assume every message
arrives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from gridrl.marl.dppo import DPPO, DppoConfig
from gridrl.marl.gae import gae
from gridrl.marl.graph import Neighbourhood
from gridrl.marl.model import DynamicsEnsemble, LocalReward, ObservationRoles, sensitivity_probe, voltage_sensitivity
from gridrl.marl.normalize import observation_masks
from gridrl.marl.ppo import Stopwatch, gaussian_log_prob, shared_floats
from gridrl.marl.replay import EpisodeReplay

__all__ = ["DMPO", "DmpoConfig", "StepPrediction"]


@dataclass(frozen=True)
class StepPrediction:
    """One imagined step as every ensemble member predicts it (:meth:`DMPO._predict_next`).

    next_obs: ``[M, N, D]`` the next observation with what the imagined actions set exactly
        (the inverters' Q); its voltage features are still the real step's.
    volts: ``[K, M, N, V]`` every member's next voltage features.
    parts: every member's reward parts, ``[K, M, N]`` each, named as
        :attr:`~gridrl.marl.model.DynamicsEnsemble.OUTPUTS` (zone loss share, voltage cost, reward).
    """

    next_obs: torch.Tensor
    volts: torch.Tensor
    parts: dict[str, torch.Tensor]

    def member(self, drawn: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Rollout m's next voltage features ``[M, N, V]`` and reward parts ``[M, N]`` as
        member ``drawn[m]`` predicts them."""
        rows = torch.arange(len(drawn), device=drawn.device)
        return self.volts[drawn, rows], {name: v[drawn, rows] for name, v in self.parts.items()}


@dataclass(frozen=True, kw_only=True)
class DmpoConfig(DppoConfig):
    """DPPO's settings (see :class:`~gridrl.marl.dppo.DppoConfig`: ``hops`` is the policy's and
    critic's κ) plus the model's and the rollouts'.

    model_hops: κ of the dynamics model (``None``: the policy's ``hops``); 0: every agent's
        model sees only itself.
    ensemble: K, members of the model ensemble.
    horizon: H, steps of an imagined rollout.
    model_ratio: imagined feeder-steps per real feeder-step of the iteration (0: none; dppo).
    imagine_from: first iteration (0-based) with imagined data: the model has been fitted on
        this many iterations of real data by then.
    replay_iterations: iterations of real episodes kept for fitting and branching.
    holdout_every: every ``holdout_every``-th scenario of each iteration is held out from model
        fitting, for honest model errors (0: none).
    model_updates: gradient steps of every member per iteration. model_batch: feeder-steps per
        member minibatch. model_lr: Adam's learning rate for the model.
    model_hidden, model_message_dim: the model networks' width and message size.
    model_prior: ``sensitivity``: the model learns the voltage change left over by what the
        power flow's sensitivity to the κ-hop neighbours' reactive power predicts
        (:func:`~gridrl.marl.model.voltage_sensitivity`, computed once on the feeder);
        ``physics``: that, and the networks never see the action or what it sets (the next
        inverter and zone Q), so an action's effect on voltages is the prior's alone and the
        networks learn only what the day does — its zone losses then ignore the action too (a
        measurement of the voltage prior, not a training setting); ``none``.
    model_precision: the matrix products of the model fit in ``float32`` or ``bfloat16``
        (autocast: weights, optimizer and losses stay float32; predictions are always float32).
    disagreement_pu: an agent's rollout stops where the members' next voltages spread more than
        this (standard deviation in p.u., worst zone bus).
    anchor: use the model as a difference to the real continuation (see the module docstring).
    exogenous: where an imagined step's loads, PV and headroom come from: ``recorded`` (the
        episode the rollout branched from) or ``predicted`` (the model's own, which then also
        learns them; needs ``anchor = false``: the free rollout).
    reward_model: ``physics`` (reward computed from predicted voltages and losses) or
        ``learned`` (the model's reward output).
    model_stop_every: every this many updates of a fit, the ensemble's loss on a fixed draw of
        ``model_batch`` held-out feeder-steps is measured, and the fit stops where it no longer
        falls (0: never; every fit makes its ``model_updates``). The fit then sees fewer samples
        where the model has nothing left to learn from the replay (``update/model_steps`` counts
        the updates made).
    model_unroll: U, steps of the model's loss: 1 fits one step from each real observation; U > 1
        rolls the model U steps forward on its own voltages from each sampled real step (the
        recorded actions, loads and PV, as the ``anchor = false`` rollout does) and fits every
        step's outputs against the real ones, the gradient flowing back through the rollout (the
        unrolled loss of the paper's code, which unrolls 4); a fit then costs about U times as much.
    model_eval_samples: held-out transitions scored per iteration.
    model_check_every: every this many iterations, the imagined next voltages and rewards are
        checked against the true physics (:meth:`DMPO.counterfactual_errors`, one episode in
        4 scenarios of a separate environment on training days; 0: never).
    """

    model_hops: int | None = None
    ensemble: int = 5
    horizon: int = 4
    model_ratio: float = 4.0
    imagine_from: int = 2
    replay_iterations: int = 16
    holdout_every: int = 8
    model_updates: int = 100
    model_batch: int = 64
    model_lr: float = 1e-3
    model_hidden: int = 64
    model_message_dim: int = 16
    model_precision: Literal["float32", "bfloat16"] = "float32"
    model_prior: Literal["none", "sensitivity", "physics"] = "none"
    disagreement_pu: float = 0.005
    anchor: bool = True
    exogenous: Literal["recorded", "predicted"] = "recorded"
    reward_model: Literal["physics", "learned"] = "physics"
    model_stop_every: int = 0
    model_unroll: int = 1
    model_eval_samples: int = 512
    model_check_every: int = 10

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.model_hops is not None and self.model_hops < 0:
            problems.append(f"model_hops must be ≥ 0, got {self.model_hops}")
        for name in ("ensemble", "horizon", "replay_iterations", "model_batch", "model_hidden", "model_message_dim",
                     "model_eval_samples", "model_unroll"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("model_ratio", "imagine_from", "holdout_every", "model_updates", "model_check_every",
                     "model_stop_every"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be ≥ 0, got {getattr(self, name)}")
        for name in ("model_lr", "disagreement_pu"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if self.model_precision not in ("float32", "bfloat16"):
            problems.append(f"model_precision must be 'float32' or 'bfloat16', got {self.model_precision!r}")
        if self.model_prior not in ("none", "sensitivity", "physics"):
            problems.append(f"model_prior must be 'none', 'sensitivity' or 'physics', got {self.model_prior!r}")
        if self.exogenous not in ("recorded", "predicted"):
            problems.append(f"exogenous must be 'recorded' or 'predicted', got {self.exogenous!r}")
        elif self.exogenous == "predicted" and self.anchor:
            problems.append("exogenous = 'predicted' needs anchor = false (an anchored rollout follows the recorded "
                            "day, loads and PV included)")
        if self.model_unroll > 1 and self.model_stop_every:
            problems.append("model_unroll > 1 cannot be combined with model_stop_every (the early stop scores "
                            "one-step losses); set one of them to its default")
        if self.reward_model not in ("physics", "learned"):
            problems.append(f"reward_model must be 'physics' or 'learned', got {self.reward_model!r}")
        return problems


class DMPO(DPPO):
    """The DMPO learner on a training environment (see the module docstring)."""

    algo = "dmpo"
    Config = DmpoConfig

    def __init__(self, env, config: DmpoConfig, *, seed: int, total_steps: int, device: str = "cpu",
                 name: str | None = None):
        super().__init__(env, config, seed=seed, total_steps=total_steps, device=device, name=name)
        cfg = config
        model_hops = cfg.hops if cfg.model_hops is None else cfg.model_hops
        self.model_graph = self.graph if model_hops == cfg.hops else Neighbourhood(env.hop_distance, model_hops)
        self.roles = ObservationRoles.from_env(env).to(self.device)
        self.local_reward = LocalReward.from_env(env)
        valid, keep = observation_masks(env)
        self._seed = int(seed)
        self._check_env = None
        sensitivity = None
        if cfg.model_prior in ("sensitivity", "physics"):
            probe = sensitivity_probe(env.feeder, env.config, seed=self._seed)
            sensitivity = voltage_sensitivity(probe, self.roles, self.model_graph)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            self.model = DynamicsEnsemble(self.roles, self.model_graph, obs_valid=valid, obs_keep=keep,
                                          members=cfg.ensemble, hidden=cfg.model_hidden,
                                          message_dim=cfg.model_message_dim, embed_dim=cfg.embed_dim,
                                          own_weights=self.decentralized, sensitivity=sensitivity,
                                          actions_through_prior=cfg.model_prior == "physics",
                                          exogenous=cfg.exogenous == "predicted").to(self.device)
        # foreach: one kernel per step kind over all parameters; the same values, bit for bit
        self.model_optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.model_lr, foreach=True)
        self._obs_valid = valid.to(self.device)
        names = [env.obs_names[c] for c in self.roles.exo_cols.tolist()]
        self._exo_groups = {"net_p": [k for k, n in enumerate(names) if n.startswith(("p_mw[", "p_zone_mw"))],
                            "pv": [k for k, n in enumerate(names) if n == "inv_p_mw"]}
        self.replay = EpisodeReplay(cfg.replay_iterations, env.episode_steps, env.num_envs, env.n_agents, env.obs_dim,
                                    holdout_every=cfg.holdout_every, device=self.device)

    def _info_fields(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """The reward parts the model learns: each zone's loss share and voltage cost."""
        return {"zone_loss_mw": ((self.env.n_agents,), torch.float32),
                "reward_voltage": ((self.env.n_agents,), torch.float32)}

    def _communication(self, *, real_steps: float, update_stats: dict[str, float], imagined_steps: float = 0.0
                       ) -> dict[str, float]:
        """dppo's traffic (see :meth:`DPPO._communication`; its update counts imagined samples
        too) plus, locally, every imagined step's actor, critic and model messages (all
        members, twice when anchored or when loads and PV are predicted) and local advantages,
        and the model fit's messages and their gradients (both networks' with predicted loads
        and PV); globally, every fit step's share of the gradient norm (the clip) and,
        in shared training, the model's shared weights at every fit step and its pooled input
        statistics."""
        cfg = self.cfg
        out = super()._communication(real_steps=real_steps, update_stats=update_stats)
        policy = self.graph.relay_floats(cfg.message_dim) + self.graph.relay_floats(self._critic_message_dim())
        model = self.model_graph.relay_floats(cfg.model_message_dim) * cfg.ensemble   # one network, one pass
        fits = update_stats.get("update/model_steps", 0.0)
        nets = 1 if self.model.exo_net is None else 2
        out["comm/train_local_floats"] += (imagined_steps * (policy + model * self._model_passes()
                                                             + self.graph.relay_floats(1.0))
                                           + fits * cfg.model_batch * cfg.model_unroll * 2.0 * model * nets)
        out["comm/train_global_floats"] += fits
        if not self.decentralized:
            out["comm/train_global_floats"] += shared_floats(self.model) * fits + 3.0 * self.model.in_dim
        return out

    @property
    def communication_training(self) -> float:
        """Floats per agent per real step while training: dppo's, plus the model messages of
        ``model_ratio`` imagined steps (every member's, twice when anchored or when loads and PV
        are predicted)."""
        cfg = self.cfg
        model = self.model_graph.relay_floats(cfg.model_message_dim) * cfg.ensemble * self._model_passes()
        return super().communication_training * (1.0 + cfg.model_ratio) + model * cfg.model_ratio

    def _model_passes(self) -> int:
        """Passes of one model network over the feeder per imagined step, each relaying every
        member's messages: the imagined and the real step when anchored; the exogenous
        network's prediction and then the step when loads and PV are predicted."""
        return 2 if self.cfg.anchor or self.cfg.exogenous == "predicted" else 1

    # ---------------------------------------------------------------------------------------
    # one iteration
    # ---------------------------------------------------------------------------------------
    def iterate(self) -> dict[str, float]:
        """Collect, remember, fit the model, imagine, update; returns the iteration's scalars.
        Collecting, learning from samples and the iteration's bookkeeping are dppo's steps
        (:class:`~gridrl.marl.dppo.DPPO`); the model's are this file's."""
        cfg = self.cfg
        watch = Stopwatch()
        lr = self._schedule_lr()
        rollout = self._collect(watch)
        stats: dict[str, float] = {}
        with watch("model"):
            self._remember(rollout.last_obs)
            stats.update(self._fit_model())
            stats.update(self._model_errors())
            if cfg.model_check_every and self.iteration % cfg.model_check_every == 0:
                stats.update(self.counterfactual_errors(self._checking_env(), seed=self._seed + self.iteration))
        imagined = None
        if cfg.model_ratio > 0 and self.iteration >= cfg.imagine_from:
            with watch("imagine"):
                imagined = self._imagine()
            stats.update(imagined.pop("stats"))
        with watch("update"):
            samples = self._rollout_samples(rollout.last_value, standardize=False)
            if imagined is not None:
                samples = _concat(samples, imagined)
            _standardize(samples, per_agent=self.decentralized)
            stats.update(self._learn(samples))
        stats.update(self._communication(real_steps=self._real_steps(), update_stats=stats,
                                         imagined_steps=stats.get("imagine/steps", 0.0)))
        return self._finish_iteration(rollout, stats, lr, watch, phases=("env", "act", "model", "imagine", "update"))

    def _remember(self, last_obs: torch.Tensor) -> None:
        """This iteration's episodes (the rollout buffer, and ``last_obs`` after its last step)
        into the replay (:meth:`remember`)."""
        buf = self.buffer
        self.remember(torch.cat([buf["obs"], last_obs[None]], 0), buf["active"] & ~buf["terminal"],
                      action=buf["action"], reward=buf["reward"], zone_loss_mw=buf["zone_loss_mw"],
                      voltage_cost=buf["reward_voltage"])

    def remember(self, obs: torch.Tensor, valid: torch.Tensor, *, action: torch.Tensor, reward: torch.Tensor,
                 zone_loss_mw: torch.Tensor, voltage_cost: torch.Tensor) -> None:
        """One block of real episodes into the replay (``obs [T + 1, B, N, D]``, ``valid [T, B]``,
        the step fields ``[T, B, N]``); the model's statistics from its training part."""
        self.replay.add(obs, valid, action=action, reward=reward, zone_loss_mw=torch.nan_to_num(zone_loss_mw),
                        voltage_cost=torch.nan_to_num(voltage_cost))
        fit = valid & ~self.replay.held_out
        if fit.any():
            d = {k: v[fit] for k, v in (("obs", obs[:-1]), ("next_obs", obs[1:]), ("action", action),
                                         ("reward", reward), ("zone_loss_mw", zone_loss_mw),
                                         ("voltage_cost", voltage_cost))}
            self.model.observe(*self._model_data(d))

    def _model_data(self, d: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Model features and targets of real transitions ``d`` (replay step fields)."""
        m = self.model
        return (m.features(d["obs"], d["next_obs"], d["action"]),
                m.targets(d["obs"], d["next_obs"], d["zone_loss_mw"], d["voltage_cost"], d["reward"]))

    def _fit_model(self) -> dict[str, float]:
        """``model_updates`` steps; every member draws its own minibatch (with replacement) of
        real transitions, scored one step ahead or, with ``model_unroll``, as the starts of
        rollouts on the model's own voltages (:meth:`_unrolled_backward`). With ``model_stop_every``, the fit stops at the first check (every that many updates)
        where the loss on :meth:`_stopping_set` is not below its lowest value so far, the value
        before the fit included.

        The training part of the replay is built and normalised once per fit (the statistics
        only change in :meth:`remember`), so an update only gathers its rows: the same
        minibatches, bit for bit, as building each from the replay."""
        cfg, m = self.cfg, self.model
        train = self.replay.transitions(held_out=False)
        if not len(train) or not cfg.model_updates:
            return {}
        K, batch = m.size, cfg.model_batch
        if cfg.model_unroll > 1:  # every update rolls the model from its own minibatch of real steps
            def update_loss(pick: torch.Tensor) -> float:
                return self._unrolled_backward(train[pick].view(K, batch, -1))
        else:
            with torch.no_grad():
                x_all, y_all = m.normalise(*self._model_data(self.replay.step(train)))

            def update_loss(pick: torch.Tensor) -> float:
                x, y = x_all[pick], y_all[pick]
                return m.backward(x.view(K, batch, *x.shape[1:]), y.view(K, batch, *y.shape[1:]), normalised=True)
        low = cfg.model_precision == "bfloat16"
        stopping = self._stopping_set()
        if stopping is not None:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=low):
                best = m.loss(*stopping)
        total = 0.0
        done = 0
        while done < cfg.model_updates:
            pick = torch.randint(len(train), (K * batch,), generator=self.generator, device=self.device)
            self.model_optimizer.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=low):
                loss = update_loss(pick)
            torch.nn.utils.clip_grad_norm_(m.parameters(), 10.0)
            self.model_optimizer.step()
            total += loss / K
            done += 1
            if stopping is not None and done % cfg.model_stop_every == 0:
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=low):
                    held = m.loss(*stopping)
                if held >= best:
                    break
                best = held
        return {"model/train_loss": total / done, "update/model_steps": float(done)}

    def _unrolled_backward(self, starts: torch.Tensor) -> float:
        """Accumulate the gradient of the unrolled loss (``model_unroll`` = U > 1) of every member's
        starting steps ``starts [K, M, 3]`` (replay indices) and return it: from each real
        observation the model rolls U steps on its own voltages with the recorded actions, loads
        and PV; step h's outputs are scored against the real step's (its voltage change against
        the real next voltages less the model's own), the squared errors in normalised units
        averaged over the steps (a step past the episode's end counts nothing) and, per member,
        over the outputs that exist and the samples, as the one-step loss. Chunk by chunk, in
        bounded memory."""
        m, roles, U = self.model, self.roles, self.cfg.model_unroll
        K, M = starts.shape[:2]
        valid_out = m.out_valid.to(torch.float32)
        total = 0.0
        for chunk in starts.split(m.chunk_rows(), 1):
            n = chunk.shape[1]
            index = chunk.reshape(K * n, -1)
            ok = torch.ones(K * n, dtype=torch.bool, device=self.device)
            obs = None
            loss = 0.0
            for h in range(U):
                s = self.replay.step(index, h)
                ok = ok & s["valid"]
                obs = s["obs"] if obs is None else obs
                features, targets = self._model_data({**s, "obs": obs})
                x, y = m.normalise(features, targets)
                pred = m._net(x.view(K, n, *x.shape[1:])).float()                    # [K, n, N, out]
                w = valid_out * ok.view(K, n, 1, 1).to(torch.float32)
                loss = loss + ((pred - y.view(K, n, *y.shape[1:])) ** 2 * w).sum()
                if h + 1 < U:
                    dv = m.split(m.physical(pred, features.view(K, n, *features.shape[1:])))["dv"]
                    obs = roles.with_volts(s["next_obs"], roles.volts(obs) + dv.reshape(K * n, *dv.shape[2:]))
            loss = loss / (valid_out.sum() * M * U)
            loss.backward()
            total += float(loss.detach())
        return total

    def _stopping_set(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """With ``model_stop_every``, the held-out feeder-steps that decide when a fit stops:
        ``model_batch`` of them drawn once per fit, normalised features and targets as every
        member's input ``[K, M, N, …]``; ``None`` without (or without held-out steps)."""
        cfg, m = self.cfg, self.model
        held = self.replay.transitions(held_out=True)
        if not cfg.model_stop_every or not len(held):
            return None
        pick = held[torch.randperm(len(held), generator=self.generator, device=self.device)[:cfg.model_batch]]
        with torch.no_grad():
            x, y = m.normalise(*self._model_data(self.replay.step(pick)))
        return x.expand(m.size, *x.shape), y.expand(m.size, *y.shape)

    # ---------------------------------------------------------------------------------------
    # held-out model errors
    # ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def _model_errors(self) -> dict[str, float]:
        """Errors on held-out real steps: one step (next voltages, zone loss, reward both ways,
        the ensemble's spread, and the persistence baseline ``v_{t+1} = v_t``) and H steps
        (the model rolled forward on its own voltages with the real actions, no anchor), and
        with predicted loads and PV the free rollout's errors after 1 and H steps
        (:meth:`_free_errors`)."""
        cfg, m, roles = self.cfg, self.model, self.roles
        held = self.replay.transitions(held_out=True)
        if not len(held):
            return {}
        pick = held[torch.randperm(len(held), generator=self.generator, device=self.device)[:cfg.model_eval_samples]]
        d = self.replay.step(pick)
        pred = m(m.features(d["obs"], d["next_obs"], d["action"]))          # [K, M, N, out]
        part = m.split(pred.mean(0))
        vmask = roles.volt_valid.to(pred.dtype)
        true_v = roles.volts(d["next_obs"])
        v_hat = roles.volts(d["obs"]) + part["dv"]
        out = {"model/volt_rmse_pu": _rmse(v_hat - true_v, vmask),
               "model/volt_rmse_persist_pu": _rmse(roles.volts(d["obs"]) - true_v, vmask),
               "model/volt_spread_pu": _rmse(m.split(pred)["dv"].std(0), vmask) if m.size > 1 else 0.0,
               "model/loss_rmse_mw": _rmse(part["zone_loss_mw"] - d["zone_loss_mw"]),
               "model/reward_rmse_learned": _rmse(part["reward"] - d["reward"]),
               "model/reward_rmse_physics": _rmse(self._reward(v_hat, part, d["next_obs"]) - d["reward"]),
               "model/reward_std": float(d["reward"].std())}
        # H steps open loop from held-out starts whose H steps are all real
        H = cfg.horizon
        ok = torch.ones(len(pick), dtype=torch.bool, device=self.device)
        obs = free = d["obs"]
        for h in range(H):
            s = self.replay.step(pick, h)
            ok &= s["valid"]
            dv = m.split(m(m.features(obs, s["next_obs"], s["action"])).mean(0))["dv"]
            obs = roles.with_volts(s["next_obs"], roles.volts(obs) + dv)
            if m.exo_net is not None:  # the free rollout: loads and PV the model's too
                free = self._free_step(free, s)
                if h in (0, H - 1) and ok.any():
                    out.update(self._free_errors(free, s["next_obs"], d["obs"], ok, h + 1))
        if ok.any():
            out[f"model/volt_rmse_h{H}_pu"] = _rmse((roles.volts(obs) - roles.volts(s["next_obs"]))[ok], vmask)
        return out

    def _free_step(self, obs: torch.Tensor, real: dict[str, torch.Tensor]) -> torch.Tensor:
        """The next observation after ``obs`` with the real step's actions, loads, PV and
        voltages all the model's own (the ensemble's mean): one step of a free rollout."""
        m = self.model
        nxt = self._predicted_next(obs, real["action"], real)
        dv = m.split(m(m.features(obs, nxt, real["action"])).mean(0))["dv"]
        return self.roles.with_volts(nxt, self.roles.volts(obs) + dv)

    def _predicted_next(self, obs: torch.Tensor, action: torch.Tensor, real: dict[str, torch.Tensor]) -> torch.Tensor:
        """The next observation after ``obs`` and ``action`` with the model's own loads, PV and
        headroom (the ensemble's mean); only the clock and which inverters are out come from the
        real step ``real``. Its voltage features are still ``obs``'s."""
        roles = self.roles
        return roles.with_exogenous(obs, self.model.next_exogenous(obs).mean(0), action, clock=real["next_obs"],
                                    out_of_service=roles.out_of_service(real["next_obs"], real["action"]))

    def _free_errors(self, free: torch.Tensor, real: torch.Tensor, start: torch.Tensor, ok: torch.Tensor,
                     h: int) -> dict[str, float]:
        """Errors of a free rollout's observations ``free`` after ``h`` steps against the real
        ones ``real``: voltage features (p.u.), zone net P and PV output (MW), and the latter two
        held at the branch state ``start`` (persistence)."""
        roles, valid = self.roles, self._obs_valid
        exo_valid = valid[:, roles.exo_cols].to(free.dtype)
        truth, guess, held = (roles.exogenous(o)[ok] for o in (real, free, start))
        out = {f"model/free_volt_rmse_h{h}_pu": _rmse((roles.volts(free) - roles.volts(real))[ok],
                                                      roles.volt_valid.to(free.dtype))}
        for name, cols in self._exo_groups.items():
            w = exo_valid[:, cols]
            out[f"model/free_{name}_rmse_mw_h{h}"] = _rmse(guess[..., cols] - truth[..., cols], w)
            out[f"model/free_{name}_rmse_persist_mw_h{h}"] = _rmse(held[..., cols] - truth[..., cols], w)
        return out

    def _reward(self, volts: torch.Tensor, part: dict[str, torch.Tensor], next_obs: torch.Tensor) -> torch.Tensor:
        """The physics reward of a step from its next voltages, predicted parts and exact |q|."""
        mon = self.roles.monitored
        cost = part["voltage_cost"] if mon is None else self.local_reward.voltage_cost(volts, mon)
        return self.local_reward(cost, part["zone_loss_mw"], next_obs[..., self.roles.q_col].abs())

    # ---------------------------------------------------------------------------------------
    # imagination
    # ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def _imagine(self) -> dict[str, Any]:
        """Branched rollouts in the model (see the module docstring); returns update samples
        (as :meth:`_samples`) and their scalars under ``stats``."""
        cfg, m, roles, policy = self.cfg, self.model, self.roles, self.policy
        H, K = cfg.horizon, m.size
        starts = self.replay.starts()
        real_steps = self.buffer.steps * self.buffer.num_envs
        M = max(1, math.ceil(cfg.model_ratio * real_steps / H))
        pick = starts[torch.randint(len(starts), (M,), generator=self.generator, device=self.device)]
        vmask = roles.volt_valid
        obs = self.replay.step(pick)["obs"]
        alive = torch.ones(M, dtype=torch.bool, device=self.device)
        trusted = torch.ones(M, self.env.n_agents, dtype=torch.bool, device=self.device)
        keep: dict[str, list[torch.Tensor]] = {k: [] for k in ("obs", "action", "logp", "value", "reward", "valid")}
        spread_sum = spread_n = 0.0
        for h in range(H):
            real = self.replay.step(pick, h)
            alive &= real["valid"]
            x = policy.obs_norm(obs)
            mean, log_std = policy.actor(x)
            mean = policy.shift(mean, obs)
            action = mean + log_std.exp() * torch.randn(mean.shape, generator=self.generator, device=self.device)
            step = self._predict_next(obs, action, real)
            spread = (step.volts.std(0) * vmask).amax(-1) if K > 1 else torch.zeros_like(trusted, dtype=obs.dtype)
            trusted &= spread <= cfg.disagreement_pu
            spread_sum += float(spread[alive].sum())
            spread_n += float(alive.sum()) * self.env.n_agents
            volts, parts = step.member(torch.randint(K, (M,), generator=self.generator, device=self.device))
            reward = parts["reward"] if cfg.reward_model == "learned" else self._reward(volts, parts, step.next_obs)
            for name, v in (("obs", obs), ("action", action), ("logp", gaussian_log_prob(action, mean, log_std)),
                            ("value", self.critic(x)[..., 0]), ("reward", reward), ("valid", alive[:, None] & trusted)):
                keep[name].append(v)
            obs = roles.with_volts(step.next_obs, volts)
        last_value = self.critic(policy.obs_norm(obs))[..., 0]
        return self._imagined_samples({k: torch.stack(v) for k, v in keep.items()}, last_value,
                                      spread=spread_sum / max(spread_n, 1.0))

    def _predict_next(self, obs: torch.Tensor, action: torch.Tensor, real: dict[str, torch.Tensor]) -> StepPrediction:
        """One imagined step of every ensemble member: from imagined observations ``obs`` and
        actions ``action [M, N]``, beside the real step ``real`` (its ``obs``, ``next_obs``,
        ``action``, ``zone_loss_mw``, ``voltage_cost``, ``reward``) whose exogenous inputs it
        shares, or with the model's own predicted ones (``exogenous = "predicted"``); anchored
        to the real step, or the model's own (see the module docstring)."""
        m, roles = self.model, self.roles
        if self.cfg.exogenous == "predicted":
            next_obs = self._predicted_next(obs, action, real)
        else:
            next_obs = roles.with_actions(real["next_obs"], real["action"], action)
        if not self.cfg.anchor:
            out = m.split(m(m.features(obs, next_obs, action)))
            return StepPrediction(next_obs, roles.volts(obs) + out["dv"], {k: out[k] for k in m.OUTPUTS})
        # the model on the imagined step and on the real one, in one pass over both: imagined
        # rows first, then the real ones; what it says about the real step is its bias there
        M = obs.shape[0]
        imagined, on_real = slice(0, M), slice(M, 2 * M)
        both_obs = torch.cat([obs, real["obs"]])
        out = m.split(m(m.features(both_obs, torch.cat([next_obs, real["next_obs"]]),
                                   torch.cat([action, real["action"]]))))    # [K, 2M, N, …]
        model_volts = roles.volts(both_obs) + out["dv"]
        volts = roles.volts(real["next_obs"]) + model_volts[:, imagined] - model_volts[:, on_real]
        return StepPrediction(next_obs, volts,
                              {k: real[k] + out[k][:, imagined] - out[k][:, on_real] for k in m.OUTPUTS})

    def _checking_env(self):
        """The separate environment of the physics checks (training days; built once)."""
        if self._check_env is None:
            from gridrl.env import make_env

            self._check_env = make_env(self.env.feeder, split="train", num_envs=4, seed=self._seed,
                                       config=self.env.config)
        return self._check_env

    @torch.no_grad()
    def counterfactual_errors(self, env, *, episodes: int = 1, seed: int | None = None) -> dict[str, float]:
        """The model's imagined next voltages against the true physics, in ``env`` (a separate
        environment; none of its steps reaches training): at every step the agents play one
        draw ``a`` of the policy while the model predicts, anchored on that real step, what an
        independent draw ``a'`` would have given; ``env.peek(a')`` says what it does give.

        Returns the RMSE (p.u., over existing voltage features) of the ensemble-mean
        prediction, ``cf_effect_rmse_pu`` — the error of a model that ignored actions — and the
        RMSE of the imagined reward. Both voltage figures compare with the step's true voltages,
        so they include what the observed next voltages themselves differ from those (sensor
        noise; measured observations read the next interval's start): ``cf_obs_floor_pu``.
        The action effect alone, free of that floor: ``cf_action_effect_pu`` is the size of the
        true change ``peek(a') − peek(a)``, ``cf_action_error_pu`` the RMSE of the imagined
        change (the model's prediction for ``a'`` less its prediction for ``a``) against it.
        """
        roles, policy, m = self.roles, self.policy, self.model
        vmask = roles.volt_valid.to(torch.float32)
        sums = {"volt": 0.0, "effect": 0.0, "reward": 0.0, "floor": 0.0, "size": 0.0, "error": 0.0,
                "n": 0.0, "n_r": 0.0}
        for e in range(episodes):
            obs = env.reset(seed=None if seed is None else seed + e).to(self.device)
            for _ in range(env.episode_steps):
                mean, log_std = policy.actor(policy.obs_norm(obs))
                mean = policy.shift(mean, obs)
                a, a2 = (mean + log_std.exp() * torch.randn(mean.shape, generator=self.generator, device=self.device)
                         for _ in range(2))
                truth = {k: v.to(self.device) for k, v in env.peek(a2).items()}
                played = {k: v.to(self.device) for k, v in env.peek(a).items()}
                next_obs, reward, done, info = env.step(a)
                next_obs, reward = next_obs.to(self.device), reward.to(self.device)
                info = {k: info[k].to(self.device) for k in ("active", "converged", "zone_loss_mw", "reward_voltage")}
                ok = info["active"] & info["converged"] & truth["converged"] & played["converged"]
                real = {"obs": obs, "next_obs": next_obs, "action": a,
                        "zone_loss_mw": info["zone_loss_mw"].float(), "voltage_cost": info["reward_voltage"].float(),
                        "reward": reward}
                step = self._predict_next(obs, a2, real)
                v_hat = step.volts.mean(0)
                v_true = roles.volts_from_buses(truth["vm_pu"])
                w = vmask * ok[:, None, None]
                sums["volt"] += float(((v_hat - v_true) ** 2 * w).sum())
                sums["effect"] += float(((roles.volts(next_obs) - v_true) ** 2 * w).sum())
                v_played = roles.volts_from_buses(played["vm_pu"])
                effect = v_true - v_played
                imagined = v_hat - self._predict_next(obs, a, real).volts.mean(0)
                sums["floor"] += float(((roles.volts(next_obs) - v_played) ** 2 * w).sum())
                sums["size"] += float((effect ** 2 * w).sum())
                sums["error"] += float(((imagined - effect) ** 2 * w).sum())
                sums["n"] += float(w.sum())
                r_true = self._true_reward(truth, step.next_obs)
                r_hat = (step.parts["reward"].mean(0) if self.cfg.reward_model == "learned"
                         else self._reward(v_hat, {k: v.mean(0) for k, v in step.parts.items()}, step.next_obs))
                sums["reward"] += float(((r_hat - r_true) ** 2)[ok].sum())
                sums["n_r"] += float(ok.sum()) * env.n_agents
                obs = next_obs
                if bool(done.all()):
                    break
        n, nr = max(sums["n"], 1.0), max(sums["n_r"], 1.0)
        return {"model/cf_volt_rmse_pu": math.sqrt(sums["volt"] / n),
                "model/cf_effect_rmse_pu": math.sqrt(sums["effect"] / n),
                "model/cf_obs_floor_pu": math.sqrt(sums["floor"] / n),
                "model/cf_action_effect_pu": math.sqrt(sums["size"] / n),
                "model/cf_action_error_pu": math.sqrt(sums["error"] / n),
                "model/cf_reward_rmse": math.sqrt(sums["reward"] / nr)}

    def _true_reward(self, peeked: dict[str, torch.Tensor], next_obs: torch.Tensor) -> torch.Tensor:
        """The local reward of a peeked step (``env.peek``'s voltages and zone losses; the
        inverters' Q from ``next_obs``)."""
        zone = self.roles.zone_volts(peeked["vm_pu"])
        cost = self.local_reward.voltage_cost(zone, self.roles.zone_monitored)
        return self.local_reward(cost, peeked["zone_loss_mw"].float(),
                                 next_obs[..., self.roles.q_col].abs())

    def _imagined_samples(self, r: dict[str, torch.Tensor], last_value: torch.Tensor, *, spread: float
                          ) -> dict[str, Any]:
        """Per-agent GAE over imagined rollouts ``r`` (``[H, M, …]``), cut where an agent stops
        being trusted; neighbourhood-summed advantages in reward units."""
        cfg = self.cfg
        valid = r["valid"]                                          # [H, M, N]
        scale = self.reward_scale.scale.to(torch.float32)
        valid_next = torch.cat([valid[1:], torch.zeros_like(valid[:1])])
        next_values = torch.cat([r["value"][1:], last_value[None]])
        local, returns = gae(r["reward"] / scale, r["value"], next_values, terminal=torch.zeros_like(valid),
                             end=valid & ~valid_next, gamma=cfg.gamma, lam=cfg.gae_lambda)
        advantage = self.graph.neighbourhood_sum(local * scale)
        whole = self.graph.neighbourhood_sum((~valid).to(torch.float32)) == 0   # every summed reward trusted
        H, M, N = valid.shape
        flat = lambda t: t.reshape(H * M, *t.shape[2:])  # noqa: E731
        samples = {"obs": flat(r["obs"]), "action": flat(r["action"]), "logp": flat(r["logp"]),
                   "advantage": flat(advantage), "returns": flat(returns), "value": flat(r["value"]),
                   "delivered": (torch.ones(H * M, self.graph.n_pairs, dtype=torch.bool, device=self.device)
                                 if self.dropout else None),
                   "where": flat(valid).any(-1), "policy_weight": flat((valid & whole).to(torch.float32)),
                   "value_weight": flat(valid.to(torch.float32))}
        samples["stats"] = {"imagine/steps": float(H * M), "imagine/trusted_share": float(valid.float().mean()),
                            "imagine/spread_pu": spread,
                            "imagine/reward_mean": float(r["reward"][valid].mean()) if valid.any() else 0.0}
        return samples

    def _minibatch_count(self, samples: int) -> int:
        """dppo's minibatch size: more samples, more minibatches."""
        real = self.buffer.steps * self.buffer.num_envs
        return max(self.cfg.minibatches, round(self.cfg.minibatches * samples / real))

    # ---------------------------------------------------------------------------------------
    # checkpoints
    # ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "model": self.model.state_dict(),
                "model_optimizer": self.model_optimizer.state_dict(), "replay": self.replay.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.model.load_state_dict(state["model"])
        self.model_optimizer.load_state_dict(state["model_optimizer"])
        self.replay.load_state_dict(state["replay"])


def _rmse(err: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Root mean square of ``err`` over the entries where ``mask`` (broadcast) is 1."""
    if mask is None:
        return float(err.pow(2).mean().sqrt())
    w = mask.expand_as(err)
    return float(((err ** 2) * w).sum().div(w.sum().clamp(min=1)).sqrt())


def _concat(real: dict[str, Any], imagined: dict[str, Any]) -> dict[str, Any]:
    """Real and imagined update samples (the same fields) as one set (real samples weigh every
    agent fully)."""
    out = {}
    for k, a in real.items():
        b = imagined[k]
        if a is None and b is not None:  # a weight: on real samples every agent counts
            a = torch.ones(len(real["obs"]), *b.shape[1:], dtype=b.dtype, device=b.device)
        out[k] = None if b is None else torch.cat([a, b])
    return out


def _standardize(samples: dict[str, Any], *, per_agent: bool) -> None:
    """Standardise the policy advantages over the samples and agents that count (each agent's
    over its own samples if ``per_agent``)."""
    adv, where, w = samples["advantage"], samples["where"], samples["policy_weight"]
    a = adv[where]
    total = (lambda x: x.sum(0)) if per_agent else (lambda x: x.sum())  # noqa: E731
    if w is None:
        mean, std = (a.mean(0), a.std(0)) if per_agent else (a.mean(), a.std())
    else:
        ww = w[where]
        mean = total(a * ww) / total(ww).clamp(min=1e-12)
        std = (total((a - mean) ** 2 * ww) / total(ww).clamp(min=1e-12)).sqrt()
    samples["advantage"] = (adv - mean) / (std + 1e-8)
