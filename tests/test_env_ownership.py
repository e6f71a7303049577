"""Every tensor the environment hands out is the caller's own: later steps (full or partial),
resets and peeks never write into it, and no two returned tensors share memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gridrl
from gridrl.env import EnvConfig, make_env, parallel_env

EVENING = EnvConfig(start_hour=18.0, episode_hours=2.0)


@pytest.fixture(scope="module")
def ieee33():
    return gridrl.load_feeder("ieee33")


def _tensors(obj, name: str):
    """(name, tensor) for every tensor in a nested return value."""
    if isinstance(obj, torch.Tensor):
        yield name, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{name}[{k!r}]")
    elif isinstance(obj, tuple | list):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{name}[{i}]")


def _storages(obj) -> set[int]:
    return {t.untyped_storage().data_ptr() for _, t in _tensors(obj, "") if t.numel()}


def _overload(env, scenario: int):
    """Make ``scenario`` diverge (forty times its load) at the next step: its episode ends while
    the others go on, so the steps after it are partial."""
    exogenous = env._exogenous

    def overloaded(g, rows=None):
        exo = exogenous(g, rows)
        if len(g) == env.num_envs:
            exo["load_p_mw"][scenario] *= 40
            exo["load_q_mvar"][scenario] *= 40
        return exo

    env._exogenous = overloaded
    return lambda: setattr(env, "_exogenous", exogenous)


def test_returned_tensors_never_change_under_the_caller(ieee33):
    env = make_env(ieee33, num_envs=3, seed=0, config=EVENING)
    zeros = torch.zeros(3, env.n_agents)
    got = []  # (name, tensor as returned, its copy at that moment)

    def keep(name, value):
        got.extend((n, t, t.clone()) for n, t in _tensors(value, name))

    keep("reset", env.reset())
    restore = _overload(env, 1)  # right after reset, a step that writes only some rows
    keep("diverging step", env.step(zeros))
    restore()
    keep("step", env.step(zeros))
    for name in ("pending", "state", "episode_metrics"):
        keep(name, getattr(env, name)())
    keep("peek", env.peek(zeros))
    keep("done", env.done)
    keep("reset_done", env.reset_done())
    keep("step after reset_done", env.step(zeros))

    # partial steps (scenario 2 diverges), a restart of the finished one, then a full reset
    restore = _overload(env, 2)
    env.step(zeros)
    restore()
    env.step(zeros)
    env.reset_done()
    env.step(torch.ones(3, env.n_agents))
    env.peek(-torch.ones(3, env.n_agents))
    env.reset(seed=9)
    env.step(zeros)

    changed = [n for n, t, k in got if not torch.equal(_real(t), _real(k))]
    assert not changed


def _real(t: torch.Tensor) -> torch.Tensor:
    """float64 without NaN (complex as real and imaginary parts), for exact comparison."""
    return torch.nan_to_num((torch.view_as_real(t) if t.is_complex() else t).double())


def test_returned_tensors_share_no_memory_with_the_env_or_each_other(ieee33):
    env = make_env(ieee33, num_envs=3, seed=0, config=EVENING)
    zeros = torch.zeros(3, env.n_agents)
    calls = {"reset": env.reset, "step": lambda: env.step(zeros), "pending": env.pending,
             "peek": lambda: env.peek(zeros), "state": env.state,
             "episode_metrics": env.episode_metrics, "done": lambda: env.done}
    restore = _overload(env, 0)
    calls["diverging step"] = lambda: env.step(zeros)
    calls["reset_done"] = env.reset_done
    seen: dict[int, str] = {}
    alive = []  # keep every value, so that no freed memory is handed out again
    for name, call in calls.items():
        value = call()
        alive.append(value)
        if name == "diverging step":
            restore()
        state = _storages(vars(env))
        for n, t in _tensors(value, name):
            if not t.numel():
                continue
            ptr = t.untyped_storage().data_ptr()
            assert ptr not in state, f"{n} is a view of the env's own state"
            assert seen.setdefault(ptr, n) == n, f"{n} shares memory with {seen[ptr]}"


def test_pettingzoo_observations_and_state_are_copies(ieee33):
    env = parallel_env(ieee33, seed=0, config=EVENING)
    obs, _ = env.reset(seed=1)
    state = env.state()
    first = {a: o.copy() for a, o in obs.items()}
    first_state = state.copy()
    core = [t.numpy() for _, t in _tensors(vars(env.core), "") if t.device.type == "cpu"
            and t.dtype in (torch.float32, torch.float64)]
    for o in [*obs.values(), state]:
        assert not any(np.shares_memory(o, c) for c in core)
    for _ in range(3):
        env.step({a: np.array([0.5], np.float32) for a in env.agents})
    assert all(np.array_equal(obs[a], first[a]) for a in obs)
    assert np.array_equal(state, first_state)
