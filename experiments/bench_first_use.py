"""First-command time on a fresh install against a warm one; writes reports/bench/first_use.md.

    python experiments/bench_first_use.py

Runs the same command three times in fresh processes, with an empty feeder cache
(``GRIDRL_CACHE_DIR``) and an empty numba cache (``NUMBA_CACHE_DIR``) of its own: *cold* (what
a new user's first command costs), after ``gridrl warmup`` (what ``make setup`` leaves), and
once more (*warm*). Wall time depends on the machine's other load; CPU time (user + system of
the command's processes) much less, so both are reported, with the load average.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gridrl.io import write_text

COMMAND = "evaluate --feeder ieee33 --controller droop --days 2 --no-report"


def _run(args: list[str], env: dict) -> tuple[float, float, str]:
    """Wall and CPU seconds of one gridrl invocation, and its stderr."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "gridrl.cli", *args], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"gridrl {' '.join(args)} failed:\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stderr


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--command", default=COMMAND, help="gridrl arguments to time")
    p.add_argument("--out", default="reports/bench/first_use.md", help="markdown report path")
    args = p.parse_args(argv)
    command = shlex.split(args.command)
    rows = []
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        def caches(name: str) -> dict:
            return {**os.environ, "GRIDRL_CACHE_DIR": f"{tmp}/{name}/feeders",
                    "NUMBA_CACHE_DIR": f"{tmp}/{name}/numba"}

        # each run writes to its own output folder: a finished result would be reused
        wall, cpu, err = _run(command, {**caches("cold"), "GRIDRL_OUT_DIR": f"{tmp}/out1"})
        notes = [line for line in err.splitlines()
                 if line.startswith(("building", "built", "compiling", "power-flow"))]
        rows.append(("cold: empty feeder and numba caches", wall, cpu))
        warm = caches("warm")
        feeder = command[command.index("--feeder") + 1] if "--feeder" in command else None
        w_wall, w_cpu, _ = _run(["warmup"] + (["--feeder", feeder] if feeder else []), warm)
        wall, cpu, _ = _run(command, {**warm, "GRIDRL_OUT_DIR": f"{tmp}/out2"})
        rows.append(("after `gridrl warmup` (what `make setup` leaves)", wall, cpu))
        wall, cpu, _ = _run(command, {**warm, "GRIDRL_OUT_DIR": f"{tmp}/out3"})
        rows.append(("warm: run again", wall, cpu))
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = ["# First-command time", "",
             "Command: `" + " ".join(["python experiments/bench_first_use.py",
                                      *map(shlex.quote, sys.argv[1:] if argv is None else argv)]) + "`",
             "", f"Timed: `gridrl {args.command}` in a fresh process each time. Load average "
             f"(1/5/15 min) {load} before, {load_after} after; {os.cpu_count()} cores.", "",
             "| run | wall s | CPU s |", "|---|---:|---:|"]
    lines += [f"| {name} | {wall:.1f} | {cpu:.1f} |" for name, wall, cpu in rows]
    lines += ["", f"`gridrl warmup` itself: {w_wall:.1f} s wall, {w_cpu:.1f} s CPU.", "",
              "What the cold run said on stderr:", ""] + [f"    {n}" for n in notes] + [""]
    text = "\n".join(lines)
    write_text(Path(args.out), text)
    print(text)


if __name__ == "__main__":
    main()
