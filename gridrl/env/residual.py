"""A residual policy's base: a droop curve evaluated once on each agent's own measured voltage.

A policy trained as a residual (``TrainConfig.residual = "droop:tuned"``) sends, for agent i,
``clip(a_base(v_i) + a_policy_i, −1, 1)``, where ``a_base`` is the droop curve the run recorded
(the feeder's tuned curve, :mod:`gridrl.control.tuning`) evaluated *once* at the agent's own
voltage as its observation carries it (measured at the start of the interval under the
set-points still in force, with its sensor's noise) — not settled to a fixed point as the droop
controller is: an inverter reads its voltage, looks the curve up, and adds what its policy says.
The action is computed from the agent's own observation by :func:`~gridrl.env.envelope.droop_curve_action`
(the rule the safety envelope's 1547-B uses), so the base adds nothing the agent does not measure
and keeps the policy decentralized.

**Damping** (``damping = α``, 1 by default: the curve read once). The measured voltage is the one
the agent's own set-point of the previous interval produced, so on a steep curve an agent that
absorbed hard reads a low voltage, lets go, reads a high one, absorbs again: read once, the tuned
curve swings from interval to interval (on ieee33's validation days the base alone kept a
controllable rate of 0.9530 against the settled droop's 0.9744; on 6.6 % of agent-steps the
action reversed a move of more than 0.05 by more than 0.05). With ``α < 1`` the base moves only
part of the way from the agent's own reactive power now (``inv_q_mvar / inv_q_avail_mvar``, the
set-point still in force) towards the curve: ``a_base = a_now + α·(a_curve(v) − a_now)``, a
first-order filter as an inverter's volt-var response time is, and the damped fixed-point
iteration the droop controller settles with, one step per interval (α = 0.3: 0.9741, swings on
0.03 %; ``experiments/residual_oscillation.py``).

:class:`ResidualBase` holds the curve's breakpoints and the observation columns it reads; the
policy adds it to its Gaussian's mean (:mod:`gridrl.marl.policy`). The base is a deterministic
function of the observation, so the log-probability of the action sent under ``N(base + μ, σ)``
is that of the residual under ``N(μ, σ)``: PPO sees the base as part of the environment, and a
model-based learner's dynamics model keeps seeing the action actually sent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from gridrl.env.envelope import EnvelopeError, damped_action, droop_curve_action, own_columns

__all__ = ["RESIDUAL_BASES", "ResidualBase", "residual_label"]

#: the curves a policy may be trained as a residual on
RESIDUAL_BASES = ("droop:tuned",)


def residual_label(base: str, damping: float = 1.0) -> str:
    """What a residual run adds to its policy's actions, for result tables."""
    return f"residual on {base}" + (f" (damped {damping:g})" if damping < 1 else "")


class ResidualBase(torch.nn.Module):
    """``a_base [..., N]`` of observations ``[..., N, D]``: the curve at each agent's own voltage.

    base: the curve's name (``droop:tuned``); curve: ``{"v_pu": [...], "q": [...], "reference":
    "s_max" | "q_avail"}`` (a curve mapping as :mod:`gridrl.control.curvefile` writes it; a
    ``fit`` table is kept as provenance); obs_names: the observation's feature names.
    Raises :class:`~gridrl.env.envelope.EnvelopeError` (one line) for a curve it cannot use.
    """

    def __init__(self, base: str, curve: Mapping[str, Any], obs_names: Sequence[str], *, damping: float = 1.0):
        super().__init__()
        problems = _curve_problems(curve)
        if not (isinstance(damping, int | float) and 0 < damping <= 1):
            problems.append(f"damping must lie in (0, 1] (1: the curve read once), got {damping!r}")
        if problems:
            raise EnvelopeError(f"the residual's base curve {base!r}: {'; '.join(problems)}")
        self.base = base
        self.curve = {"v_pu": [float(v) for v in curve["v_pu"]], "q": [float(q) for q in curve["q"]],
                      "reference": curve.get("reference", "s_max")}
        self.fit = dict(curve["fit"]) if isinstance(curve.get("fit"), Mapping) else None
        self.columns = own_columns(obs_names, f"a residual on {base}")
        self.damping = float(damping)
        if self.damping < 1:
            if "inv_q_mvar" not in obs_names:
                raise EnvelopeError(f"a damped residual on {base} reads inv_q_mvar from the observation, which it "
                                    f"does not have")
            self.q_column = list(obs_names).index("inv_q_mvar")

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """``a_base [..., N]`` (float64, as the envelope computes) of observations ``[..., N, D]``."""
        v, p, qa = (obs[..., c].to(torch.float64) for c in self.columns)
        a = droop_curve_action(1.0 + v, p, qa, (self.curve["v_pu"], self.curve["q"]),
                               of_q_avail=self.curve["reference"] == "q_avail")
        if self.damping == 1:
            return a
        return damped_action(a, obs[..., self.q_column].to(torch.float64), qa, self.damping)

    def record(self) -> dict[str, Any]:
        """What a checkpoint keeps: the base's name and its curve (with its fit's provenance)."""
        return {"base": self.base, "damping": self.damping,
                "curve": {**self.curve, **({"fit": self.fit} if self.fit else {})}}

    @property
    def label(self) -> str:
        """What the residual adds, for result tables."""
        return residual_label(self.base, self.damping)

    def extra_repr(self) -> str:
        return f"{self.base} (damping {self.damping:g}): v_pu={self.curve['v_pu']}, q={self.curve['q']}"


def _curve_problems(curve: Any) -> list[str]:
    """What keeps ``curve`` from being a usable volt-var curve (empty when it is one)."""
    if not isinstance(curve, Mapping) or not {"v_pu", "q"} <= set(curve):
        return ["a curve needs v_pu = [...] and q = [...]"]
    v, q = curve["v_pu"], curve["q"]
    if not all(isinstance(x, Sequence) and not isinstance(x, str) for x in (v, q)):
        return ["v_pu and q must be lists of numbers"]
    if not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in (*v, *q)):
        return ["v_pu and q must be finite numbers"]
    problems = []
    if len(v) < 2 or len(v) != len(q):
        problems.append(f"needs as many q as v_pu breakpoints, at least 2 (got {len(v)} and {len(q)})")
    if any(b <= a for a, b in zip(v, v[1:])):
        problems.append("v_pu must increase strictly")
    if curve.get("reference", "s_max") not in ("s_max", "q_avail"):
        problems.append(f"reference must be 's_max' or 'q_avail', got {curve.get('reference')!r}")
    return problems
