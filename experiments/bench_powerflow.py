"""Benchmark gridrl's batched power flow against pandapower, lightsim2grid and power-grid-model.

    python experiments/bench_powerflow.py --feeders ieee33,ieee141,mvlv-rural --batch 1024

Writes reports/bench/powerflow.md (see gridrl.grid.bench for what is measured and how).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from gridrl.grid.bench import machine_info, run_benchmark, to_markdown

NOTES = """
Notes:

- Timings are the best of several repeats of a whole batch (pandapower: median of 30 warm
  `runpp(init='results', lightsim2grid=False)` calls). The machine is shared; the load average
  above says how busy it was. With the second core taken by another process, two-thread runs
  lose most of their advantage, for every solver alike.
- max |ΔV| is the complex voltage difference from `pp.runpp` over the first 5 scenarios.
  lightsim2grid's pandapower converter models SimBench's transformers differently from
  pandapower (≈0.04–0.07 p.u. off), so its row there is a speed figure only. power-grid-model
  runs on a model built from pandapower's internal branch table (`generic_branch`), so it sees
  exactly pandapower's taps, shifts and switches; lightsim2grid's batched API has no sgen q, which
  rides on an extra zero-p load per sgen.
- gridrl: Z-bus fixed point on a sparse LU of the PQ block of pandapower's Ybus (minimum-degree
  order, no fill on radial feeders), factorized once; a numba kernel runs chunks of 64 (small
  feeders) or 16 (large) scenarios with the scenario as the innermost, vectorized loop, chunks
  handed out dynamically to the cores. Tolerance 1e-9 p.u. on the voltage step.
- What bounds it (single-thread profile, ieee141, batch 1024): one iteration costs ≈0.40 µs per
  scenario (≈3 ns per bus: the forward/backward sweeps stream six bus×scenario arrays through
  L1/L2, plus one division per bus for the injected current); 8.3 iterations on average reach
  1e-9; a fixed ≈0.7 µs goes to scattering injections and writing outputs and ≈0.6 µs to
  `np.angle` for `va_degree`. Fusing the first off-diagonal entry into the current computation
  defeated vectorization (0.40 → 0.65 µs per iteration) and was dropped; Anderson acceleration
  (m = 2) cut iterations only from 8.3 to 6.6 at roughly 40% more work per iteration.
- What would move it: an interleaved real/imaginary layout (≈15% faster sweeps in a
  micro-benchmark), float32 for the early iterations with float64 only for the last two,
  computing `va_degree` lazily, and an idle second core (the kernel scales with cores when it
  gets them: 5.2 → 3.7 µs per solve on ieee141 in a quiet moment).
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--feeders", default="ieee33,ieee141,mvlv-rural", help="comma-separated feeder names")
    p.add_argument("--batch", type=int, default=1024, help="scenarios per batch")
    p.add_argument("--batch-large", type=int, default=64,
                   help="batch for feeders above 1,000 buses (the issue's target uses 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per solver (best counts)")
    p.add_argument("--out", default="reports/bench/powerflow.md")
    args = p.parse_args(argv)

    import pandas as pd

    from gridrl.grid.feeder import load_feeder

    frames = []
    for name in [f.strip() for f in args.feeders.split(",") if f.strip()]:
        batch = args.batch if len(load_feeder(name).net.bus) <= 1000 else args.batch_large
        frames.append(run_benchmark([name], batch, seed=args.seed, repeats=args.repeats,
                                    progress=lambda m: print(m, file=sys.stderr, flush=True)))
    df = pd.concat(frames, ignore_index=True)
    notes = NOTES
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    report = to_markdown(df, command=command, info=machine_info(), notes=notes)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
