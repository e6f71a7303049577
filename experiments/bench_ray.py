"""One comparison in-process against the same comparison on Ray, and Ray's per-task overhead;
writes reports/bench/ray.md.

    python experiments/bench_ray.py [--feeders ieee33,ieee69] [--controllers none,droop,opf]

Both parts run in this one process, the competitor beside it, so the machine's other load falls
on both alike (the load average is reported with the figures):

1. *Comparison*: ``run_compare`` with ``backend="local"``, then with ``backend="ray"`` on a Ray
   instance this script starts (one CPU per task, as many tasks at once as the machine has CPUs),
   each into a fresh folder; the Ray figure includes starting Ray and its workers, as a user's
   first ``--backend ray`` command would. The tidy tables are checked to be identical (every
   column but the per-day wall-clock ``seconds``).
   A third run on a Ray instance already running (its workers started) separates Ray's start-up
   from its running cost.
2. *Per-task overhead*: the same trivial piece of work (returns at once) mapped over N items by
   the local executor and by the Ray executor on warm workers; the difference per item is what
   Ray adds to every cell or training run (scheduling, serialisation, the step-count reports).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd

from gridrl.io import write_text


def _nothing(i: int, *, progress=None) -> int:
    """A piece of work that takes no time: what is left is the executor's own cost."""
    if progress is not None:
        progress(1)
    return i


def _time_map(ex, n: int) -> float:
    start = time.perf_counter()
    got = sorted(i for i, _ in ex.map(_nothing, [(i,) for i in range(n)], report=lambda i, s: None))
    assert got == list(range(n))
    return time.perf_counter() - start


def _check_same(a: Path, b: Path) -> None:
    """Every tidy table of two comparison folders is identical but for the wall-clock column."""
    from gridrl.compare import collect

    for table in ("days", "steps", "voltages", "agents"):
        pd.testing.assert_frame_equal(collect(a, None, table).drop(columns=["seconds"], errors="ignore"),
                                      collect(b, None, table).drop(columns=["seconds"], errors="ignore"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--feeders", default="ieee33,ieee69", help="feeders of the timed comparison")
    p.add_argument("--controllers", default="none,droop,opf", help="controllers of the timed comparison")
    p.add_argument("--tasks", type=int, default=200, help="trivial tasks for the overhead figure")
    p.add_argument("--out", default="reports/bench/ray.md", help="markdown report path")
    args = p.parse_args(argv)

    import ray

    from gridrl.cluster import LocalExecutor, RayExecutor
    from gridrl.compare import CompareConfig, parse_controllers, run_compare

    load_before = os.getloadavg()
    cfg = CompareConfig(feeders=tuple(args.feeders.split(",")), controllers=parse_controllers(args.controllers))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        local = run_compare(cfg, out=Path(tmp) / "local", backend="local", progress=False)
        local_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        on_ray = run_compare(cfg, out=Path(tmp) / "ray", backend="ray", progress=False)
        ray_s = time.perf_counter() - t0
        _check_same(local.out, on_ray.out)

        n = args.tasks
        local_map = _time_map(LocalExecutor(), n)
        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        init_s = time.perf_counter() - t0
        try:
            with RayExecutor() as ex:
                first_s = _time_map(ex, os.cpu_count() or 1)  # starts the workers
                ray_map = min(_time_map(ex, n) for _ in range(3))
                cpus = int(ray.cluster_resources().get("CPU", 0))
            # the same comparison on the instance already running (its workers started)
            t0 = time.perf_counter()
            warm = run_compare(cfg, out=Path(tmp) / "ray-warm", backend="ray", progress=False)
            warm_s = time.perf_counter() - t0
            _check_same(local.out, warm.out)
        finally:
            ray.shutdown()
    cells = local.ran
    load_after = os.getloadavg()
    per_task_ms = 1e3 * (ray_map - local_map) / n

    command = "python experiments/bench_ray.py" + (f" --feeders {args.feeders}" if args.feeders != "ieee33,ieee69" else "") \
        + (f" --controllers {args.controllers}" if args.controllers != "none,droop,opf" else "")
    lines = [
        "# Ray backend: one comparison in-process against on Ray, and Ray's per-task overhead",
        "",
        f"Command: `{command}` (both backends in one process; figures are wall-clock).",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"ray {ray.__version__}; load average before {' '.join(f'{x:.2f}' for x in load_before)}, "
        f"after {' '.join(f'{x:.2f}' for x in load_after)} (other jobs share the machine: compare the ratio).",
        "",
        f"## One comparison: {', '.join(cfg.feeders)} × {', '.join(c.key for c in cfg.controllers)}, "
        f"every test day ({cells} cells)",
        "",
        "| backend | wall-clock s | vs local |",
        "|:---|---:|---:|",
        f"| local (this process) | {local_s:.1f} | 1.00 |",
        f"| ray, local instance of {cpus} CPUs (includes starting Ray and its workers) | {ray_s:.1f} | "
        f"{ray_s / local_s:.2f} |",
        f"| ray, on an instance already running (workers started) | {warm_s:.1f} | {warm_s / local_s:.2f} |",
        "",
        "The tidy tables of the three runs are identical (every column but the per-day wall-clock `seconds`).",
        "",
        "## Per-task overhead",
        "",
        "| what | figure |",
        "|:---|---:|",
        f"| `ray.init` of a local instance | {init_s:.1f} s |",
        f"| first {os.cpu_count()} tasks (worker processes start and import gridrl) | {first_s:.1f} s |",
        f"| {n} trivial tasks, local executor | {1e3 * local_map:.1f} ms |",
        f"| {n} trivial tasks, Ray executor on warm workers (best of 3) | {1e3 * ray_map:.1f} ms |",
        f"| **Ray's overhead per task** | **{per_task_ms:.2f} ms** |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    write_text(args.out, text)


if __name__ == "__main__":
    main()
