"""Fixtures shared by the controller and evaluation tests."""

from __future__ import annotations

import numpy as np
import pytest

import gridrl


@pytest.fixture(scope="session")
def feeder():
    return gridrl.load_feeder("ieee33")


@pytest.fixture(scope="session")
def sunny_days(feeder):
    """ieee33's three test days with the most PV energy, sunniest first: noon voltages leave the
    band without control."""
    prof = feeder.profiles
    days = feeder.days("test")
    energy = [prof.pv_p_mw[prof.day_steps(d)].sum() for d in days]
    return [int(days[i]) for i in np.argsort(energy)[::-1][:3]]
