"""The inverter capability, written once: reactive headroom by day, and at night with or without
the STATCOM mode."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from gridrl.grid.inverters import q_avail_mvar

S_MAX = np.array([1.2, 1.2, 1.2, 1.2, 0.6])
P = np.array([[0.0, 0.6, 1.0, 1.2, -1e-6]])  # night, part load, near rating, at rating, an idle wind unit


def test_headroom_is_what_the_rating_leaves_by_day():
    q = q_avail_mvar(P, S_MAX, q_at_night=True)
    np.testing.assert_allclose(q, [[1.2, np.sqrt(1.2 ** 2 - 0.36), np.sqrt(1.44 - 1.0), 0.0, 0.6]], rtol=1e-11)
    assert q_avail_mvar(np.array([1.5]), np.array([1.2]))[0] == 0.0  # output above rating: no headroom, never NaN


def test_without_q_at_night_an_inverter_gives_nothing_while_its_array_produces_nothing():
    on, off = q_avail_mvar(P, S_MAX, q_at_night=True), q_avail_mvar(P, S_MAX)  # without night mode by default
    producing = P > 0
    np.testing.assert_array_equal(off[producing], on[producing])
    assert (off[~producing] == 0).all()
    np.testing.assert_allclose(on[~producing], S_MAX[~producing[0]], rtol=1e-11)  # a STATCOM at night


def test_the_default_inverter_has_no_night_mode():
    import gridrl

    assert not gridrl.load_feeder("ieee33").spec.pv.q_at_night
    np.testing.assert_array_equal(q_avail_mvar(P, S_MAX), q_avail_mvar(P, S_MAX, q_at_night=False))


@pytest.mark.parametrize("night", [True, False])
def test_numpy_and_torch_agree(night):
    want = q_avail_mvar(P, S_MAX, q_at_night=night)
    got = q_avail_mvar(torch.as_tensor(P), torch.as_tensor(S_MAX), q_at_night=night)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy(), want)


def test_every_results_table_states_the_night_setting_it_was_measured_with():
    """The per-day table and the summary say whether inverters gave reactive power at night, and
    the figures differ exactly at night: droop has nothing to give there without a night mode."""
    import gridrl
    from gridrl.compare import summarize, summary_markdown
    from gridrl.env import EnvConfig
    from gridrl.evaluate import evaluate

    feeder = gridrl.load_feeder("ieee33")
    droop = gridrl.make_controller("droop", feeder, preset="ieee1547-b")
    day = feeder.days("test")[:1]
    runs = {night: evaluate(feeder, droop, days=day, env_config=EnvConfig(q_at_night=night)) for night in (False, True)}
    for night, ev in runs.items():
        assert ev.days["q_at_night"].tolist() == [night]
    table = summarize(pd.concat([runs[False].days, runs[True].days.assign(controller="droop-night")]))
    assert table["q_at_night"].tolist() == ["no", "yes"]
    assert summary_markdown(table).splitlines()[0].endswith("| Q at night |")
    assert "**Q at night**" in summary_markdown(table)
    assert runs[True].days["reactive_energy_mvarh"].iloc[0] > runs[False].days["reactive_energy_mvarh"].iloc[0]
