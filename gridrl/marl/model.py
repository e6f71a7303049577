"""Localized dynamics models: agent *i*'s next local observation and local reward from its κ-hop
neighbourhood, as an ensemble — the model half of DMPO (:mod:`gridrl.marl.dmpo`).

**What there is to predict.** A feeder is quasi-static: the power flow of a step depends only on
that step's loads, PV output and reactive powers, not on the step before. Agent *i*'s next
observation ``o_{t+1}^i`` (which reports the step its action ``a_t`` met) therefore splits into
three parts, named column by column by :class:`ObservationRoles`:

- *exogenous* — zone net P, PV output, available Q, time of day, forecasts, the loads' share of
  the zone's net Q: they follow the day's profiles whatever the agents do;
- *set by the action, exactly* — the inverters' reactive power ``a·q_avail`` (and its share of
  the net Q of the zone bus it sits at);
- *physics* — the zone's bus voltages (``pad`` layout: one per zone bus; ``pool``: own, min,
  mean, max) and, in the reward, the zone's share of line losses: they respond to the reactive
  power of the whole neighbourhood (a neighbour's Q moves my voltage as surely as mine does).

Only the physics part is learned by default. Agent *i*'s model reads, from every agent *j* of its κ-hop
neighbourhood (as messages, through :class:`~gridrl.marl.nets.NeighbourhoodNet`: nothing from
outside the neighbourhood can reach it), *j*'s current observation, *j*'s next observation
without its physics part and *j*'s action; it predicts the change of *i*'s voltage features (a
residual: voltages move little from one 15-minute step to the next), *i*'s zone loss share, its
unweighted voltage cost and its whole local reward. The last two let DMPO compute the reward from
the predicted voltages or take it learned whole — and measure which is closer
(:class:`LocalReward`). Where the exogenous part of an imagined step comes from is the rollout's
business: dmpo replays it from the real episode the rollout branched from, or, with
``exogenous=True`` here, takes it from a second network of the same ensemble that predicts each
agent's next exogenous inputs (:attr:`ObservationRoles.exo_cols`: its zone's net P and Q without
its inverters' Q, its PV output and Q headroom, forecasts) from the κ-hop neighbourhood's
*current* observations alone — it must not read the next observation it predicts. Its outputs
follow the physics outputs in every prediction and target (the same fit, the same loss).

**Ensemble.** ``members`` networks of one shape, each with its own initial weights and its own
minibatches drawn with replacement (a bootstrap); their spread on an input is the model's
uncertainty there, which dmpo uses to stop imagined rollouts it should not trust. Weights are
shared by all agents with an agent embedding (as the policy's), so the model's size does not grow
with the feeder and its cost is linear in the number of neighbour pairs.

**Memory.** Every pass is cut into chunks of samples so that its largest intermediate (``[K, N,
samples, hidden]`` floats) stays below :data:`CHUNK_FLOATS`. Past about 32 MB, glibc's malloc
serves each tensor from fresh pages (``mmap``), and every element-wise operation first faults
them in: on mvlv-rural (571 agents) that alone made an iteration's time per agent 1.65×
mv-urban's (``reports/dmpo/scaling.md``). Chunked, the cost per agent-sample is the same on every feeder.
Chunks of 4 MB rather than 16 MB keep the element-wise operations (ReLU, adds and their
gradients) near the cache: a model fit step on mv-urban took 1.5× less time (0.43–0.53 s
against 0.70–0.76 s for 5 updates, alternating in one process, 2026-12-07).

**Scales.** Inputs are normalised per feature column with the observation masks (padding stays
out of the statistics); targets per agent and column, since a 40-bus zone loses far more than a
one-bus zone and both should be predicted to the same relative accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from torch import nn

from gridrl.env.rewards import barrier
from gridrl.marl.graph import Neighbourhood
from gridrl.marl.nets import NeighbourhoodNet
from gridrl.marl.normalize import RunningNorm

__all__ = ["CHUNK_FLOATS", "DynamicsEnsemble", "LocalReward", "ObservationRoles", "sensitivity_probe",
           "voltage_sensitivity"]

# floats in the largest intermediate of one chunk of a pass (4 MB; see "Memory" above)
CHUNK_FLOATS = 1 << 20

_VOLTAGE_POOL = ("dv_own_pu", "dv_min_pu", "dv_mean_pu", "dv_max_pu")


@dataclass(frozen=True, eq=False)
class ObservationRoles:
    """Which observation columns are physics (predicted), which the model reads from the next
    observation, and how an action changes the next observation exactly.

    volt_cols: ``[V]`` the voltage features (``dv_pu[z]`` or the pool's four), in p.u. − 1.
    volt_valid: ``[N, V]`` the voltage features that exist (False: padding of small zones).
    zone_index: ``[N, Z]`` each zone's buses (own bus first; ``n_bus`` pads), as the env's.
    zone_monitored: ``[N, Z]`` the zone buses whose voltages count in the reward.
    next_cols: ``[C]`` columns of the next observation the model reads (all but voltages and
        the constant masks).
    q_col, q_avail_col: the inverter's reactive power and its limit.
    q_coef: ``[N, D]``: a change ``Δa`` of agent i's (clipped) action changes its next
        observation by ``Δa · q_avail · q_coef[i]``: its inverters' Q, and the net Q of the zone
        buses they sit at (an agent with several inverters shares ``Δa·q_avail`` between them in
        proportion to their apparent power, exact when their PV follows one profile, as in
        every shipped feeder).
    exo_cols: ``[E]`` the exogenous columns (the next columns but the inverters' Q and the
        clock): what loads, PV and forecasts set, read by :meth:`exogenous` with the inverters'
        own Q taken out of the zone's net Q.
    clock_cols: ``[2]`` the time of day (``sin_time``, ``cos_time``): known, never predicted.
    """

    volt_cols: torch.Tensor
    volt_valid: torch.Tensor
    next_cols: torch.Tensor
    q_col: int
    q_avail_col: int
    q_coef: torch.Tensor
    zone_index: torch.Tensor
    zone_monitored: torch.Tensor
    exo_cols: torch.Tensor
    clock_cols: torch.Tensor
    layout: str
    measured: bool = False

    @classmethod
    def from_env(cls, env) -> ObservationRoles:
        names = list(env.obs_names)
        col = {n: c for c, n in enumerate(names)}
        N, D = env.n_agents, len(names)
        q_coef = np.zeros((N, D), dtype=np.float32)
        q_coef[:, col["inv_q_mvar"]] = 1.0
        s_max = env.s_max_mva.numpy()
        agent_of = env.inverter_agent.numpy()
        share = s_max / np.bincount(agent_of, weights=s_max, minlength=N)[agent_of]
        if env.config.zone_layout == "pad":
            Z = env.max_zone_buses
            volt = [col[f"dv_pu[{z}]"] for z in range(Z)]
            valid = env.zone_mask.clone()
            zone_index = env.zone_index.numpy()
            for k, (a, b) in enumerate(zip(agent_of, env.inverter_bus_pos.numpy())):
                z = int(np.flatnonzero(zone_index[a] == b)[0])  # an agent's inverters sit in its zone
                q_coef[a, col[f"q_mvar[{z}]"]] += share[k]
        else:
            volt = [col[n] for n in _VOLTAGE_POOL]
            valid = torch.ones(N, len(volt), dtype=torch.bool)
            q_coef[:, col["q_zone_mvar"]] = 1.0
        skip = set(volt) | {c for n, c in col.items() if n.startswith("mask[")}
        zone_monitored = np.append(env.monitored.numpy(), False)[env.zone_index.numpy()] & env.zone_mask.numpy()
        clock = [col["sin_time"], col["cos_time"]]
        nxt = [c for c in range(D) if c not in skip]
        return cls(volt_cols=torch.as_tensor(volt), volt_valid=valid,
                   next_cols=torch.as_tensor(nxt), q_col=col["inv_q_mvar"],
                   exo_cols=torch.as_tensor([c for c in nxt if c not in {col["inv_q_mvar"], *clock}]),
                   clock_cols=torch.as_tensor(clock),
                   q_avail_col=col["inv_q_avail_mvar"], q_coef=torch.as_tensor(q_coef),
                   zone_index=env.zone_index.clone(), zone_monitored=torch.as_tensor(zone_monitored),
                   layout=env.config.zone_layout, measured=env.config.observation == "measured")

    def to(self, device: str | torch.device) -> ObservationRoles:
        """The same roles with every tensor on ``device`` (where the model runs)."""
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **moved)

    @property
    def monitored(self) -> torch.Tensor | None:
        """``[N, V]``: the voltage features of monitored buses (pad layout), or ``None`` when a
        zone's barrier cannot be computed from the next observation's voltages: the pool's four
        summaries, or measured observations (the next observation reads the next interval's
        start, not the voltages the step's reward was paid on), where the learned, anchored
        voltage cost takes its place."""
        return self.zone_monitored if self.layout == "pad" and not self.measured else None

    def zone_volts(self, vm_pu: torch.Tensor) -> torch.Tensor:
        """``[B, N, Z]``: ``vm_pu − 1`` of every zone bus (0 for padding) from ``vm_pu [B, n_bus]``."""
        return torch.cat([vm_pu - 1.0, vm_pu.new_zeros(vm_pu.shape[0], 1)], 1)[:, self.zone_index]

    def volts_from_buses(self, vm_pu: torch.Tensor) -> torch.Tensor:
        """The voltage features ``[B, N, V]`` that bus voltages ``vm_pu [B, n_bus]`` (a power
        flow's, e.g. :meth:`~gridrl.env.core.VoltageControlEnv.peek`'s) give, as the
        environment's observations would read them (without sensor noise)."""
        dv = self.zone_volts(vm_pu)
        if self.layout == "pad":
            return dv.to(torch.float32)
        m = self.zone_index < vm_pu.shape[1]
        inf = torch.tensor(float("inf"), dtype=dv.dtype, device=dv.device)
        feats = [dv[..., 0], torch.where(m, dv, inf).amin(-1), dv.sum(-1) / m.sum(-1), torch.where(m, dv, -inf).amax(-1)]
        return torch.stack(feats, -1).to(torch.float32)

    def volts(self, obs: torch.Tensor) -> torch.Tensor:
        """The voltage features ``[..., N, V]`` of observations ``[..., N, D]``."""
        return obs.index_select(-1, self.volt_cols)

    def with_volts(self, obs: torch.Tensor, volts: torch.Tensor) -> torch.Tensor:
        """A copy of ``obs`` with its voltage features replaced (padding kept at 0)."""
        out = obs.clone()
        out[..., self.volt_cols] = volts * self.volt_valid.to(volts.dtype)
        return out

    def exogenous(self, obs: torch.Tensor) -> torch.Tensor:
        """The exogenous inputs ``[..., N, E]`` of observations ``[..., N, D]``: the columns
        :attr:`exo_cols`, the inverters' own Q taken out of the zone buses' net Q (what the day
        sets, whatever the agents do)."""
        base = obs - obs[..., self.q_col, None] * self.q_coef.to(obs.dtype)
        return base.index_select(-1, self.exo_cols)

    def out_of_service(self, next_obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``[..., N]``: the agents whose inverters were out at the step ``action`` met (their
        Q stayed 0 although ``a·q_avail`` was not)."""
        return (next_obs[..., self.q_col] == 0) & (action.clamp(-1.0, 1.0) * next_obs[..., self.q_avail_col] != 0)

    def with_exogenous(self, obs: torch.Tensor, exogenous: torch.Tensor, action: torch.Tensor, *,
                       clock: torch.Tensor, out_of_service: torch.Tensor) -> torch.Tensor:
        """The next observation after ``obs`` built from predicted exogenous inputs
        ``exogenous [..., N, E]`` (as :meth:`exogenous` reads them), the time of day of ``clock``
        (an observation of that step) and the inverters' Q that ``action`` sets within the
        predicted headroom (0 where ``out_of_service``); its voltage features are still
        ``obs``'s."""
        out = obs.clone()
        out[..., self.exo_cols] = exogenous
        out[..., self.clock_cols] = clock.index_select(-1, self.clock_cols)
        out[..., self.q_col] = 0.0
        q_avail = out[..., self.q_avail_col].clamp(min=0.0)
        out[..., self.q_avail_col] = q_avail
        q = torch.where(out_of_service, 0.0, action.clamp(-1.0, 1.0) * q_avail)
        return out + q[..., None] * self.q_coef.to(out.dtype)

    def with_actions(self, next_obs: torch.Tensor, action: torch.Tensor, new_action: torch.Tensor) -> torch.Tensor:
        """The next observation ``next_obs`` (reached with ``action``) as it would read, apart
        from its voltages, had the agents played ``new_action`` instead: the inverters' Q and
        the zone buses' net Q move by ``Δa·q_avail``. An agent whose inverters were out (their Q
        stayed 0 although ``a·q_avail`` was not) stays at 0."""
        a, b = action.clamp(-1.0, 1.0), new_action.clamp(-1.0, 1.0)
        q_avail = next_obs[..., self.q_avail_col]
        dq = torch.where(self.out_of_service(next_obs, action), 0.0, (b - a) * q_avail)
        return next_obs + dq[..., None] * self.q_coef.to(next_obs.dtype)


@dataclass(frozen=True)
class LocalReward:
    """The environment's local reward from its parts: ``−(voltage_weight·Σ_zone barrier(v) +
    loss_weight_per_mw·zone_loss_mw + q_weight_per_mvar·Σ|q_mvar|)`` (see
    :class:`~gridrl.env.core.VoltageControlEnv`), for rewards of imagined steps."""

    barrier: str
    v_min_pu: float
    v_max_pu: float
    voltage_weight: float
    loss_weight_per_mw: float
    q_weight_per_mvar: float

    @classmethod
    def from_env(cls, env) -> LocalReward:
        c = env.config
        return cls(barrier=c.barrier, v_min_pu=env.v_min_pu, v_max_pu=env.v_max_pu, voltage_weight=c.voltage_weight,
                   loss_weight_per_mw=c.loss_weight_per_mw, q_weight_per_mvar=c.q_weight_per_mvar)

    def voltage_cost(self, volts: torch.Tensor, monitored: torch.Tensor) -> torch.Tensor:
        """``[..., N]``: the barrier summed over each zone's monitored buses, from the voltage
        features ``[..., N, V]`` (``dv_pu``, one per zone bus) of the pad layout."""
        cost = barrier(1.0 + volts.to(torch.float64), self.barrier, v_min_pu=self.v_min_pu, v_max_pu=self.v_max_pu)
        return (cost * monitored.to(cost.dtype)).sum(-1).to(volts.dtype)

    def __call__(self, voltage_cost: torch.Tensor, zone_loss_mw: torch.Tensor, q_abs_mvar: torch.Tensor) -> torch.Tensor:
        return -(self.voltage_weight * voltage_cost + self.loss_weight_per_mw * zone_loss_mw
                 + self.q_weight_per_mvar * q_abs_mvar)


def sensitivity_probe(feeder, env_config, *, seed: int = 0):
    """An environment of ``feeder`` at a step where every inverter can give reactive power (a
    training day's 10:00, no outages, nominal load and PV, exact sensors), reset: where
    :func:`voltage_sensitivity` is measured."""
    import dataclasses

    from gridrl.env import make_env

    config = dataclasses.replace(env_config, start_hour=10.0, outage_prob=0.0, load_scale_range=None,
                                 pv_scale_range=None, sensor_noise_pu=0.0)
    env = make_env(feeder, split="train", num_envs=4, seed=seed, config=config)
    env.reset(seed=seed)
    return env


@torch.no_grad()
def voltage_sensitivity(env, roles: ObservationRoles, graph: Neighbourhood) -> torch.Tensor:
    """``[P, V]``: how much agent i's voltage features move per MVAr of reactive power of agent
    j, for every pair ``(receiver i, sender j)`` of ``graph`` — what a utility that knows its
    feeder's impedances can compute, restricted to what i may know (its κ-hop neighbours).

    Measured on ``env``'s pending step (:func:`sensitivity_probe`: a step where the inverters have
    reactive headroom; an agent that has none there keeps a zero prior) by the power flow itself: agent j's
    inverters at +q_avail and at −q_avail (``env.peek``), everyone else at 0, the change of the
    voltage features (:meth:`ObservationRoles.volts_from_buses`) over the change of j's reactive
    power, averaged over the scenarios where j can give reactive power. A secant over the whole
    action range, not a tangent: the model's prior for any action change.
    """
    N, B = env.n_agents, env.num_envs
    agent_of = env.inverter_agent
    full = torch.zeros(N, len(roles.volt_cols), N, dtype=torch.float64)
    for j in range(N):
        a = torch.zeros(B, N, dtype=torch.float64)
        a[:, j] = 1.0
        up, down = env.peek(a), env.peek(-a)
        dq = (up["q_mvar"] - down["q_mvar"])[:, agent_of == j].sum(1).double().cpu()     # [B]
        dv = (roles.volts_from_buses(up["vm_pu"].to(roles.zone_index.device))
              - roles.volts_from_buses(down["vm_pu"].to(roles.zone_index.device))).double().cpu()  # [B, N, V]
        ok = (up["converged"] & down["converged"]).cpu() & (dq.abs() > 1e-9)
        if ok.any():
            full[:, :, j] = (dv[ok] / dq[ok, None, None]).mean(0)
    return (full[graph.receiver, :, graph.sender] * roles.volt_valid.cpu()[graph.receiver]).to(torch.float32)


class DynamicsEnsemble(nn.Module):
    """``members`` localized dynamics models over the κ-hop neighbourhoods of ``graph``.

    Outputs per agent (``[..., N, V + 3 (+ E)]``, in physical units): the change of its voltage
    features from this observation to the next, its zone loss share (MW), its unweighted
    voltage cost and its local reward, for the step its action meets; with ``exogenous``, then
    the change of its exogenous inputs (:meth:`ObservationRoles.exogenous`), from a second
    network that reads only the current observations (see the module docstring).
    """

    OUTPUTS = ("zone_loss_mw", "voltage_cost", "reward")

    def __init__(self, roles: ObservationRoles, graph: Neighbourhood, *, obs_valid: torch.Tensor,
                 obs_keep: torch.Tensor, members: int = 5, hidden: int = 64, message_dim: int = 16,
                 embed_dim: int = 8, own_weights: bool = False, sensitivity: torch.Tensor | None = None,
                 actions_through_prior: bool = False, exogenous: bool = False):
        super().__init__()
        self.roles = roles
        self.graph = graph
        self.hops = graph.hops
        N = obs_valid.shape[0]
        nxt = roles.next_cols.cpu()  # roles may already live where the model will run
        self.in_dim = obs_valid.shape[1] + len(nxt) + 1
        self.n_volt = len(roles.volt_cols)
        self.obs_dim = obs_valid.shape[1]
        self.n_exo = len(roles.exo_cols) if exogenous else 0
        self.out_dim = self.n_volt + len(self.OUTPUTS) + self.n_exo
        self.message_dim = int(message_dim)
        # own_weights (decentralized training): every agent its own weights and input statistics
        self.input_norm = RunningNorm(self.in_dim, valid=torch.cat([obs_valid, obs_valid[:, nxt], torch.ones(N, 1, dtype=torch.bool)], 1),
                                      keep=torch.cat([obs_keep, obs_keep[nxt], torch.zeros(1, dtype=torch.bool)]),
                                      per_agent=own_weights)
        exo_valid = obs_valid[:, roles.exo_cols.cpu()] if exogenous else torch.ones(N, 0, dtype=torch.bool)
        self.register_buffer("out_valid", torch.cat([roles.volt_valid.cpu(), torch.ones(N, len(self.OUTPUTS), dtype=torch.bool),
                                                     exo_valid], 1))
        # targets are heavy-tailed (a voltage barrier far outside the band): clip only far out
        self.target_norm = RunningNorm(self.out_dim, valid=self.out_valid, per_agent=True, clip=100.0)
        self.net = NeighbourhoodNet(self.in_dim, graph, out_dim=self.out_dim - self.n_exo, hidden=hidden,
                                    message_dim=message_dim, embed_dim=embed_dim, members=int(members),
                                    own_weights=own_weights)
        # the exogenous inputs' network reads the current observations only
        self.exo_net = (NeighbourhoodNet(self.obs_dim, graph, out_dim=self.n_exo, hidden=hidden, message_dim=message_dim,
                                         embed_dim=embed_dim, members=int(members), own_weights=own_weights)
                        if exogenous else None)
        self.size = int(members)
        self.width = max(int(hidden), self.in_dim, self.out_dim)
        # the physics prior (voltage_sensitivity): the model learns the voltage change it leaves
        # (derived from the feeder, so not part of a checkpoint)
        self.register_buffer("sensitivity", None if sensitivity is None else sensitivity.to(torch.float32).clone(),
                             persistent=False)
        self.register_buffer("pair_receiver", graph.receiver.clone(), persistent=False)
        self.register_buffer("pair_sender", graph.sender.clone(), persistent=False)
        self._q_next = int((nxt == roles.q_col).nonzero()[0, 0]) + obs_valid.shape[1]
        # actions_through_prior: the networks never see what the action sets (the action, the
        # next step's inverter Q and zone net Q), so an action's effect is the prior's alone
        seen = torch.ones(self.in_dim)
        if actions_through_prior:
            set_by_action = (roles.q_coef.cpu() != 0).any(0)[nxt]
            seen[obs_valid.shape[1]:obs_valid.shape[1] + len(nxt)][set_by_action] = 0.0
            seen[-1] = 0.0
        self.register_buffer("input_seen", seen, persistent=False)

    # ---------------------------------------------------------------------------------------
    # data
    # ---------------------------------------------------------------------------------------
    def features(self, obs: torch.Tensor, next_obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Model inputs ``[..., N, in_dim]``: the observation, the next observation's non-physics
        columns (whose action part may be an imagined action's, see
        :meth:`ObservationRoles.with_actions`) and the clipped action."""
        return torch.cat([obs, next_obs.index_select(-1, self.roles.next_cols), action.clamp(-1.0, 1.0)[..., None]], -1)

    def prior(self, q_mvar: torch.Tensor, next_q_mvar: torch.Tensor) -> torch.Tensor | None:
        """The voltage change ``[..., N, V]`` the sensitivity prior expects from every agent's
        reactive power moving from ``q_mvar`` to ``next_q_mvar`` (``[..., N]``) within each
        κ-hop neighbourhood; ``None`` without a prior."""
        if self.sensitivity is None:
            return None
        dq = (next_q_mvar - q_mvar).index_select(-1, self.pair_sender)               # [..., P]
        contrib = dq[..., None] * self.sensitivity.to(dq.dtype)                       # [..., P, V]
        out = dq.new_zeros(*dq.shape[:-1], self.graph.n_agents, self.n_volt)
        return out.index_add_(-2, self.pair_receiver, contrib)

    def targets(self, obs: torch.Tensor, next_obs: torch.Tensor, zone_loss_mw: torch.Tensor,
                voltage_cost: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
        """Targets ``[..., N, out_dim]`` of real transitions (voltage changes less the prior's)."""
        r = self.roles
        dv = (r.volts(next_obs) - r.volts(obs)) * r.volt_valid.to(obs.dtype)
        prior = self.prior(obs[..., r.q_col], next_obs[..., r.q_col])
        if prior is not None:
            dv = dv - prior
        out = [dv, zone_loss_mw[..., None], voltage_cost[..., None], reward[..., None]]
        if self.exo_net is not None:
            out.append(r.exogenous(next_obs) - r.exogenous(obs))
        return torch.cat(out, -1).to(obs.dtype)

    @torch.no_grad()
    def observe(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        """Fold training transitions into the input and target statistics."""
        self.input_norm.update(features)
        self.target_norm.update(targets)

    # ---------------------------------------------------------------------------------------
    # prediction and loss
    # ---------------------------------------------------------------------------------------
    def chunk_rows(self) -> int:
        """Samples per chunk of a pass: its ``[K, N, samples, width]`` intermediates stay within
        :data:`CHUNK_FLOATS` (see "Memory" in the module docstring)."""
        return max(1, CHUNK_FLOATS // (self.size * self.graph.n_agents * self.width))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Every member's prediction ``[K, M, N, out_dim]`` in physical units, for one input
        ``[M, N, in_dim]`` shared by all members or one per member ``[K, M, N, in_dim]``
        (computed in chunks of samples)."""
        every = features.expand(self.size, *features.shape) if features.ndim == 3 else features
        parts = [self._net(self.input_norm(x) * self.input_seen) for x in every.split(self.chunk_rows(), 1)]
        return self.physical(parts[0] if len(parts) == 1 else torch.cat(parts, 1), features)

    def physical(self, out: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The networks' normalised outputs ``out [..., N, out_dim]`` in physical units, with the
        voltage change the prior expects from ``features`` (unnormalised, broadcast to ``out``)."""
        out = self.target_norm.inverse(out)
        prior = self.prior(features[..., self.roles.q_col], features[..., self._q_next])
        if prior is None:
            return out
        return torch.cat([out[..., :self.n_volt] + prior * self.roles.volt_valid.to(out.dtype), out[..., self.n_volt:]], -1)

    def _net(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised outputs of normalised features ``x``: the physics network's, then the
        exogenous network's on the current observations' columns."""
        out = self.net(x)
        if self.exo_net is None:
            return out
        return torch.cat([out, self.exo_net(x[..., :self.obs_dim])], -1)

    def next_exogenous(self, obs: torch.Tensor) -> torch.Tensor:
        """Every member's predicted next exogenous inputs ``[K, M, N, E]`` (as
        :meth:`ObservationRoles.exogenous` reads them) after observations ``obs [M, N, D]``:
        the exogenous network, which reads nothing of the next step (the features' next
        columns are placeholders here, and this pass's physics outputs are not used)."""
        out = self(self.features(obs, obs, obs.new_zeros(obs.shape[:-1])))
        return self.roles.exogenous(obs) + self.split(out)["exo"]

    def normalise(self, features: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and targets in the units the networks learn in (for :meth:`backward`'s
        ``normalised``)."""
        return self.input_norm(features) * self.input_seen, self.target_norm(targets)

    def backward(self, features: torch.Tensor, targets: torch.Tensor, *, normalised: bool = False) -> float:
        """Accumulate the gradient of the loss — mean squared error in normalised units over the
        outputs that exist, summed over the members — and return the loss; ``features [K, M, N,
        in_dim]`` and ``targets [K, M, N, out_dim]`` hold each member's own minibatch (already
        through :meth:`normalise` if ``normalised``). Computed chunk by chunk: the gradient of
        one pass, in bounded memory."""
        total = 0.0
        rows = self.chunk_rows()
        for x, y in zip(features.split(rows, 1), targets.split(rows, 1)):
            if not normalised:
                x, y = self.normalise(x, y)
            part = self._loss(x, y, features.shape[1])
            part.backward()
            total += float(part.detach())
        return total

    @torch.inference_mode()
    def loss(self, features: torch.Tensor, targets: torch.Tensor) -> float:
        """:meth:`backward`'s loss of normalised ``features`` and ``targets`` (each member's
        ``[K, M, N, …]``), without a gradient: chunk by chunk, in bounded memory."""
        rows = self.chunk_rows()
        return sum(float(self._loss(x, y, features.shape[1]))
                   for x, y in zip(features.split(rows, 1), targets.split(rows, 1)))

    def _loss(self, features: torch.Tensor, targets: torch.Tensor, samples: int) -> torch.Tensor:
        """The squared errors of normalised ``features``' samples against normalised
        ``targets``, summed and divided as for ``samples``."""
        pred = self._net(features)
        valid = self.out_valid.to(pred.dtype)
        err = (pred - targets) ** 2 * valid
        return err.sum() / (valid.sum() * samples)

    def split(self, out: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named parts of predictions ``[..., N, out_dim]``: ``dv`` ``[..., N, V]`` and one
        ``[..., N]`` tensor per entry of :attr:`OUTPUTS`."""
        parts = {"dv": out[..., :self.n_volt]}
        for c, name in enumerate(self.OUTPUTS):
            parts[name] = out[..., self.n_volt + c]
        if self.n_exo:
            parts["exo"] = out[..., self.out_dim - self.n_exo:]
        return parts
