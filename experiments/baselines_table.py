"""The baselines with and without reactive power at night, side by side.

Reads the two comparisons of ``experiments/compare_baselines.toml`` (the common inverter, no
reactive power while its PV produces nothing: ``reports/baselines``) and
``experiments/compare_baselines_night.toml`` (a night mode, ``q_at_night = true``:
``reports/baselines/q-at-night``) and writes ``reports/baselines/both.md``: one row per feeder and
controller, each figure as "without / with" night-time reactive power. Gaps to the optimum are
within each setting (the optimum, too, gains reactive power at night).

    .venv/bin/python experiments/baselines_table.py
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd

from gridrl.io import write_text

ROOT = Path(__file__).resolve().parents[1]
WITHOUT, WITH = ROOT / "reports" / "baselines", ROOT / "reports" / "baselines" / "q-at-night"

#: the figures shown, where the tables have them: column, header, digits (``+`` for signed)
FIGURES = [("controllable_rate", "controllable", "4"), ("out_of_band_pct", "out of band %", "3"),
           ("max_abs_dv_pu", "max |v−1|", "4"), ("energy_loss_mwh", "loss MWh", "2"),
           ("controllable_loss_mwh", "line + trafo load loss MWh", "2"),
           ("controllable_gap_to_opf_pct", "gap to opf % (of that)", "+1"),
           ("reactive_energy_mvarh", "reactive MVArh", "0"), ("max_loading_pct", "max loading %", "1"),
           ("overload_branch_hours", "overload branch-h", "1"), ("tap_operations_per_day", "tap ops / day", "1"),
           ("flagged_steps", "flagged steps", "0")]


def with_day_figures(summary: pd.DataFrame, days: pd.DataFrame) -> pd.DataFrame:
    """The summary with the figures of the per-day table it does not carry: losses a controller can
    change (lines and transformer load losses, no-load losses left out) and their gap to ``opf``,
    the highest branch loading, overload branch-hours and tap operations per day (means over seeds)."""
    if days.empty:
        return summary
    g = days.groupby(["feeder", "controller"], sort=False)
    n_seeds = g["seed"].nunique()
    extra = pd.DataFrame({"n_days": g["day"].nunique()})
    if "controllable_loss_mwh" in days:
        extra["controllable_loss_mwh"] = g["controllable_loss_mwh"].sum() / n_seeds
    if "max_loading_pct" in days:
        extra["max_loading_pct"] = g["max_loading_pct"].max()
        extra["overload_branch_hours"] = g["overload_branch_hours"].sum() / n_seeds
    if "tap_operations" in days:
        extra["tap_operations_per_day"] = g["tap_operations"].sum() / n_seeds / extra["n_days"]
    extra = extra.drop(columns="n_days").reset_index()
    out = summary.drop(columns=[c for c in extra.columns if c in summary and c not in ("feeder", "controller")])
    out = out.merge(extra, on=["feeder", "controller"], how="left")
    if "controllable_loss_mwh" in out:
        ref = out[out["controller"] == "opf"].set_index("feeder")["controllable_loss_mwh"]
        out["controllable_gap_to_opf_pct"] = 100.0 * (out["controllable_loss_mwh"] / out["feeder"].map(ref) - 1.0)
    return out


def _fmt(v, digits: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, str):
        return v
    return f"{v:+.{digits[1:]}f}" if digits.startswith("+") else f"{v:.{digits}f}"


def side_by_side(without: pd.DataFrame, with_: pd.DataFrame) -> str:
    """The markdown table: every feeder × controller of either summary, figures as without / with."""
    key = ["feeder", "controller"]
    both = without.merge(with_, on=key, how="outer", suffixes=("_off", "_on"))
    order = list(dict.fromkeys([*without["feeder"], *with_["feeder"]]))
    rank = {k: i for i, k in enumerate(dict.fromkeys([*zip(without.feeder, without.controller),
                                                        *zip(with_.feeder, with_.controller)]))}
    both = both.assign(_f=both["feeder"].map(order.index), _r=[rank[k] for k in zip(both.feeder, both.controller)])
    both = both.sort_values(["_f", "_r"]).drop(columns=["_f", "_r"])
    figures = [f for f in FIGURES if f"{f[0]}_off" in both or f"{f[0]}_on" in both]
    head = "| feeder | controller | days | " + " | ".join(h.replace("|", "\\|") for _, h, _ in figures) + " |"
    lines = [head, "|:---|:---|---:|" + "---:|" * len(figures)]
    for _, r in both.iterrows():
        days = r.get("days_off") if not pd.isna(r.get("days_off")) else r.get("days_on")
        cells = [f"{_fmt(r.get(f'{c}_off'), d)} / {_fmt(r.get(f'{c}_on'), d)}" for c, _, d in figures]
        lines.append(f"| {r['feeder']} | {r['controller']} | {int(days)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    missing = [p / f for p in (WITHOUT, WITH) for f in ("summary.csv", "days.parquet") if not (p / f).exists()]
    if missing:
        print(f"error: {', '.join(map(str, missing))} missing; run both baseline comparisons first "
              f"(see this script's docstring)", file=sys.stderr)
        raise SystemExit(2)
    without, with_ = (with_day_figures(pd.read_csv(p / "summary.csv"), pd.read_parquet(p / "days.parquet"))
                      for p in (WITHOUT, WITH))
    text = "\n".join([
        "# Baselines with and without reactive power at night", "",
        "Commands: `gridrl compare --config experiments/compare_baselines.toml`, `gridrl compare --config "
        "experiments/compare_baselines_night.toml`, `python experiments/baselines_table.py`.", "",
        "Every figure reads **without / with** reactive power while the PV produces nothing: without "
        "(`q_at_night = false`, every shipped feeder's default) is the common inverter — IEEE 1547-2018 "
        "requires reactive power only from 5 % of rated active power up, and night-time reactive power is "
        "a vendor option; with (`q_at_night = true`) the inverters run as STATCOMs at night, as MAPDN assumes. "
        "Gaps to the optimum are within each setting and on the losses a controller can change (lines and "
        "transformer load losses; the transformers' no-load losses are left out), with the total loss beside "
        "them. Max loading: the highest loading of any rated line or transformer (– where the feeder has no "
        "ratings); overload branch-h: rated branches above 100 % × hours; tap ops / day: moves of the "
        "substation's on-load tap changer (automatic voltage regulation). Other columns as in "
        "`reports/baselines/summary.md`; "
        "tables of each setting in `reports/baselines/` and `reports/baselines/q-at-night/`.", "",
        side_by_side(without, with_), ""])
    write_text(WITHOUT / "both.md", text)
    print(text)


if __name__ == "__main__":
    main()
