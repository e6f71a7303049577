"""How hard is voltage control under load growth and more PV? The scan behind compare_stress.toml.

For each IEEE feeder and each (load_scale, pv_scale) of a small grid, runs no control and IEEE
1547-2018 Category B droop over every test day in that scenario (``EnvConfig.load_scale`` /
``pv_scale``; more PV comes with inverters rated like the existing ones) and reports the share of
controllable steps and the worst |v − 1|. Writes ``reports/stress_scan.md``.

    .venv/bin/python experiments/stress_scan.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import gridrl
from gridrl.control import make_controller
from gridrl.env import EnvConfig
from gridrl.evaluate import evaluate
from gridrl.io import write_text

FEEDERS = ("ieee33", "ieee69", "ieee141")
SCALES = ((1.0, 1.0), (1.0, 1.5), (1.2, 1.2), (1.2, 1.5), (1.3, 1.5))  # (load_scale, pv_scale)


def scan(feeders=FEEDERS, scales=SCALES) -> list[dict]:
    rows = []
    for name in feeders:
        feeder = gridrl.load_feeder(name)
        for load_scale, pv_scale in scales:
            env = EnvConfig(load_scale=load_scale, pv_scale=pv_scale)
            row = {"feeder": name, "load_scale": load_scale, "pv_scale": pv_scale}
            for key, ctrl in (("none", make_controller("none", feeder)),
                              ("droop", make_controller("droop", feeder, preset="ieee1547-b"))):
                t0 = time.perf_counter()
                days = evaluate(feeder, ctrl, env_config=env).days
                row[f"{key}_controllable"] = float(days["controllable_rate"].mean())
                row[f"{key}_max_abs_dv_pu"] = float(days["max_abs_dv_pu"].max())
                row[f"{key}_flagged"] = int((days["unsettled_steps"] + days["diverged_steps"]).sum())
                print(f"{name} load×{load_scale} pv×{pv_scale} {key}: {row[f'{key}_controllable']:.4f} "
                      f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def to_markdown(rows: list[dict]) -> str:
    lines = ["# Stress scan: controllable rate on the test days", "",
             "Command: `python experiments/stress_scan.py`", "",
             "Every test day (73) of each IEEE feeder, loads × load_scale, installed PV and inverter ratings × "
             "pv_scale. Controllable: share of steps with every monitored bus in 0.95–1.05 p.u. Flagged: "
             "unsettled or diverged steps.", "",
             "| feeder | load × | PV × | none: controllable | none: max \\|v−1\\| | 1547-B: controllable | "
             "1547-B: max \\|v−1\\| | 1547-B: flagged |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['feeder']} | {r['load_scale']:g} | {r['pv_scale']:g} | {r['none_controllable']:.4f} | "
                     f"{r['none_max_abs_dv_pu']:.4f} | {r['droop_controllable']:.4f} | "
                     f"{r['droop_max_abs_dv_pu']:.4f} | {r['droop_flagged']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    report = to_markdown(scan())
    print(report)
    write_text(Path(__file__).resolve().parents[1] / "reports" / "stress_scan.md", report)
