"""Seeding of environment copies: the rule that keeps library-made copies apart.

RL libraries build several copies of one environment and seed them all alike: RLlib's
environment check calls ``reset(seed=42)`` on every copy of an env runner, and a user's creator
function usually passes the same arguments to each. If a seed alone fixed the random streams,
every copy would replay the same days and a batch of "independent" episodes would be one
episode repeated.

**The rule.** Every adapter (PettingZoo, Gymnasium vector, TorchRL) has a *copy key*:

* built **with** an explicit ``seed`` (and neither ``copy_index`` nor ``worker_index``), it is a reproducible instance with copy key ``()``: a seed
  ``s`` (the constructor's, or one given to ``reset``) seeds the core exactly as
  ``make_env(..., seed=s)`` would. Two envs built with the same seed and reset with the same
  seed give the same episodes — on purpose (PettingZoo's ``parallel_seed_test`` checks this);
* built **without** one (the default), it is a copy with copy key ``(worker_index, k)``: ``k``
  is the env's creation number among unseeded gridrl envs in this process (0, 1, 2, …;
  or ``copy_index`` when given) and ``worker_index`` is the library's worker number (0 unless
  given, e.g. RLlib's ``EnvContext.worker_index``). Its base seed is 0 (or the ``seed`` given
  beside a ``copy_index`` / ``worker_index``), and every seed ``s`` it
  receives seeds the core with :func:`copy_seed` ``(s, key)``, a number drawn from
  ``numpy.random.SeedSequence(s, spawn_key=key)``. Copies with different keys draw independent
  streams for the same ``s``; the same program run twice builds the same keys in the same
  order, so its results repeat.

The batched core itself (``make_env``) takes its seed as given: its B scenarios already draw
their days from one generator.
"""

from __future__ import annotations

import itertools
import threading

import numpy as np

__all__ = ["copy_key", "copy_seed"]

_counter = itertools.count()
_lock = threading.Lock()


def copy_seed(seed: int, key: tuple[int, ...]) -> int:
    """The seed the core gets for seed ``seed`` in the copy with key ``key`` (``()``: ``seed``).

    A 63-bit integer from ``SeedSequence(seed, spawn_key=key)``: copies with different keys get
    independent streams, and nothing depends on the process or the clock.
    """
    seed = int(seed)
    if not key:
        return seed
    state = np.random.SeedSequence(seed, spawn_key=tuple(int(k) for k in key)).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def copy_key(*, seed: int | None, copy_index: int | None = None,
             worker_index: int | None = None) -> tuple[tuple[int, ...], int]:
    """``(key, base_seed)`` of an adapter built with ``seed``, ``copy_index``, ``worker_index``.

    Only ``seed`` given: key ``()`` and that seed. Otherwise the key is ``(worker_index,
    copy_index)`` (``worker_index`` 0 when not given, ``copy_index`` the process-wide creation
    count when not given) and the base seed is ``seed`` or 0.
    """
    if seed is not None and copy_index is None and worker_index is None:
        return (), int(seed)
    if copy_index is None:
        with _lock:
            copy_index = next(_counter)
    worker_index = 0 if worker_index is None else worker_index
    if int(copy_index) < 0 or int(worker_index) < 0:
        raise ValueError(f"copy_index and worker_index must be ≥ 0, got {copy_index}, {worker_index}")
    return (int(worker_index), int(copy_index)), 0 if seed is None else int(seed)
