"""The fault and growth suite: every controller through the conditions a utility worries about.

``gridrl robustness --config experiments/robustness_ieee33.toml`` (or :func:`run_robustness`)
runs the baselines and trained runs of a :class:`RobustnessConfig` on the test days of one
feeder under each condition of :data:`CONDITIONS`, and writes::

    OUT/<condition>/              a comparison folder (gridrl compare's layout; resumable)
    OUT/worst-outage/<agent>/     one per agent: that agent's inverters out all day
    OUT/<condition>/<a>+<b>/      an outage pair's (``outage = "worst-pair"``)
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
- ``worst-outage-pair``: two agents' inverters out together all day; the pairs of the agents
  that are one of some controller's two worst single outages are tried, and each controller is
  charged with its own worst pair;
- ``outage-0.1``: each agent's inverters out for a whole day with probability 0.1;
- ``pv-1.5``: 50 % more PV (ratings with it); ``load-1.2-pv-1.5``: and loads 20 % higher;
- ``no-q-night``: inverters give no reactive power while their PV produces nothing.

A suite adds conditions of its own (any change of ``[env]``, optionally with an outage sweep) as
:class:`Condition` tables under ``[[custom_conditions]]``; each is checked when the config loads.

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
import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from gridrl.config import from_dict, read_toml
from gridrl.errors import GridrlError

__all__ = ["CONDITIONS", "Condition", "LearnerGroup", "RobustnessConfig", "RobustnessError", "load_config",
           "run_robustness", "summary_markdown"]


class RobustnessError(GridrlError, ValueError):
    """A robustness suite that cannot run as asked."""


Outage = Literal["none", "worst", "worst-pair"]


@dataclass(frozen=True, kw_only=True)
class Condition:
    """One condition of the suite: a change of the comparison's ``[env]``, optionally swept over
    inverter outages. The built-in ones are :data:`CONDITIONS`; a suite config adds its own under
    ``[[custom_conditions]]`` (and names them in ``conditions``).

    name: the condition's key (its folder and its rows in the table), e.g. ``noise-0.02``.
    description: its row in the summary (default: the name).
    env: the change of the suite's base ``[env]`` (fields of :class:`~gridrl.env.EnvConfig`),
        e.g. ``{ sensor_noise_pu = 0.02 }`` or ``{ load_scale = 0.6, pv_scale = 1.5 }``.
    outage: ``none`` (default); ``worst``: one agent's inverters out all day, every agent tried,
        each controller charged with its own worst (lowest controllable rate, then highest loss);
        ``worst-pair``: two agents' inverters out together all day: the pairs of the agents that
        are one of some controller's two worst single outages (the ``worst`` sweep under the same
        ``env``) are tried, and each controller is charged with its own worst pair.
    """

    name: str
    description: str = ""
    env: dict | None = None
    outage: Outage = "none"

    def __post_init__(self) -> None:
        from gridrl.env import EnvConfig

        problems = []
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name or ""):
            problems.append(f"condition name {self.name!r} must be letters, digits, '-', '_' or '.'")
        if self.outage not in ("none", "worst", "worst-pair"):
            problems.append(f"condition {self.name!r}: outage must be none, worst or worst-pair, got {self.outage!r}")
        try:
            from_dict(EnvConfig, dict(self.env or {}), source=f"condition {self.name!r} env")
        except GridrlError as exc:
            problems.append(str(exc))
        if self.outage != "none" and "outage_agents" in (self.env or {}):
            problems.append(f"condition {self.name!r}: outage = {self.outage!r} sweeps the agents itself; "
                            f"remove env.outage_agents")
        if problems:
            raise RobustnessError("; ".join(problems))

    @property
    def label(self) -> str:
        """The condition's row in the summary."""
        return self.description or self.name


#: the built-in conditions, by name
CONDITIONS: dict[str, Condition] = {c.name: c for c in (
    Condition(name="nominal", description="nominal"),
    Condition(name="noise-0.005", description="sensor noise 0.005 p.u.", env={"sensor_noise_pu": 0.005}),
    Condition(name="noise-0.01", description="sensor noise 0.01 p.u.", env={"sensor_noise_pu": 0.01}),
    Condition(name="dropout-0.2", description="message dropout 0.2", env={"message_dropout": 0.2}),
    Condition(name="dropout-0.5", description="message dropout 0.5", env={"message_dropout": 0.5}),
    Condition(name="dropout-1.0", description="message dropout 1.0", env={"message_dropout": 1.0}),
    Condition(name="worst-outage", description="worst single-inverter outage", outage="worst"),
    Condition(name="worst-outage-pair", description="worst two inverters out together", outage="worst-pair"),
    Condition(name="outage-0.1", description="outage probability 0.1", env={"outage_prob": 0.1}),
    Condition(name="pv-1.5", description="PV ×1.5", env={"pv_scale": 1.5}),
    Condition(name="load-1.2-pv-1.5", description="loads ×1.2, PV ×1.5", env={"load_scale": 1.2, "pv_scale": 1.5}),
    Condition(name="no-q-night", description="no reactive power at night", env={"q_at_night": False}),
)}


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
    conditions: which conditions to run, by name: built-in (:data:`CONDITIONS`) or the config's
        own (default: every built-in one, then every custom one, in that order).
    custom_conditions: conditions of the suite's own (see :class:`Condition`).
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
    custom_conditions: tuple[Condition, ...] = ()
    split: Literal["test", "val"] = "test"
    days: tuple[int, ...] | None = None
    env: dict | None = None
    out: str | None = None

    def __post_init__(self) -> None:
        problems = []
        custom = [c.name for c in self.custom_conditions]
        clash = sorted({c for c in custom if c in CONDITIONS or custom.count(c) > 1})
        if clash:
            problems.append(f"custom_conditions: {', '.join(map(repr, clash))} named twice or like a built-in "
                            f"condition; give {'it' if len(clash) == 1 else 'each'} a name of its own")
        known = {**CONDITIONS, **{c.name: c for c in self.custom_conditions}}
        unknown = [c for c in (self.conditions or ()) if c not in known]
        if unknown:
            problems.append(f"conditions: unknown {', '.join(map(repr, unknown))} (known: {', '.join(known)})")
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

    @property
    def chosen(self) -> tuple[Condition, ...]:
        """The conditions to run, in order."""
        known = {**CONDITIONS, **{c.name: c for c in self.custom_conditions}}
        return tuple(known[n] for n in self.conditions or known)


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
    from gridrl.compare import CompareConfig, CompareError, config_problems, run_compare
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

    def compare_config(env_changes: Mapping[str, Any]):
        env = dataclasses.replace(base_env, **env_changes)
        return CompareConfig(feeders=(config.feeder,), controllers=specs, split=config.split, days=config.days, env=env)

    def compare(env_changes: Mapping[str, Any], folder: Path) -> pd.DataFrame:
        try:
            return run_compare(compare_config(env_changes), out=folder, progress=False).days
        except CompareError as exc:
            raise RobustnessError(str(exc)) from None

    conditions = config.chosen
    problems = []  # every condition checked before any runs
    for cond in conditions:
        try:
            problems += [f"condition {cond.name!r}: {p}" for p in config_problems(compare_config(cond.env or {}))]
        except (GridrlError, ValueError) as exc:
            problems.append(f"condition {cond.name!r}: {exc}")
    if problems:
        raise RobustnessError("; ".join(dict.fromkeys(problems)))

    def sweep(changes: Mapping[str, Any], groups: Sequence[tuple[str, ...]], folder: Path) -> pd.DataFrame:
        """Every controller with each group of agents out all day (one comparison per group)."""
        per = [_per_controller(compare({**changes, "outage_agents": g}, folder / _safe("+".join(g))))
               .assign(agent="+".join(g)) for g in groups]
        return pd.concat(per, ignore_index=True)

    rows = []
    for cond in conditions:
        say(f"{cond.name}: {cond.label}")
        changes = dict(cond.env or {})
        if cond.outage == "none":
            table = _per_controller(compare(changes, out / cond.name)).assign(agent="")
        else:
            singles_at = out / cond.name
            if cond.outage == "worst-pair":  # the single sweep; without an [env] change, worst-outage's own
                singles_at = out / cond.name / "single" if changes else out / "worst-outage"
            table = sweep(changes, [(a,) for a in feeder.agents], singles_at)
            if cond.outage == "worst-pair":
                # the agents that are one of some controller's two worst single outages, every pair of them
                chosen = set(_worst_per_controller(table, 2)["agent"])
                candidates = [a for a in feeder.agents if a in chosen]
                if len(candidates) < 2:
                    raise RobustnessError(f"condition {cond.name!r}: feeder {config.feeder!r} has fewer than two "
                                          f"agents to put out together; use outage = \"worst\"")
                table = sweep(changes, list(itertools.combinations(candidates, 2)), out / cond.name)
            table = _worst_per_controller(table, 1)
        rows.append(table.assign(condition=cond.name, description=cond.label))
    tidy = pd.concat(rows, ignore_index=True)
    tidy["group"] = tidy["controller"].map(group_of)
    order = {c.name: i for i, c in enumerate(conditions)}
    tidy = tidy.sort_values(["condition"], key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
    cols = ["condition", "description", "group", "controller", "agent", "controllable_rate", "energy_loss_mwh",
            "handover_pct", "envelope_pct", "information"]
    tidy = tidy[cols]
    write_text(out / "table.csv", tidy.to_csv(index=False, float_format="%.6g"))
    write_text(out / "summary.md", summary_markdown(tidy, feeder=config.feeder, split=config.split))
    return tidy


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_+." else "_" for c in name).lstrip(".") or "_"


def _worst_per_controller(table: pd.DataFrame, k: int) -> pd.DataFrame:
    """Each controller's ``k`` worst rows of an outage sweep: the lowest rate, then the highest loss."""
    return (table.sort_values(["controller", "controllable_rate", "energy_loss_mwh"], ascending=[True, True, False])
            .groupby("controller", sort=False).head(k))


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
