"""The learners' quality experiment in one command: train every feeder × algorithm × variant ×
seed, compare them all with the rule-based controllers on the test days, report.

    python experiments/learners.py --config experiments/learners.toml

Runs go to ``runs`` (each a ``gridrl train`` run folder; finished runs are skipped and
interrupted ones resumed, so the command can be repeated), the comparison and the report to
``out``: ``summary.md`` (mean and spread over seeds, wall-clock, the targets), ``runs.csv``
(one row per run), ``curves.csv`` (the evaluation curves of every run against environment
steps), ``compare/`` (``gridrl compare``'s tables: every run and baseline on every test day) and
``report.html``. Every run's policy is chosen on the feeders' validation days; each reported
run's test-day figures are appended to the results ledger (``reports/ledger.csv``,
:mod:`gridrl.ledger`). Tuning uses the same script with ``tuning = true``: every run evaluates
and is compared on validation days only, a test day anywhere is refused, and no ledger row is
written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from gridrl.config import from_dict, read_toml
from gridrl.io import atomic_write, write_text


@dataclass(frozen=True, kw_only=True)
class Experiment:
    """The experiment file.

    feeders, algos: what is trained; seeds: seeds 0 … seeds−1 of each.
    variants: name → overrides of the training config for that variant, e.g.
        ``{ env = { forecast_steps = 0 } }`` (a table with optional ``env`` and ``learner`` tables
        and top-level training keys); ``algos = [...]`` / ``feeders = [...]`` in a variant limit
        it to those algorithms / feeders; ``steps = N`` gives the variant's runs that budget.
    steps: feeder name → training budget in environment steps, one for every algorithm or a
        table algorithm → budget (e.g. ``mv-urban = { dmpo = 4096, dppo = 32768 }``: a
        model-based learner's curve needs fewer real steps than a model-free one's).
    train: the training config every run starts from (``gridrl train --config``'s format).
    per_feeder: feeder name → overrides of ``train`` for every run on that feeder (the same
        format as a variant's; a variant's own overrides come after them): settings tuned per
        feeder on its training days.
    baselines: rule-based controllers of the comparison: ``none``, ``droop``, ``droop:PRESET``,
        ``opf``, …, or a table of controller fields (:class:`gridrl.compare.ControllerSpec`), e.g.
        ``{ name = "droop", preset = "tuned", tune = { budget = 40, search_days = 6 } }`` (a
        tuned droop fitted by a smaller search, on a feeder where the default one costs hours).
    days: only these test days in the comparison (default: all; for quick checks); with
        ``tuning``, validation days.
    tuning: a tuning experiment: runs evaluate on validation days (``eval_split = "val"``), the
        comparison runs on validation days, and a test day anywhere is refused.
    runs: folder of the run folders; out: folder of the comparison, tables and report.
    """

    feeders: tuple[str, ...]
    algos: tuple[str, ...]
    seeds: int = 3
    variants: dict = field(default_factory=lambda: {"forecast": {}})
    steps: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    per_feeder: dict = field(default_factory=dict)
    baselines: tuple[str | dict, ...] = ("none", "droop", "opf")
    days: tuple[int, ...] | None = None
    tuning: bool = False
    runs: str = "out/learners/runs"
    out: str = "reports/learners"


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) and isinstance(out.get(k), dict | type(None)) else v
    return out


def plan(exp: Experiment, source: str) -> list[dict[str, Any]]:
    """Every run: feeder, algo, variant, seed, folder and resolved training config (all
    configurations are validated before anything trains)."""
    from gridrl.errors import SpecError
    from gridrl.marl.train import resolve_train_config

    runs, problems = [], []
    missing = [f for f in exp.feeders if f not in exp.steps]
    problems += [f"steps: no budget for feeder {f!r}" for f in missing]
    problems += [f"steps.{f}: no budget for algorithm {a!r}" for f, b in exp.steps.items()
                 if isinstance(b, dict) for a in exp.algos if a not in b]
    problems += [f"per_feeder.{f}: not in feeders {list(exp.feeders)}" for f in exp.per_feeder if f not in exp.feeders]
    # the first variant and algorithm first: an experiment stopped early has its main rows
    for variant, over in exp.variants.items():
        over = dict(over)
        only = {k: over.pop(k, None) for k in ("algos", "feeders")}
        own_steps = over.pop("steps", None)
        if own_steps is not None and (isinstance(own_steps, bool) or not isinstance(own_steps, int) or own_steps < 1):
            problems.append(f"variants.{variant}.steps: a number of environment steps ≥ 1, got {own_steps!r}")
            continue
        wrong = [f"variants.{variant}.{k}: {sorted(set(v) - set(getattr(exp, k)))} not in {k} {list(getattr(exp, k))}"
                 for k, v in only.items() if v is not None and not set(v) <= set(getattr(exp, k))]
        if wrong:
            problems += wrong
            continue
        for algo in [a for a in exp.algos if only["algos"] is None or a in only["algos"]]:
            for feeder in [f for f in exp.feeders if f not in missing and (only["feeders"] is None or f in only["feeders"])]:
                base = _merge(exp.train, exp.per_feeder.get(feeder, {}))
                budget = exp.steps[feeder] if own_steps is None else own_steps
                if isinstance(budget, dict):
                    if algo not in budget:
                        continue  # reported above
                    budget = budget[algo]
                data = _merge(_merge(base, over), {"algo": algo, "steps": int(budget), "compare": []})
                if exp.tuning:
                    data.setdefault("eval_split", "val")
                    data["tuning"] = True
                for seed in range(exp.seeds):
                    try:
                        cfg = resolve_train_config({**data, "seed": seed}, source=f"{source} ({variant}, {algo})")
                    except SpecError as exc:
                        problems.extend(exc.problems)
                        continue
                    runs.append({"feeder": feeder, "algo": algo, "variant": variant, "seed": seed, "config": cfg,
                                 "folder": Path(exp.runs) / feeder / f"{algo}-{variant}-seed{seed}"})
    try:
        baseline_specs(exp.baselines)
    except SpecError as exc:
        problems.extend(exc.problems)
    if problems:
        raise SpecError(source, list(dict.fromkeys(problems)))
    return runs


def baseline_specs(baselines: tuple[str | dict, ...]) -> tuple:
    """The experiment's baselines as controller specs (:class:`gridrl.compare.ControllerSpec`)."""
    from gridrl.compare import ControllerSpec, parse_controllers
    from gridrl.errors import SpecError

    specs, problems = [], []
    for k, b in enumerate(baselines):
        if isinstance(b, str):
            specs += parse_controllers(b)
            continue
        try:
            specs.append(from_dict(ControllerSpec, b, source=f"baselines[{k}]"))
        except SpecError as exc:
            problems += [f"baselines[{k}]: {p}" for p in exc.problems]
    if problems:
        raise SpecError("baselines", problems)
    return tuple(specs)


def finished(run: dict) -> bool:
    """A run whose training ended (its last checkpoint says so). A finished folder trained with
    other settings than the plan's (a default or the experiment file changed since) stops the
    experiment: reporting it under the new settings would be wrong, retraining it would lose it."""
    from gridrl.errors import GridrlError, SpecError
    from gridrl.marl.checkpoint import read_checkpoint

    try:
        done = bool(read_checkpoint(run["folder"])["driver"].get("finished"))
    except GridrlError:
        return False
    if done and (diff := stale_settings(run)):
        raise SpecError(str(run["folder"]), [f"trained with other settings than planned ({', '.join(diff)} differ); "
                                             f"move the folder away (or delete it) to train it again"])
    return done


def stale_settings(run: dict) -> list[str]:
    """The settings in which the run folder's recorded config differs from the planned one. A
    planned band of ``None`` (the feeder's, narrowed by ``band_margin_pu``) is recorded as the
    narrowed band; the margin itself is compared then."""
    from gridrl.marl.train import CONFIG_FILE, _identity

    try:
        stored = json.loads((Path(run["folder"]) / CONFIG_FILE).read_text(encoding="utf-8"))["identity"]
    except (OSError, ValueError, KeyError):
        return [CONFIG_FILE]

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for key, val in d.items():
            out.update(flat(val, f"{prefix}{key}.") if isinstance(val, dict) else {f"{prefix}{key}": val})
        return out

    # what determines a run's results, recorded as the train driver's resume check reads it
    a, b = flat(stored), flat(_identity(run["config"]))
    skip = {"feeder", "feeder_hash"} | ({"env.v_min_pu", "env.v_max_pu"} if b.get("env.v_min_pu") is None else set())
    return sorted(k for k in set(a) | set(b) if k not in skip and a.get(k) != b.get(k))


def run_all(exp: Experiment, runs: list[dict], *, progress: bool, claim: bool = False) -> None:
    """Train every unfinished run in turn (resuming interrupted ones). ``claim``: skip runs that
    another live process has claimed and claim each before training it, so that several
    processes on one machine share the plan (see :func:`_claim`)."""
    from gridrl.pipeline import train  # the run, and its report of training curves

    for k, r in enumerate(runs, 1):
        label = f"[{k}/{len(runs)}] {r['feeder']} {r['algo']} {r['variant']} seed {r['seed']}"
        if finished(r):
            print(f"{label}: done", file=sys.stderr)
            continue
        if claim and not _claim(r):
            print(f"{label}: another process trains it", file=sys.stderr)
            continue
        print(f"{label} → {r['folder']}", file=sys.stderr)
        try:
            if not finished(r):  # it may have finished between the check above and the claim
                train(r["feeder"], r["config"], out=r["folder"], resume=True, progress=progress)
        finally:
            if claim:
                _claim_path(r).unlink(missing_ok=True)


def _claim_path(run: dict) -> Path:
    return Path(f"{run['folder']}.claim")


def _claim(run: dict) -> bool:
    """Claim ``run`` for this process: a file beside its folder, created atomically, holding the
    process id. A claim whose process has ended (killed, crashed) is taken over; the run then
    resumes from its last checkpoint. Claims are for processes of one machine."""
    path = _claim_path(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                return False
            path.unlink(missing_ok=True)  # a stale claim: take it over
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def compare_all(exp: Experiment, runs: list[dict], *, progress: bool):
    from gridrl.compare import CompareConfig, ControllerSpec, run_compare

    specs = baseline_specs(exp.baselines)
    specs += tuple(ControllerSpec(run=str(r["folder"]), label=_label(r)) for r in runs)
    result = None
    for feeder in exp.feeders:  # a run belongs to one feeder: one comparison per feeder
        mine = tuple(s for s in specs if s.run is None or f"/{feeder}/" in s.run.replace(os.sep, "/"))
        cfg = CompareConfig(feeders=(feeder,), controllers=mine, split=split_of(exp), days=exp.days)
        result = run_compare(cfg, out=Path(exp.out) / "compare" / feeder, progress=progress)
    return result


def split_of(exp: Experiment) -> str:
    """The days the experiment compares on: validation days when tuning, else the test days."""
    return "val" if exp.tuning else "test"


def ledger_rows(exp: Experiment, runs_df: pd.DataFrame, runs: list[dict], *, command: str) -> int:
    """One results-ledger row per reported run (its test-day figures; nothing when tuning).
    Returns how many rows were added."""
    from gridrl import ledger
    from gridrl.grid.feeder import load_feeder
    from gridrl.marl.train import _identity

    if exp.tuning:
        return 0
    added = 0
    hashes = {f: load_feeder(f).spec.content_hash() for f in dict.fromkeys(runs_df["feeder"])}
    days = len(exp.days) if exp.days else None
    for r in runs:
        row = runs_df[(runs_df["feeder"] == r["feeder"]) & (runs_df["algo"] == r["algo"])
                      & (runs_df["variant"] == r["variant"]) & (runs_df["seed"] == r["seed"])]
        if row.empty:
            continue
        x = row.iloc[0]
        n = days or len(load_feeder(r["feeder"]).days("test"))
        ident = {"feeder": r["feeder"], "feeder_hash": hashes[r["feeder"]], **_identity(r["config"])}
        got = ledger.append(feeder=r["feeder"], algorithm=r["algo"], variant=r["variant"], seed=int(r["seed"]),
                            selected_step=int(x["selected_env_steps"]), test_days=n,
                            controllable_rate=float(x["controllable_rate"]), energy_loss_mwh=float(x["energy_loss_mwh"]),
                            config=ident, source=command,
                            note="; ".join(n for n in (f"run {r['folder']}", ledger.curve_note(r["config"])) if n))
        added += got is not None
    return added


def _label(r: dict) -> str:
    return f"{r['algo']}-{r['variant']}-s{r['seed']}"


def tables(exp: Experiment, runs: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per-run results, the evaluation curves and the baselines, from the run folders and the
    comparisons."""
    from gridrl.compare import collect, summarize
    from gridrl.training_report import read_scalars

    rows, curves, base = [], [], []
    for feeder in exp.feeders:
        days = collect(Path(exp.out) / "compare" / feeder, table="days")
        summary = summarize(days).set_index("controller")
        for r in [r for r in runs if r["feeder"] == feeder]:
            sc = read_scalars(r["folder"])
            last = summary.loc[_label(r)]
            wall = float(sc["wall_s"].max())
            eval_s = float(sc.loc[sc["tag"] == "time/eval_s", "value"].sum())
            steps = int(sc["env_steps"].max())
            cpu = sc.loc[sc["tag"] == "time/cpu_s", "value"]  # runs trained before it was logged lack it
            chosen = sc.loc[sc["tag"] == "val/selected_env_steps", "value"]  # runs without validation lack it
            rows.append({"feeder": feeder, "algo": r["algo"], "variant": r["variant"], "seed": r["seed"],
                         "controllable_rate": last["controllable_rate"], "energy_loss_mwh": last["energy_loss_mwh"],
                         "reactive_energy_mvarh": last["reactive_energy_mvarh"], "communication": last["communication"],
                         "env_steps": steps, "selected_env_steps": int(chosen.iloc[-1]) if len(chosen) else steps,
                         "train_s": wall - eval_s, "train_cpu_s": float(cpu.max()) if len(cpu) else float("nan"),
                         "steps_per_s": steps / max(wall - eval_s, 1e-9)})
            ev = sc[sc["tag"].str.startswith("eval/")]
            curves.append(ev.assign(feeder=feeder, variant=r["variant"], group=f"{r['algo']} {r['variant']}",
                                    train_s=ev["wall_s"] - _eval_before(sc, ev)))
        for ctrl, rec in summary.iterrows():
            if ctrl in {_label(r) for r in runs}:
                continue
            base.append({"feeder": feeder, "controller": ctrl, "controllable_rate": rec["controllable_rate"],
                         "energy_loss_mwh": rec["energy_loss_mwh"], "reactive_energy_mvarh": rec["reactive_energy_mvarh"],
                         "communication": rec["communication"]})
    return pd.DataFrame(rows), pd.concat(curves, ignore_index=True), pd.DataFrame(base)


def _eval_before(sc: pd.DataFrame, ev: pd.DataFrame) -> pd.Series:
    """Evaluation seconds spent up to each evaluation row (so curves can use training time)."""
    e = sc[sc["tag"] == "time/eval_s"].set_index("iteration")["value"].cumsum()
    return ev["iteration"].map(e).fillna(0.0).to_numpy()


def summary_markdown(runs: pd.DataFrame, base: pd.DataFrame, *, eval_split: str, command: str, load: str,
                     on: str = "test") -> str:
    """The experiment's table per feeder; ``on``: the days compared (``test``, or ``val`` when tuning)."""
    days = "test days" if on == "test" else "validation days (a tuning experiment: no test day was looked at)"
    lines = [f"# Learners on the {days}: {', '.join(dict.fromkeys(runs['feeder']))}", "",
             f"Command: `{command}`; load average at the end {load}. Every figure is on the compared {on} days; "
             f"mean over seeds with [min, max] in brackets. Training time excludes the periodic evaluations "
             f"(learning-curve points on {eval_split} days); train CPU min is this process's CPU time for the "
             f"same, which a busy machine does not inflate. Each run's policy is the one the selection rule chose on "
             f"the feeder's validation days (policy at k steps, one figure per seed; the last one for a run that "
             f"does not validate).", ""]
    for feeder, g in runs.groupby("feeder", sort=False):
        b = base[base["feeder"] == feeder].set_index("controller")
        lines += [f"## {feeder}", "", "| controller | seeds | controllable | loss MWh | reactive MVArh | "
                  "floats/agent/step | train min | train CPU min | steps/s | policy at k steps |",
                  "|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for ctrl, rec in b.iterrows():
            lines.append(f"| {ctrl} | – | {rec['controllable_rate']:.4f} | {rec['energy_loss_mwh']:.3f} | "
                         f"{rec['reactive_energy_mvarh']:.1f} | {rec['communication']:.1f} | – | – | – | – |")
        for (algo, variant), r in g.groupby(["algo", "variant"], sort=False):
            lines.append(f"| {algo} {variant} | {len(r)} | {_spread(r['controllable_rate'], 4)} | "
                         f"{_spread(r['energy_loss_mwh'], 3)} | {r['reactive_energy_mvarh'].mean():.1f} | "
                         f"{r['communication'].iloc[0]:.1f} | {_spread(r['train_s'] / 60, 1)} | "
                         f"{_spread(r['train_cpu_s'] / 60, 1)} | "
                         f"{r['steps_per_s'].mean():,.0f} | "
                         f"{', '.join(f'{x / 1000:.0f}' for x in r['selected_env_steps'])} |")
        lines += [""] + _targets(feeder, g, b) + [""]
    return "\n".join(lines) + "\n"


def _spread(x: pd.Series, digits: int) -> str:
    x = x.dropna()  # e.g. CPU time, which runs trained before it was logged lack
    if x.empty:
        return "–"
    return f"{x.mean():.{digits}f} [{x.min():.{digits}f}, {x.max():.{digits}f}]"


def _targets(feeder: str, g: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    """The issue's targets for dppo (every variant), per seed: against IEEE 1547-B droop (must)
    and the tuned droop (aim, when it was compared)."""
    out = []
    for ref, what in (("droop-ieee1547-b", "must: beat IEEE 1547-B droop (controllable ≥, loss ≤ 95 %)"),
                      ("droop-tuned", "aim: beat the tuned droop (controllable ≥, loss <)")):
        if ref not in b.index:
            continue
        cr, loss = b.loc[ref, "controllable_rate"], b.loc[ref, "energy_loss_mwh"]
        factor = 0.95 if ref.endswith("1547-b") else 1.0
        for variant, r in g[g["algo"] == "dppo"].groupby("variant", sort=False):
            ok = (r["controllable_rate"] >= cr - 1e-12) & (r["energy_loss_mwh"] <= factor * loss)
            out.append(f"- {what}, dppo {variant}: {int(ok.sum())} of {len(r)} seeds "
                       f"(needs controllable ≥ {cr:.4f} and loss ≤ {factor * loss:.3f} MWh; got controllable "
                       f"{_spread(r['controllable_rate'], 4)}, loss {_spread(r['energy_loss_mwh'], 3)})")
    return out


def report(exp: Experiment, runs_df: pd.DataFrame, curves: pd.DataFrame, base: pd.DataFrame, summary_md: str) -> str:
    import html

    from gridrl.training_report import fig_curves
    from gridrl.report import Section, render, results_sections

    sections = [Section("Summary", ("<pre>" + html.escape(summary_md) + "</pre>",))]
    for feeder in exp.feeders:
        c = curves[curves["feeder"] == feeder]
        b = base[base["feeder"] == feeder]
        refs = {"eval/controllable_rate": dict(zip(b["controller"], b["controllable_rate"])),
                "eval/energy_loss_mwh": dict(zip(b["controller"], b["energy_loss_mwh"]))}
        tags = {"eval/controllable_rate": "controllable rate", "eval/energy_loss_mwh": "energy loss, MWh"}
        parts = [fig_curves(c, tags, group="group", references=refs,
                            title=f"{feeder}: test days against real environment steps (mean, band: seeds)"),
                 fig_curves(c, tags, group="group", x="train_s", references=refs,
                            title=f"{feeder}: against training wall-clock seconds")]
        sections.append(Section(f"Learning curves, {feeder}", tuple(parts)))
        sections += results_sections(Path(exp.out) / "compare" / feeder)
    return render(sections, title="gridrl — learners against droop and the optimum")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="experiments/learners.toml", help="experiment TOML")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: compare and report the runs that have finished")
    p.add_argument("--worker", action="store_true",
                   help="train the runs no other process has claimed, then stop without reporting: start "
                        "one per core, then report with --report-only once all have ended")
    args = p.parse_args(argv)
    exp = from_dict(Experiment, read_toml(args.config), source=args.config)
    planned = plan(exp, args.config)
    progress = not args.no_progress
    if args.worker:
        run_all(exp, planned, progress=progress, claim=True)
        return
    if not args.report_only:
        run_all(exp, planned, progress=progress)
    runs = [r for r in planned if finished(r)]
    if not runs:
        sys.exit("no run has finished yet; train first (drop --report-only)")
    exp = dataclasses.replace(exp, feeders=tuple(f for f in exp.feeders if any(r["feeder"] == f for r in runs)))
    compare_all(exp, runs, progress=progress)
    runs_df, curves, base = tables(exp, runs)
    out = Path(exp.out)
    command = "python experiments/learners.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if ledger_rows(exp, runs_df, runs, command=command.strip()):
        print(f"ledger: {len(runs_df)} row(s) added", file=sys.stderr)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    split = runs[0]["config"].eval_split if runs else "test"
    md = summary_markdown(runs_df, base, eval_split=split, command=command.strip(), load=load, on=split_of(exp))
    if len(runs) < len(planned):
        left = [f"{r['feeder']} {r['algo']} {r['variant']} seed {r['seed']}" for r in planned if r not in runs]
        md += f"\nNot finished yet ({len(left)} of {len(planned)} planned runs): {'; '.join(left)}.\n"
    write_text(out / "summary.md", md)
    atomic_write(out / "runs.csv", lambda f: runs_df.to_csv(f, index=False))
    keep = ["feeder", "algo", "variant", "seed", "iteration", "env_steps", "wall_s", "train_s", "tag", "value"]
    atomic_write(out / "curves.csv", lambda f: curves[keep].to_csv(f, index=False))
    from gridrl.io import write_html

    write_html(report(exp, runs_df, curves, base, md), out / "report.html")
    print(md)


if __name__ == "__main__":
    from gridrl.errors import GridrlError

    try:
        main()
    except GridrlError as exc:  # a stale run folder, a comparison folder of other controllers, …: one line
        sys.exit(f"error: {exc}")
