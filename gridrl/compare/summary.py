"""The comparison's summary: one row per feeder × controller, its formatting and its glossary.

:func:`summarize` turns the tidy per-day table into the summary; :func:`format_summary` and
:func:`summary_markdown` give it human headers and rounding for the terminal, ``summary.md`` and
the report; :data:`SUMMARY_GLOSSARY` says what each column means. Pure functions of tables: the
comparison that writes a folder and the report that reads one both use them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["SUMMARY_COLUMNS", "SUMMARY_GLOSSARY", "SUMMARY_LEGEND", "TUNED_KEY", "format_days", "format_summary",
           "summarize", "summary_markdown"]

TUNED_KEY = "droop-tuned"  # the controller the "gap to tuned droop" column compares with

SUMMARY_COLUMNS = {
    "feeder": "feeder",
    "controller": "controller",
    "days": "days",
    "controllable_rate": "controllable",
    "out_of_band_pct": "out of band %",
    "mean_abs_dv_pu": "mean |v−1|",
    "max_abs_dv_pu": "max |v−1|",
    "energy_loss_mwh": "loss MWh",
    "loss_gap_to_opf_pct": "gap to opf %",
    "loss_gap_to_tuned_pct": "gap to tuned droop %",
    "reactive_energy_mvarh": "reactive MVArh",
    "communication": "floats/agent/step",
    "flagged_steps": "flagged steps",
    "q_at_night": "Q at night",
}


def summarize(days: pd.DataFrame) -> pd.DataFrame:
    """One row per feeder × controller from the tidy per-day table.

    Rates and means are over all bus-steps of all days and seeds; energies are per seed (summed
    over the days, averaged over seeds); ``loss_gap_to_opf_pct`` compares with ``opf`` and
    ``loss_gap_to_tuned_pct`` with ``droop-tuned`` on the same feeder (NaN when that controller
    is not in the comparison); ``flagged_steps`` counts unsettled, infeasible and diverged steps.
    """
    if days.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    order = {k: i for i, k in enumerate(dict.fromkeys(days["controller"]))}
    rows = []
    for (feeder, ctrl), g in days.groupby(["feeder", "controller"], sort=False):
        n_seeds = g["seed"].nunique()
        rows.append({
            "feeder": feeder,
            "controller": ctrl,
            "days": int(g["day"].nunique()),
            "controllable_rate": float(np.average(g["controllable_rate"], weights=g["steps"])),
            "out_of_band_pct": 100.0 * float(np.average(g["share_out_of_band"], weights=g["steps"])),
            "mean_abs_dv_pu": float(np.average(g["mean_abs_dv_pu"], weights=g["steps"])),
            "max_abs_dv_pu": float(g["max_abs_dv_pu"].max()),
            "energy_loss_mwh": float(g["energy_loss_mwh"].sum() / n_seeds),
            "loss_gap_to_opf_pct": np.nan,
            "loss_gap_to_tuned_pct": np.nan,
            "reactive_energy_mvarh": float(g["reactive_energy_mvarh"].sum() / n_seeds),
            "communication": float(g["communication"].iloc[0]),
            "flagged_steps": int((g["unsettled_steps"] + g["infeasible_steps"] + g["diverged_steps"]).sum()),
            "q_at_night": ("yes" if g["q_at_night"].all() else "no" if not g["q_at_night"].any() else "mixed")
                          if "q_at_night" in g else "–",
        })
    summary = pd.DataFrame(rows)
    for feeder, g in summary.groupby("feeder", sort=False):
        for column, reference in (("loss_gap_to_opf_pct", "opf"), ("loss_gap_to_tuned_pct", TUNED_KEY)):
            ref = g.loc[g["controller"] == reference, "energy_loss_mwh"]
            if len(ref) and ref.iloc[0] > 0:
                summary.loc[g.index, column] = 100.0 * (g["energy_loss_mwh"] / ref.iloc[0] - 1.0)
    feeders = list(dict.fromkeys(days["feeder"]))
    summary["_f"] = summary["feeder"].map({f: i for i, f in enumerate(feeders)})
    summary["_c"] = summary["controller"].map(order)
    return summary.sort_values(["_f", "_c"]).drop(columns=["_f", "_c"]).reset_index(drop=True)


def format_summary(summary: pd.DataFrame, *, columns: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Summary rows with human headers and rounded values (for printing and markdown).

    columns: which columns to show, ``{column: header}`` (default :data:`SUMMARY_COLUMNS`, less
        the gap to tuned droop when the comparison has no ``droop-tuned``)."""
    digits = {"controllable_rate": 4, "out_of_band_pct": 3, "mean_abs_dv_pu": 4, "max_abs_dv_pu": 4,
              "energy_loss_mwh": 3, "loss_gap_to_opf_pct": 1, "loss_gap_to_tuned_pct": 1, "reactive_energy_mvarh": 1,
              "communication": 1}
    if columns is None:
        columns = dict(SUMMARY_COLUMNS)
        if "loss_gap_to_tuned_pct" in summary and summary["loss_gap_to_tuned_pct"].isna().all():
            del columns["loss_gap_to_tuned_pct"]
    rows = []
    for rec in summary.to_dict("records"):
        row = {}
        for key, header in columns.items():
            v = rec.get(key)
            if isinstance(v, float):
                v = "–" if math.isnan(v) else (f"{v:+.{digits[key]}f}" if key.startswith("loss_gap_to_")
                                               else f"{v:.{digits.get(key, 3)}f}")
            row[header] = v
        rows.append(row)
    return rows


def format_days(days: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of the tidy per-day table with the summary's headers and rounding (for printing)."""
    d = days.assign(out_of_band_pct=100.0 * days["share_out_of_band"],
                    flagged_steps=days["unsettled_steps"] + days["infeasible_steps"] + days["diverged_steps"])
    keys = ("day", "date", "controllable_rate", "out_of_band_pct", "max_abs_dv_pu", "energy_loss_mwh",
            "reactive_energy_mvarh", "flagged_steps")
    return format_summary(d, columns={k: SUMMARY_COLUMNS.get(k, k) for k in keys})


def summary_markdown(summary: pd.DataFrame) -> str:
    """The summary as a GitHub markdown table."""
    rows = format_summary(summary)
    if not rows:
        return "(no results)\n"
    headers = list(rows[0])
    right = [h not in ("feeder", "controller") for h in headers]
    cell = lambda x: str(x).replace("|", "\\|")  # noqa: E731 - a bare pipe would split the column
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---:" if r else ":---" for r in right) + "|"]
    lines += ["| " + " | ".join(cell(r[h]) for h in headers) + " |" for r in rows]
    return "\n".join(lines) + "\n\n" + SUMMARY_LEGEND + "\n"


#: What each summary column means, in the words a grid engineer would look for (summary.md, the report).
SUMMARY_GLOSSARY = {
    "feeder": "the feeder (see `gridrl feeders`).",
    "controller": "none: inverters at q = 0; droop-PRESET: a volt-var curve at each inverter from its own bus "
                  "voltage, settled within each step (droop-tuned: the curve fitted on the feeder's training "
                  "days); opf: the centralized optimum with full information at "
                  "every step (minimum losses, every bus in the band); trained policies by their run name.",
    "days": "days evaluated, each a whole day from midnight.",
    "controllable_rate": "share of steps at which every monitored bus is inside the band (MAPDN's controllable "
                         "rate, without its 0.1 % tolerance).",
    "out_of_band_pct": "share of monitored bus-steps outside the band, in %.",
    "mean_abs_dv_pu": "mean deviation from 1 p.u. over monitored bus-steps, in p.u.",
    "max_abs_dv_pu": "largest deviation from 1 p.u. at any monitored bus and step, in p.u.",
    "energy_loss_mwh": "energy lost in lines and transformers over all days, in MWh (mean over seeds).",
    "loss_gap_to_opf_pct": "extra energy loss relative to opf on the same feeder and days, in %.",
    "loss_gap_to_tuned_pct": "extra energy loss relative to droop-tuned (the volt-var curve fitted on the feeder's "
                             "training days) on the same feeder and days, in %; shown when droop-tuned ran.",
    "reactive_energy_mvarh": "Σ|q| of all inverters integrated over time, in MVArh: how hard the inverters work.",
    "communication": "numbers each agent sends per step to compute the actions, averaged over agents: 0 for "
                     "local rules (none, droop); for opf the measurements sent to the central solver (every "
                     "load's P and Q, every inverter's PV power) plus one setpoint back per agent, divided by "
                     "the number of agents; for learners, messages to neighbours on the agent graph.",
    "flagged_steps": "steps to look at: a droop fixed point or OPF iteration stopped at its iteration cap, "
                     "the band could not be met by any admissible action, or the power flow diverged.",
    "q_at_night": "whether the inverters gave reactive power while their PV produced nothing (yes: a night "
                  "mode, STATCOM operation; no: the common inverter, as IEEE 1547-2018 requires no reactive "
                  "power below 5 % of rated active power).",
}

SUMMARY_LEGEND = "\n".join(f"- **{SUMMARY_COLUMNS[k]}**: {v}" for k, v in SUMMARY_GLOSSARY.items())

