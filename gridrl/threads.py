"""How many threads gridrl's work uses: the thread policy, and the one knob that changes it.

An environment step is a handful of small torch operations around one call of the numba
power-flow kernel; a learner's update is torch matrix products. Both libraries keep an OpenMP
thread pool, and a pool of two threads on two cores must wait at every barrier for a worker
that a neighbour process may have just taken. Measured on a 2-core machine with one other
CPU-bound process running (ieee141, B = 256, random actions; issue 8): 2 torch + 2 numba
threads took a median 50.4 ms and up to 345 ms per step, 1 + 1 took 9.0 / 14.2 ms. On a quiet
machine the second thread saved 15 % (4.60 ms against 5.40 ms per step, best of three
episodes: ``reports/bench/env.md`` as of commit 38f873a). ``gridrl bench env`` measures the
settings quiet and beside a CPU-bound process that it starts itself.

The policy, in order of precedence:

1. :func:`set_threads` ``(n)``: n threads for torch's intra-op pool and the power-flow kernel,
   from that call on;
2. the environment variable ``GRIDRL_THREADS=n``: the same, read at first use;
3. your own ``OMP_NUM_THREADS`` (torch) or ``NUMBA_NUM_THREADS`` (numba): gridrl leaves that
   library's thread count alone;
4. otherwise **one thread per process**. Scale out with processes (or a larger batch B),
   which share nothing and need no barriers; raise the count only on a machine you have to
   yourself.

torch's count is process-wide: gridrl sets it when it builds its first environment and never
again (unless :func:`set_threads` is called), so a ``torch.set_num_threads`` of your own
afterwards wins. numba's count is per Python thread: the power flow applies the policy in
whichever thread calls it.

OpenMP's idle workers spin before they sleep; libgomp's default of 300,000 rounds lets one
pool's idle workers starve the other pool's busy ones when threads are raised, so gridrl sets
``GOMP_SPINCOUNT=30000`` (a user's own setting wins) before torch or numba load.

numpy's and scipy's OpenBLAS start one thread per core and read their count once, when they
load; gridrl sets ``OPENBLAS_NUM_THREADS`` (``GRIDRL_THREADS`` if valid, else 1) at import unless
``OPENBLAS_NUM_THREADS`` or ``OMP_NUM_THREADS`` is already set. It takes effect when gridrl is
imported before numpy and scipy load their BLAS (the CLI, and ``import gridrl`` first). Measured on
the shared 2-core machine (load 5): the OPF's Cholesky of a 571 × 571 curvature took 160 ms of CPU
with the default pool and 2.7 ms with one thread.
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager

from gridrl.errors import GridrlError

__all__ = ["DEFAULT_THREADS", "ThreadsError", "apply_numba", "apply_torch", "describe", "policy",
           "set_threads", "using"]

os.environ.setdefault("GOMP_SPINCOUNT", "30000")
if not (os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")):
    _blas = os.environ.get("GRIDRL_THREADS", "").strip()
    os.environ["OPENBLAS_NUM_THREADS"] = _blas if _blas.isascii() and _blas.isdigit() and int(_blas) >= 1 else "1"

DEFAULT_THREADS = 1
"""Threads per process when neither :func:`set_threads`, ``GRIDRL_THREADS`` nor the libraries'
own variables say otherwise."""

_explicit: int | None = None  # set_threads
_generation = 0  # bumped by set_threads, so every thread re-applies the numba count
_torch_done = False
_numba_launched = False
_local = threading.local()


class ThreadsError(GridrlError, ValueError):
    """A thread count that is not a whole number ≥ 1."""


def _count(value, source: str) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ThreadsError(f"{source} must be a whole number of threads ≥ 1, got {value!r}")
    return int(text)


def policy() -> dict:
    """The thread counts gridrl applies now: ``{"torch": n | None, "numba": n | None,
    "source": why}``; ``None`` means that library's own setting is left alone."""
    if _explicit is not None:
        return {"torch": _explicit, "numba": _explicit, "source": "gridrl.set_threads"}
    env = os.environ.get("GRIDRL_THREADS", "").strip()
    if env:
        n = _count(env, "GRIDRL_THREADS")
        return {"torch": n, "numba": n, "source": "GRIDRL_THREADS"}
    return {"torch": None if os.environ.get("OMP_NUM_THREADS") else DEFAULT_THREADS,
            "numba": None if os.environ.get("NUMBA_NUM_THREADS") else DEFAULT_THREADS,
            "source": "default"}


def describe() -> str:
    """The policy in words, for reports: e.g. ``"torch 1 + numba 1 (default)"``."""
    p = policy()
    own = {"torch": "OMP_NUM_THREADS", "numba": "NUMBA_NUM_THREADS"}
    parts = [f"{lib} {p[lib] if p[lib] is not None else 'from ' + own[lib]}" for lib in own]
    return f"{' + '.join(parts)} ({p['source']})"


def set_threads(n: int) -> None:
    """Use ``n`` threads for torch's intra-op pool and gridrl's power-flow kernel from now on.

    Overrides ``GRIDRL_THREADS``, ``OMP_NUM_THREADS`` and ``NUMBA_NUM_THREADS``. numba cannot
    grow past the pool it started with (``NUMBA_NUM_THREADS``, default: every core).
    """
    global _explicit, _generation, _torch_done
    _explicit = _count(n, "set_threads(n)")
    _generation += 1
    _torch_done = False
    if "torch" in sys.modules:
        apply_torch()


def apply_torch() -> None:
    """Set torch's intra-op threads to the policy, once per process (and after each
    :func:`set_threads`). Called when gridrl builds an environment."""
    global _torch_done
    if _torch_done:
        return
    _launch_numba()
    n = policy()["torch"]
    if n is None:  # the user's OMP_NUM_THREADS, which numba's launch may have overwritten
        first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
        n = int(first) if first.isascii() and first.isdigit() and int(first) > 0 else None
    if n is not None:
        import torch

        torch.set_num_threads(n)
    _torch_done = True


def apply_numba() -> None:
    """Set numba's thread count in the calling thread to the policy (cheap when already done).
    Called by the power flow before each kernel launch."""
    if getattr(_local, "generation", None) == _generation:
        return
    _launch_numba()
    n = policy()["numba"]
    if n is not None:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    _local.generation = _generation


def _launch_numba() -> None:
    """Start numba's thread pool without disturbing torch's thread count.

    numba's OpenMP layer calls ``omp_set_num_threads(NUMBA_NUM_THREADS)`` when it starts, and
    torch resolves the same OpenMP symbols (both load ``libgomp.so.1``) and reads its intra-op
    count from there: without this, the first power flow silently gives torch every core.
    """
    global _numba_launched
    if _numba_launched:
        return
    import numba

    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    numba.get_num_threads()  # launches the pool
    if before is not None and torch.get_num_threads() != before:
        torch.set_num_threads(before)
    _numba_launched = True


@contextmanager
def using(n: int):
    """Run a block with ``n`` threads (as :func:`set_threads`), then restore the previous policy
    and torch's previous count. For benchmarks that compare thread counts in one process."""
    global _explicit, _generation, _torch_done
    import torch

    before = _explicit, torch.get_num_threads(), _torch_done
    set_threads(n)
    try:
        yield
    finally:
        _explicit = before[0]
        _generation += 1
        torch.set_num_threads(before[1])
        _torch_done = before[2]
