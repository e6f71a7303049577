"""Environment throughput: full batched steps against a MAPDN-style pandapower step, and the
thread policy on a quiet and on a contended machine.

A *full* environment step is everything :meth:`VoltageControlEnv.step` does — profiles of the
next step, actions to reactive power, the batched power flow (warm-started), observations,
local rewards, global metrics and episode aggregates. The MAPDN-style step is what a
pandapower environment does per step: write the profiles and the inverters' q into the net,
``pandapower.runpp``, read bus voltages and line losses back (no deep copy of the net, which
would only make pandapower slower). Both run the same day with the same random actions in one
process.

The contention part (:func:`bench_contention`) times single steps, and a learner-sized torch
update beside them, under each thread setting, quiet and while one CPU-bound process that
the benchmark starts itself (:func:`background_load`) competes for the cores; short rounds
alternate quiet and contended so that a change in the machine's other load hits both alike.
:func:`run_env_bench` returns one dict; :func:`to_markdown` renders it.
``experiments/bench_env.py`` and ``gridrl bench env`` are thin wrappers that write the report.
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext

import numpy as np
import torch

from gridrl.env.config import EnvConfig
from gridrl.env.core import VoltageControlEnv
from gridrl.grid.inverters import q_avail_mvar
from gridrl.threads import describe, policy, using

__all__ = ["BackgroundLoad", "background_load", "bench_contention", "bench_env_steps", "bench_pandapower_steps",
           "run_env_bench", "to_markdown"]


def _actions(steps: int, num_envs: int, n_agents: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.rand(steps, num_envs, n_agents, generator=g) - 1


def bench_env_steps(feeder, *, num_envs: int, steps: int = 48, repeats: int = 3, seed: int = 0,
                    day: int | None = None, threads: int | None = None) -> dict:
    """Time ``steps`` full environment steps (best of ``repeats`` episodes) at batch ``num_envs``.

    Every scenario runs the same ``day`` (default: the first training day) so repeats are
    comparable; actions are uniform in [-1, 1]. ``threads`` sets torch's and numba's thread
    counts for this measurement (``None``: the thread policy, see :mod:`gridrl.threads`).
    """
    with nullcontext() if threads is None else using(threads):
        return _bench_env_steps(feeder, num_envs=num_envs, steps=steps, repeats=repeats, seed=seed,
                                day=day)


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
    q_avail = q_avail_mvar(pv, feeder.inverters.s_max_mva.to_numpy(), q_at_night=feeder.spec.pv.q_at_night)
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


class BackgroundLoad:
    """A running CPU-bound neighbour process (see :func:`background_load`), which can be paused
    and resumed (SIGSTOP / SIGCONT) so that quiet and contended phases can alternate often
    without starting a process each time."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)
        os.waitpid(self.proc.pid, os.WUNTRACED)  # returns once it has stopped

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


@contextmanager
def background_load(seconds: float = 600.0):
    """One CPU-bound process beside this one for the duration of the block.

    It runs at this process's priority (a ``nice`` benchmark gets a ``nice`` neighbour) in a
    session of its own, as another user's job would: Linux's autogroup scheduler shares the CPU
    between sessions first, so a child in the benchmark's own session would only halve the
    benchmark's share instead of competing like a neighbour. It is killed when the block ends — Ctrl-C included — and exits by itself when this process dies
    without cleaning up, or after ``seconds``. Yields a :class:`BackgroundLoad` once it runs.
    """
    code = ("import os, signal, sys, time\n"
            "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"  # the parent stops it, not Ctrl-C
            "end = time.monotonic() + float(sys.argv[1])\n"
            "parent = int(sys.argv[2])\n"
            "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
            "while time.monotonic() < end and os.getppid() == parent:\n    pass\n")
    proc = subprocess.Popen([sys.executable, "-S", "-c", code, str(float(seconds)), str(os.getpid())],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.stdout.readline()
        yield BackgroundLoad(proc)
    finally:
        proc.kill()  # SIGKILL also ends a paused process
        proc.wait()
        proc.stdout.close()


class _LearnerUpdate:
    """What a learner does between environment steps, for timing: an MLP (obs → 256 → 256 → 1,
    tanh, the paper's actor size) over every agent-row of one batch, forward, backward and an
    Adam step. Built under a forked RNG, so the caller's torch seed is untouched."""

    def __init__(self, obs_dim: int, rows: int, seed: int):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = torch.nn.Sequential(torch.nn.Linear(obs_dim, 256), torch.nn.Tanh(),
                                           torch.nn.Linear(256, 256), torch.nn.Tanh(),
                                           torch.nn.Linear(256, 1))
            self.x = torch.randn(rows, obs_dim)
            self.y = torch.randn(rows, 1)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-4)

    def __call__(self) -> None:
        loss = ((self.net(self.x) - self.y) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()


def _settings() -> dict[str, tuple[int, int] | None]:
    """Thread settings to compare, as (torch, numba) counts: the policy, one thread each,
    torch on one thread with numba on every core, every core each (the default before the
    policy); a setting equal to the policy is left out."""
    cores = os.cpu_count() or 1
    p = policy()
    out: dict[str, tuple[int, int] | None] = {f"policy ({p['source']})": None}
    for label, pair in (("one thread each", (1, 1)), ("numba on every core", (1, cores)),
                        ("every core (the default before the policy)", (cores, cores))):
        if pair != (p["torch"], p["numba"]) and pair not in out.values():
            out[label] = pair
    return out


@contextmanager
def _pair(pair: tuple[int, int] | None):
    """Run with ``(torch, numba)`` threads (``None``: the policy), restoring both afterwards."""
    if pair is None:
        yield
        return
    torch_n, numba_n = pair
    with using(numba_n):
        before = torch.get_num_threads()
        torch.set_num_threads(torch_n)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def bench_contention(feeder, *, num_envs: int = 256, steps: int = 20, rounds: int = 6,
                     updates: int = 2, seed: int = 0, day: int | None = None,
                     settings: dict[str, tuple[int, int] | None] | None = None,
                     load_seconds: float = 1800.0) -> dict:
    """Milliseconds per env step and per learner update under each thread setting, quiet and
    with one CPU-bound process beside it.

    ``settings`` maps a label to ``(torch, numba)`` thread counts (``None``: the policy;
    default: see :func:`_settings`). One background process lives for the whole measurement
    and is paused in quiet phases; each of ``rounds`` rounds times, quiet and then contended,
    ``steps`` single steps and ``updates`` learner updates per setting (after one untimed
    warm-up step and update each). Many short rounds pair quiet and contended figures in time,
    so that the machine's other load, which drifts, weighs on both alike. Returns ``{"rows":
    [...], "load_average_before", ..._after}``; a row holds its label, the torch and numba
    counts it ran with and, per condition, the median and max ms of steps and updates.
    """
    import numba

    settings = _settings() if settings is None else settings
    day = feeder.days("train")[0] if day is None else day
    env = VoltageControlEnv(feeder, num_envs=num_envs, seed=seed, config=EnvConfig())
    steps = min(steps, env.episode_steps - 1)
    acts = _actions(steps + 1, num_envs, env.n_agents, seed)
    learner = _LearnerUpdate(env.obs_dim, num_envs * env.n_agents, seed)
    times = {(label, cond, what): [] for label in settings for cond in ("quiet", "contended")
             for what in ("step", "step_cpu", "update")}
    counts = {}
    before = _load_average()
    with background_load(load_seconds) as load:
        for _ in range(rounds):
            for cond in ("quiet", "contended"):
                load.resume() if cond == "contended" else load.pause()
                for label, pair in settings.items():
                    with _pair(pair):
                        env.reset(days=[day] * num_envs)
                        for k in range(steps + 1):
                            t, cpu = time.perf_counter(), time.process_time()
                            env.step(acts[k])
                            if k:  # the first step warms the thread pool up
                                times[label, cond, "step"].append(time.perf_counter() - t)
                                times[label, cond, "step_cpu"].append(time.process_time() - cpu)
                        for k in range(updates + 1):
                            t = time.perf_counter()
                            learner()
                            if k:
                                times[label, cond, "update"].append(time.perf_counter() - t)
                        counts[label] = (torch.get_num_threads(), numba.get_num_threads())
    rows = []
    for label in settings:
        row = {"label": label, "torch": counts[label][0], "numba": counts[label][1]}
        for (lab, cond, what), ts in times.items():
            if lab == label:
                ms = 1e3 * np.asarray(ts)
                row[f"{cond}_{what}_median_ms"] = float(np.median(ms))
                row[f"{cond}_{what}_max_ms"] = float(ms.max())
        rows.append(row)
    return {"feeder": feeder.name, "num_envs": num_envs, "n_agents": env.n_agents, "steps": steps,
            "rounds": rounds, "updates": updates, "rows": rows,
            "load_average_before": before, "load_average_after": _load_average()}


def _load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # not on every platform
        return "n/a"


def run_env_bench(feeder: str = "ieee141", *, num_envs: int = 256, steps: int = 48,
                  pandapower_steps: int = 24, agent_feeder: str | None = "mvlv-rural",
                  agent_num_envs: int = 16, agent_steps: int = 8, repeats: int = 3,
                  contention: bool = True, contention_steps: int = 20, contention_rounds: int = 6,
                  seed: int = 0) -> dict:
    """The whole benchmark: env vs pandapower on ``feeder`` under the thread policy and on every
    core, agent-steps/s on ``agent_feeder``, and (``contention``) the thread settings quiet
    and contended (:func:`bench_contention`)."""
    import numba

    from gridrl.grid.feeder import load_feeder

    f = load_feeder(feeder)
    cores = os.cpu_count() or 1
    out = {"machine": f"{platform.processor() or platform.machine()}, {cores} cores",
           "policy": describe(), "cores": cores, "load_average": _load_average()}
    out.update(bench_env_steps(f, num_envs=num_envs, steps=steps, repeats=repeats, seed=seed))
    out["torch_threads"], out["numba_threads"] = torch.get_num_threads(), numba.get_num_threads()
    every = bench_env_steps(f, num_envs=num_envs, steps=steps, repeats=repeats, seed=seed,
                            threads=cores)
    out["every_core"] = {k: every[k] for k in ("env_step_ms", "env_steps_per_s",
                                               "feeder_steps_per_s", "agent_steps_per_s")}
    out.update(bench_pandapower_steps(f, steps=pandapower_steps, seed=seed))
    out["speedup_feeder_steps"] = out["feeder_steps_per_s"] / out["pp_steps_per_s"]
    out["every_core"]["speedup_feeder_steps"] = (out["every_core"]["feeder_steps_per_s"]
                                                 / out["pp_steps_per_s"])
    out["numba_threading_layer"] = _numba_layer()
    if agent_feeder:
        try:
            big = load_feeder(agent_feeder)
            out["agent"] = bench_env_steps(big, num_envs=agent_num_envs, steps=agent_steps,
                                           repeats=repeats, seed=seed)
            every = bench_env_steps(big, num_envs=agent_num_envs, steps=agent_steps,
                                    repeats=repeats, seed=seed, threads=cores)
            out["agent"]["every_core"] = {k: every[k] for k in ("env_step_ms", "agent_steps_per_s")}
        except Exception as exc:  # recorded, not fatal: the main figure still stands
            out["agent"] = {"feeder": agent_feeder, "error": f"{type(exc).__name__}: {exc}"}
    if contention:
        out["contention"] = bench_contention(f, num_envs=num_envs, steps=contention_steps,
                                             rounds=contention_rounds, seed=seed)
    return out


def _numba_layer() -> str:
    try:
        import numba

        return str(numba.threading_layer())
    except Exception:  # no parallel numba function has run, or numba is absent
        return "n/a"


def to_markdown(r: dict, *, command: str) -> str:
    """The benchmark as a short markdown report."""
    e = r["every_core"]
    cores = r["cores"]
    lines = [
        "# Environment throughput",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {r['machine']}, numba threading layer {r.get('numba_threading_layer', 'n/a')}, "
        f"load average (1/5/15 min) at start {r['load_average']}. gridrl's thread policy: "
        f"{r['policy']} (see `gridrl/threads.py`; `GRIDRL_THREADS=n` or `gridrl.set_threads(n)` "
        "change it). Throughput timings are the best of several episodes.",
        "",
    ]
    c = r.get("contention")
    if c:
        lines += _contention_markdown(c)
    lines += [
        f"## {r['feeder']} ({r['n_bus']} buses, {r['n_agents']} agents), B = {r['num_envs']}",
        "",
        "A full step = profiles → actions to q → batched power flow (warm start) → observations, "
        "local rewards, global metrics, episode aggregates. The MAPDN-style step writes the "
        "profiles and q into the pandapower net, runs `pandapower.runpp` "
        "(`lightsim2grid=False`) and reads voltages and losses; no deep copy of the net.",
        "",
        f"| measure | policy (torch {r['torch_threads']} + numba {r['numba_threads']}) "
        f"| every core ({cores} + {cores}) |",
        "|---|---|---|",
        f"| env step (B = {r['num_envs']}) | {r['env_step_ms']:.2f} ms | {e['env_step_ms']:.2f} ms |",
        f"| env steps / s | {r['env_steps_per_s']:,.0f} | {e['env_steps_per_s']:,.0f} |",
        f"| feeder-steps / s (env) | {r['feeder_steps_per_s']:,.0f} | {e['feeder_steps_per_s']:,.0f} |",
        f"| agent-steps / s (env) | {r['agent_steps_per_s']:,.0f} | {e['agent_steps_per_s']:,.0f} |",
        f"| MAPDN-style pandapower step | {r['pp_step_ms']:.2f} ms | |",
        f"| feeder-steps / s (pandapower) | {r['pp_steps_per_s']:,.1f} | |",
        f"| **speed-up, feeder-steps / s** | **{r['speedup_feeder_steps']:,.0f}×** | "
        f"**{e['speedup_feeder_steps']:,.0f}×** |",
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
                f"| env step (policy) | {a['env_step_ms']:.1f} ms |",
                f"| feeder-steps / s | {a['feeder_steps_per_s']:,.1f} |",
                f"| **agent-steps / s** | **{a['agent_steps_per_s']:,.0f}** |",
                f"| env step, every core | {a['every_core']['env_step_ms']:.1f} ms |",
                f"| agent-steps / s, every core | {a['every_core']['agent_steps_per_s']:,.0f} |",
                "",
            ]
    return "\n".join(lines)


def _contention_markdown(c: dict) -> list[str]:
    rows = c["rows"]
    one = next((x for x in rows if (x["torch"], x["numba"]) == (1, 1)), None)
    before = next((x for x in rows if "before" in x["label"]), None)
    policy = rows[0]
    out = [
        f"## Thread settings, quiet and contended ({c['feeder']}, B = {c['num_envs']})",
        "",
        f"Single steps with random actions ({c['steps']} per round) and learner updates "
        f"({c['updates']} per round: MLP obs → 256 → 256 → 1 over all {c['num_envs']}·"
        f"{c['n_agents']} agent-rows, forward, backward, Adam), {c['rounds']} rounds, each "
        "quiet and then *contended*: beside one CPU-bound process that the benchmark starts, "
        "pauses in quiet phases and stops at the end. \"Quiet\" means no load of the "
        "benchmark's own: other work on the machine counts in both (load average "
        f"{c['load_average_before']} before, {c['load_average_after']} after).",
        "",
        "| threads (torch + numba) | step quiet, median / max ms | step contended, median / max ms "
        "| contended ÷ quiet | CPU per step, quiet / contended, median ms "
        "| update quiet, median ms | update contended, median ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for x in rows:
        out.append(
            f"| {x['label']} ({x['torch']} + {x['numba']}) "
            f"| {x['quiet_step_median_ms']:.2f} / {x['quiet_step_max_ms']:.1f} "
            f"| {x['contended_step_median_ms']:.2f} / {x['contended_step_max_ms']:.1f} "
            f"| {x['contended_step_median_ms'] / x['quiet_step_median_ms']:.2f}× "
            f"| {x['quiet_step_cpu_median_ms']:.2f} / {x['contended_step_cpu_median_ms']:.2f} "
            f"| {x['quiet_update_median_ms']:.1f} | {x['contended_update_median_ms']:.1f} |")
    out += ["", "CPU per step is this process's CPU time over all its threads: on one thread it is "
            "close to what the step takes on an idle core; above the wall time, threads spin or "
            "run in parallel."]
    out.append("")
    if one is not None:
        ratio = policy["contended_step_median_ms"] / one["quiet_step_median_ms"]
        out.append(f"- Policy contended ÷ one thread quiet (median step): **{ratio:.2f}×** "
                   "(target ≤ 1.5×).")
    if before is not None:
        ratio = policy["quiet_step_median_ms"] / before["quiet_step_median_ms"]
        worst = policy["contended_step_max_ms"] / before["contended_step_max_ms"]
        out.append(f"- Policy quiet ÷ every core quiet (median step): **{ratio:.2f}×** (target "
                   f"≤ 1.2×); worst contended step, policy ÷ every core: {worst:.2f}×.")
    out.append("")
    return out
