"""A training run's report: the training curves ``gridrl report RUN_DIR`` adds beside the run's comparison.

Figure functions take the tidy scalars table of one or more runs (columns ``run, algo, seed,
env_steps, wall_s, tag, value``; one run's ``scalars.csv`` plus its labels) and return plotly
figures; several seeds of one algorithm are drawn as their mean with a band from the lowest to
the highest seed. :func:`training_sections` reads a run directory and :func:`build_run_report`
makes the run's whole report; the quality experiment (``experiments/learners.py``) calls the
figure functions on all of its runs at once.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gridrl.report import Section, render, results_sections

__all__ = ["build_run_report", "fig_curves", "fig_model", "fig_time_split", "read_scalars", "training_sections"]

_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79",
           "#843c39", "#5254a3", "#6b6ecf"]
_REF_COLORS = {"none": "#636363", "opf": "#d62728"}


def read_scalars(run_dir: str | Path) -> pd.DataFrame:
    """One run's ``scalars.csv`` with ``run``, ``algo`` and ``seed`` columns added (empty if none)."""
    run_dir = Path(run_dir)
    path = run_dir / "scalars.csv"
    if not path.exists():
        return pd.DataFrame(columns=["run", "algo", "seed", "iteration", "env_steps", "wall_s", "tag", "value"])
    df = pd.read_csv(path)
    try:
        cfg = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["config"]
        algo, seed = cfg["algo"], int(cfg["seed"])
    except (OSError, ValueError, KeyError):
        algo, seed = "?", 0
    return df.assign(run=run_dir.name, algo=algo, seed=seed)


def fig_curves(scalars: pd.DataFrame, tags: Mapping[str, str], *, group: str = "algo", x: str = "env_steps",
               references: Mapping[str, Mapping[str, float]] | None = None, title: str = "") -> go.Figure:
    """One panel per tag (``tags``: tag → panel title), one line per ``group`` value: the mean
    over its runs (seeds) at each x, with a band from the lowest to the highest run.

    references: tag → {label: value}, drawn as dashed horizontal lines across the panel (e.g.
    droop's and the optimum's figures on the same days), named in the legend and on hover rather
    than on the plot: several of them often sit at the same value (a controllable rate of 1).
    Step counts (on x, and a tag ending in ``env_steps``) get whole-number ticks from zero, so a
    single evaluation point sits on a readable axis; a series of one point is a large marker
    labelled with its value.
    """
    tags = {t: name for t, name in tags.items() if (scalars["tag"] == t).any()}
    fig = make_subplots(rows=1, cols=max(len(tags), 1), subplot_titles=list(tags.values()) or [""])
    groups = list(dict.fromkeys(scalars[group]))
    ref_style = _reference_styles([label for refs in (references or {}).values() for label in refs])
    shown: set[str] = set()
    for col, tag in enumerate(tags, start=1):
        d = scalars[scalars["tag"] == tag]
        for k, g in enumerate(groups):
            s = d[d[group] == g].groupby(x)["value"]
            stats = pd.DataFrame({"mean": s.mean(), "lo": s.min(), "hi": s.max(), "n": s.count()}).reset_index()
            if stats.empty:
                continue
            color = _COLORS[k % len(_COLORS)]
            if (stats["n"] > 1).any():
                fig.add_trace(go.Scatter(x=list(stats[x]) + list(stats[x])[::-1],
                                         y=list(stats["hi"]) + list(stats["lo"])[::-1], fill="toself",
                                         fillcolor=_rgba(color, 0.15), line=dict(width=0), hoverinfo="skip",
                                         showlegend=False, legendgroup=str(g)), row=1, col=col)
            single = len(stats) == 1
            fig.add_trace(go.Scatter(x=stats[x], y=stats["mean"], mode="markers+text" if single else "lines+markers",
                                     name=str(g), line=dict(color=color), marker=dict(size=10 if single else 4),
                                     text=[_value_text(v) for v in stats["mean"]] if single else None,
                                     textposition="top center", cliponaxis=not single, legendgroup=str(g),
                                     showlegend=str(g) not in shown), row=1, col=col)
            shown.add(str(g))
        x_max = float(d[x].max()) if len(d) else 1.0
        x_min = 0.0 if x in _STEP_COLUMNS else float(d[x].min())
        for label, value in (references or {}).get(tag, {}).items():
            color, dash = ref_style[label]
            fig.add_trace(go.Scatter(x=[x_min, x_max], y=[value, value], mode="lines", name=label,
                                     line=dict(color=color, dash=dash, width=1.5), legendgroup=f"reference {label}",
                                     showlegend=f"reference {label}" not in shown,
                                     hovertemplate=f"{html.escape(label)}: {value:.6g}<extra>reference</extra>"),
                          row=1, col=col)
            shown.add(f"reference {label}")
        fig.update_xaxes(title_text="environment steps" if x == "env_steps" else "wall-clock s", row=1, col=col)
        if x in _STEP_COLUMNS:
            fig.update_xaxes(**_count_axis(x_max), row=1, col=col)
        if tag.endswith("env_steps") and len(d):
            fig.update_yaxes(**_count_axis(float(d["value"].max())), row=1, col=col)
        else:
            ys = list(d["value"]) + list((references or {}).get(tag, {}).values())
            if ys and max(ys) - min(ys) <= 1e-9 * max(1.0, abs(ys[0])):  # one value: a band around it, not ±1
                pad = max(0.05 * abs(ys[0]), 0.01)
                fig.update_yaxes(range=[ys[0] - pad, ys[0] + pad], row=1, col=col)
    fig.update_layout(title=title, height=400, margin=dict(t=80, b=50, l=60, r=20))
    return fig


_STEP_COLUMNS = ("env_steps",)  # x columns that count environment steps
_REF_PALETTE = ["#000000", "#8c6d31", "#7b4173", "#637939", "#aaaaaa", "#e7969c"]
_REF_DASHES = ["dash", "dot", "dashdot", "longdash"]


def _reference_styles(labels: list[str]) -> dict[str, tuple[str, str]]:
    """Reference label → (colour, dash), each label its own pair: ``none`` grey, ``opf`` red,
    the rest from a palette the learners' curves do not use."""
    styles, k = {}, 0
    for label in dict.fromkeys(labels):
        if label in _REF_COLORS:
            styles[label] = (_REF_COLORS[label], "dash")
        else:
            styles[label] = (_REF_PALETTE[k % len(_REF_PALETTE)], _REF_DASHES[(k + 1) % len(_REF_DASHES)])
            k += 1
    return styles


def _count_axis(top: float) -> dict:
    """An axis of counts: zero to a little past ``top`` (and a little before zero, so that the
    zeros of two such axes do not meet in the corner), ticks on whole numbers (1, 2 or 5 times a
    power of ten, about five of them), written short (``8k``, ``300k``)."""
    top = max(float(top), 1.0)
    raw = top / 5
    power = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return dict(range=[-top * 0.04, top * 1.08], tick0=0, dtick=max(int(step), 1), tickformat="~s")


def _value_text(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def fig_time_split(scalars: pd.DataFrame, *, group: str = "run", title: str = "") -> go.Figure:
    """Wall-clock seconds spent in the environment, acting and updating (and, for a model-based
    learner, fitting its model and imagining), per run (stacked)."""
    parts = {"time/env_s": "environment", "time/act_s": "acting", "time/model_s": "fitting the model",
             "time/imagine_s": "imagining", "time/update_s": "updating"}
    parts = {t: label for t, label in parts.items() if (scalars["tag"] == t).any()}
    d = scalars[scalars["tag"].isin(list(parts))]
    totals = d.groupby([group, "tag"])["value"].sum().unstack("tag").reindex(columns=list(parts)).fillna(0.0)
    fig = go.Figure()
    for tag, label in parts.items():
        fig.add_trace(go.Bar(x=list(totals.index.astype(str)), y=totals[tag], name=label))
    fig.update_layout(barmode="stack", title=title, yaxis_title="seconds", height=360,
                      margin=dict(t=60, b=40, l=60, r=20))
    return fig


# panel → {tag: series label} of a model-based learner's model errors
_MODEL_PANELS = {
    "next voltages, RMSE p.u.": {"model/volt_rmse_pu": "one step", "model/volt_rmse_h*_pu": "H steps (open loop)",
                                  "model/volt_rmse_persist_pu": "persistence (v_t+1 = v_t)",
                                  "model/cf_volt_rmse_pu": "imagined vs env.peek",
                                  "model/cf_effect_rmse_pu": "true effect of the imagined actions"},
    "local reward, RMSE": {"model/reward_rmse_physics": "computed from predicted voltages",
                           "model/reward_rmse_learned": "learned whole", "model/cf_reward_rmse": "imagined vs env.peek",
                           "model/reward_std": "spread of the reward itself"},
    "imagined rollouts": {"imagine/trusted_share": "share of agent-steps trusted"},
}


def fig_model(scalars: pd.DataFrame, *, title: str = "") -> go.Figure:
    """A model-based learner's model errors against environment steps: voltages (one step,
    H steps, the persistence baseline, imagined against ``env.peek``), rewards (computed from
    predicted voltages against learned whole) and the share of imagined steps trusted."""
    rows = []
    for panel, series in _MODEL_PANELS.items():
        for pattern, label in series.items():
            hit = scalars["tag"].str.fullmatch(pattern.replace("*", r"\d+"))
            rows.append(scalars[hit].assign(tag=panel, series=label))
    frame = pd.concat(rows) if rows else scalars.iloc[:0].assign(series=[])
    return fig_curves(frame, {p: p for p in _MODEL_PANELS}, group="series", title=title)


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    return f"rgba({int(h[0:2], 16)}, {int(h[2:4], 16)}, {int(h[4:6], 16)}, {alpha})"


def _references(run_dir: Path, labels: set[str]) -> dict[str, dict[str, float]]:
    """The final comparison's other controllers (not the run itself, ``labels``) as reference
    lines of the evaluation curves (the same test days, when the evaluation used them all)."""
    path = run_dir / "compare" / "summary.csv"
    if not path.exists():
        return {}
    s = pd.read_csv(path)
    s = s[~s["controller"].isin(labels)]
    return {"eval/controllable_rate": dict(zip(s["controller"], s["controllable_rate"])),
            "eval/energy_loss_mwh": dict(zip(s["controller"], s["energy_loss_mwh"]))}


def training_sections(run_dir: str | Path) -> list[Section]:
    """The training section of a run's report: settings, evaluation and training curves, losses
    and where the time went."""
    run_dir = Path(run_dir)
    sc = read_scalars(run_dir)
    try:
        cfg = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cfg = {}
    rows = [("feeder", cfg.get("feeder", "?"))]
    c = cfg.get("config", {})
    for key in ("algo", "steps", "seed", "num_envs"):
        if key in c:
            rows.append((key, c[key]))
    if not sc.empty:
        sel = sc.loc[sc["tag"] == "val/selected_env_steps", "value"]
        rows += [("environment steps trained", f"{int(sc['env_steps'].max()):,}"),
                 ("policy", f"selected at {int(sel.iloc[-1]):,} environment steps by validation"
                  if len(sel) else "the last one"),
                 ("wall-clock", f"{float(sc['wall_s'].max()):.0f} s")]
        sps = sc[sc["tag"] == "time/steps_per_s"]["value"]
        if len(sps):
            rows.append(("feeder steps/s (median iteration)", f"{float(sps.median()):.0f}"))
        for tag, label in (("comm/acting", "floats sent per agent per step, acting"),
                           ("comm/training", "floats sent per agent per step, training")):
            v = sc.loc[sc["tag"] == tag, "value"]
            if len(v):
                rows.append((label, f"{float(v.iloc[-1]):.1f}"))
    table = ('<table class="summary"><tbody>' + "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows) + "</tbody></table>")
    learner = c.get("learner", {})
    env = c.get("env", {})
    details = ("<details><summary>learner and environment settings</summary><pre>"
               + html.escape(json.dumps({"learner": learner, "env": env}, indent=1)) + "</pre></details>")
    parts: list = [table, details]
    if sc.empty:
        return [Section("Training", tuple(parts), "No scalars yet (the run stopped before its first checkpoint).")]
    split = c.get("eval_split", "test")
    own = {run_dir.resolve().name, c.get("algo", "")}  # the run's row: by its folder (older runs: its algo)
    parts.append(fig_curves(sc, {"eval/controllable_rate": f"controllable rate ({split} days)",
                                 "eval/energy_loss_mwh": f"energy loss, MWh ({split} days)"},
                            references=_references(run_dir, own) if split == "test" and
                            c.get("eval_days") is None and c.get("compare_days") is None else None,
                            title="Evaluation on whole days against environment steps"))
    if (sc["tag"] == "val/controllable_rate").any():
        n_val = c.get("validation_days", "?")
        parts.append(fig_curves(sc, {"val/controllable_rate": f"controllable rate ({n_val} held-out training days)",
                                     "val/energy_loss_mwh": f"energy loss, MWh ({n_val} held-out training days)",
                                     "val/selected_env_steps": "environment steps of the selected policy"},
                                title="Validation: the run's policy is the best of these points (highest "
                                      "controllable rate, then lowest loss)"))
    parts.append(fig_curves(sc, {"train/episode_return": "episode return", "train/controllable_rate":
                                 "controllable rate (training band, with exploration)",
                                 "policy/std": "action standard deviation"},
                            title="Training episodes"))
    parts.append(fig_curves(sc, {"loss/policy": "policy loss", "loss/value": "value loss",
                                 "loss/approx_kl": "approximate KL", "loss/explained_variance": "explained variance"},
                            title="Updates"))
    if sc["tag"].str.startswith("model/").any():
        parts.append(fig_model(sc, title="The dynamics model: errors on held-out real steps and against the true physics"))
    parts.append(fig_time_split(sc, title="Where the time went"))
    intro = ("Curves against real environment steps (one step of one scenario). Evaluation points are whole "
             "days with the deterministic policy; training figures include exploration noise and use the "
             "training reward's band.")
    return [Section("Training", tuple(parts), intro)]


def build_run_report(run_dir: str | Path) -> str:
    """The HTML report of a training run: its comparison (when it has one) and its training curves."""
    run_dir = Path(run_dir)
    sections = training_sections(run_dir)
    if (run_dir / "compare" / "days.parquet").exists():
        sections = results_sections(run_dir / "compare") + sections
    return render(sections, title=f"gridrl — run {run_dir.resolve().name}")
