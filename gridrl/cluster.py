"""Where independent pieces of work run: in this process, or as tasks on a Ray cluster.

A comparison's cells and a sweep's training runs are independent: each is a plain top-level
function of picklable arguments that reports how many steps it has taken and returns its result.
An *executor* maps such a function over a list of arguments and yields the results as they
finish; whoever called it writes them (atomically, as each arrives), so an interrupted run keeps
every finished piece and a re-run resumes.

- ``local``: one after another in this process; nothing to start.
- ``ray``: one Ray task per piece (``num_cpus`` of the task = threads of its process, so a node
  runs as many pieces at once as it has CPUs and never more threads than cores: gridrl's thread
  policy, see :mod:`gridrl.threads`). Without an address a Ray instance sized to this machine is
  started for the run and stopped after; ``address="auto"`` joins the cluster started on this
  machine with ``ray start --head``, ``"host:port"`` the one whose head is there. When Ray is
  already initialised in this process (a notebook, a test), that instance is used as it is.

Faults: a task whose worker process dies (killed, out of memory, its node lost) is run again by
Ray (``max_retries``); its result is taken once, whichever attempt delivered it, and its progress
counts the furthest any attempt got, so nothing is counted twice. An exception raised by the
function itself (a user's mistake, e.g. a damaged run folder) is not retried: it is raised here
as it was raised there.

Ray is an optional extra (``pip install 'gridrl[ray]'``); nothing here imports it before a Ray
executor is asked for.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from gridrl.errors import GridrlError

__all__ = ["BACKENDS", "ClusterError", "LocalExecutor", "RayExecutor", "executor"]

#: how often a running task sends its step count to the driver (seconds)
_REPORT_EVERY_S = 0.5
#: how often the driver looks for finished tasks and fresh step counts (seconds)
_POLL_S = 0.25
#: attempts after the first for a task whose worker died
MAX_RETRIES = 3

Report = Callable[[int, int], None]
"""``report(index, steps)``: piece ``index`` has taken ``steps`` steps so far (cumulative)."""


class ClusterError(GridrlError):
    """Ray is missing, a cluster cannot be reached, or a task kept losing its worker."""


class LocalExecutor:
    """Run pieces one after another in this process (the default; nothing to start)."""

    name = "local"
    #: split large pieces into smaller tasks? Not worth it in one process.
    splits = False

    def __init__(self, address: str | None = None) -> None:
        if address is not None:
            raise ClusterError(f"--address {address} needs --backend ray (the local backend runs in this process)")

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def map(self, fn: Callable[..., Any], args: Sequence[tuple], report: Report | None = None,
            labels: Sequence[str] | None = None) -> Iterator[tuple[int, Any]]:
        """``(index, fn(*args[index], progress=…))`` for every piece, in order."""
        for i, a in enumerate(args):
            done = 0

            def progress(n: int, i=i) -> None:
                nonlocal done
                done += n
                if report is not None:
                    report(i, done)

            yield i, fn(*a, progress=progress)

    def describe(self) -> str:
        """Where the pieces run, for progress bars."""
        return "local"


class RayExecutor:
    """Run pieces as Ray tasks (see the module docstring).

    address: ``None`` (start a local instance sized to this machine), ``"auto"`` or
        ``"host:port"`` (join a running cluster; ``ray://host:port`` for Ray Client).
    cpus_per_task: CPUs each task reserves and the threads its process uses (default 1).
    """

    name = "ray"
    #: a piece with several batches of days is split into one task per batch
    splits = True

    def __init__(self, address: str | None = None, *, cpus_per_task: int = 1) -> None:
        if isinstance(cpus_per_task, bool) or not isinstance(cpus_per_task, int) or cpus_per_task < 1:
            raise ClusterError(f"cpus_per_task must be a whole number ≥ 1, got {cpus_per_task!r}")
        self.address = address
        self.cpus_per_task = cpus_per_task
        self._started = False
        self._ray = _import_ray()

    def __enter__(self) -> RayExecutor:
        ray = self._ray
        if ray.is_initialized():
            return self  # the caller's instance: used as it is, left running
        if self.address is not None:
            _check_reachable(self.address)
        kwargs: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": False}
        if self.address is None:
            kwargs.update(num_cpus=os.cpu_count() or 1, include_dashboard=False)
        try:
            ray.init(address=self.address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ClusterError(f"cannot connect to {where}: {first}"
                               + ("" if self.address is None else
                                  "; start one with `ray start --head` there (and `ray start --address ADDR` on "
                                  "the other machines), or drop --address to start one here")) from None
        self._started = True
        return self

    def __exit__(self, *exc) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False

    def describe(self) -> str:
        """``ray (N nodes, C CPUs)``: the cluster the tasks run on."""
        ray = self._ray
        if not ray.is_initialized():
            return "ray"
        cpus = int(ray.cluster_resources().get("CPU", 0))
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        return f"ray ({nodes} node{'s' if nodes != 1 else ''}, {cpus} CPUs)"

    def map(self, fn: Callable[..., Any], args: Sequence[tuple], report: Report | None = None,
            labels: Sequence[str] | None = None) -> Iterator[tuple[int, Any]]:
        """``(index, result)`` of every piece as its task finishes (any order).

        Each finished result is yielded once. When the caller stops early (an error, Ctrl-C),
        the tasks still pending are cancelled.
        """
        ray = self._ray
        if not ray.is_initialized():
            raise RuntimeError("use the executor in a `with` block")
        if not args:
            return
        sink = _sink_actor(ray).remote()
        task = _remote_task(ray).options(num_cpus=self.cpus_per_task, max_retries=MAX_RETRIES,
                                         retry_exceptions=False)
        refs = {task.remote(fn, a, i, sink, self.cpus_per_task): i for i, a in enumerate(args)}
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=len(pending), timeout=_POLL_S, fetch_local=True)
                if report is not None:
                    for i, steps in ray.get(sink.take.remote()).items():
                        report(i, steps)
                for ref in ready:
                    i = refs[ref]
                    yield i, self._result(ref, labels[i] if labels else f"task {i}")
            if report is not None:  # the last counts, sent just before each task returned
                for i, steps in ray.get(sink.take.remote()).items():
                    report(i, steps)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            ray.kill(sink)

    def _result(self, ref, label: str) -> Any:
        ray = self._ray
        from ray import exceptions as rex

        try:
            return ray.get(ref)
        except rex.RayTaskError as exc:  # the function raised: the same exception here
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise
        except (rex.WorkerCrashedError, rex.NodeDiedError, rex.OutOfMemoryError, rex.TaskUnschedulableError,
                rex.RayError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ClusterError(f"{label}: its worker died {MAX_RETRIES + 1} times ({first[:160]}); finished "
                               f"work is kept — run the same command again to resume") from None


BACKENDS: dict[str, type] = {"local": LocalExecutor, "ray": RayExecutor}


def executor(backend: str = "local", *, address: str | None = None, cpus_per_task: int = 1):
    """The executor named ``backend`` (``local`` or ``ray``), checked but not started: use it in a
    ``with`` block (a :class:`ClusterError` now for an unknown backend, an address without Ray, or
    Ray not installed; when entered, for a cluster that cannot be reached)."""
    if backend not in BACKENDS:
        raise ClusterError(f"unknown backend {backend!r} — known backends: {', '.join(BACKENDS)}")
    if backend == "local":
        return LocalExecutor(address)
    return RayExecutor(address, cpus_per_task=cpus_per_task)


# --------------------------------------------------------------------------------------------
# Ray's side (built on first use: nothing imports ray before a Ray executor is entered)
# --------------------------------------------------------------------------------------------


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ClusterError("--backend ray needs Ray, an optional extra: pip install 'gridrl[ray]'") from None
    return ray


def _check_reachable(address: str) -> None:
    """Fail in seconds, with one line, when ``host:port`` does not answer (ray.init would retry
    for a minute first). ``auto`` is left to Ray, which looks for a cluster on this machine."""
    if address == "auto" or address.startswith("local"):
        return
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterError(f"--address {address!r} is not host:port (e.g. 10.0.0.5:6379, the address "
                           f"`ray start --head` printed) or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5.0):
            pass
    except OSError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}; start one with "
                           f"`ray start --head` on that machine, or drop --address to start one here") from None


_REMOTE: dict[str, Any] = {}


def _remote_task(ray):
    if "task" not in _REMOTE:
        _REMOTE["task"] = ray.remote(_run_piece)
    return _REMOTE["task"]


def _sink_actor(ray):
    if "sink" not in _REMOTE:
        _REMOTE["sink"] = ray.remote(num_cpus=0)(_ProgressSink)
    return _REMOTE["sink"]


def _run_piece(fn: Callable[..., Any], args: tuple, index: int, sink, threads: int) -> Any:
    """One task: ``fn(*args, progress=…)`` with the thread policy set to the task's CPUs and its
    cumulative step count sent to ``sink`` every :data:`_REPORT_EVERY_S`."""
    from gridrl.threads import set_threads

    set_threads(threads)
    attempt = uuid.uuid4().hex
    state = {"steps": 0, "sent": 0.0}

    def progress(n: int) -> None:
        state["steps"] += n
        now = time.monotonic()
        if now - state["sent"] >= _REPORT_EVERY_S:
            state["sent"] = now
            sink.report.remote(index, attempt, state["steps"])

    result = fn(*args, progress=progress)
    sink.report.remote(index, attempt, state["steps"])
    return result


class _ProgressSink:
    """Step counts of running tasks, per piece and attempt; the driver takes the furthest attempt
    of each piece (a retried task starts from zero: its first attempt's steps are not added)."""

    def __init__(self) -> None:
        self.steps: dict[int, dict[str, int]] = {}

    def report(self, index: int, attempt: str, steps: int) -> None:
        self.steps.setdefault(index, {})[attempt] = steps

    def take(self) -> dict[int, int]:
        return {i: max(a.values()) for i, a in self.steps.items()}
