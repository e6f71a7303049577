"""gridrl: active voltage control on distribution feeders with decentralized multi-agent RL.

The feeder library loads eagerly; the environment and controllers (which import torch) load on
first use, so ``gridrl feeders`` and ``import gridrl`` stay quick.
"""

import os

# torch and numba (power flow) each keep an OpenMP thread pool; with busy-waiting, the idle
# pool's spinning workers starve the busy one whenever the cores are shared (measured on a
# loaded 2-core machine: an ieee141 step at B = 256 took 17–86 ms busy-waiting, 6–7 ms passive;
# on a quiet one both about 3.5 ms). Set before torch or numba load; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from gridrl.errors import (CheckpointError, FeederBuildError, FeederNotFound, GridrlError,
                           PowerFlowDiverged, SpecError)
from gridrl.grid.feeder import Feeder, list_feeders, load_feeder

__version__ = "0.1.0"

_LAZY = {
    "EnvConfig": "gridrl.env",
    "make_env": "gridrl.env",
    "parallel_env": "gridrl.env",
    "make_controller": "gridrl.control",
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
    "make_controller",
    "make_env",
    "parallel_env",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gridrl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
