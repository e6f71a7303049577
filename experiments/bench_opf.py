"""Benchmark the OPF: analytic sensitivities against forward differences, and the mvlv-rural day.

    python experiments/bench_opf.py
    python experiments/bench_opf.py --feeders ieee33,ieee141 --no-evaluations   # quick
    python experiments/bench_opf.py --day-only --no-previous                    # the mvlv-rural day only

Part 1, derivatives (same process, same points, a ratio): at the sunny-noon step of every test
day (mvlv-rural: of two test days, as one evaluation batch of two days would), with actions drawn
in [-1, 1], the first derivatives the OPF needs per SQP iteration — ``d vm_pu / d a`` of every
monitored bus and ``d loss_mw / d a``, for every agent — by

- forward differences, as the OPF computed them before: one batched power flow of ``B·N``
  perturbed scenarios (:func:`gridrl.control.plant.finite_difference`);
- the analytic sensitivities it uses now: the power-flow Jacobian's block LU and one pair of
  triangular solves per inverter (:meth:`gridrl.control.plant.PlantDerivatives.first_order`).

Best of ``--repeats`` calls each; the table gives both, their ratio and how far apart they are.

Part 2, evaluations: ``gridrl evaluate --feeder mvlv-rural --controller opf --days 2`` (one day,
96 steps) and the opf on all 73 test days of ieee141, each timed from the controller's
construction to the last step, in this process: wall time and this process's CPU time (the OPF
runs on one thread, so on a quiet machine wall ≈ CPU; on a shared one wall is inflated by the
other jobs). With ``--previous`` (default) the mvlv-rural day is also run, in the same process,
with the per-iteration work of the previous method — the whole ``[n_mon, N]`` voltage Jacobian
(one solve per inverter), band rows screened from it, every QP by DAQP from scratch — so the
ratio of the two is measured under the same load.

Writes reports/bench/opf.md. The machine may be shared: the load average is recorded before and
after; wall-clock figures are only comparable at similar load, the ratio in part 1 much more so.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import numpy as np


def _noon_plant(feeder, n_days: int, pf, amap):
    from gridrl.control.plant import plant_from_profiles

    days = feeder.days("test")[:n_days]
    prof = feeder.profiles
    steps = np.array([d * prof.steps_per_day + prof.steps_per_day // 2 for d in days])
    return plant_from_profiles(feeder, steps, pf=pf, amap=amap)


def _best(fn, repeats: int) -> float:
    fn()  # warm-up: compilation, caches
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_derivatives(name: str, repeats: int, seed: int = 0) -> dict:
    from gridrl.control.plant import ActionMap, PlantDerivatives, finite_difference
    from gridrl.grid.feeder import load_feeder

    feeder = load_feeder(name)
    pf = feeder.power_flow()
    amap = ActionMap(feeder, pf)
    model = PlantDerivatives(feeder, pf, amap)
    n_days = 2 if len(feeder.net.bus) > 1000 else len(feeder.days("test"))
    plant = _noon_plant(feeder, n_days, pf, amap)
    rows = np.arange(plant.batch)
    actions = np.random.default_rng(seed).uniform(-1.0, 1.0, (plant.batch, amap.n_agents))

    def analytic():
        res = plant.solve(actions)  # the OPF has this solution already; counted here all the same
        return model.first_order(plant, rows, res.v)

    def forward():
        return finite_difference(plant, actions, rows, monitored=model.monitored)

    t_fd, t_an = _best(forward, repeats), _best(analytic, repeats)
    jac, grad, _ = analytic()
    fd_jac, fd_grad = forward()
    return {"feeder": name, "buses": len(feeder.net.bus), "agents": amap.n_agents, "scenarios": plant.batch,
            "fd_ms": 1e3 * t_fd, "analytic_ms": 1e3 * t_an, "ratio": t_fd / t_an,
            "jac_diff": float(np.abs(jac - fd_jac).max() / np.abs(fd_jac).max()),
            "grad_diff": float(np.abs(grad - fd_grad).max() / np.abs(fd_grad).max())}


class _PreviousMethod:
    """Within this block the OPF does the previous method's work per SQP iteration: the whole
    voltage Jacobian, band rows screened from it, every QP by DAQP (no Cholesky factor)."""

    def __enter__(self):
        from gridrl.control import opf

        self._saved = opf._subproblem

        def dense(hess, chol, grad, lin, j, vm, lo_v, hi_v, lo_box, hi_box, active):
            return opf._subproblem_dense(hess, grad, lin.jacobian(j), vm, lo_v, hi_v, lo_box, hi_box, active)

        opf._subproblem = dense
        return self

    def __exit__(self, *exc):
        from gridrl.control import opf

        opf._subproblem = self._saved


def bench_evaluation(name: str, days, method: str = "current") -> dict:
    import gridrl
    from gridrl.evaluate import evaluate

    feeder = gridrl.load_feeder(name)
    day_list = list(days) if days is not None else feeder.days("test")
    load = _load()
    t, cpu = time.perf_counter(), time.process_time()
    ctrl = gridrl.make_controller("opf", feeder)
    if method == "previous":
        with _PreviousMethod():
            ev = evaluate(feeder, ctrl, split="test", days=day_list)
    else:
        ev = evaluate(feeder, ctrl, split="test", days=day_list)
    seconds, cpu_seconds = time.perf_counter() - t, time.process_time() - cpu
    d, s = ev.days, ev.steps
    return {"feeder": name, "method": method, "days": len(day_list), "seconds": seconds, "cpu_seconds": cpu_seconds,
            "energy_loss_mwh": float(d.energy_loss_mwh.sum()), "unsettled": int(d.unsettled_steps.sum()),
            "infeasible": int(d.infeasible_steps.sum()), "load": f"{load} → {_load()}",
            "loss_mw": s.sort_values(["day", "step"]).loss_mw.to_numpy(dtype=np.float64)}


def to_markdown(deriv: list[dict], evals: list[dict], *, command: str, info: dict, load_before: str,
                load_after: str) -> str:
    lines = ["# OPF benchmark", "", "Command:", "", f"    {command}", ""]
    if deriv:
        lines += ["## Derivatives per SQP iteration: forward differences vs analytic sensitivities", "",
                  "| feeder | buses | agents | scenarios | forward differences (ms) | analytic (ms) "
                  "| analytic is × faster | max rel. diff. dV/da | max rel. diff. dloss/da |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in deriv:
            lines.append(f"| {r['feeder']} | {r['buses']} | {r['agents']} | {r['scenarios']} | {r['fd_ms']:,.1f} "
                         f"| {r['analytic_ms']:,.1f} | {r['ratio']:,.1f} | {r['jac_diff']:.1e} | {r['grad_diff']:.1e} |")
        lines += ["", "Forward differences carry their own truncation error (step 1e-3 in action units, about "
                  "step/2 × curvature in the loss gradient), which is most of the difference shown.", ""]
    if evals:
        lines += ["## Evaluations with the opf (from the controller's construction to the last step)", "",
                  "| feeder | method | days | wall s | CPU s | loss MWh | unsettled steps | infeasible steps "
                  "| load average (1 min) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in evals:
            lines.append(f"| {r['feeder']} | {r['method']} | {r['days']} | {r['seconds']:,.1f} | {r['cpu_seconds']:,.1f} "
                         f"| {r['energy_loss_mwh']:.4f} | {r['unsettled']} | {r['infeasible']} | {r['load']} |")
        lines.append("")
        cur = next((r for r in evals if r["feeder"] == "mvlv-rural" and r["method"] == "current"), None)
        prev = next((r for r in evals if r["feeder"] == "mvlv-rural" and r["method"] == "previous"), None)
        if cur and prev:
            gap = float(np.abs(cur["loss_mw"] - prev["loss_mw"]).max())
            lines += [f"mvlv-rural day, previous ÷ current: wall ×{prev['seconds'] / cur['seconds']:.1f}, "
                      f"CPU ×{prev['cpu_seconds'] / cur['cpu_seconds']:.1f}; the two agree on every step's "
                      f"loss to {gap:.1e} MW.", ""]
    lines += ["Machine:", ""] + [f"- {k}: {v}" for k, v in info.items()]
    lines += [f"- load average before (1/5/15 min): {load_before}", f"- load average after: {load_after}", ""]
    return "\n".join(lines)


def _load() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--feeders", default="ieee33,ieee141,mv-rural,mvlv-rural", help="feeders of part 1")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per method in part 1 (best counts)")
    p.add_argument("--evaluations", action=argparse.BooleanOptionalAction, default=True,
                   help="run part 2 (the mvlv-rural day and ieee141's test days)")
    p.add_argument("--day-only", action="store_true", help="only the mvlv-rural day of part 2")
    p.add_argument("--previous", action=argparse.BooleanOptionalAction, default=True,
                   help="in part 2, also run the mvlv-rural day with the previous method's work (slow)")
    p.add_argument("--out", default="reports/bench/opf.md")
    args = p.parse_args(argv)

    from gridrl.grid.bench import machine_info
    from gridrl.io import write_text

    load_before = _load()
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    deriv = []
    for name in [] if args.day_only else [f.strip() for f in args.feeders.split(",") if f.strip()]:
        say(f"derivatives on {name} ...")
        deriv.append(bench_derivatives(name, args.repeats))
    evals = []
    if args.evaluations:
        runs = [("mvlv-rural", [2], "current")] + ([("mvlv-rural", [2], "previous")] if args.previous else [])
        if not args.day_only:
            runs.append(("ieee141", None, "current"))
        for name, days, method in runs:
            say(f"opf evaluation on {name} ({method} method) ...")
            evals.append(bench_evaluation(name, days, method))
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    report = to_markdown(deriv, evals, command=command, info=machine_info(), load_before=load_before,
                         load_after=_load())
    write_text(args.out, report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
