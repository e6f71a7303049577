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
    "noload_loss_mwh": "no-load MWh",
    "controllable_loss_mwh": "controllable loss MWh",
    "loss_gap_to_opf_pct": "gap to opf %",
    "total_gap_to_opf_pct": "total gap to opf %",
    "loss_gap_to_tuned_pct": "gap to tuned droop %",
    "reactive_energy_mvarh": "reactive MVArh",
    "communication": "floats/agent/step",
    "flagged_steps": "flagged steps",
    "max_loading_pct": "max loading %",
    "overload_branch_hours": "overload branch-h",
    "tap_operations_per_day": "tap ops/day",
    "handover_pct": "hand-over %",
    "information": "knew",
    "q_at_night": "Q at night",
}


def summarize(days: pd.DataFrame) -> pd.DataFrame:
    """One row per feeder × controller from the tidy per-day table.

    Rates and means are over all bus-steps of all days and seeds; energies are per seed (summed
    over the days, averaged over seeds); ``loss_gap_to_opf_pct`` compares the losses a
    controller can change (``controllable_loss_mwh``: lines and transformer load losses, without
    the transformers' no-load losses) with ``opf``'s, ``total_gap_to_opf_pct`` the whole energy
    loss, and ``loss_gap_to_tuned_pct`` the controllable losses with ``droop-tuned``'s on the same
    feeder (NaN when that controller is not in the comparison); ``flagged_steps`` counts
    unsettled, infeasible and diverged steps. ``max_loading_pct`` and ``overload_branch_hours``
    are NaN on a feeder without branch ratings. Result folders written before these columns
    existed give the whole loss as controllable and NaN for the rest.
    """
    if days.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    order = {k: i for i, k in enumerate(dict.fromkeys(days["controller"]))}
    rows = []
    for (feeder, ctrl), g in days.groupby(["feeder", "controller"], sort=False):
        n_seeds = g["seed"].nunique()
        has = lambda c: c in g and g[c].notna().any()  # noqa: E731 - older result folders lack a column
        energy = float(g["energy_loss_mwh"].sum() / n_seeds)
        loading = float(g["max_loading_pct"].max()) if has("max_loading_pct") else np.nan
        rows.append({
            "feeder": feeder,
            "controller": ctrl,
            "days": int(g["day"].nunique()),
            "controllable_rate": float(np.average(g["controllable_rate"], weights=g["steps"])),
            "out_of_band_pct": 100.0 * float(np.average(g["share_out_of_band"], weights=g["steps"])),
            "mean_abs_dv_pu": float(np.average(g["mean_abs_dv_pu"], weights=g["steps"])),
            "max_abs_dv_pu": float(g["max_abs_dv_pu"].max()),
            "energy_loss_mwh": energy,
            "noload_loss_mwh": float(g["trafo_noload_loss_mwh"].sum() / n_seeds) if has("trafo_noload_loss_mwh")
            else np.nan,
            "controllable_loss_mwh": float(g["controllable_loss_mwh"].sum() / n_seeds) if has("controllable_loss_mwh")
            else energy,
            "loss_gap_to_opf_pct": np.nan,
            "total_gap_to_opf_pct": np.nan,
            "loss_gap_to_tuned_pct": np.nan,
            "reactive_energy_mvarh": float(g["reactive_energy_mvarh"].sum() / n_seeds),
            "communication": float(g["communication"].iloc[0]),
            "flagged_steps": int((g["unsettled_steps"] + g["infeasible_steps"] + g["diverged_steps"]).sum()),
            "max_loading_pct": loading,
            "overload_branch_hours": (float(g["overload_branch_hours"].sum() / n_seeds) if not math.isnan(loading)
                                      else np.nan),
            "tap_operations_per_day": float(g["tap_operations"].mean()) if has("tap_operations") else np.nan,
            "q_at_night": ("yes" if g["q_at_night"].all() else "no" if not g["q_at_night"].any() else "mixed")
                          if "q_at_night" in g else "–",
            # tables written before these columns existed read as unknown
            "handover_pct": 100.0 * float(g["handover_share"].mean()) if "handover_share" in g else np.nan,
            "information": str(g["information"].iloc[0]) if "information" in g else "–",
        })
    summary = pd.DataFrame(rows)
    for feeder, g in summary.groupby("feeder", sort=False):
        for column, reference, loss in (("loss_gap_to_opf_pct", "opf", "controllable_loss_mwh"),
                                        ("total_gap_to_opf_pct", "opf", "energy_loss_mwh"),
                                        ("loss_gap_to_tuned_pct", TUNED_KEY, "controllable_loss_mwh")):
            ref = g.loc[g["controller"] == reference, loss]
            if len(ref) and ref.iloc[0] > 0:
                summary.loc[g.index, column] = 100.0 * (g[loss] / ref.iloc[0] - 1.0)
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
              "communication": 1, "noload_loss_mwh": 3, "controllable_loss_mwh": 3, "total_gap_to_opf_pct": 1,
              "max_loading_pct": 1, "overload_branch_hours": 1, "tap_operations_per_day": 2, "handover_pct": 2}
    if columns is None:
        columns = dict(SUMMARY_COLUMNS)
        if "loss_gap_to_tuned_pct" in summary and summary["loss_gap_to_tuned_pct"].isna().all():
            del columns["loss_gap_to_tuned_pct"]
        if "handover_pct" in summary and summary["handover_pct"].isna().all():
            del columns["handover_pct"]  # no trained policy in the comparison
        columns = {k: h for k, h in columns.items() if k in summary}  # tables written before a column existed
    rows = []
    for rec in summary.to_dict("records"):
        row = {}
        for key, header in columns.items():
            v = rec.get(key)
            if isinstance(v, float):
                v = "–" if math.isnan(v) else (f"{v:+.{digits[key]}f}" if "_gap_to_" in key
                                               else f"{v:.{digits.get(key, 3)}f}")
            row[header] = v
        rows.append(row)
    return rows


def format_days(days: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows of the tidy per-day table with the summary's headers and rounding (for printing)."""
    d = days.assign(out_of_band_pct=100.0 * days["share_out_of_band"],
                    flagged_steps=days["unsettled_steps"] + days["infeasible_steps"] + days["diverged_steps"])
    keys = ("day", "date", "controllable_rate", "out_of_band_pct", "max_abs_dv_pu", "energy_loss_mwh",
            "reactive_energy_mvarh", "flagged_steps") + (("max_loading_pct",) if "max_loading_pct" in d else ())
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
    "noload_loss_mwh": "the transformers' no-load (iron) losses within the loss, in MWh: set by the voltage, "
                       "nearly constant, no controller can remove them (0 without transformers).",
    "controllable_loss_mwh": "the losses a controller can change: lines and the transformers' load (copper) "
                             "losses, in MWh; loss MWh minus no-load MWh.",
    "loss_gap_to_opf_pct": "extra controllable loss relative to opf on the same feeder and days, in %.",
    "total_gap_to_opf_pct": "extra energy loss (no-load losses included) relative to opf, in %: the same "
                            "difference in MWh over a larger base.",
    "loss_gap_to_tuned_pct": "extra controllable loss relative to droop-tuned (the volt-var curve fitted on the "
                             "feeder's training days) on the same feeder and days, in %; shown when droop-tuned ran.",
    "reactive_energy_mvarh": "Σ|q| of all inverters integrated over time, in MVArh: how hard the inverters work.",
    "communication": "numbers each agent sends per step to compute the actions, averaged over agents: 0 for "
                     "local rules (none, droop); for opf the measurements sent to the central solver (every "
                     "load's P and Q, every inverter's PV power) plus one setpoint back per agent, divided by "
                     "the number of agents; for learners, messages to neighbours on the agent graph.",
    "flagged_steps": "steps to look at: a droop fixed point or OPF iteration stopped at its iteration cap, "
                     "the band or a thermal limit could not be met by any admissible action, or the power flow "
                     "diverged.",
    "max_loading_pct": "highest loading of any rated line or transformer at any step, in % of its rating (as "
                       "pandapower's loading_percent); – where the feeder's branches have no ratings.",
    "overload_branch_hours": "rated branches above 100 % × hours, over all days (mean over seeds); – without "
                             "ratings.",
    "tap_operations_per_day": "moves of the substation's on-load tap changer per day (0 without one or with "
                              "the tap fixed).",
    "q_at_night": "whether the inverters gave reactive power while their PV produced nothing (yes: a night "
                  "mode, STATCOM operation; no: the common inverter, as IEEE 1547-2018 requires no reactive "
                  "power below 5 % of rated active power).",
    "handover_pct": "trained policies: share of agent-steps at which an agent, its own observation outside what "
                    "it was trained on, handed over to IEEE 1547-B droop, in %.",
    "information": "what the controller knew when it acted: measured = its own sensors at the start of the "
                   "interval (set-points of the last one still in force) and neighbours' messages of the same "
                   "instant; previous step = the last interval's readings; oracle = information no inverter "
                   "has (a forecast, or the whole feeder's exact loads and PV); and the safety envelope the "
                   "policy acted through.",
}

SUMMARY_LEGEND = "\n".join(f"- **{SUMMARY_COLUMNS[k]}**: {v}" for k, v in SUMMARY_GLOSSARY.items())

