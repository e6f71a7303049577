"""What every controller is: the shared interface and the errors a user can cause choosing one.

A controller maps the agents' observations of one step to actions in [-1, 1] (one per agent,
batched ``[B, N]``), exactly as a trained policy does, so evaluation treats both alike. Rule-based
controllers that must see the physics of the step they act on (droop's fixed point, the optimal
power flow) take the environment as an optional plant handle, ``act(obs, env=env)``; they read
the pending step through ``env.peek`` / ``env.pending`` and never change its state.

Sign convention (pandapower's generator convention for sgens): a positive action injects
reactive power and raises the voltage; action ``a`` sets ``q_mvar = a · sqrt(s_max² − p²)`` at
each of the agent's inverters.

Actions outside [-1, 1] are clipped to it by the environment, silently: an inverter cannot give
more than its headroom, and a policy's Gaussian sample may fall outside the box. A controller
should still return actions inside it; NaN is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gridrl.errors import GridrlError


class ControllerError(GridrlError, ValueError):
    """A controller name, preset or option that cannot be used."""


class UnknownController(ControllerError):
    """A controller name gridrl does not know."""

    def __init__(self, name: str, known: Sequence[str]):
        super().__init__(f"unknown controller {name!r} — known controllers: {', '.join(known)}")


class UnknownPreset(ControllerError):
    """A droop preset gridrl does not know."""

    def __init__(self, name: str, known: Sequence[str]):
        super().__init__(f"unknown droop preset {name!r} — known presets: {', '.join(known)}")


class CurveError(ControllerError):
    """A volt-var curve whose breakpoints cannot describe a droop characteristic."""


class Controller:
    """Base of the rule-based controllers: ``act(obs, env=None) -> actions [B, N]``.

    Attributes every controller (and every trained policy) has:

    name: short identifier used in tables (``none``, ``droop-ieee1547-a``, ``opf``).
    hops: how far on the agent graph the inputs of one agent's action reach: ``0`` for a local
        controller, ``-1`` for a centralized one that sees everything.
    communication: floats sent per agent per step to compute the actions.
    last_info: per-scenario diagnostics of the latest ``act`` call, each a ``[B]`` numpy array
        (``unsettled``: the controller's inner solve stopped at its iteration cap;
        ``infeasible``: the voltage band could not be met by any admissible action).
    """

    name: str = "controller"
    information: str = ""  # what the controller knows when it acts, for result tables
    hops: int = 0
    communication: float = 0.0

    def __init__(self) -> None:
        self.last_info: dict[str, np.ndarray] = {}

    def reset(self) -> None:
        """Forget state carried between steps (warm starts); called at the start of each rollout."""
        self.last_info = {}

    def act(self, obs: Any, *, env: Any = None):
        """Actions ``[B, N]`` in [-1, 1] for the pending step (the environment clips anything outside)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The controller's settings, for result tables and reproducibility."""
        return {"name": self.name, "hops": self.hops, "communication": self.communication}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
