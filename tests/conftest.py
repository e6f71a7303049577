"""Fixtures and checks shared by the test modules."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest
import torch

import gridrl

# tests never write the project's results ledger (reports/ledger.csv): their rows go to a
# throw-away file, inherited by the processes they start, removed when the session ends
_LEDGER_DIR = tempfile.mkdtemp(prefix="gridrl-test-ledger-")
atexit.register(shutil.rmtree, _LEDGER_DIR, ignore_errors=True)
os.environ["GRIDRL_LEDGER"] = os.path.join(_LEDGER_DIR, "ledger.csv")


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


def one_line_error(res, *parts):
    """A CLI result that failed the way a user's mistake must: exit code 2, no traceback, one line
    starting with ``error:`` that contains every one of ``parts``."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    err = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error:"), res.output
    for part in parts:
        assert part in err[0], err[0]


def assert_identical(a, b, path="state"):
    """Bit-identity of two nested structures: dicts and sequences item by item, tensors byte for byte
    (so NaN equals NaN), anything else by ``==``; ``path`` names where they first differ."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            assert_identical(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for k, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{path}[{k}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        as_bytes = [t.detach().cpu().contiguous().reshape(-1).view(torch.uint8) for t in (a, b)]
        assert torch.equal(*as_bytes), path
    else:
        assert a == b, path
