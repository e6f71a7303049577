"""Environment throughput: full batched steps against a MAPDN-style pandapower step.

A *full* environment step is everything :meth:`VoltageControlEnv.step` does — profiles of the
next step, actions to reactive power, the batched power flow (warm-started), observations,
local rewards, global metrics and episode aggregates. The MAPDN-style step is what a
pandapower environment does per step: write the profiles and the inverters' q into the net,
``pandapower.runpp``, read bus voltages and line losses back (no deep copy of the net, which
would only make pandapower slower). Both run the same day with the same random actions in one
process. :func:`run_env_bench` returns one flat dict; :func:`to_markdown` renders it.
``experiments/bench_env.py`` (and the CLI) are thin wrappers that write the report.
"""

from __future__ import annotations

import os
import platform
from contextlib import contextmanager
import time
import warnings

import numpy as np
import torch

from gridrl.env.config import EnvConfig
from gridrl.env.core import VoltageControlEnv

__all__ = ["bench_env_steps", "bench_pandapower_steps", "run_env_bench", "to_markdown"]


def _actions(steps: int, num_envs: int, n_agents: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.rand(steps, num_envs, n_agents, generator=g) - 1


def bench_env_steps(feeder, *, num_envs: int, steps: int = 48, repeats: int = 3, seed: int = 0,
                    day: int | None = None, threads: int | None = None) -> dict:
    """Time ``steps`` full environment steps (best of ``repeats`` episodes) at batch ``num_envs``.

    Every scenario runs the same ``day`` (default: the first training day) so repeats are
    comparable; actions are uniform in [-1, 1]. ``threads`` sets torch's and numba's thread
    counts for this measurement (``None``: leave them as they are).
    """
    with _threads(threads):
        return _bench_env_steps(feeder, num_envs=num_envs, steps=steps, repeats=repeats, seed=seed,
                                day=day)


@contextmanager
def _threads(n: int | None):
    """Run with ``n`` torch and numba threads, restoring both afterwards."""
    if n is None:
        yield
        return
    import numba

    before = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])


def _bench_env_steps(feeder, *, num_envs: int, steps: int, repeats: int, seed: int,
                     day: int | None) -> dict:
    day = feeder.days("train")[0] if day is None else day
    cfg = EnvConfig()
    steps = min(steps, cfg.steps_per_episode)
    t0 = time.perf_counter()
    env = VoltageControlEnv(feeder, num_envs=num_envs, seed=seed, config=cfg)
    build_s = time.perf_counter() - t0
    acts = _actions(steps, num_envs, env.n_agents, seed)
    best = np.inf
    iters = conv = 0.0
    for _ in range(repeats + 1):  # the first episode warms up (compilation, caches, threads)
        env.reset(days=[day] * num_envs)
        t = time.perf_counter()
        for k in range(steps):
            _, _, _, info = env.step(acts[k])
        elapsed = time.perf_counter() - t
        best = min(best, elapsed)
        iters = float(info["iterations"].double().mean())
        conv = float(info["converged"].double().mean())
    env_steps = steps / best
    return {"feeder": feeder.name, "num_envs": num_envs, "n_agents": env.n_agents,
            "n_bus": env.n_bus, "steps": steps, "env_build_s": build_s,
            "env_step_ms": 1e3 * best / steps, "env_steps_per_s": env_steps,
            "feeder_steps_per_s": env_steps * num_envs,
            "agent_steps_per_s": env_steps * num_envs * env.n_agents,
            "pf_iterations_last_step": iters, "converged_share_last_step": conv}


def bench_pandapower_steps(feeder, *, steps: int = 24, seed: int = 0, day: int | None = None) -> dict:
    """Time the MAPDN-style step: write profiles and q into the net, ``runpp``, read results."""
    import pandapower as pp

    day = feeder.days("train")[0] if day is None else day
    prof = feeder.profiles
    t = prof.day_steps(day)[:steps]
    load_p, load_q, sgen_p = prof.load_p_mw[t], prof.load_q_mvar[t], prof.sgen_p_mw[t]
    pv = prof.pv_p_mw[t]
    s_max = feeder.inverters.s_max_mva.to_numpy()
    q_avail = np.sqrt(np.maximum(s_max ** 2 - pv ** 2, 0.0))
    n_agents = len(feeder.agents)
    agent_of = np.array([feeder.agents.index(a) for a in feeder.inverters.agent])
    acts = _actions(len(t), 1, n_agents, seed)[:, 0].numpy()
    q = acts[:, agent_of] * q_avail
    net = feeder.net
    inv_rows = net.sgen.index.get_indexer(feeder.inverters.index)
    q_col = net.sgen.columns.get_loc("q_mvar")

    def one(k):
        net.load["p_mw"] = load_p[k]
        net.load["q_mvar"] = load_q[k]
        net.sgen["p_mw"] = sgen_p[k]
        net.sgen.iloc[inv_rows, q_col] = q[k]
        try:
            pp.runpp(net, lightsim2grid=False)
            ok = True
        except Exception:  # pandapower raises on non-convergence; MAPDN would reset here
            ok = False
        vm = net.res_bus.vm_pu.to_numpy()
        loss = float(net.res_line.pl_mw.sum() + net.res_trafo.pl_mw.sum())
        return ok, vm, loss

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one(0)  # warm-up
        start = time.perf_counter()
        ok = [one(k)[0] for k in range(len(t))]
        elapsed = time.perf_counter() - start
    return {"pp_steps": len(t), "pp_step_ms": 1e3 * elapsed / len(t),
            "pp_steps_per_s": len(t) / elapsed, "pp_converged_share": float(np.mean(ok))}


def run_env_bench(feeder: str = "ieee141", *, num_envs: int = 256, steps: int = 48,
                  pandapower_steps: int = 24, agent_feeder: str | None = "mvlv-rural",
                  agent_num_envs: int = 16, agent_steps: int = 8, repeats: int = 3,
                  seed: int = 0) -> dict:
    """The whole benchmark: env vs pandapower on ``feeder``, agent-steps/s on ``agent_feeder``."""
    from gridrl.grid.feeder import load_feeder

    f = load_feeder(feeder)
    out = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "torch_threads": torch.get_num_threads(),
           "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    out.update(bench_env_steps(f, num_envs=num_envs, steps=steps, repeats=repeats, seed=seed))
    one = bench_env_steps(f, num_envs=num_envs, steps=steps, repeats=repeats, seed=seed,
                          threads=1)
    out["one_thread"] = {k: one[k] for k in ("env_step_ms", "env_steps_per_s",
                                                   "feeder_steps_per_s", "agent_steps_per_s")}
    out.update(bench_pandapower_steps(f, steps=pandapower_steps, seed=seed))
    out["speedup_feeder_steps"] = out["feeder_steps_per_s"] / out["pp_steps_per_s"]
    out["one_thread"]["speedup_feeder_steps"] = (out["one_thread"]["feeder_steps_per_s"]
                                                      / out["pp_steps_per_s"])
    out["numba_threading_layer"] = _numba_layer()
    import numba

    out["numba_threads"] = numba.get_num_threads()
    if agent_feeder:
        try:
            big = load_feeder(agent_feeder)
            out["agent"] = bench_env_steps(big, num_envs=agent_num_envs, steps=agent_steps,
                                           repeats=repeats, seed=seed)
            one = bench_env_steps(big, num_envs=agent_num_envs, steps=agent_steps,
                                  repeats=repeats, seed=seed, threads=1)
            out["agent"]["one_thread"] = {k: one[k] for k in ("env_step_ms", "agent_steps_per_s")}
        except Exception as exc:  # recorded, not fatal: the main figure still stands
            out["agent"] = {"feeder": agent_feeder, "error": f"{type(exc).__name__}: {exc}"}
    return out


def _numba_layer() -> str:
    try:
        import numba

        return str(numba.threading_layer())
    except Exception:  # no parallel numba function has run, or numba is absent
        return "n/a"


def to_markdown(r: dict, *, command: str) -> str:
    """The benchmark as a short markdown report."""
    o = r["one_thread"]
    lines = [
        "# Environment throughput",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {r['machine']}, torch threads {r['torch_threads']}, numba threading layer "
        f"{r.get('numba_threading_layer', 'n/a')}, load average at start "
        f"{r['load_average']}. Timings are the best of several episodes. Other processes share "
        "the cores: with two threads, every torch op and solve waits for a thread that a "
        "neighbour may hold, so the one-thread column is the steadier figure on a busy machine.",
        "",
        "A full step = profiles → actions to q → batched power flow (warm start) → observations, "
        "local rewards, global metrics, episode aggregates. The MAPDN-style step writes the "
        "profiles and q into the pandapower net, runs `pandapower.runpp` "
        "(`lightsim2grid=False`) and reads voltages and losses; no deep copy of the net.",
        "",
        f"## {r['feeder']} ({r['n_bus']} buses, {r['n_agents']} agents), B = {r['num_envs']}",
        "",
        f"| measure | default threads (torch {r['torch_threads']}, numba {r['numba_threads']}) "
        "| 1 thread (torch and numba) |",
        "|---|---|---|",
        f"| env step (B = {r['num_envs']}) | {r['env_step_ms']:.2f} ms | {o['env_step_ms']:.2f} ms |",
        f"| env steps / s | {r['env_steps_per_s']:,.0f} | {o['env_steps_per_s']:,.0f} |",
        f"| feeder-steps / s (env) | {r['feeder_steps_per_s']:,.0f} | {o['feeder_steps_per_s']:,.0f} |",
        f"| agent-steps / s (env) | {r['agent_steps_per_s']:,.0f} | {o['agent_steps_per_s']:,.0f} |",
        f"| MAPDN-style pandapower step | {r['pp_step_ms']:.2f} ms | |",
        f"| feeder-steps / s (pandapower) | {r['pp_steps_per_s']:,.1f} | |",
        f"| **speed-up, feeder-steps / s** | **{r['speedup_feeder_steps']:,.0f}×** | "
        f"**{o['speedup_feeder_steps']:,.0f}×** |",
        "",
        f"Target: ≥ 1000× more feeder-steps per second than the pandapower step. Power-flow "
        f"iterations at the last timed step: {r['pf_iterations_last_step']:.1f} on average.",
        "",
    ]
    a = r.get("agent")
    if a:
        lines += [f"## {a['feeder']}: agent-steps per second", ""]
        if "error" in a:
            lines += [f"Not measured: {a['error']}", ""]
        else:
            lines += [
                "| measure | value |",
                "|---|---|",
                f"| buses / agents | {a['n_bus']} / {a['n_agents']} |",
                f"| B | {a['num_envs']} |",
                f"| env step | {a['env_step_ms']:.1f} ms |",
                f"| feeder-steps / s | {a['feeder_steps_per_s']:,.1f} |",
                f"| **agent-steps / s** | **{a['agent_steps_per_s']:,.0f}** |",
                f"| env step, 1 thread | {a['one_thread']['env_step_ms']:.1f} ms |",
                f"| agent-steps / s, 1 thread | {a['one_thread']['agent_steps_per_s']:,.0f} |",
                "",
            ]
    return "\n".join(lines)
