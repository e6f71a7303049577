"""gridrl: active voltage control on distribution feeders with decentralized multi-agent RL.

The feeder library loads eagerly; the environment, controllers and trained policies (which import
torch) load on first use, so ``gridrl feeders`` and ``import gridrl`` stay quick. gridrl runs one
thread per process unless told otherwise (``GRIDRL_THREADS``, :func:`set_threads`; see
:mod:`gridrl.threads`).
"""

# first: the thread policy sets GOMP_SPINCOUNT before torch or numba load (see gridrl.threads)
from gridrl.threads import set_threads
from gridrl.errors import (CheckpointError, FeederBuildError, FeederNotFound, GridrlError,
                           PowerFlowDiverged, SpecError)
from gridrl.grid.feeder import Feeder, list_feeders, load_feeder
from gridrl.version import __version__

_LAZY = {
    "EnvConfig": "gridrl.env",
    "make_env": "gridrl.env",
    "parallel_env": "gridrl.env",
    "make_controller": "gridrl.control",
    "load_policy": "gridrl.marl",
}

__all__ = [
    "__version__",
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
