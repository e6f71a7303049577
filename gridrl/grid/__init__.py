"""Feeders and power flow: everything physical, nothing about agents' learning.

The feeder list loads at once; :class:`Feeder` and :func:`load_feeder` (pandas, pandapower) load
on first use, so finding a spec (:mod:`gridrl.grid.library`) costs no numerical package.
"""

from gridrl.grid.library import list_feeders

_LAZY = {"Feeder": "gridrl.grid.feeder", "Profiles": "gridrl.grid.feeder", "load_feeder": "gridrl.grid.feeder"}

__all__ = ["Feeder", "Profiles", "list_feeders", "load_feeder"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gridrl.grid' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
