"""Feeders and power flow: everything physical, nothing about agents' learning."""

from gridrl.grid.feeder import Feeder, Profiles, list_feeders, load_feeder

__all__ = ["Feeder", "Profiles", "list_feeders", "load_feeder"]
