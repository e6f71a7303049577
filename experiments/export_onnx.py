"""ONNX export of a trained run: agreement with the torch policy and latency on one CPU core.

    python experiments/export_onnx.py --run /work/runs/stability/ieee141-dmpo-threads1-seed0

Exports the run (``gridrl export RUN --format onnx``) into ``--onnx`` (default a temporary
folder), records the observations its deployed policy meets on the feeder's test days (whole
days; no figure of the days is computed), and reports

- agreement: the largest |action| difference between the torch policy (through the safety
  envelope) and the exported graphs, run as the inverters run them (``message.onnx``, pooling as
  ``policy.json`` says, ``action.onnx``) and as one ``network.onnx``, over every recorded agent
  observation; the same with 20 % of the messages lost (the torch policy given the same loss);
- latency on one core (one intra-op thread; torch.set_num_threads(1)) in this one process: one
  agent's step as its inverter computes it (``message.onnx`` then ``action.onnx``, batch 1,
  pooling included), the whole feeder through ``network.onnx`` per agent, and the torch policy's
  step of the whole feeder (all agents at once, the way gridrl evaluates it) per agent;
- the graphs' file sizes.

Writes a JSON file of the figures (``--json``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _timed(fn, repeats: int) -> np.ndarray:
    """Seconds of each of ``repeats`` calls of ``fn`` (after 20 warm-up calls)."""
    for _ in range(20):
        fn()
    out = np.empty(repeats)
    for k in range(repeats):
        t0 = time.perf_counter()
        fn()
        out[k] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--onnx", default=None, help="export folder (default: a temporary one)")
    p.add_argument("--days", default=None, help="test days, comma-separated (default: every test day)")
    p.add_argument("--repeats", type=int, default=2000, help="timed calls per latency figure")
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args(argv)

    import torch

    from gridrl import set_threads
    from gridrl.export import deployed_run, export_onnx, record_observations
    from gridrl.export.onnx_graph import DeployedAgents, numpy_pool
    from gridrl.grid.days import check_days

    set_threads(1)
    torch.set_num_threads(1)
    folder = Path(args.onnx or tempfile.mkdtemp(prefix="gridrl-onnx-")) / "policy"
    t0 = time.perf_counter()
    exported = export_onnx(args.run, folder)
    export_s = time.perf_counter() - t0
    days = None if args.days is None else [int(d) for d in args.days.split(",")]
    obs, sent = record_observations(args.run, split="test", days=days)
    run, feeder, _, policy = deployed_run(args.run)
    agents = DeployedAgents(folder, threads=1)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    network = ort.InferenceSession(str(folder / "network.onnx"), opts, providers=["CPUExecutionProvider"])

    # agreement on every recorded observation, in chunks
    worst_agents = worst_network = worst_lossy = 0.0
    graph = policy.inner.graph
    rng = np.random.default_rng(0)
    for s in range(0, len(obs), 512):
        x, ref = obs[s:s + 512], sent[s:s + 512]
        worst_agents = max(worst_agents, float(np.abs(agents.act(x)[0] - ref).max()))
        worst_network = max(worst_network, float(np.abs(network.run(None, {"obs": x})[0] - ref).max()))
        mask = torch.as_tensor(rng.random((len(x), graph.n_agents, graph.n_agents)) > 0.2)
        lossy_ref = policy.act(torch.as_tensor(x), message_mask=mask).numpy()
        delivered = np.zeros(mask.shape, dtype=bool)
        delivered[:, graph.receiver.numpy(), graph.sender.numpy()] = graph.delivered(mask).numpy()
        worst_lossy = max(worst_lossy, float(np.abs(agents.act(x, delivered)[0] - lossy_ref).max()))

    # latency on one core
    n = obs.shape[1]
    h = agents.description["messages"]["floats"]
    picks = rng.integers(0, len(obs), size=64)
    # every agent's message at the sampled steps: what each inverter receives from its neighbours
    received = {int(b): agents.sessions["message"].run(None, {"obs": obs[b], "agent": np.arange(n, dtype=np.int64)})[0]
                for b in picks}
    calls = [(int(b), int(j)) for b in picks for j in range(n)]
    it = iter(calls * (args.repeats // len(calls) + 2))

    def one_agent():
        """One inverter's step: its message, the means of the messages it received, its action."""
        b, j = next(it)
        pooled = heard = None
        if agents.hops:
            pooled, heard = numpy_pool(received[b][None], agents.receives[j:j + 1], agents.hops)
            pooled, heard = pooled[0, 0], heard[0, 0]
        agents.agent_step(obs[b, j], j, pooled, heard)

    agent_s = _timed(one_agent, args.repeats)
    x1 = obs[picks[0]:picks[0] + 1]
    network_s = _timed(lambda: network.run(None, {"obs": x1}), max(200, args.repeats // 10)) / n
    t1 = torch.as_tensor(x1)
    with torch.no_grad():
        torch_s = _timed(lambda: policy.act(t1), max(200, args.repeats // 10)) / n
    sizes = {name: g["bytes"] for name, g in exported.description["graphs"].items()}
    figures = {
        "run": str(run.path), "feeder": feeder.name, "agents": n, "hops": agents.hops, "message_floats": h,
        "test_days": len(check_days(feeder, "test", days)), "recorded_steps": int(len(obs)),
        "recorded_agent_observations": int(obs.shape[0] * obs.shape[1]),
        "max_abs_diff_agents": worst_agents, "max_abs_diff_network": worst_network,
        "max_abs_diff_agents_20pct_messages_lost": worst_lossy,
        "agent_step_us_median": float(np.median(agent_s) * 1e6), "agent_step_us_p90": float(np.quantile(agent_s, 0.9) * 1e6),
        "agent_step_us_p99": float(np.quantile(agent_s, 0.99) * 1e6), "agent_step_us_mean": float(agent_s.mean() * 1e6),
        "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "network_per_agent_us_median": float(np.median(network_s) * 1e6),
        "torch_per_agent_us_median": float(np.median(torch_s) * 1e6),
        "torch_step_us_median": float(np.median(torch_s) * n * 1e6),
        "bytes": sizes, "export_seconds": round(export_s, 1),
        "onnxruntime": ort.__version__, "torch": torch.__version__,
    }
    if args.json:
        from gridrl.io import write_json

        write_json(args.json, figures)
    print(f"| {feeder.name} | {n} | {figures['recorded_agent_observations']:,} | {worst_agents:.1e} | "
          f"{worst_network:.1e} | {worst_lossy:.1e} | {figures['agent_step_us_median']:.0f} "
          f"(p90 {figures['agent_step_us_p90']:.0f}, p99 {figures['agent_step_us_p99']:.0f}) | {figures['network_per_agent_us_median']:.1f} | "
          f"{figures['torch_per_agent_us_median']:.1f} | "
          f"{', '.join(f'{k} {v / 1024:.1f} KiB' for k, v in sizes.items())} |")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
