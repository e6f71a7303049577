"""gridrl: active voltage control on distribution feeders with decentralized multi-agent RL.

The list of feeders loads eagerly; feeders themselves (pandas, pandapower), the environment,
controllers and trained policies (torch) load on first use, so ``import gridrl`` stays quick and a
command given a wrong argument says so at once. gridrl runs one
thread per process unless told otherwise (``GRIDRL_THREADS``, :func:`set_threads`; see
:mod:`gridrl.threads`).
"""

# first: the thread policy sets GOMP_SPINCOUNT before torch or numba load (see gridrl.threads)
from gridrl.threads import set_threads
from gridrl.errors import (CheckpointError, FeederBuildError, FeederNotFound, GridrlError,
                           PowerFlowDiverged, SpecError)
from gridrl.grid.library import list_feeders
from gridrl.version import __version__

_LAZY = {
    "Feeder": "gridrl.grid.feeder",
    "load_feeder": "gridrl.grid.feeder",
    "EnvConfig": "gridrl.env",
    "make_env": "gridrl.env",
    "parallel_env": "gridrl.env",
    "make_controller": "gridrl.control",
    "load_policy": "gridrl.marl",
}

__all__ = [
    "CheckpointError",
    "EnvConfig",
    "Feeder",
    "FeederBuildError",
    "FeederNotFound",
    "GridrlError",
    "PowerFlowDiverged",
    "SpecError",
    "list_feeders",
    "load_feeder",
    "load_policy",
    "make_controller",
    "make_env",
    "parallel_env",
    "set_threads",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gridrl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
