"""The fault and growth suite: every controller through the conditions a utility worries about.

``gridrl robustness --config experiments/robustness_ieee33.toml`` (or :func:`run_robustness`)
runs the baselines and trained runs of a :class:`RobustnessConfig` on the test days of one
feeder under each condition of :data:`CONDITIONS`, and writes::

    OUT/<condition>/              a comparison folder (gridrl compare's layout; resumable)
    OUT/worst-outage/<agent>/     one per agent: that agent's inverters out all day
    OUT/table.csv                 tidy: condition, controller, group, controllable rate, loss, …
    OUT/summary.md                one table, rate / loss per condition and controller group

Conditions (each a change of the comparison's ``[env]``; every other setting as the config's):

- ``nominal``;
- ``noise-0.005``, ``noise-0.01``: Gaussian noise (p.u.) on every voltage sensor, the policies'
  observations and droop's own reading alike;
- ``dropout-0.2``, ``dropout-0.5``, ``dropout-1.0``: each message between neighbours lost with
  that probability at each step (1.0: no communication at all);
- ``worst-outage``: one agent's inverters out (q = 0) all day; every agent is tried and each
  controller is charged with *its own* worst (lowest controllable rate, then highest loss; the
  agent is named in the table);
- ``outage-0.1``: each agent's inverters out for a whole day with probability 0.1;
- ``pv-1.5``: 50 % more PV (ratings with it); ``load-1.2-pv-1.5``: and loads 20 % higher;
- ``no-q-night``: inverters give no reactive power while their PV produces nothing.

The tuned droop (``droop:tuned``) keeps the curve fitted on the nominal training days (under the
suite's base ``[env]``: e.g. with ``q_at_night = true`` the curve fitted with night-time reactive
power) in every condition, as a utility would deploy it (it is not refitted for a fault); so does any other
fitted curve (``droop:curves=FILE``, the curves distilled by ``gridrl export``), whose fit is
then not checked against the condition's scenario. A group of runs (the
seeds of one learner) is reported as the mean over its runs; every row says what the controller
knew and how often a policy handed over to droop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from gridrl.config import from_dict, read_toml
from gridrl.errors import GridrlError

__all__ = ["CONDITIONS", "LearnerGroup", "RobustnessConfig", "RobustnessError", "load_config", "run_robustness",
           "summary_markdown"]

#: condition → (description, ``[env]`` changes); ``worst-outage`` is swept over every agent
CONDITIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "nominal": ("nominal", {}),
    "noise-0.005": ("sensor noise 0.005 p.u.", {"sensor_noise_pu": 0.005}),
    "noise-0.01": ("sensor noise 0.01 p.u.", {"sensor_noise_pu": 0.01}),
    "dropout-0.2": ("message dropout 0.2", {"message_dropout": 0.2}),
    "dropout-0.5": ("message dropout 0.5", {"message_dropout": 0.5}),
    "dropout-1.0": ("message dropout 1.0", {"message_dropout": 1.0}),
    "worst-outage": ("worst single-inverter outage", {}),
    "outage-0.1": ("outage probability 0.1", {"outage_prob": 0.1}),
    "pv-1.5": ("PV ×1.5", {"pv_scale": 1.5}),
    "load-1.2-pv-1.5": ("loads ×1.2, PV ×1.5", {"load_scale": 1.2, "pv_scale": 1.5}),
    "no-q-night": ("no reactive power at night", {"q_at_night": False}),
}


class RobustnessError(GridrlError, ValueError):
    """A robustness suite that cannot run as asked."""


@dataclass(frozen=True, kw_only=True)
class LearnerGroup:
    """The runs of one learner (its seeds), reported together as their mean.

    label: the group's name in the table (e.g. ``dmpo``).
    runs: run folders of ``gridrl train`` on the suite's feeder.
    envelope: the safety envelope the policies act through (fields of
        :class:`~gridrl.control.envelope.EnvelopeConfig`; default on), e.g. ``{ mechanism = "off" }``.
    """

    label: str
    runs: tuple[str, ...]
    envelope: dict | None = None


@dataclass(frozen=True, kw_only=True)
class RobustnessConfig:
    """A fault and growth suite on one feeder.

    feeder: the feeder (the runs' own).
    baselines: rule-based controllers (``none``, ``droop``, ``droop:PRESET``, ``droop:tuned``).
    learners: groups of trained runs (see :class:`LearnerGroup`).
    conditions: which of :data:`CONDITIONS` to run (default: all, in that order).
    split: the days to run: ``test`` (default: reporting) or ``val`` (the validation days, to
        choose between settings without looking at the test days).
    days: only these days of the split (default: all).
    env: the comparison's base ``[env]`` (each condition changes it).
    out: output folder (the CLI's ``--out`` takes precedence).
    """

    feeder: str
    baselines: tuple[str, ...] = ("none", "droop", "droop:tuned")
    learners: tuple[LearnerGroup, ...] = ()
    conditions: tuple[str, ...] | None = None
    split: Literal["test", "val"] = "test"
    days: tuple[int, ...] | None = None
    env: dict | None = None
    out: str | None = None

    def __post_init__(self) -> None:
        problems = []
        unknown = [c for c in (self.conditions or ()) if c not in CONDITIONS]
        if unknown:
            problems.append(f"conditions: unknown {', '.join(map(repr, unknown))} (known: {', '.join(CONDITIONS)})")
        if self.split not in ("test", "val"):
            problems.append(f"split must be test or val, got {self.split!r}")
        labels = [g.label for g in self.learners]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            problems.append(f"learners: label {', '.join(map(repr, dup))} used twice")
        for g in self.learners:
            if not g.runs:
                problems.append(f"learners: group {g.label!r} has no runs")
        if problems:
            raise RobustnessError("; ".join(problems))


def load_config(path: str | Path) -> RobustnessConfig:
    """A :class:`RobustnessConfig` from a TOML file (every problem reported at once)."""
    return from_dict(RobustnessConfig, read_toml(path), source=str(path))


def _baseline_specs(feeder, baselines: Sequence[str], env_config=None):
    """Controller specs of the baselines; ``droop:tuned`` as the fixed curve of the nominal fit
    (fitted under ``env_config``, the suite's base scenario), and a curve file's curves without
    their fit (kept as fitted in every condition)."""
    import dataclasses

    from gridrl.compare import ControllerSpec, parse_controllers

    specs = []
    for spec in parse_controllers(",".join(baselines)):
        if spec.name == "droop" and spec.preset == "tuned":
            from gridrl.control.tuning import tuned_curve

            fitted = tuned_curve(feeder, env_config=env_config)
            c = fitted.curve
            spec = ControllerSpec(name="droop", curve={"v_pu": list(c.v_pu), "q": list(c.q), "reference": c.reference},
                                  label="droop-tuned")
        elif spec.curve is not None and "fit" in spec.curve:
            spec = dataclasses.replace(spec, curve={k: v for k, v in spec.curve.items() if k != "fit"})
        specs.append(spec)
    return specs


def _learner_specs(groups: Sequence[LearnerGroup]):
    from gridrl.compare import ControllerSpec

    specs, group_of = [], {}
    for g in groups:
        for run in g.runs:
            label = f"{g.label}/{Path(run).name}"
            specs.append(ControllerSpec(run=run, label=label, envelope=g.envelope))
            group_of[label] = g.label
    return specs, group_of


def run_robustness(config: RobustnessConfig, *, out: str | Path | None = None,
                   progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Run (or resume) the suite; returns the tidy table (one row per condition × controller)
    and writes ``table.csv`` and ``summary.md`` into ``out``."""
    from gridrl.compare import CompareConfig, CompareError, run_compare
    from gridrl.env import EnvConfig
    from gridrl.grid.feeder import load_feeder
    from gridrl.io import default_out, write_text

    out = Path(out or config.out or default_out("robustness"))
    feeder = load_feeder(config.feeder)
    try:
        base_env = from_dict(EnvConfig, dict(config.env or {}), source="env")
    except GridrlError as exc:
        raise RobustnessError(str(exc)) from None
    say = progress or (lambda _m: None)
    base_specs = _baseline_specs(feeder, config.baselines, base_env)
    run_specs, group_of = _learner_specs(config.learners)
    specs = tuple(base_specs + run_specs)
    group_of.update({s.key: s.key for s in base_specs})

    def compare(env_changes: Mapping[str, Any], folder: Path) -> pd.DataFrame:
        env = dataclasses.replace(base_env, **env_changes)
        cfg = CompareConfig(feeders=(config.feeder,), controllers=specs, split=config.split, days=config.days, env=env)
        try:
            return run_compare(cfg, out=folder, progress=False).days
        except CompareError as exc:
            raise RobustnessError(str(exc)) from None

    rows = []
    for name in config.conditions or tuple(CONDITIONS):
        description, changes = CONDITIONS[name]
        say(f"{name}: {description}")
        if name == "worst-outage":
            per_agent = []
            for agent in feeder.agents:
                d = compare({"outage_agents": (agent,)}, out / name / _safe(agent))
                per_agent.append(_per_controller(d).assign(agent=agent))
            table = pd.concat(per_agent, ignore_index=True)
            # each controller's own worst agent: the lowest rate, then the highest loss
            table = (table.sort_values(["controller", "controllable_rate", "energy_loss_mwh"],
                                       ascending=[True, True, False])
                     .groupby("controller", sort=False).head(1))
        else:
            table = _per_controller(compare(changes, out / name)).assign(agent="")
        rows.append(table.assign(condition=name, description=description))
    tidy = pd.concat(rows, ignore_index=True)
    tidy["group"] = tidy["controller"].map(group_of)
    order = {c: i for i, c in enumerate(config.conditions or tuple(CONDITIONS))}
    tidy = tidy.sort_values(["condition"], key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
    cols = ["condition", "description", "group", "controller", "agent", "controllable_rate", "energy_loss_mwh",
            "handover_pct", "envelope_pct", "information"]
    tidy = tidy[cols]
    write_text(out / "table.csv", tidy.to_csv(index=False, float_format="%.6g"))
    write_text(out / "summary.md", summary_markdown(tidy, feeder=config.feeder, split=config.split))
    return tidy


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "_"


def _per_controller(days: pd.DataFrame) -> pd.DataFrame:
    """Controllable rate (step-weighted), energy loss (MWh over the days), hand-over and envelope
    shares (%), and what each controller knew, from a comparison's per-day table."""
    out = []
    for ctrl, g in days.groupby("controller", sort=False):
        out.append({"controller": ctrl,
                    "controllable_rate": float(np.average(g["controllable_rate"], weights=g["steps"])),
                    "energy_loss_mwh": float(g["energy_loss_mwh"].sum() / g["seed"].nunique()),
                    "handover_pct": 100.0 * float(g["handover_share"].mean()),
                    "envelope_pct": 100.0 * float(g["envelope_share"].mean()),
                    "information": str(g["information"].iloc[0])})
    return pd.DataFrame(out)


def summary_markdown(tidy: pd.DataFrame, *, feeder: str, split: str = "test") -> str:
    """The suite as one markdown table: a row per condition, a column per controller group
    (rate / loss MWh, the mean over a group's runs ± their standard deviation), then what each
    group knew."""
    groups = list(dict.fromkeys(tidy["group"]))
    conds = list(dict.fromkeys(tidy["condition"]))
    days = {"test": "test days", "val": "validation days"}[split]
    lines = [f"Fault and growth suite on {feeder}, {days}: controllable rate / energy loss MWh "
             f"(mean over a learner's runs ± their standard deviation; hand-over % of agent-steps in brackets "
             f"where a policy handed over to 1547-B droop).", "",
             "| condition | " + " | ".join(groups) + " |", "|:---|" + "---:|" * len(groups)]
    for cond in conds:
        sub = tidy[tidy["condition"] == cond]
        cells = []
        for grp in groups:
            g = sub[sub["group"] == grp]
            if g.empty:
                cells.append("–")
                continue
            rate, loss = g["controllable_rate"], g["energy_loss_mwh"]
            if len(g) > 1:
                cell = f"{rate.mean():.4f} ±{rate.std():.4f} / {loss.mean():.2f} ±{loss.std():.2f}"
            else:
                cell = f"{rate.mean():.4f} / {loss.mean():.2f}"
            ho = g["handover_pct"].mean()
            if np.isfinite(ho) and ho > 0:
                cell += f" ({ho:.2g} %)"
            agents = [a for a in g["agent"] if a]
            if agents:
                cell += f" [{', '.join(dict.fromkeys(agents))}]"
            cells.append(cell)
        desc = sub["description"].iloc[0]
        lines.append(f"| {desc} | " + " | ".join(cells) + " |")
    lines += ["", "What each controller knew when it acted:", ""]
    for grp in groups:
        info = tidy.loc[(tidy["group"] == grp) & (tidy["condition"] == conds[0]), "information"]
        lines.append(f"- **{grp}**: {info.iloc[0] if len(info) else '–'}")
    lines.append("")
    lines.append("Worst single-inverter outage: each controller's own worst agent (every agent tried), named in "
                 "brackets. Sensor noise applies to droop's own voltage reading too.")
    return "\n".join(lines) + "\n"
