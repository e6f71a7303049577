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

from gridrl.env.envelope import EnvelopeError, droop_curve_action, own_columns

__all__ = ["RESIDUAL_BASES", "ResidualBase", "residual_label"]

#: the curves a policy may be trained as a residual on
RESIDUAL_BASES = ("droop:tuned",)


def residual_label(base: str) -> str:
    """What a residual run knew besides its observations, for result tables."""
    return f"residual on {base}"


class ResidualBase(torch.nn.Module):
    """``a_base [..., N]`` of observations ``[..., N, D]``: the curve at each agent's own voltage.

    base: the curve's name (``droop:tuned``); curve: ``{"v_pu": [...], "q": [...], "reference":
    "s_max" | "q_avail"}`` (a curve mapping as :mod:`gridrl.control.curvefile` writes it; a
    ``fit`` table is kept as provenance); obs_names: the observation's feature names.
    Raises :class:`~gridrl.env.envelope.EnvelopeError` (one line) for a curve it cannot use.
    """

    def __init__(self, base: str, curve: Mapping[str, Any], obs_names: Sequence[str]):
        super().__init__()
        problems = _curve_problems(curve)
        if problems:
            raise EnvelopeError(f"the residual's base curve {base!r}: {'; '.join(problems)}")
        self.base = base
        self.curve = {"v_pu": [float(v) for v in curve["v_pu"]], "q": [float(q) for q in curve["q"]],
                      "reference": curve.get("reference", "s_max")}
        self.fit = dict(curve["fit"]) if isinstance(curve.get("fit"), Mapping) else None
        self.columns = own_columns(obs_names, f"a residual on {base}")

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """``a_base [..., N]`` (float64, as the envelope computes) of observations ``[..., N, D]``."""
        v, p, qa = (obs[..., c].to(torch.float64) for c in self.columns)
        return droop_curve_action(1.0 + v, p, qa, (self.curve["v_pu"], self.curve["q"]),
                                  of_q_avail=self.curve["reference"] == "q_avail")

    def record(self) -> dict[str, Any]:
        """What a checkpoint keeps: the base's name and its curve (with its fit's provenance)."""
        return {"base": self.base, "curve": {**self.curve, **({"fit": self.fit} if self.fit else {})}}

    def extra_repr(self) -> str:
        return f"{self.base}: v_pu={self.curve['v_pu']}, q={self.curve['q']}"


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
