"""Inverter capability: the reactive power a PV inverter can give at a given active power.

An inverter of apparent-power rating ``s_max_mva`` that delivers ``p_mw`` of active power has
``q_avail_mvar = sqrt(s_max_mva² − p_mw²)`` of reactive power left, in either direction. Whether
that also holds at night — when the PV array produces nothing — is a property of the inverter:

- ``q_at_night = False`` (gridrl's default, the common inverter): the inverter gives no reactive
  power while its array produces no active power (``p_mw ≤ 0``; SimBench's PV profiles are
  exactly zero from dusk to dawn), so ``q_avail = 0`` then; by day nothing changes. This is what
  the interconnection standard asks of every inverter and what an inverter does unless it was
  bought or set up for more: IEEE Std 1547-2018, clause 5.2, requires a DER's reactive power
  capability only while its active power is at least 5 % of its rating (or its minimum
  steady-state active power, whichever is greater), and reactive power without active power is
  a vendor option that must be ordered or switched on (SMA: the "Q at Night" option of the Sunny
  Central inverters, whose default "Off" mode limits the night set-point to 0 kvar; the
  "Q on Demand 24/7" function of the Sunny Tripower inverters, off unless activated).
- ``q_at_night = True``: the inverter stays connected and runs as a STATCOM, with its full
  rating available as reactive power (``q_avail = s_max`` at ``p = 0``). MAPDN's environment and
  many voltage-control studies assume it; it is what lets controllers lift evening under-voltage
  when the load peaks after sunset. A spec sets it per feeder (``q_at_night`` in ``[pv]``), a run
  for all its inverters (``EnvConfig.q_at_night``), and every results table says which was used.

This is the one place the capability is written: the environment, the controllers' plant model
and the benchmarks all call :func:`q_avail_mvar`. It takes numpy arrays or torch tensors (the
result has the input's type) so the environment's step stays in torch.
"""

from __future__ import annotations

import numpy as np

__all__ = ["q_avail_mvar"]


def q_avail_mvar(p_mw, s_max_mva, *, q_at_night: bool = False):
    """Available reactive power (MVAr, ≥ 0, either sign may be used) of inverters delivering
    ``p_mw`` with rating ``s_max_mva`` (broadcast against each other, e.g. ``[B, n_inv]`` and
    ``[n_inv]``). ``q_at_night`` says whether an inverter whose active power is ≤ 0 keeps its
    reactive capability (see the module docstring)."""
    if isinstance(p_mw, np.ndarray) or np.isscalar(p_mw):
        p = np.asarray(p_mw, dtype=np.float64)
        q = np.sqrt(np.maximum(np.asarray(s_max_mva, dtype=np.float64) ** 2 - p ** 2, 0.0))
        return q if q_at_night else np.where(p > 0.0, q, 0.0)
    import torch

    q = torch.sqrt(torch.clamp(s_max_mva ** 2 - p_mw ** 2, min=0.0))
    return q if q_at_night else torch.where(p_mw > 0.0, q, 0.0)
