"""The safety envelope: a learned policy never weaker than IEEE 1547-B droop at the band's edge.

A deployed policy acts through :class:`SafetyEnvelope`, a shield between the policy and the
environment with the controller protocol. Everything it uses is the agent's own observation of
the interval it acts on (no message, no model, no pending physics), so the guarantee is local and
holds whatever the rest of the feeder does. It lives beside the environment whose observations it
reads, so that learners (validation) and comparisons (deployment) wrap policies alike.

**The rule.** Let, for agent i at one step, ``v`` be its own measured bus voltage
(``1 + dv_pu[0]``, or ``1 + dv_own_pu`` in the pooled layout), ``q_avail`` its inverters'
available reactive power (``inv_q_avail_mvar``), ``s = sqrt(inv_p_mw² + q_avail²)`` its
inverters' apparent-power rating as they report it, and ``a_B(v) = clip(f_B(v)·s / q_avail, −1, 1)``
the action IEEE 1547-2018 Category B volt-var asks for at that voltage (``f_B``: +0.44 at
≤ 0.92 p.u., 0 from 0.98 to 1.02, −0.44 at ≥ 1.08, in fractions of ``s``: :data:`IEEE1547_B`,
the ``ieee1547-b`` preset of :mod:`gridrl.control.droop`). With the band ``[v_min, v_max]`` and the margin ``m``:

- if ``v ≥ v_max − m``, the action sent is ``≤ a_B(v)`` (it absorbs at least as much as 1547-B);
- if ``v ≤ v_min + m_low``, the action sent is ``≥ a_L(v)`` (it injects at least as much);
- otherwise the policy's action passes unchanged;

where ``m_low`` is ``margin_low_pu`` (``m`` unless set: the lower edge region may be wider than
the upper) and ``a_L(v) = max(a_B(v), min(1, k·(v_min + m_low − v)))`` with ``k = low_slope``
(per p.u., 0 by default: ``a_L = a_B``). 1547-B's curve is flat near the band: at 0.96 p.u. it asks
for 0.15 of the rating, so a sag at the end of a long lateral sees little forced injection;
with ``k > 0`` the floor rises linearly from nothing at ``v_min + m_low`` to all the headroom
``1/k`` p.u. below it (``k = 50``, ``m_low = 0.02``: all of it at ``v_min``), and never below 1547-B's.

where ``q_avail > 0`` (with no headroom every action gives q = 0). Two mechanisms give it:

- ``clamp`` (a shield): in the two edge regions the policy's action is clipped to the corrective
  side of ``a_B(v)``; inside, nothing changes. Discontinuous in ``v`` at the region's border.
- ``ramp`` (a residual on the droop curve that fades in): the part of the policy's action on the
  wrong side of ``a_B(v)`` (``a_L(v)`` below) is removed with a weight rising linearly from 0 at
  ``v_max − 2m`` to 1 at ``v_max − m`` (and from ``v_min + 2m_low`` down to ``v_min + m_low``), so the action is
  continuous in the measured voltage (a noisy sensor does not make it jump) and the rule above
  holds exactly in the edge regions.

**Hand-over.** A policy also knows when it is outside what it was trained on: given the
training statistics of its observations, per agent and feature (``[N, D]``: what *that* agent
saw in training), an agent whose own real features lie more than ``handover_z`` standard
deviations from their training mean acts as 1547-B droop (``a_B(v)``) at that step instead.
Statistics pooled over agents (``[D]``, ``handover_statistics = "pooled"``, the ablation) mix
agents whose zones differ by nature: a large zone load is then "unseen" for the one agent that
always carries it, and its hand-over fires on ordinary days.

**The hand-over settles** (``handover_settle``, on by default). An agent handed over acts as
1547-B droop, and a 1547-B inverter keeps reading its own voltage during the interval and settles
on it (what the ``droop`` controller models with a fixed point on the interval's physics). Set once
at the voltage measured at the interval's start, the curve is a one-step-late feedback loop whose
gain grows with the inverter's rating: with twice the PV on ieee33 the handed-over agents
alternated between absorbing hard and nothing from step to step (controllable rate 0.78 where the
settled 1547-B keeps 0.955, validation days). So where the environment is at hand
(:meth:`SafetyEnvelope.act` with ``env``), the handed-over agents' actions are settled as droop's
are, by a damped fixed point on the pending interval's physics (``env.peek``; their own voltage
read with the observations' sensor noise), the other agents' actions held; the policy itself never
reads the pending interval. Without ``env`` (an exported graph) the hand-over is the curve at the
measured voltage, the fixed point's first iterate, and a deployed inverter's own volt-var function
settles it.

**The edge rule settles** (``edge_settle``, on by default). The rule above reads the voltage measured at the
interval's start, with the previous set-point in force, while a 1547-B inverter keeps reading its
own voltage during the interval. A policy's action is a set-point for the interval; the inverter's
own volt-var function can still hold the rule as a limit on it while the interval runs, on the
voltage it measures then, as a deployed inverter's does. With ``edge_settle`` the envelope models
that where the environment is at hand: the action sent is the rule applied to the policy's action
at the agent's own voltage *during* the interval (read with the observations' sensor noise),
settled by the same damped fixed point on the pending interval's physics as the hand-over (the
policy's actions held), and an agent that is in an edge region at the interval's start, or
reaches one while the rule settles, stays under the rule for the interval (so the limit does not
chatter at the region's border). Nothing the policy reads changes. Without ``env`` (an exported
graph) the rule holds at the measured voltage, and the inverter's own volt-var function holds it
during the interval.

**Outside the trained ratings** (``rating_handover``, on by default; ``rating_tolerance``). The
statistics above cannot see every way a feeder leaves what a policy was trained on: with twice the
PV (and inverters rated for it) each feature still lies within a few standard deviations of its
broad training distribution (an inverter's headroom swings from 0 at night to its rating at
dawn), while every action, a share of the headroom, moves twice the reactive power. An inverter
knows its own rating, and the training config says which ratings the policy saw: the feeder's
own times the training's PV scale (``pv_scale`` and ``pv_scale_range``, whose draws scale the
ratings with the PV). An agent whose inverters report a rating ``s > 0`` (``s`` as above) outside
``[(1 − t)·s_low, (1 + t)·s_high]`` (``t`` the tolerance, ``s_low``/``s_high`` its trained ratings)
acts as 1547-B droop at that step; at ``s = 0`` (night, or an inverter out) every action is q = 0
anyway and it never does.

**Holding the edge** (``hold_pu``, 0 by default: off). The envelope reads the own voltage with
the set-point of the previous step still in force, so an agent that the edge region made absorb
measures a voltage its own absorption has lowered, finds itself inside, lets go, and the voltage
springs back out of the band at the next step (on ieee141, with every message lost, agents
alternated between 1.05 and 1.036 p.u. from step to step where 1547-B settled near 1.042). With
``hold_pu = h > 0`` the edge regions have a hysteresis: an agent that was in the upper region at
its previous step stays in it while ``v ≥ v_max − m − h`` (the lower: ``v ≤ v_min + m_low + h``), and
leaves it only below that; in it the rule above holds against ``a_B`` at its current voltage. The
envelope then keeps each agent's region of the previous step (:meth:`SafetyEnvelope.reset` forgets
it), which no exported graph does.

**No more than 1547-B at the edge, within a slack** (``excess_max``, ``None`` by default: no
limit). In an edge region the rule lets the policy absorb (inject) as much as it likes beyond
1547-B's action; a policy trained to stay clear of the band's edge then absorbs hard wherever
the voltage is high, and the reactive power it draws through the feeder costs loss (on ieee141
with 50 % more PV, more than 1547-B's). With ``excess_max = k`` the action sent in the upper edge
region is also ``≥ a_B(v) − k`` (in the lower ``≤ a_L(v) + k``): at most ``k`` of the headroom
more corrective than 1547-B. ``excess_max_low`` sets the lower region's slack apart (``None``: the
same ``k``; 2, the whole action range: no limit there): on a feeder whose sags need more injection
than 1547-B's flat curve asks, the cap need only bind where absorbing costs loss.

**A neighbour out** (``neighbour_outage``, off by default). An inverter that has tripped altogether
reports no active power and no headroom (``inv_p_mw`` and ``inv_q_avail_mvar`` both 0, as at
night). An agent whose own PV produces (``inv_p_mw > 0``) while a neighbour's message reports that,
acts as 1547-B droop at that step: the sun that reaches it reaches the neighbour too, so the
neighbour's inverter is out, and the policy's learned picture of the zone next door assumes an
inverter that is not there. A message that does not arrive tells nothing. The environment's
outages (``outage_prob``, ``outage_agents``) are of the other kind: the inverter's reactive power
stays at 0 while its PV still produces, which this rule does not see (it fires where a neighbour's
own PV profile has no sun yet: 6.6 % of agent-steps on ieee33 without any outage); the outage
alerts below do.

**An inverter out nearby** (``outage_alert_hops = k``, 3 by default, chosen on ieee33's validation
days; 0: off). A policy learns to leave
the work near the top of the band to the inverters that usually do it: on ieee33 with the inverter
at the end of the longest lateral (bus18) out, the others stay free between 1.02 and 1.04 p.u. where
1547-B already absorbs, and the end of the lateral leaves the band more often than under 1547-B.
An agent knows when its own inverters do not follow its set-point: the reactive power it measures
at the start of an interval (``inv_q_mvar``, the previous set-point in force) is less than half of
what that set-point asks of its headroom (``a_prev · inv_q_avail_mvar``, at least 2 % of its
rating). It then raises an alert for the rest of the episode (an inverter that tripped stays out
until someone resets it) and its messages carry it: each step, an agent hears the alert levels of
the neighbours whose messages arrive and takes the highest less one (the agent that is out starts at
``k + 1``), so an alert reaches the agents up to ``k`` hops away in ``k`` steps and fades when its
source is silent. An alerted agent's upper edge region widens to ``v ≥ v_max − outage_margin_pu``
(0.03 by default: from 1.02 p.u. on a band of 1.05, where 1547-B starts to absorb), so near the top
of the band it is never weaker than 1547-B while an inverter nearby is out. The envelope keeps the
previous actions and alert levels (:meth:`SafetyEnvelope.reset` forgets them), which no exported
graph does.

**No injection near the top** (``inject_stop_pu = v_stop``, ``None`` by default: off). An agent whose
own voltage is ``v_stop`` or more injects nothing (the action sent is at most 0), and over the
0.01 p.u. below ``v_stop`` at most a share of its headroom falling linearly from 1 to 0
(:func:`inject_ceiling`); absorbing is never capped, so the edge rule holds as stated. Measured on
ieee33's outage of bus18 (validation days) it moved the rate by under 0.002 at 1.02–1.035 p.u.:
the policies' daytime injection was not what an outage exposed.

**No loss spent where 1547-B rests** (``loss_guard``; ``off`` by default, ``unseen`` by default
for a transferable policy deployed on a feeder outside its training set: see
:func:`gridrl.marl.run.deployed`). A guarded agent
whose zone's measured voltages all lie in 1547-B's deadband (0.98 ≤ v ≤ 1.02 p.u., where
1547-B and no control send nothing) keeps the policy's action on the side of 0 that does not
raise the feeder's losses at its bus: ``a ≤ 0`` where injecting raises them, ``a ≥ 0`` where
absorbing does, by the sign of its ``d loss_mw / d q_mvar`` at the feeder's mean daytime
operating point of its training days (:func:`gridrl.grid.sensitivity.agent_loss_sensitivity`:
the network model and the feeder's usual loading, no validation or test day). ``all`` guards
every agent; ``unseen`` only the agents whose sensitivity lies outside the range of the
sensitivities of every agent of the feeders the policy trained on (:func:`unseen_sensitivity`):
a policy carried to a feeder where reactive power costs loss in a way none of its training
feeders showed (injecting raises the losses, where on every training feeder it lowered them)
then sends nothing there rather than the way its training rewarded, and acts freely wherever
the physics is one it learned. Applied before the edge-region rule, so that rule holds exactly
as stated.

**Smoothing the whole action** (``smoothing = α``, 1 by default: off). An agent acts on the
voltage its own previous set-point shaped, read with its sensor's noise, and a learned policy
changes its action from interval to interval 2.4–3.6 times as much as the settled droop. With
``α < 1`` the policy's action moves only that share of the way from the agent's reactive power now
(``inv_q_mvar / inv_q_avail_mvar``, the set-point still in force, clipped to [−1, 1]; 0 without
headroom) towards what the policy asks: ``a = a_now + α·(a_policy − a_now)``, a first-order filter
as an inverter's response time is (:func:`damped_action`, the rule a residual's damped base uses).
Applied first, before the loss guard, the hand-over and the edge-region rule, so that rule holds
exactly as stated on the action sent; a handed-over agent acts as 1547-B, unsmoothed.

``last_info["handover"]`` and ``last_info["envelope"]`` count, per scenario, the agents handed
over and the agents whose action the envelope changed at the latest step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch

from gridrl.env.fixed_point import FixedPointOptions, damped_fixed_point
from gridrl.errors import GridrlError

__all__ = ["LOSS_GUARDS", "OUTAGE_ALERT_HOPS", "EnvelopeConfig", "EnvelopeError", "IEEE1547_B", "MECHANISMS",
           "SafetyEnvelope", "damped_action", "droop_b_action", "droop_curve_action", "edge_regions", "envelope_bounds",
           "handover", "inject_ceiling", "loss_guard",
           "low_floor", "own_columns", "rating_outside", "shield", "unseen_sensitivity"]

Mechanism = Literal["clamp", "ramp", "off"]
MECHANISMS = ("clamp", "ramp", "off")
LossGuard = Literal["off", "unseen", "all"]
LOSS_GUARDS = ("off", "unseen", "all")
#: IEEE 1547-2018 Category B default volt-var: (voltage breakpoints p.u., Q in fractions of the
#: apparent-power rating, positive injects)
IEEE1547_B = ((0.92, 0.98, 1.02, 1.08), (0.44, 0.0, 0.0, -0.44))
#: the outage alerts' reach (hops on the agent graph) where the settings leave it to the envelope
OUTAGE_ALERT_HOPS = 3
#: the width (p.u.) of the ramp below ``inject_stop_pu`` over which the injection cap falls to 0
INJECT_TAPER_PU = 0.01


class EnvelopeError(GridrlError, ValueError):
    """Envelope settings that cannot be used, or a policy whose observations it cannot read."""


@dataclass(frozen=True, kw_only=True)
class EnvelopeConfig:
    """Settings of the safety envelope around a trained policy.

    mechanism: ``clamp`` (default), ``ramp`` or ``off`` (the ablation: the policy acts alone).
    margin_pu: ``m``: the edge regions are ``v ≥ v_max − m`` and ``v ≤ v_min + m``.
    margin_low_pu: ``m_low``, the lower edge region's margin instead (``None``: ``m``).
    low_slope: ``k`` (per p.u.): in the lower edge region the action sent is at least
        ``min(1, k·(v_min + m_low − v))`` as well as 1547-B's (0: 1547-B's alone; see the module docstring).
    handover_z: hand an agent over to 1547-B droop when one of its own features lies more than
        this many training standard deviations from the training mean (0 or ``None``: never).
    handover_statistics: ``own`` (default): each agent's own training statistics; ``pooled``:
        the statistics pooled over agents (the policy's normaliser when it shares weights; the
        ablation, and what runs trained before per-agent statistics were kept fall back to).
    neighbour_outage: an agent whose neighbour reports its inverters out acts as 1547-B droop
        (see the module docstring).
    hold_pu: ``h``: an agent in an edge region at its previous step stays in it until its voltage
        is more than ``m + h`` inside the band (0: no hold; see the module docstring).
    excess_max: in an edge region the action sent is at most this much (a fraction of the
        headroom) more corrective than 1547-B's (``None``: no limit; see the module docstring).
    excess_max_low: the same in the lower edge region alone (``None``: ``excess_max``).
    inject_stop_pu: ``v_stop``: an agent whose own voltage is ``v_stop`` or more injects nothing, and
        from ``v_stop − 0.01`` up its injection is capped by a ramp falling from all of its headroom
        to none (``None``: no cap; see the module docstring).
    outage_alert_hops: ``k``: an agent whose inverters do not follow its set-point alerts the agents
        up to ``k`` hops away on the agent graph, whose upper edge region widens to
        ``outage_margin_pu`` (0: no alerts; see the module docstring). ``None`` (the default):
        :data:`OUTAGE_ALERT_HOPS` where the envelope has the agent graph and the agents measure their
        reactive power (every trained policy), else none.
    outage_margin_pu: the upper edge region's margin for an alerted agent.
    loss_guard: ``off``, ``unseen`` or ``all``: which agents, when their zone lies in 1547-B's
        deadband, never send reactive power of the sign that raises the feeder's losses at their
        bus (see the module docstring); left out, :func:`gridrl.marl.run.deployed` makes it
        ``unseen`` on a feeder the policy did not train on.
    handover_settle: a handed-over agent settles on its own voltage during the interval, as 1547-B
        droop does, where the environment is given to :meth:`SafetyEnvelope.act` (see the module
        docstring); ``false``: the curve at the voltage measured at the interval's start.
    edge_settle: the edge-region rule holds on the agent's own voltage during the interval too,
        settled as 1547-B's curve is, where the environment is given to :meth:`SafetyEnvelope.act`
        (see the module docstring; on by default); ``false``: on the voltage measured at the
        interval's start only.
    rating_handover: hand an agent over to 1547-B droop while its inverters' rating lies more than
        ``rating_tolerance`` outside the ratings the policy was trained with (see the module
        docstring); ``false``: never.
    rating_tolerance: that margin, a fraction of the trained ratings.
    smoothing: ``α`` in (0, 1]: the action moves that share of the way from the agent's reactive
        power now towards the policy's (1: the policy's action as it is; see the module docstring).
    """

    mechanism: Mechanism = "clamp"
    margin_pu: float = 0.01
    margin_low_pu: float | None = None
    low_slope: float = 0.0
    handover_z: float | None = 6.0
    handover_statistics: Literal["own", "pooled"] = "own"
    neighbour_outage: bool = False
    hold_pu: float = 0.0
    excess_max: float | None = None
    excess_max_low: float | None = None
    inject_stop_pu: float | None = None
    outage_alert_hops: int | None = None
    outage_margin_pu: float = 0.03
    loss_guard: LossGuard = "off"
    handover_settle: bool = True
    edge_settle: bool = True
    rating_handover: bool = True
    rating_tolerance: float = 0.05
    smoothing: float = 1.0

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise EnvelopeError(f"envelope mechanism {self.mechanism!r} is unknown (use {', '.join(MECHANISMS)})")
        if not 0 <= self.margin_pu < 0.1:
            raise EnvelopeError(f"envelope margin_pu must lie in [0, 0.1), got {self.margin_pu}")
        if self.margin_low_pu is not None and not 0 <= self.margin_low_pu < 0.1:
            raise EnvelopeError(f"envelope margin_low_pu must lie in [0, 0.1) (or be left out: margin_pu), got "
                                f"{self.margin_low_pu}")
        if not 0 <= self.low_slope <= 1000:
            raise EnvelopeError(f"envelope low_slope must lie in [0, 1000] (per p.u.; 0: 1547-B alone), got "
                                f"{self.low_slope}")
        if not 0 <= self.hold_pu < 0.1:
            raise EnvelopeError(f"envelope hold_pu must lie in [0, 0.1), got {self.hold_pu}")
        for name in ("excess_max", "excess_max_low"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 2:
                raise EnvelopeError(f"envelope {name} must lie in [0, 2] (a fraction of the headroom), got {value}")
        if self.outage_alert_hops is not None and not (isinstance(self.outage_alert_hops, int)
                                                       and 0 <= self.outage_alert_hops <= 16):
            raise EnvelopeError(f"envelope outage_alert_hops must be a whole number in [0, 16] (0: no alerts), got "
                                f"{self.outage_alert_hops!r}")
        if not 0 <= self.outage_margin_pu < 0.1:
            raise EnvelopeError(f"envelope outage_margin_pu must lie in [0, 0.1), got {self.outage_margin_pu}")
        if self.inject_stop_pu is not None and not 0.9 < self.inject_stop_pu < 1.1:
            raise EnvelopeError(f"envelope inject_stop_pu must lie in (0.9, 1.1) p.u., got {self.inject_stop_pu}")
        if not 0 <= self.rating_tolerance < 1:
            raise EnvelopeError(f"envelope rating_tolerance must lie in [0, 1) (a fraction of the trained ratings), "
                                f"got {self.rating_tolerance}")
        if not 0 < self.smoothing <= 1:
            raise EnvelopeError(f"envelope smoothing must lie in (0, 1] (1: no smoothing), got {self.smoothing}")
        if self.handover_z is not None and not self.handover_z >= 0:
            raise EnvelopeError(f"envelope handover_z must be ≥ 0 (0: no hand-over), got {self.handover_z}")
        if self.loss_guard not in LOSS_GUARDS:
            raise EnvelopeError(f"envelope loss_guard {self.loss_guard!r} is unknown (use {', '.join(LOSS_GUARDS)})")
        if self.handover_statistics not in ("own", "pooled"):
            raise EnvelopeError(f"envelope handover_statistics {self.handover_statistics!r} is unknown (use own or pooled)")

    @property
    def low_excess(self) -> float | None:
        """The lower edge region's slack: ``excess_max_low``, ``excess_max`` unless set."""
        return self.excess_max if self.excess_max_low is None else self.excess_max_low

    @property
    def low_margin_pu(self) -> float:
        """``m_low``: the lower edge region's margin."""
        return self.margin_pu if self.margin_low_pu is None else self.margin_low_pu

    @property
    def label(self) -> str:
        """Short description for result tables."""
        return self.label_with()

    def label_with(self, guarded: tuple[int, int] | None = None) -> str:
        """:attr:`label`, with ``guarded``: ``(agents the loss guard holds, agents)`` named in it."""
        if self.mechanism == "off":
            base = "no envelope"
        else:
            base = (f"envelope {self.mechanism} (m {self.margin_pu:g}"
                    + (f", low m {self.margin_low_pu:g}" if self.margin_low_pu is not None else "")
                    + (f", low slope {self.low_slope:g}" if self.low_slope else "")
                    + (f", hold {self.hold_pu:g}" if self.hold_pu else "")
                    + (f", excess ≤ {self.excess_max:g}" if self.excess_max is not None else "")
                    + (f", low excess ≤ {self.excess_max_low:g}" if self.excess_max_low is not None else "")
                    + (f", no injection from {self.inject_stop_pu:g}" if self.inject_stop_pu is not None else "") + ")")
        pooled = " (pooled statistics)" if self.handover_statistics == "pooled" else ""
        triggers = [f"{self.handover_z:g}σ{pooled}"] if self.handover_z else []
        if self.rating_handover:
            triggers.append(f"a rating beyond the trained ±{100 * self.rating_tolerance:g} %")
        to = " to 1547-B settled" if self.handover_settle else " to 1547-B at the measured voltage"
        if self.edge_settle and self.mechanism != "off":
            base += ", edge rule settled"
        return (base + (f", hand-over at {' or '.join(triggers)}{to}" if triggers else "")
                + (", 1547-B beside a neighbour out" if self.neighbour_outage else "")
                + (f", upper margin {self.outage_margin_pu:g} within {self.outage_alert_hops} hops of an inverter out"
                   if self.outage_alert_hops else "")
                + (f", loss guard ({self.loss_guard} agents{f': {guarded[0]} of {guarded[1]}' if guarded else ''})"
                   if self.loss_guard != "off" else "")
                + (f", action smoothed {self.smoothing:g}" if self.smoothing < 1 else ""))


def damped_action(a: torch.Tensor, q_mvar: torch.Tensor, q_avail_mvar: torch.Tensor, alpha: float) -> torch.Tensor:
    """``a_now + α·(a − a_now)`` ``[..., N]``: the action ``a`` moved only the share ``alpha`` of the
    way from the agent's action now, ``a_now = clip(q_mvar / q_avail_mvar, −1, 1)`` (its reactive
    power in force as a share of its headroom; 0 without headroom). Pure tensor arithmetic."""
    now = torch.where(q_avail_mvar > 0, q_mvar / q_avail_mvar.clamp(min=1e-12), torch.zeros_like(q_mvar))
    now = now.clamp(-1.0, 1.0)
    return now + alpha * (a - now)


def droop_b_action(vm_pu: torch.Tensor, p_mw: torch.Tensor, q_avail_mvar: torch.Tensor) -> torch.Tensor:
    """``a_B(v)``: the action 1547-B asks for at own voltage ``vm_pu`` (all ``[B, N]``, one dtype)."""
    return droop_curve_action(vm_pu, p_mw, q_avail_mvar, IEEE1547_B)


def droop_curve_action(vm_pu: torch.Tensor, p_mw: torch.Tensor, q_avail_mvar: torch.Tensor,
                       curve: tuple[Sequence[float], Sequence[float]], *, of_q_avail: bool = False) -> torch.Tensor:
    """The action a volt-var ``curve`` (``(v_pu breakpoints, q fractions)``, flat beyond its ends)
    asks for at own voltage ``vm_pu`` once, from the agent's own measurements (all ``[..., N]``,
    one dtype): ``q`` in fractions of the apparent-power rating ``s = sqrt(p² + q_avail²)`` as
    the inverters report it (``of_q_avail``: of the available reactive power itself), as a share
    of ``q_avail``, in [-1, 1]; 0 without headroom. Pure tensor arithmetic (exportable)."""
    v_tab = torch.tensor(curve[0], dtype=vm_pu.dtype, device=vm_pu.device)
    q_tab = torch.tensor(curve[1], dtype=vm_pu.dtype, device=vm_pu.device)
    width = v_tab[1:] - v_tab[:-1]
    slope = (q_tab[1:] - q_tab[:-1]) / width
    into = torch.minimum(torch.clamp(vm_pu[..., None] - v_tab[:-1], min=0.0), width)
    frac = q_tab[0] + (slope * into).sum(-1)
    if of_q_avail:
        return torch.where(q_avail_mvar > 0, frac, torch.zeros_like(frac)).clamp(-1.0, 1.0)
    s = torch.sqrt(p_mw ** 2 + q_avail_mvar ** 2)
    a = torch.where(q_avail_mvar > 0, frac * s / q_avail_mvar.clamp(min=1e-12), torch.zeros_like(frac))
    return a.clamp(-1.0, 1.0)


def own_columns(obs_names: Sequence[str], who: str) -> tuple[int, int, int]:
    """Observation columns of an agent's own voltage deviation (``dv_pu[0]``, or ``dv_own_pu``
    in the pooled layout), ``inv_p_mw`` and ``inv_q_avail_mvar``: what a local rule reads
    (``who`` names the reader in the error)."""
    names = list(obs_names)
    own = "dv_pu[0]" if "dv_pu[0]" in names else "dv_own_pu"
    missing = [n for n in (own, "inv_p_mw", "inv_q_avail_mvar") if n not in names]
    if missing:
        raise EnvelopeError(f"{who} reads {', '.join(missing)} from the observation, which it does not have")
    return names.index(own), names.index("inv_p_mw"), names.index("inv_q_avail_mvar")


def envelope_bounds(vm_pu: torch.Tensor, p_mw: torch.Tensor, q_avail_mvar: torch.Tensor, *,
                    v_min_pu: float, v_max_pu: float, margin_pu: float, margin_low_pu: float | None = None,
                    a_b: torch.Tensor | None = None, a_low: torch.Tensor | None = None,
                    held: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule as bounds ``(low, high)`` ``[B, N]`` on the action sent: ``high = a_B(v)`` in the
    upper edge region, ``low = a_L(v)`` in the lower one, ``±1`` elsewhere (``a_b``: ``a_B(v)``
    when the caller has it already; ``a_low``: ``a_L(v)``, ``a_B(v)`` unless given;
    ``margin_low_pu``: the lower region's margin, ``margin_pu`` unless given; ``held``:
    ``(upper, lower)`` ``[B, N]`` bool, agents the hold keeps in a region besides those the voltage puts there)."""
    if a_b is None:
        a_b = droop_b_action(vm_pu, p_mw, q_avail_mvar)
    a_low = a_b if a_low is None else a_low
    upper, lower = edge_regions(vm_pu, v_min_pu=v_min_pu, v_max_pu=v_max_pu, margin_pu=margin_pu,
                                margin_low_pu=margin_low_pu, held=held)
    live = q_avail_mvar > 0
    high = torch.where(live & upper, a_b, torch.ones_like(a_b))
    low = torch.where(live & lower, a_low, -torch.ones_like(a_b))
    return low, high


def low_floor(a_b: torch.Tensor, vm_pu: torch.Tensor, *, v_min_pu: float, config: EnvelopeConfig) -> torch.Tensor:
    """``a_L(v) = max(a_B(v), min(1, k·(v_min + m_low − v)))`` ``[..., N]``: the least the lower
    edge region lets an agent inject (``a_b``: ``a_B(v)``; ``a_b`` itself when ``low_slope`` is 0)."""
    if not config.low_slope:
        return a_b
    return torch.maximum(a_b, (config.low_slope * (v_min_pu + config.low_margin_pu - vm_pu)).clamp(0.0, 1.0))


def edge_regions(vm_pu: torch.Tensor, *, v_min_pu: float, v_max_pu: float, margin_pu: float,
                 margin_low_pu: float | None = None, held: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(upper, lower)`` ``[B, N]`` bool: agents in the upper edge region (``v ≥ v_max − m``, or
    held there) and in the lower one (``v ≤ v_min + m_low``, ``m_low = margin_low_pu``, ``m``
    unless given, or held there)."""
    m_low = margin_pu if margin_low_pu is None else margin_low_pu
    upper, lower = vm_pu >= v_max_pu - margin_pu, vm_pu <= v_min_pu + m_low
    if held is not None:
        upper, lower = upper | held[0], lower | held[1]
    return upper, lower


def inject_ceiling(vm_pu: torch.Tensor, stop_pu: float, width_pu: float = INJECT_TAPER_PU) -> torch.Tensor:
    """``[..., N]``: the most an agent at own voltage ``vm_pu`` may inject under ``inject_stop_pu``:
    all of its headroom (1) up to ``stop_pu − width_pu``, falling linearly to 0 at ``stop_pu`` and
    beyond (absorbing is never capped)."""
    return ((stop_pu - vm_pu) / width_pu).clamp(0.0, 1.0)


def handover(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, test: torch.Tensor, z: float) -> torch.Tensor:
    """``[..., N]`` bool: agents with a tested feature (``test [N, D]``) of their own observation
    ``x [..., N, D]`` more than ``z`` standard deviations ``std [D]`` from the mean ``mean [D]``."""
    dist = ((x - mean) / std).abs()
    return (torch.where(test, dist, torch.zeros_like(dist)) > z).any(-1)


def loss_guard(a: torch.Tensor, v_low: torch.Tensor, v_high: torch.Tensor, loss_sensitivity: torch.Tensor
               ) -> torch.Tensor:
    """The action ``a [..., N]`` with, where the zone's lowest and highest measured voltages
    ``v_low``, ``v_high`` lie in 1547-B's deadband, the sign that raises the losses
    (``loss_sensitivity [N]``: ``d loss_mw / d q_mvar``, positive: injecting raises them) set to
    0 (see the module docstring)."""
    dead = (v_low >= IEEE1547_B[0][1]) & (v_high <= IEEE1547_B[0][2])
    s = loss_sensitivity.to(a.dtype)
    guarded = torch.where(s > 0, a.clamp(max=0.0), torch.where(s < 0, a.clamp(min=0.0), a))
    return torch.where(dead, guarded, a)


def unseen_sensitivity(sensitivity, trained) -> np.ndarray:
    """``sensitivity [N]`` where it lies outside ``[min, max]`` of ``trained`` (the sensitivities
    of every agent of the feeders a policy trained on), 0 elsewhere: the agents ``unseen`` guards."""
    s, t = np.asarray(sensitivity, dtype=np.float64), np.asarray(trained, dtype=np.float64)
    return np.where((s < t.min()) | (s > t.max()), s, 0.0)


def rating_outside(p: torch.Tensor, q_avail: torch.Tensor, low_mva: torch.Tensor, high_mva: torch.Tensor
                   ) -> torch.Tensor:
    """``[..., N]`` bool: agents whose inverters report a rating ``s = sqrt(p² + q_avail²) > 0``
    outside ``[low_mva, high_mva]`` (``[N]``, the trained ratings with their tolerance)."""
    s = torch.sqrt(p ** 2 + q_avail ** 2)
    return (s > 0) & ((s > high_mva) | (s < low_mva))


def shield(a: torch.Tensor, v: torch.Tensor, p: torch.Tensor, qa: torch.Tensor, handed: torch.Tensor, *,
           v_min_pu: float, v_max_pu: float, config: EnvelopeConfig, a_b: torch.Tensor | None = None,
           held: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The action sent for the policy's action ``a``: 1547-B droop where ``handed``, then the
    envelope's mechanism at own voltage ``v``, active power ``p`` and available reactive power
    ``qa`` (all ``[..., N]``, one dtype; see the module docstring). Pure tensor arithmetic
    without data-dependent branches, so an exported graph computes it exactly as here (``a_b``:
    1547-B's action ``a_B(v)`` when the caller has it already; ``held``: ``(upper, lower)``
    agents the hold keeps in an edge region, see :meth:`SafetyEnvelope.held`)."""
    if a_b is None:
        a_b = droop_b_action(v, p, qa)
    a = torch.where(handed, a_b, a)
    a_low = low_floor(a_b, v, v_min_pu=v_min_pu, config=config)
    if config.mechanism == "clamp":
        low, high = envelope_bounds(v, p, qa, v_min_pu=v_min_pu, v_max_pu=v_max_pu, margin_pu=config.margin_pu,
                                    margin_low_pu=config.low_margin_pu, a_b=a_b, a_low=a_low, held=held)
        a = torch.minimum(torch.maximum(a, low), high)
    elif config.mechanism == "ramp":
        m, m_low = max(config.margin_pu, 1e-6), max(config.low_margin_pu, 1e-6)
        w_hi = ((v - (v_max_pu - 2 * m)) / m).clamp(0.0, 1.0)
        w_lo = (((v_min_pu + 2 * m_low) - v) / m_low).clamp(0.0, 1.0)
        if held is not None:  # held in a region: the whole rule, as at its edge
            w_hi, w_lo = torch.where(held[0], 1.0, w_hi), torch.where(held[1], 1.0, w_lo)
        live = qa > 0
        zero = torch.zeros_like(a)
        a = a - torch.where(live, w_hi * (a - a_b).clamp(min=0.0), zero)
        a = a + torch.where(live, w_lo * (a_low - a).clamp(min=0.0), zero)
    if config.mechanism != "off" and (config.excess_max is not None or config.low_excess is not None):
        upper, lower = edge_regions(v, v_min_pu=v_min_pu, v_max_pu=v_max_pu, margin_pu=config.margin_pu,
                                    margin_low_pu=config.low_margin_pu, held=held)
        live = qa > 0
        if config.excess_max is not None:
            a = torch.where(live & upper, torch.maximum(a, a_b - config.excess_max), a)
        if config.low_excess is not None:
            a = torch.where(live & lower, torch.minimum(a, a_low + config.low_excess), a)
    if config.mechanism != "off" and config.inject_stop_pu is not None:
        a = torch.minimum(a, inject_ceiling(v, config.inject_stop_pu))
    return a


class SafetyEnvelope:
    """A controller (a trained policy) acting through the safety envelope (see the module docstring).

    inner: the wrapped controller: ``act(obs, …) -> [B, N]``, ``name``, ``hops``,
        ``communication``, ``obs_names``.
    v_min_pu, v_max_pu: the band (the feeder's).
    config: :class:`EnvelopeConfig`.
    obs_mean, obs_std: training statistics of the observation features (for the hand-over):
        ``[N, D]`` each agent's own, or ``[D]`` pooled over agents;
    obs_valid: ``[N, D]`` which entries are real measurements (padding is never tested);
    obs_test: ``[D]`` which features the hand-over tests (default: voltages, P, Q and inverter
        features; not masks or the time of day).
    neighbours: ``[N, N]`` bool, ``[i, j]``: j is i's neighbour on the agent graph (for
        ``neighbour_outage``; default: the inner controller's ``graph``, one hop).
    loss_sensitivity: ``[N]`` ``d loss_mw / d q_mvar`` of each agent the loss guard holds, 0 for
        an agent it leaves free (for ``loss_guard``; see
        :func:`gridrl.grid.sensitivity.agent_loss_sensitivity` and :func:`unseen_sensitivity`).
    ratings_mva: ``[N, 2]``: each agent's lowest and highest trained rating of its inverters (for
        ``rating_handover``; ``None``: no such hand-over).
    """

    def __init__(self, inner, *, v_min_pu: float, v_max_pu: float, config: EnvelopeConfig = EnvelopeConfig(),
                 obs_mean: Sequence[float] | None = None, obs_std: Sequence[float] | None = None,
                 obs_valid: Any = None, obs_test: Sequence[bool] | None = None, neighbours: Any = None,
                 loss_sensitivity: Sequence[float] | None = None, ratings_mva: Any = None) -> None:
        self.inner = inner
        names = list(inner.obs_names)
        if config.outage_alert_hops is None:  # the default: alerts where the graph and the readings are at hand
            able = "inv_q_mvar" in names and (neighbours is not None or hasattr(inner, "graph"))
            config = replace(config, outage_alert_hops=OUTAGE_ALERT_HOPS if able else 0)
        self.config = config
        self.v_min_pu, self.v_max_pu = float(v_min_pu), float(v_max_pu)
        self._v, self._p, self._qa = own_columns(names, f"the safety envelope around {inner.name!r}")
        if config.smoothing < 1 and "inv_q_mvar" not in names:
            raise EnvelopeError(f"the envelope's smoothing reads inv_q_mvar, which {inner.name!r}'s observation "
                                f"does not have")
        self._q = names.index("inv_q_mvar") if config.smoothing < 1 else None
        # the zone's voltage readings (pool: own, lowest, highest; pad: every slot, with its mask)
        self._zone_v = [names.index(n) for n in names if n.startswith("dv_pu[") or n in ("dv_own_pu", "dv_min_pu",
                                                                                          "dv_max_pu")]
        self._zone_mask = [names.index(f"mask[{n[6:-1]}]") if n.startswith("dv_pu[") and f"mask[{n[6:-1]}]" in names
                           else -1 for n in (names[i] for i in self._zone_v)]
        self._neighbours = None
        if config.neighbour_outage or config.outage_alert_hops:
            if neighbours is None and hasattr(inner, "graph"):
                g = inner.graph
                neighbours = np.zeros((g.n_agents, g.n_agents), dtype=bool)
                one = (g.hop == 1).numpy()
                neighbours[g.receiver.numpy()[one], g.sender.numpy()[one]] = True
            if neighbours is None:
                raise EnvelopeError(f"{'neighbour_outage' if config.neighbour_outage else 'outage_alert_hops'} needs "
                                    f"the agent graph, which {inner.name!r} does not have")
            self._neighbours = torch.as_tensor(np.asarray(neighbours, dtype=bool))
        self._q_now = None  # the column of inv_q_mvar, for the outage alerts
        if config.outage_alert_hops:
            if "inv_q_mvar" not in names:
                raise EnvelopeError(f"the envelope's outage alerts read inv_q_mvar, which {inner.name!r}'s observation "
                                    f"does not have")
            self._q_now = names.index("inv_q_mvar")
        # the outage alerts' state [B, N]: the reactive power the previous actions asked for (MVAr),
        # agents found out, alert levels; and the agent graph's links (receiver, sender) they travel on
        self._alert_state: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._alerted: torch.Tensor | None = None
        self._links = None if self._neighbours is None else self._neighbours.nonzero(as_tuple=True)
        self._loss_sensitivity = None
        if config.loss_guard != "off":
            if loss_sensitivity is None or len(loss_sensitivity) != len(inner.agents):
                raise EnvelopeError(f"loss_guard needs each of the {len(inner.agents)} agents' loss sensitivity "
                                    f"(gridrl.grid.sensitivity.agent_loss_sensitivity)")
            self._loss_sensitivity = torch.as_tensor(np.asarray(loss_sensitivity, dtype=np.float64))
        self._stats = None
        if config.handover_z and obs_mean is not None:
            mean = torch.as_tensor(np.asarray(obs_mean, dtype=np.float64))
            std = torch.as_tensor(np.asarray(obs_std, dtype=np.float64)).clamp(min=1e-6)
            if obs_test is None:
                obs_test = [not (n.startswith("mask[") or n in ("sin_time", "cos_time")) for n in names]
            test = torch.as_tensor(np.asarray(obs_test, dtype=bool))
            valid = (torch.ones(len(inner.agents), len(names), dtype=torch.bool) if obs_valid is None
                     else torch.as_tensor(np.asarray(obs_valid, dtype=bool)))
            self._stats = (mean, std, valid & test[None, :])
        self._ratings = None
        if config.rating_handover and ratings_mva is not None:
            r = torch.as_tensor(np.asarray(ratings_mva, dtype=np.float64))
            self._ratings = (r[:, 0] * (1 - config.rating_tolerance), r[:, 1] * (1 + config.rating_tolerance))
        self.last_info: dict[str, np.ndarray] = {}
        self._regions: tuple[torch.Tensor, torch.Tensor] | None = None  # the previous step's, for the hold

    # the controller protocol, passed through
    @property
    def name(self) -> str:
        return self.inner.name

    @name.setter
    def name(self, value: str) -> None:
        self.inner.name = value

    @property
    def hops(self):
        return self.inner.hops

    @property
    def communication(self) -> float:
        """The inner controller's floats per agent per step, and with outage alerts the one float
        each agent sends each of its neighbours on the agent graph."""
        alerts = float(self._neighbours.sum()) / len(self.inner.agents) if self.config.outage_alert_hops else 0.0
        return self.inner.communication + alerts

    @property
    def reads_messages(self) -> bool:
        """Whether :meth:`act` needs the step's ``message_mask``: the inner controller reads messages,
        or the outage alerts travel as messages (lost with them)."""
        return getattr(self.inner, "reads_messages", False) or bool(self.config.outage_alert_hops)

    @property
    def obs_names(self) -> list[str]:
        return list(self.inner.obs_names)

    @property
    def agents(self) -> list[str]:
        return list(self.inner.agents)

    def reset(self) -> None:
        if hasattr(self.inner, "reset"):
            self.inner.reset()
        self.last_info = {}
        self._regions = None
        self._alert_state = None
        self._alerted = None

    def describe(self) -> dict[str, Any]:
        inner = self.inner.describe() if callable(getattr(self.inner, "describe", None)) else {}
        return {**inner, "envelope": {"mechanism": self.config.mechanism, "margin_pu": self.config.margin_pu,
                                      "margin_low_pu": self.config.low_margin_pu, "low_slope": self.config.low_slope,
                                      "handover_z": self.config.handover_z,
                                      "handover_statistics": self.config.handover_statistics,
                                      "neighbour_outage": self.config.neighbour_outage,
                                      "outage_alert_hops": self.config.outage_alert_hops,
                                      "outage_margin_pu": self.config.outage_margin_pu,
                                      "hold_pu": self.config.hold_pu, "excess_max": self.config.excess_max,
                                      "inject_stop_pu": self.config.inject_stop_pu,
                                      "excess_max_low": self.config.low_excess,
                                      "loss_guard": self.config.loss_guard, "loss_guarded": self.guarded_agents,
                                      "handover_settle": self.config.handover_settle,
                                      "edge_settle": self.config.edge_settle,
                                      "rating_handover": self._ratings is not None,
                                      "rating_tolerance": self.config.rating_tolerance,
                                      "band": [self.v_min_pu, self.v_max_pu],
                                      "rule": "IEEE 1547-B at the own measured voltage near the band's edges"}}

    @property
    def guarded_agents(self) -> int:
        """How many agents the loss guard holds (0 without it, or where ``unseen`` finds none)."""
        return 0 if self._loss_sensitivity is None else int((self._loss_sensitivity != 0).sum())

    @property
    def own_columns(self) -> tuple[int, int, int]:
        """Observation columns of the agent's own voltage deviation, active power and available
        reactive power: all the envelope reads besides the hand-over's statistics."""
        return self._v, self._p, self._qa

    @property
    def statistics(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The hand-over's ``(mean, std, tested [N, D])`` (float64, bool; mean and std ``[N, D]``
        per agent, or ``[D]`` pooled); ``None`` without a hand-over."""
        return self._stats

    @property
    def rating_range(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(low, high)`` ``[N]`` MVA: the ratings outside which an agent hands over (the trained
        ones with the tolerance); ``None`` without that hand-over."""
        return self._ratings

    def own_measurements(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Own voltage ``v`` (p.u.), ``inv_p_mw`` and ``inv_q_avail_mvar`` ``[..., N]`` of observations ``x``."""
        return 1.0 + x[..., self._v], x[..., self._p], x[..., self._qa]

    def zone_voltage_range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Lowest and highest measured voltage (p.u.) ``[..., N]`` of each agent's zone in
        observations ``x`` (padding slots left out)."""
        dv = x[..., self._zone_v]
        real = torch.stack([torch.ones_like(dv[..., 0], dtype=torch.bool) if m < 0 else x[..., m] > 0.5
                            for m in self._zone_mask], -1)
        inf = torch.full_like(dv, float("inf"))
        return 1.0 + torch.where(real, dv, inf).amin(-1), 1.0 + torch.where(real, dv, -inf).amax(-1)

    def outside(self, obs: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` bool: agents whose own observation lies outside what the policy was trained on
        (a feature beyond the statistics, or a rating beyond the trained ones)."""
        x = obs.to(torch.float64)
        out = torch.zeros(obs.shape[:2], dtype=torch.bool)
        if self._stats is not None:
            mean, std, test = self._stats
            out = out | handover(x, mean, std, test, self.config.handover_z)
        if self._ratings is not None:
            out = out | rating_outside(x[..., self._p], x[..., self._qa], *self._ratings)
        return out

    def beside_outage(self, obs: torch.Tensor, message_mask=None) -> torch.Tensor:
        """``[B, N]`` bool: agents whose own PV produces and who hear from a neighbour that
        reports neither active power nor headroom (its inverters are out)."""
        B, N = obs.shape[:2]
        if not self.config.neighbour_outage:
            return torch.zeros(B, N, dtype=torch.bool)
        p, qa = obs[..., self._p], obs[..., self._qa]
        out = (p == 0) & (qa == 0)
        heard = self._neighbours[None].expand(B, N, N)
        if message_mask is not None:
            heard = heard & torch.as_tensor(message_mask, dtype=torch.bool).cpu()
        return (p > 0) & (heard & out[:, None, :]).any(-1)

    def alerted(self, x: torch.Tensor, message_mask=None) -> torch.Tensor | None:
        """``[B, N]`` bool: agents within ``outage_alert_hops`` hops of an agent whose inverters do not
        follow its set-point, as the alerts have reached them by this step (observations ``x``,
        float64; ``message_mask [B, N, N]``: the messages that arrive); ``None`` without alerts.
        Advances the alerts' state by one step (see the module docstring)."""
        k = self.config.outage_alert_hops
        if not k:
            return None
        B, N = x.shape[:2]
        if self._alert_state is None or self._alert_state[0].shape != (B, N):  # a first step, or another batch
            self._alert_state = (torch.zeros(B, N, dtype=torch.float64), torch.zeros(B, N, dtype=torch.bool),
                                 torch.zeros(B, N, dtype=torch.float64))
        sent, out, level = self._alert_state
        _, p, qa = self.own_measurements(x)
        q = x[..., self._q_now]
        asked = torch.maximum(torch.minimum(sent, qa), -qa)  # the set-point in force, held within the headroom now
        rating = torch.sqrt(p ** 2 + qa ** 2)
        out = out | ((qa > 0) & (asked.abs() > 0.02 * rating) & ((q - asked).abs() > 0.5 * asked.abs()))
        receiver, sender = self._links  # each link's level, where its message arrives; the highest per receiver
        heard = level[:, sender]
        if message_mask is not None:
            heard = torch.where(torch.as_tensor(message_mask, dtype=torch.bool).cpu()[:, receiver, sender], heard, 0.0)
        relayed = torch.zeros(B, N, dtype=torch.float64).scatter_reduce(1, receiver.expand(B, -1), heard, "amax") - 1.0
        level = torch.maximum(torch.where(out, float(k + 1), 0.0), relayed.clamp(min=0.0))
        self._alert_state = (sent, out, level)
        return level > 0

    def _alert_region(self, v: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` bool: alerted agents whose own voltage ``v`` lies in their widened upper edge region."""
        return self._alerted & (torch.nan_to_num(v, nan=1.0) >= self.v_max_pu - self.config.outage_margin_pu)

    def held(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(upper, lower)`` ``[B, N]`` bool: agents the hold keeps in an edge region at own
        voltage ``v`` (in it at their previous step and no more than ``m + h`` inside the band);
        ``None`` without a hold. Remembers this step's regions for the next."""
        c = self.config
        if not c.hold_pu:
            return None
        before = self._regions
        if before is None or before[0].shape != v.shape:  # a first step, or another batch
            before = (torch.zeros_like(v, dtype=torch.bool),) * 2
        held = (before[0] & (v >= self.v_max_pu - c.margin_pu - c.hold_pu),
                before[1] & (v <= self.v_min_pu + c.low_margin_pu + c.hold_pu))
        self._regions = edge_regions(v, v_min_pu=self.v_min_pu, v_max_pu=self.v_max_pu, margin_pu=c.margin_pu,
                                     margin_low_pu=c.low_margin_pu, held=held)
        return held

    def act(self, obs, *, env: Any = None, message_mask=None, **kw) -> torch.Tensor:
        """The inner controller's actions ``[B, N]``, through the hand-over and the envelope.
        ``env`` is passed to the inner controller; the envelope reads the observation, and where
        ``env`` is given the handed-over agents settle on the pending interval (``handover_settle``),
        and with ``edge_settle`` the edge-region rule holds on the voltage during it."""
        if getattr(self.inner, "reads_messages", False):
            a = self.inner.act(obs, env=env, message_mask=message_mask, **kw)
        else:
            a = self.inner.act(obs, env=env, **kw)
        a = torch.as_tensor(a, dtype=torch.float64).cpu()
        x = torch.as_tensor(obs).to(torch.float64).cpu()
        v, p, qa = self.own_measurements(x)
        handed = self.outside(x) | self.beside_outage(x, message_mask)
        a_b = droop_b_action(v, p, qa)
        if self._q is not None:
            a = damped_action(a, x[..., self._q], qa, self.config.smoothing)
        if self._loss_sensitivity is not None:
            a = loss_guard(a, *self.zone_voltage_range(x), self._loss_sensitivity)
        a_in = a
        held = self.held(v)
        self._alerted = self.alerted(x, message_mask)
        if self._alerted is not None:  # alerted agents: the upper edge region widened
            wide = self._alert_region(v)
            held = (wide, torch.zeros_like(wide)) if held is None else (held[0] | wide, held[1])
        a = shield(a_in, v, p, qa, handed, v_min_pu=self.v_min_pu, v_max_pu=self.v_max_pu, config=self.config,
                   a_b=a_b, held=held)
        changed = (a - torch.where(handed, a_b, a_in)).abs() > 1e-12
        if env is not None:
            edge = self.config.edge_settle and self.config.mechanism != "off"
            if edge or (self.config.handover_settle and bool(handed.any())):
                a = self.settle(env, a, handed, p, qa, policy=a_in if edge else None,
                                regions=edge_regions(v, v_min_pu=self.v_min_pu, v_max_pu=self.v_max_pu,
                                                     margin_pu=self.config.margin_pu,
                                                     margin_low_pu=self.config.low_margin_pu, held=held))
            changed = changed | (~handed & ((a - a_in).abs() > 1e-12))
        inner_info = getattr(self.inner, "last_info", None) or {}
        self.last_info = {**inner_info, "handover": handed.sum(1).numpy(), "envelope": changed.sum(1).numpy()}
        if self._alerted is not None:  # what this step's actions ask of the headroom, for the next step's check
            _, out, level = self._alert_state
            self._alert_state = (a * qa, out, level)
            self.last_info["alerted"] = self._alerted.sum(1).numpy()
        return a

    def settle(self, env: Any, a: torch.Tensor, handed: torch.Tensor, p: torch.Tensor, qa: torch.Tensor,
               *, policy: torch.Tensor | None = None, regions: tuple[torch.Tensor, torch.Tensor] | None = None,
               options: FixedPointOptions = FixedPointOptions()) -> torch.Tensor:
        """Actions ``[B, N]`` settled on each agent's own voltage during the pending interval by
        droop's damped fixed point (:func:`gridrl.env.fixed_point.damped_fixed_point`, its default
        settings, every scenario moving until all have settled). Without ``policy`` the ``handed``
        agents settle on 1547-B's curve, every other agent's action ``a`` held; with ``policy`` (the
        policy's actions before the rule, ``edge_settle``) the target is the whole rule,
        :func:`shield`, at the voltage during the interval, an agent in an edge region at the
        interval's start (``regions``) or at any iterate staying in it for the interval."""
        noise = env.sensor_noise_pu()[:, env.agent_bus_pos].to(torch.float64) if env.config.sensor_noise_pu > 0 else 0.0
        start = a.clone()
        state = {"v_init": None, "latched": regions}

        def target(a_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:  # rows: the whole batch
            now_a = torch.from_numpy(a_rows)
            sol = env.peek(now_a.to(torch.float32), v_init=state["v_init"])
            state["v_init"] = sol["v"]
            v = sol["vm_own_pu"].to(torch.float64).cpu() + noise
            if policy is None:
                return torch.where(handed, droop_b_action(v, p, qa), start).numpy()
            now = edge_regions(torch.nan_to_num(v, nan=1.0), v_min_pu=self.v_min_pu, v_max_pu=self.v_max_pu,
                               margin_pu=self.config.margin_pu, margin_low_pu=self.config.low_margin_pu)
            if self._alerted is not None:  # alerted agents' upper region widened, as at the interval's start
                now = (now[0] | self._alert_region(v), now[1])
            latched = state["latched"]
            latched = state["latched"] = now if latched is None else (latched[0] | now[0], latched[1] | now[1])
            rule = shield(policy, v, p, qa, handed, v_min_pu=self.v_min_pu, v_max_pu=self.v_max_pu,
                          config=self.config, held=latched)
            if not self.config.handover_settle:  # handed-over agents keep the curve at the measured voltage
                rule = torch.where(handed, now_a, rule)
            return rule.numpy()

        settled, _ = damped_fixed_point(a.numpy(), target, options, freeze=False)
        return torch.from_numpy(settled)

    def __repr__(self) -> str:
        return f"SafetyEnvelope({self.inner!r}, {self.config.label})"
