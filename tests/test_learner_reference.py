"""Every learner trains as it did when the fixture was written: same parameters, losses and test
figures from the same seeds (``tests/learner_reference.py`` trains the cases and writes the
fixture). Refactoring a learner must keep these; a change of behaviour on purpose regenerates
the fixture and says why in its commit."""

from __future__ import annotations

import json
import math

import pytest
import torch

from learner_reference import CASES, FIXTURE, env_matches, run_case

REFERENCE = json.loads(FIXTURE.read_text())


def test_the_fixture_covers_every_case():
    assert sorted(REFERENCE) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_short_training_run_reproduces_the_reference(name):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        got = run_case(name)
    finally:
        torch.set_num_threads(threads)
    want = REFERENCE[name]
    regenerate = "python tests/learner_reference.py --write"
    assert env_matches(got["env"], want["env"]), (
        f"{name}: the environment's own numbers changed since the fixture was written (its observations "
        f"and rewards for a fixed action sequence); if that change is intended, regenerate: {regenerate}")
    assert sorted(got) == sorted(want), f"{name}: other figures than the reference's"
    off = {k: (got[k], want[k]) for k in want if k not in ("env", "params")
           and not math.isclose(got[k], want[k], rel_tol=1e-5, abs_tol=1e-7)}
    assert not off, (f"{name}: the learner trains differently (got, reference): {off}; parameter hash "
                     f"{got['params']} against {want['params']}. Regenerate ({regenerate}) only for an "
                     f"intended change of behaviour")


def test_the_environment_fingerprint_tolerates_a_last_bit_and_nothing_more():
    """A fingerprint whose sums moved by a float32 last bit still matches; one whose sum moved by
    1e-5 of its magnitude (a change of the environment) does not."""
    want = REFERENCE["ieee141-dmpo"]["env"]
    nudged = [[v + 1e-8 * w[1] for v in w] for w in want]
    assert env_matches(want, want) and env_matches(nudged, want)
    moved = [list(w) for w in want]
    moved[3][0] += 1e-5 * moved[3][1]
    assert not env_matches(moved, want)
    assert not env_matches(want[:-1], want)
