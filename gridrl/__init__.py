"""gridrl: active voltage control on distribution feeders with decentralized multi-agent RL.

The feeder library loads eagerly; the environment and controllers (which import torch) load on
first use, so ``gridrl feeders`` and ``import gridrl`` stay quick.
"""

import os

# torch and numba (power flow) each keep an OpenMP thread pool. libgomp's default of spinning
# 300,000 rounds before sleeping lets one pool's idle workers starve the other's busy ones as
# soon as anything else shares the cores (an ieee141 step at B = 256: 3.3 ms quiet, 11–86 ms
# with a neighbour process, measured on 2 cores). Full passive waiting avoids that but costs
# 2.5× on a quiet machine (8.5 ms). A short spin keeps the quiet figure (3.1–3.6 ms). Set before
# torch or numba load; a user's own setting wins.
os.environ.setdefault("GOMP_SPINCOUNT", "30000")

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
