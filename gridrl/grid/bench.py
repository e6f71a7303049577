"""Power-flow benchmark: gridrl's batched solver against pandapower, lightsim2grid and
power-grid-model, on the same random scenarios, in one process.

:func:`run_benchmark` returns a tidy table (one row per feeder × solver × thread count);
:func:`to_markdown`
renders it with the machine it ran on. ``experiments/bench_powerflow.py`` and
``gridrl bench powerflow`` are thin wrappers. Timings are the best of several repeats, so a
neighbour process briefly taking a core shows up less; the report records the load average.
"""

from __future__ import annotations

import copy
import os
import platform
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from gridrl.grid.inverters import q_avail_mvar

__all__ = ["random_scenarios", "run_benchmark", "to_markdown"]


def random_scenarios(net, batch: int, *, seed: int = 0):
    """``batch`` scenarios: loads 0–1.5× nominal (one factor per load), PV 0–peak, and inverter q
    uniform within ``sqrt(s_max² − p²)`` with ``s_max = 1.2 × peak``. Returns
    ``(load_p_mw, load_q_mvar, sgen_p_mw, sgen_q_mvar)``, each ``[batch, n]``."""
    rng = np.random.default_rng(seed)
    load_p = (net.load.p_mw * net.load.scaling).to_numpy(dtype=float)
    load_q = (net.load.q_mvar * net.load.scaling).to_numpy(dtype=float)
    factor = rng.uniform(0.0, 1.5, (batch, len(load_p)))
    peak = (net.sgen.p_mw * net.sgen.scaling).to_numpy(dtype=float)
    sgen_p = rng.uniform(0.0, 1.0, (batch, len(peak))) * peak
    sgen_q = rng.uniform(-1.0, 1.0, sgen_p.shape) * q_avail_mvar(sgen_p, 1.2 * peak)
    return factor * load_p, factor * load_q, sgen_p, sgen_q


def _best_time(fn: Callable[[], object], *, repeats: int, min_seconds: float = 0.5) -> float:
    """Best wall time of one call over ``repeats`` calls (at least ``min_seconds`` in total)."""
    fn()  # warm-up: compilation, caches, thread pools
    best = np.inf
    start = time.perf_counter()
    n = 0
    while n < repeats or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        n += 1
        if n >= 50 * repeats:
            break
    return best


# ---------------------------------------------------------------------------------------------
# the solvers
# ---------------------------------------------------------------------------------------------


def _bench_gridrl(net, scen, repeats, threads):
    from gridrl.grid.powerflow import BatchedPowerFlow
    from gridrl.threads import using

    pf = BatchedPowerFlow(net)
    with using(threads):
        res = pf.solve(*scen)
        seconds = _best_time(lambda: pf.solve(*scen), repeats=repeats)
    note = f"converged {int(res.converged.sum())}/{len(res.converged)}, mean iterations {res.iterations.mean():.1f}"
    return seconds, res.v, note, threads


def _bench_pandapower(net, scen, n_calls):
    """``pp.runpp`` warm (``init='results'``) on the first ``n_calls`` scenarios; per-call time."""
    import pandapower as pp

    work = copy.deepcopy(net)
    work.load["scaling"] = 1.0
    work.sgen["scaling"] = 1.0
    lp, lq, gp, gq = scen
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pp.runpp(work, lightsim2grid=False)
        times = []
        v = np.full((n_calls, len(net.bus)), np.nan, dtype=complex)
        for k in range(n_calls):
            work.load["p_mw"] = lp[k]
            work.load["q_mvar"] = lq[k]
            work.sgen["p_mw"] = gp[k]
            work.sgen["q_mvar"] = gq[k]
            t = time.perf_counter()
            pp.runpp(work, lightsim2grid=False, init="results")
            times.append(time.perf_counter() - t)
            v[k] = work.res_bus.vm_pu.to_numpy() * np.exp(1j * np.deg2rad(work.res_bus.va_degree.to_numpy()))
    return float(np.median(times)), v, f"median of {n_calls} calls", 1


def _bench_lightsim2grid(net, scen, repeats, threads):
    """lightsim2grid's batched ``InjectionSweepCPP`` (independent scenarios, ``threads`` OS threads)
    and ``TimeSeriesCPP`` (chained warm starts); the faster counts. Its batched API takes no sgen
    q, so each sgen's q rides on an extra zero-p load at the sgen's bus."""
    import pandapower as pp
    from lightsim2grid.gridmodel import init_from_pandapower
    from lightsim2grid.lightsim2grid_cpp import InjectionSweepCPP, TimeSeriesCPP

    work = copy.deepcopy(net)
    for k, row in net.sgen.iterrows():
        pp.create_load(work, bus=row.bus, p_mw=0.0, q_mvar=0.0, in_service=bool(row.in_service))
    for table in ("sgen", "load", "gen", "ext_grid"):  # SimBench stores some limits as objects
        for col in work[table].columns:
            if work[table][col].dtype == object and col.startswith(("min_", "max_")):
                work[table][col] = pd.to_numeric(work[table][col], errors="coerce")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pp.runpp(work, lightsim2grid=False)
        model = init_from_pandapower(work)
    lp, lq, gp, gq = scen
    b = lp.shape[0]
    load_p = np.ascontiguousarray(np.hstack([lp, np.zeros_like(gq)]))
    load_q = np.ascontiguousarray(np.hstack([lq, -gq]))
    sgen_p = np.ascontiguousarray(gp)
    gen_p = np.zeros((b, len(model.get_generators())))
    v0 = (work.res_bus.vm_pu.fillna(1.0) * np.exp(1j * np.deg2rad(work.res_bus.va_degree.fillna(0.0))))
    v0 = v0.to_numpy().astype(complex).reshape(-1, 1)
    best = None
    for cls, note, used in ((InjectionSweepCPP, "InjectionSweep", threads), (TimeSeriesCPP, "TimeSeries", 1)):
        computer = cls(model)
        if cls is InjectionSweepCPP:
            computer.nb_thread = threads
        run = lambda: computer.compute_Vs(gen_p, sgen_p, load_p, load_q, v0, 20, 1e-8)
        status = run()
        if status != 1:
            continue
        seconds = _best_time(run, repeats=repeats)
        if best is None or seconds < best[0]:
            best = (seconds, computer.get_voltages()[:, : len(net.bus)].copy(), note, used)
    if best is None:
        raise RuntimeError("lightsim2grid did not converge")
    return best


def _bench_pgm(net, scen, repeats, threads):
    """power-grid-model batch power flow on a model built from pandapower's internal branch
    model (one ``generic_branch`` per ppc branch, every node on one voltage base, so taps,
    shifts and switches are exactly pandapower's); Newton–Raphson and iterative current, the
    faster counts."""
    import pandapower as pp
    from power_grid_model import CalculationMethod, ComponentType, DatasetType, PowerGridModel, initialize_array

    work = copy.deepcopy(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pp.runpp(work, lightsim2grid=False)
    ppci = work._ppc["internal"]
    bus, branch = ppci["bus"], ppci["branch"]
    base_mva = float(ppci["baseMVA"])
    u_rated = 1e3  # one base for every node: all quantities are pandapower's per-unit values
    z_base = u_rated ** 2 / (base_mva * 1e6)
    n = bus.shape[0]
    node = initialize_array(DatasetType.input, ComponentType.node, n)
    node["id"] = np.arange(n)
    node["u_rated"] = u_rated
    live = branch[:, 10].real > 0  # BR_STATUS
    br = branch[live]
    m = br.shape[0]
    gb = initialize_array(DatasetType.input, ComponentType.generic_branch, m)
    gb["id"] = n + np.arange(m)
    gb["from_node"] = br[:, 0].real.astype(int)
    gb["to_node"] = br[:, 1].real.astype(int)
    gb["from_status"] = 1
    gb["to_status"] = 1
    gb["r1"] = br[:, 2].real * z_base
    gb["x1"] = br[:, 3].real * z_base
    from pandapower.pypower.idx_brch import BR_B, BR_G

    gb["g1"] = br[:, BR_G].real / z_base  # transformer magnetizing conductance
    gb["b1"] = br[:, BR_B].real / z_base
    tap = br[:, 8].real
    gb["k"] = np.where(tap == 0, 1.0, tap)
    gb["theta"] = np.deg2rad(br[:, 9].real)
    gb["sn"] = 1e9
    lookup = np.asarray(work._pd2ppc_lookups["bus"])
    next_id = n + m
    ref = np.asarray(ppci["ref"])
    src = initialize_array(DatasetType.input, ComponentType.source, len(ref))
    src["id"] = next_id + np.arange(len(ref))
    next_id += len(ref)
    src["node"] = ref
    src["status"] = 1
    src["u_ref"] = bus[ref, 7]
    src["u_ref_angle"] = np.deg2rad(bus[ref, 8])
    src["sk"] = 1e20  # stiff: pandapower's ext_grid has no internal impedance in a power flow

    def injection(table):
        nodes = lookup[table.bus.to_numpy(dtype=int)]
        arr = initialize_array(DatasetType.input, ComponentType.sym_load if table is net.load else ComponentType.sym_gen, len(table))
        nonlocal next_id
        arr["id"] = next_id + np.arange(len(table))
        next_id += len(table)
        ok = table.in_service.to_numpy(dtype=bool) & (nodes >= 0) & (nodes < n)
        arr["node"] = np.where(ok, nodes, 0)
        arr["status"] = ok.astype(np.int8)
        arr["type"] = 0  # constant power
        arr["p_specified"] = 0.0
        arr["q_specified"] = 0.0
        return arr

    load = injection(net.load)
    gen = injection(net.sgen)
    shunt_rows = np.flatnonzero((bus[:, 4] != 0) | (bus[:, 5] != 0))
    data = {ComponentType.node: node, ComponentType.generic_branch: gb, ComponentType.source: src,
            ComponentType.sym_load: load, ComponentType.sym_gen: gen}
    if len(shunt_rows):
        sh = initialize_array(DatasetType.input, ComponentType.shunt, len(shunt_rows))
        sh["id"] = next_id + np.arange(len(shunt_rows))
        sh["node"] = shunt_rows
        sh["status"] = 1
        sh["g1"] = bus[shunt_rows, 4] / base_mva / z_base
        sh["b1"] = bus[shunt_rows, 5] / base_mva / z_base
        data[ComponentType.shunt] = sh
    model = PowerGridModel(data, system_frequency=50.0)
    lp, lq, gp, gq = scen
    b = lp.shape[0]
    up_load = initialize_array(DatasetType.update, ComponentType.sym_load, (b, len(load)))
    up_load["id"] = load["id"]
    up_load["status"] = load["status"]
    up_load["p_specified"] = lp * 1e6
    up_load["q_specified"] = lq * 1e6
    up_gen = initialize_array(DatasetType.update, ComponentType.sym_gen, (b, len(gen)))
    up_gen["id"] = gen["id"]
    up_gen["status"] = gen["status"]
    up_gen["p_specified"] = gp * 1e6
    up_gen["q_specified"] = gq * 1e6
    update = {ComponentType.sym_load: up_load, ComponentType.sym_gen: up_gen}
    best = None
    for method in (CalculationMethod.newton_raphson, CalculationMethod.iterative_current):
        run = lambda: model.calculate_power_flow(
            update_data=update, threading=threads, calculation_method=method, error_tolerance=1e-8,
            max_iterations=30, output_component_types=[ComponentType.node])
        try:
            out = run()
        except Exception:
            continue
        seconds = _best_time(run, repeats=repeats)
        if best is None or seconds < best[0]:
            res = out[ComponentType.node]
            v_ppci = res["u_pu"] * np.exp(1j * res["u_angle"])
            rows = lookup[net.bus.index.to_numpy()]
            ok = (rows >= 0) & (rows < n)
            v = np.full((b, len(net.bus)), np.nan, dtype=complex)
            v[:, ok] = v_ppci[:, rows[ok]]
            best = (seconds, v, method.name, threads)
    if best is None:
        raise RuntimeError("power-grid-model failed on every method")
    return best


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------


def run_benchmark(feeders: Sequence[str], batch: int = 1024, *, seed: int = 0, repeats: int = 5,
                  pandapower_calls: int = 30, check: int = 5, threads: int | None = None,
                  solvers: Sequence[str] = ("gridrl", "pandapower", "lightsim2grid", "power-grid-model"),
                  progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Time every solver on the same ``batch`` random scenarios per feeder.

    gridrl runs twice, on one thread and on ``threads`` (default: every core); lightsim2grid
    and power-grid-model get ``threads``; pandapower is single-threaded. Returns one row per
    feeder × solver × thread count: ``threads`` (what the row's timing used),
    ``us_per_solve`` (best batch time / batch, or the median ``pp.runpp`` call),
    ``gridrl_speedup`` (how many times faster gridrl is than this competitor *on the same
    number of threads*; empty on gridrl's own rows), ``max_dv_pu`` (largest complex voltage
    difference from ``pp.runpp`` over the first ``check`` scenarios) and a note (iterations,
    method, or why a solver could not run).
    """
    from gridrl.grid.feeder import load_feeder
    from gridrl.grid.powerflow import reference_solve

    threads = threads or os.cpu_count() or 1
    rows = []
    say = progress or (lambda msg: None)
    for name in feeders:
        net = load_feeder(name).net
        scen = random_scenarios(net, batch, seed=seed)
        k = min(check, batch)
        ref = reference_solve(net, *(x[:k] for x in scen))
        runners = {
            "gridrl": [lambda n=n: _bench_gridrl(net, scen, repeats, n) for n in sorted({1, threads})],
            "pandapower": [lambda: _bench_pandapower(net, scen, min(pandapower_calls, batch))],
            "lightsim2grid": [lambda: _bench_lightsim2grid(net, scen, repeats, threads)],
            "power-grid-model": [lambda: _bench_pgm(net, scen, repeats, threads)],
        }
        for solver in solvers:
            for run in runners[solver]:
                say(f"{name}: {solver}")
                try:
                    seconds, v, note, used = run()
                except Exception as exc:  # a competitor that cannot load the feeder is reported, not fatal
                    rows.append(dict(feeder=name, n_bus=len(net.bus), batch=batch, solver=solver,
                                     threads=np.nan, us_per_solve=np.nan, max_dv_pu=np.nan,
                                     note=f"failed: {type(exc).__name__}: {exc}"[:160]))
                    continue
                per_solve = seconds if solver == "pandapower" else seconds / batch
                m = min(k, len(v))  # pandapower may have solved fewer scenarios than checked
                dv = float(np.nanmax(np.abs(v[:m] - ref.v[:m]))) if ref.converged.any() else np.nan
                rows.append(dict(feeder=name, n_bus=len(net.bus), batch=batch, solver=solver,
                                 threads=used, us_per_solve=per_solve * 1e6, max_dv_pu=dv, note=note))
    df = pd.DataFrame(rows)
    own = df[df.solver == "gridrl"].set_index(["feeder", "threads"])["us_per_solve"]
    df["gridrl_speedup"] = [np.nan if r.solver == "gridrl" else
                            r.us_per_solve / own.get((r.feeder, r.threads), np.nan)
                            for r in df.itertuples()]
    return df[["feeder", "n_bus", "batch", "solver", "threads", "us_per_solve", "gridrl_speedup",
               "max_dv_pu", "note"]]


def machine_info() -> dict:
    from importlib.metadata import version

    from gridrl.threads import describe

    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpu": _cpu_name(), "cores": os.cpu_count(), "gridrl thread policy": describe(),
            "numba threading layer": _numba_layer(), "torch": version("torch"),
            "numpy": np.__version__}
    try:
        info["load average (1/5/15 min)"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        pass
    for pkg in ("pandapower", "lightsim2grid", "power_grid_model"):
        try:
            info[pkg] = version(pkg.replace("_", "-"))
        except Exception:
            info[pkg] = "not installed"
    return info


def _numba_layer() -> str:
    import numba

    try:
        return str(numba.threading_layer())
    except ValueError:  # no parallel function has run yet
        return "not started"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def to_markdown(df: pd.DataFrame, *, command: str = "", info: dict | None = None, notes: str = "") -> str:
    """The benchmark table as a markdown report (results, machine, command, notes)."""
    info = info or machine_info()
    lines = ["# Power-flow benchmark", ""]
    if command:
        lines += ["Command:", "", f"    {command}", ""]
    lines += ["| feeder | buses | batch | solver | threads | µs per solve | gridrl is × faster (same threads) "
              "| max \\|ΔV\\| vs pp.runpp (p.u.) | note |",
              "|---|---:|---:|---|---:|---:|---:|---:|---|"]
    for r in df.itertuples():
        us = "—" if np.isnan(r.us_per_solve) else f"{r.us_per_solve:,.1f}"
        sp = "—" if np.isnan(r.gridrl_speedup) else f"{r.gridrl_speedup:,.1f}"
        dv = "—" if np.isnan(r.max_dv_pu) else f"{r.max_dv_pu:.1e}"
        th = "—" if np.isnan(r.threads) else f"{int(r.threads)}"
        lines.append(f"| {r.feeder} | {r.n_bus} | {r.batch} | {r.solver} | {th} | {us} | {sp} | {dv} | {r.note} |")
    lines += ["", "Machine:", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    if notes:
        lines += ["", notes.strip(), ""]
    return "\n".join(lines) + "\n"
