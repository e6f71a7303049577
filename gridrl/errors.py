"""Exception types of gridrl.

Every error a user can cause by what they type or write (a feeder name, a spec, a config, a
checkpoint) derives from :class:`GridrlError`; the CLI prints its message as one line and exits
with code 2. Messages say what is wrong and how to fix it.
"""

from __future__ import annotations

from collections.abc import Sequence


class GridrlError(Exception):
    """Base class of every error caused by user input."""


class FeederNotFound(GridrlError, KeyError):
    """A feeder name that no spec defines."""

    def __init__(self, name: str, known: Sequence[str]):
        self.name = name
        self.known = list(known)
        super().__init__(f"unknown feeder {name!r} — known feeders: {', '.join(self.known)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class SpecError(GridrlError, ValueError):
    """A feeder spec or experiment config with one or more problems, all listed together."""

    def __init__(self, source: str, problems: Sequence[str]):
        self.source = source
        self.problems = list(problems)
        super().__init__(f"{source}: " + "; ".join(self.problems))


class FeederBuildError(GridrlError):
    """A feeder whose net cannot be built or whose base case does not solve."""


class PowerFlowDiverged(GridrlError):
    """Power flow did not converge for the listed scenarios."""

    def __init__(self, scenarios: Sequence[int], detail: str = ""):
        self.scenarios = list(scenarios)
        shown = ", ".join(map(str, self.scenarios[:10])) + (" …" if len(self.scenarios) > 10 else "")
        super().__init__(f"power flow did not converge for scenario(s) {shown}{detail}")


class OutputError(GridrlError):
    """A file or folder that cannot be written (a folder in the way, a file where a folder should
    be, no permission, disk full)."""


class CheckpointError(GridrlError):
    """A run directory or checkpoint that cannot be read."""
