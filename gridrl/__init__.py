"""gridrl: active voltage control on distribution feeders with decentralized multi-agent RL."""

from gridrl.errors import (CheckpointError, FeederBuildError, FeederNotFound, GridrlError,
                           PowerFlowDiverged, SpecError)
from gridrl.grid.feeder import Feeder, list_feeders, load_feeder

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "Feeder",
    "FeederBuildError",
    "FeederNotFound",
    "GridrlError",
    "PowerFlowDiverged",
    "SpecError",
    "list_feeders",
    "load_feeder",
]
