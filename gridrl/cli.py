"""The ``gridrl`` command line (typer).

Commands parse arguments and call library functions; no logic lives here that a Python user
could not reach. A :class:`~gridrl.errors.GridrlError` (a user's mistake: unknown feeder,
malformed spec, corrupt checkpoint, …) is printed as one red line and exits with code 2, never
as a traceback.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from gridrl.errors import GridrlError

app = typer.Typer(
    name="gridrl",
    help="Active voltage control on distribution feeders with decentralized multi-agent RL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# help texts are rich markup: a literal bracket is written \\[ (`gridrl\\[ray]`, `\\[env]`), or the
# bracketed word vanishes from --help (tests/test_first_hour.py reads every command's help)
feeders_app = typer.Typer(help="`gridrl feeders` prints the feeder library as a table; `gridrl feeders show NAME` details one feeder and writes its map.", invoke_without_command=True)
bench_app = typer.Typer(help="Benchmarks against pandapower, lightsim2grid, power-grid-model; training throughput.", no_args_is_help=True)
app.add_typer(feeders_app, name="feeders")
app.add_typer(bench_app, name="bench")

# piped output (CI logs, files) is not wrapped at 80 columns; tables print at their natural width
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one red line on stderr and return the Exit to raise (the message is shown as written:
    brackets in it, e.g. ``gridrl[ray]``, are not markup)."""
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def user_errors(fn):
    """Turn user errors into one line and exit code 2 (and Ctrl-C into exit 130)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GridrlError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            raise fail("interrupted; finished work is kept and a re-run resumes", 130) from None

    return wrapper


class _StderrNotes(logging.Handler):
    """gridrl's INFO messages (a feeder built on first use, the kernel compiling) as dim lines
    on stderr, so long first steps are never silent; the library itself stays quiet."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        text = self.format(record)
        if getattr(tqdm, "_instances", None):  # a progress bar is on stderr: print above it
            tqdm.write(text, file=sys.stderr)
            return
        style = "yellow" if record.levelno >= logging.WARNING else "dim"
        err_console.print(text, style=style, highlight=False, markup=False, soft_wrap=True)


@app.callback()
@user_errors
def _startup() -> None:
    logger = logging.getLogger("gridrl")
    if not any(isinstance(h, _StderrNotes) for h in logger.handlers):
        logger.addHandler(_StderrNotes())
        logger.setLevel(logging.INFO)
        logger.propagate = False
    from gridrl.threads import policy

    policy()  # a malformed GRIDRL_THREADS is one line before any work starts


def print_table(rows: list[dict], title: str | None = None, *, keys: tuple[str, ...] = (),
                full_table: str | None = None) -> None:
    """A list of dicts as a table on stdout; names and numbers are never cut (see gridrl.terminal)."""
    from gridrl.terminal import print_table as _print

    _print(console, rows, title=title, keys=keys, full_table=full_table)


# --------------------------------------------------------------------------------------------
# feeders
# --------------------------------------------------------------------------------------------


@feeders_app.callback()
@user_errors
def feeders(ctx: typer.Context) -> None:
    """Print the feeder library: name, buses, lines, agents, PV peak over load, rated MW by unit type, source."""
    if ctx.invoked_subcommand is not None:
        return
    from gridrl.grid.feeder import list_feeders, load_feeder

    rows = []
    for name in list_feeders():
        s = load_feeder(name).summary()
        rows.append({"name": s["name"], "buses": s["buses"], "lines": s["lines"], "trafos": s["trafos"],
                     "agents": s["agents"], "load MW": s["load_mw"], "yearly peak MW": s["load_peak_mw"],
                     "load factor": s["load_factor"], "PV peak MW": s["pv_peak_mw"],
                     "PV / load": s["pv_to_load"], "agents are": s["agent_types"],
                     "units MW by type": s["units_mw"], "source": s["source"]})
    print_table(rows, title="gridrl feeders", keys=("name",))


@feeders_app.command("show")
@user_errors
def feeders_show(
    name: Annotated[str, typer.Argument(help="Feeder name (see `gridrl feeders`) or path to a spec .toml.")],
    out: Annotated[Optional[Path], typer.Option(help="HTML map to write (default: out/feeders/NAME.html; "
                                                "$GRIDRL_OUT_DIR replaces out/).")] = None,
) -> None:
    """Details of one feeder, and a self-contained HTML map with zones coloured and inverters marked."""
    from gridrl.grid.feeder import load_feeder
    from gridrl.grid.plot import ZOOM_LABELS_JS, feeder_map
    from gridrl.io import default_out, write_html

    feeder = load_feeder(name)
    s = feeder.summary()
    for k, v in s.items():
        console.print(f"[bold]{k:>12}[/]  {v}", highlight=False)
    spec = feeder.spec
    peak_rule = ("scaled so that the coincident yearly peak equals the nominal load"
                 if spec.profiles.load_peak == "nominal" else "as the profiles give it (SimBench's own scaling)")
    console.print(f"[bold]{'load':>12}[/]  yearly peak {s['load_peak_mw']:g} MW = "
                  f"{s['load_peak_mw'] / s['load_mw']:.0%} of nominal {s['load_mw']:g} MW, {peak_rule}; "
                  f"load factor (mean / peak) {s['load_factor']:.2f}", highlight=False)
    console.print(f"[bold]{'agent names':>12}[/]  {feeder.agent_naming}, e.g. "
                  f"{', '.join(feeder.agents[:3])}", highlight=False)
    for kind, c in feeder.capacity_by_type().items():
        role = ("agents" if c["agents"] == c["units"] else
                f"{c['agents']} agents ({c['agent_mw']:.3f} MW), the rest" if c["agents"] else "not agents:")
        console.print(f"[bold]{kind:>12}[/]  {c['units']} unit(s), {c['mw']:.3f} MW rated; {role}"
                      + (" run at their own profile and power factor" if c["agents"] < c["units"] else ""),
                      highlight=False)
    console.print(f"[bold]{'q at night':>12}[/]  "
                  + ("inverters keep their reactive capability at night (STATCOM mode)" if spec.pv.q_at_night
                     else "inverters give no reactive power while their PV produces nothing (IEEE 1547-2018 "
                          "requires none below 5 % of rated power; night mode is an inverter option)"),
                  highlight=False)
    console.print(f"[bold]{'band':>12}[/]  {spec.voltage.v_min_pu}–{spec.voltage.v_max_pu} p.u.", highlight=False)
    for line in _day_sets(feeder):
        console.print(line, highlight=False)
    deg = feeder.adjacency.sum(1)
    console.print(f"[bold]{'agent graph':>12}[/]  {int(feeder.adjacency.sum() // 2)} edges, degree "
                  f"{deg.min()}–{deg.max()}, diameter {int(feeder.hop_distance.max())} hops", highlight=False)
    if spec.base_case:
        console.print(f"[bold]{'base case':>12}[/]  published {spec.base_case.loss_kw} kW loss, "
                      f"min {spec.base_case.min_vm_pu} p.u.", highlight=False)
    out = out or default_out("feeders", f"{feeder.name}.html")
    write_html(feeder_map(feeder), out, post_script=ZOOM_LABELS_JS)
    console.print(f"map written to {out}")


def _day_sets(feeder) -> list[str]:
    """The feeder's three disjoint day sets, one line each, with their rule and their days."""
    sp = feeder.spec.split

    def days(split: str) -> str:
        d = feeder.days(split)
        return ", ".join(map(str, d)) if len(d) <= 12 else f"{', '.join(map(str, d[:6]))}, …, {', '.join(map(str, d[-3:]))}"
    rules = {"train": "the rest: what learners train on (droop:tuned is fitted on them)",
             "val": f"every {sp.val_every}th day from day {sp.val_offset} that is not a test day: tuning and "
                    f"the choice of a run's policy",
             "test": f"every {sp.test_every}th day from day {sp.test_offset}: reported only, never chosen by"}
    label = {"train": "train days", "val": "val days", "test": "test days"}
    return [f"[bold]{label[s]:>12}[/]  {len(feeder.days(s))}: {rules[s]} ({days(s)})" for s in ("train", "val", "test")]


# --------------------------------------------------------------------------------------------
# evaluate, compare, report (controllers and their comparison; gridrl.evaluate/compare/report)
# --------------------------------------------------------------------------------------------


def _int_list(text: str | None, option: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise fail(f"{option} has an empty item in {text!r}; give comma-separated day numbers, e.g. 2,7,12")
    try:
        return tuple(int(t) for t in items)
    except ValueError:
        raise fail(f"{option} takes comma-separated day numbers, e.g. 2,7,12; got {text!r}") from None


_BACKEND_HELP = ("Where the work runs: local (this process) or ray (Ray tasks; needs pip install "
                 "'gridrl\\[ray]'). Results are the same either way.")
_ADDRESS_HELP = ("With --backend ray: the cluster to join, auto (the one `ray start --head` started on this "
                 "machine) or HOST:PORT; default: start Ray on this machine for the run.")
_LOAD_SCALE_HELP = "Multiply every load's P and Q by this factor (a stress scenario; EnvConfig.load_scale)."
_PV_SCALE_HELP = ("Multiply installed PV and inverter ratings by this factor (more PV of the same kind; "
                  "EnvConfig.pv_scale).")


def _scenario(load_scale: float, pv_scale: float):
    """The EnvConfig of --load-scale / --pv-scale (a bad value is one line, exit 2)."""
    from gridrl.env.config import EnvConfig

    try:
        return EnvConfig(load_scale=load_scale, pv_scale=pv_scale)
    except ValueError as exc:
        raise fail(f"--load-scale / --pv-scale: {exc}") from None


def _check_feeders(*names: str | None) -> None:
    """An unknown feeder or a malformed spec as one line at once, before pandas or torch load."""
    from gridrl.grid.library import resolve_spec

    for name in names:
        if name:
            resolve_spec(name)


def _check_kind(path: Path, expected: str, data: dict | None = None) -> None:
    """A config file of another kind (a comparison given to `train`, …) as one line that says what
    it is and which command takes it, instead of every key it does not know."""
    from gridrl.config import read_toml, wrong_kind

    other = wrong_kind(path, read_toml(path) if data is None else data, expected)
    if other:
        raise fail(other)


def _show_summary(result, title: str, *, report: bool) -> None:
    from gridrl.compare import format_summary

    print_table(format_summary(result.summary), title=title, keys=("feeder", "controller"),
                full_table=str(result.out / "summary.md"))
    done = f"{result.ran} cell(s) run" + (f", {result.skipped} already done" if result.skipped else "")
    files = "summary.md, days.parquet, provenance.json" + (", report.html" if report else "")
    console.print(f"{done}; results in {result.out} ({files})", highlight=False)


@app.command("evaluate")
@user_errors
def evaluate_cmd(
    run: Annotated[Optional[Path], typer.Argument(help="A run folder of `gridrl train`: evaluate its trained policy "
                                                  "(instead of --controller) on the feeder it was trained on.")] = None,
    feeder: Annotated[Optional[str], typer.Option(help="Feeder name (see `gridrl feeders`) or path to a spec .toml "
                                                  "(default with RUN: the run's feeder).")] = None,
    controller: Annotated[str, typer.Option(help="Controller: none, droop or opf.")] = "droop",
    preset: Annotated[Optional[str], typer.Option(help="Droop preset: ieee1547-a, ieee1547-b (default), mapdn, or "
                                                  "tuned (fitted on the feeder's training days; cached).")] = None,
    curve: Annotated[Optional[Path], typer.Option(help="Droop curve TOML file with v_pu = [...], q = [...] and "
                                                  "optionally reference = 's_max' | 'q_avail' (instead of --preset), "
                                                  "e.g. one written by `gridrl tune-droop`; or per-inverter curves "
                                                  "(.json / .csv) written by `gridrl export --format curves`.")] = None,
    split: Annotated[str, typer.Option(help="Days to run: test, val (validation), train or all.")] = "test",
    days: Annotated[Optional[str], typer.Option(help="Only these days of the split, comma-separated (default all).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default out/evaluate/FEEDER-CONTROLLER-SPLIT; "
                                                "$GRIDRL_OUT_DIR replaces out/).")] = None,
    load_scale: Annotated[float, typer.Option(help=_LOAD_SCALE_HELP)] = 1.0,
    pv_scale: Annotated[float, typer.Option(help=_PV_SCALE_HELP)] = 1.0,
    report: Annotated[bool, typer.Option(help="Write report.html.")] = True,
) -> None:
    """Run one controller, or the trained policy of a run folder, over whole days of one feeder.

    Prints a summary, writes per-day and per-step tables (parquet) and an HTML report. Re-running
    into the same folder reuses finished results (a run trained again is evaluated again)."""
    _check_feeders(feeder)
    from gridrl.compare import CompareConfig, ControllerSpec
    from gridrl.control.curvefile import read_agent_curves, read_curve_file
    from gridrl.io import default_out
    from gridrl.pipeline import compare

    if run is not None:
        from gridrl.marl.run import open_run

        if curve is not None or preset is not None:
            raise fail("RUN is a trained policy: drop --preset / --curve (they are droop's)")
        feeder = feeder or open_run(run).feeders[0]
        spec = ControllerSpec(run=str(run))
    else:
        if feeder is None:
            raise fail("give --feeder (and --controller), or a run folder of `gridrl train`")
        if curve is not None and preset is not None:
            raise fail("give either --preset or --curve, not both")
        curve_table = None if curve is None else (read_agent_curves(curve) if curve.suffix.lower() in (".json", ".csv")
                                                   else read_curve_file(curve))
        spec = ControllerSpec(name=controller, preset=preset, curve=curve_table)
    cfg = CompareConfig(feeders=(feeder,), controllers=(spec,), split=split, days=_int_list(days, "--days"),
                        env=_scenario(load_scale, pv_scale))
    out = out or default_out("evaluate", f"{Path(feeder).stem}-{spec.key}-{split}")
    result = compare(cfg, out=out, report=report)
    if len(result.days) <= 12:
        from gridrl.compare import format_days

        print_table(format_days(result.days), title=f"{spec.key} on {feeder}: per day",
                    keys=("day", "date"), full_table=str(result.out / "days.parquet"))
    _show_summary(result, title=f"{spec.key} on {feeder}, {split} days", report=report)


@app.command("score")
@user_errors
def score_cmd(
    task: Annotated[Optional[str], typer.Argument(help="Task name, e.g. ieee33-v0 (without it: the task suite).")] = None,
    controller: Annotated[str, typer.Option(help="none, droop, droop:PRESET, opf, a run folder, module:function, "
                                            "path/file.py:function (a policy from any library) or an .onnx file.")] = "droop",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the metrics to this JSON file.")] = None,
) -> None:
    """Score a controller on a named task and print the official metrics (see gridrl/score.py)."""
    from gridrl.score import score, task_table

    if task is None:
        print_table(task_table().to_dict("records"), title="gridrl tasks", keys=("task",))
        return
    metrics, _ = score(task, controller)
    print_table([metrics], title=f"{metrics['controller']} on {metrics['task']}", keys=("task", "controller"))
    if json_out is not None:
        from gridrl.io import write_json

        write_json(json_out, metrics)


@app.command("compare")
@user_errors
def compare_cmd(
    config: Annotated[Optional[Path], typer.Option(help="Comparison TOML (experiments/*.toml); replaces the "
                                                   "selection options below.")] = None,
    feeders: Annotated[Optional[str], typer.Option(help="Comma-separated feeder names, e.g. ieee33,ieee141.")] = None,
    controllers: Annotated[Optional[str], typer.Option(help="Comma-separated controllers: none, droop, opf; "
                                                       "droop:PRESET picks a preset, e.g. droop:mapdn; droop:tuned "
                                                       "is fitted on each feeder's training days; droop:curves=FILE "
                                                       "runs per-inverter curves of `gridrl export --format curves`; "
                                                       "a run folder of "
                                                       "`gridrl train` adds its trained policy.")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Preset of every bare `droop` in --controllers.")] = None,
    split: Annotated[str, typer.Option(help="Days to run: test, val (validation), train or all.")] = "test",
    seeds: Annotated[int, typer.Option(help="Seeds per feeder × controller (0 … N−1).")] = 1,
    days: Annotated[Optional[str], typer.Option(help="Only these days of the split, comma-separated (default all).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: the config's out, else out/compare; "
                                                "$GRIDRL_OUT_DIR replaces out/).")] = None,
    backend: Annotated[Optional[str], typer.Option(help=_BACKEND_HELP)] = None,
    address: Annotated[Optional[str], typer.Option(help=_ADDRESS_HELP)] = None,
    load_scale: Annotated[float, typer.Option(help=_LOAD_SCALE_HELP)] = 1.0,
    pv_scale: Annotated[float, typer.Option(help=_PV_SCALE_HELP)] = 1.0,
    report: Annotated[bool, typer.Option(help="Write report.html.")] = True,
) -> None:
    """Compare controllers: every feeder × controller × seed over the days of a split.

    Shows a progress bar; writes one tidy table, a summary with the gap to opf (markdown and
    printed) and an HTML report. Interrupted runs resume: finished cells are skipped."""
    _check_feeders(*(feeders or "").split(","))
    from gridrl.compare import CompareConfig, load_config, parse_controllers
    from gridrl.pipeline import compare

    if config is not None:
        given = [name for name, v in (("--feeders", feeders), ("--controllers", controllers), ("--preset", preset),
                                      ("--days", days)) if v is not None]
        given += [o for o, changed in (("--split", split != "test"), ("--seeds", seeds != 1),
                                       ("--load-scale", load_scale != 1.0), ("--pv-scale", pv_scale != 1.0))
                  if changed]
        if given:
            raise fail(f"--config already says what to compare; drop {', '.join(given)} or edit {config}")
        _check_kind(config, "comparison")
        cfg = load_config(config)
    else:
        if not feeders or not controllers:
            raise fail("give --feeders and --controllers, or --config FILE")
        cfg = CompareConfig(feeders=tuple(f.strip() for f in feeders.split(",") if f.strip()),
                            controllers=parse_controllers(controllers, preset=preset), split=split, seeds=seeds,
                            days=_int_list(days, "--days"), env=_scenario(load_scale, pv_scale))
    result = compare(cfg, out=out, backend=backend, address=address, report=report)
    _show_summary(result, title="comparison summary", report=report)


@app.command("sweep")
@user_errors
def sweep_cmd(
    feeders: Annotated[str, typer.Option(help="Comma-separated feeder names, e.g. ieee33,ieee69.")],
    out: Annotated[Path, typer.Option(help="Sweep folder: runs/, runs.csv, compare/ (re-run the same command "
                                      "into it to resume).")],
    algos: Annotated[str, typer.Option(help="Comma-separated learners: dppo, ippo, cppo.")] = "dppo",
    seeds: Annotated[int, typer.Option(help="Training seeds per feeder × learner (0 … N−1).")] = 1,
    config: Annotated[Optional[Path], typer.Option(help="Training TOML shared by every run (as for `gridrl train`; "
                                                   "\\[learner.ALGO] tables set one learner's settings).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Budget of every run in environment feeder steps "
                                                 "(default: the config's).")] = None,
    baselines: Annotated[str, typer.Option(help="Controllers the runs are compared with: none, droop, "
                                           "droop:PRESET, opf.")] = "none,droop,opf",
    days: Annotated[Optional[str], typer.Option(help="Only these test days in the comparison, comma-separated "
                                                "(default all).")] = None,
    backend: Annotated[str, typer.Option(help=_BACKEND_HELP)] = "local",
    address: Annotated[Optional[str], typer.Option(help=_ADDRESS_HELP)] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    report: Annotated[bool, typer.Option(help="Write the comparison's report.html.")] = True,
) -> None:
    """Train one run per feeder × learner × seed, then compare them all with the baselines.

    Each run gets its own run folder under OUT/runs; the comparison (every run on its own feeder's
    test days beside the baselines) goes to OUT/compare with one report. With --backend ray the
    runs and the comparison's cells are Ray tasks side by side; on several machines OUT must be on
    a filesystem they all mount. Interrupted sweeps resume: finished runs are skipped, unfinished
    ones continue from their last checkpoint, finished comparison cells are kept. Each run's
    look at the test days is a row of the results ledger (reports/ledger.csv)."""
    _check_feeders(*feeders.split(","))
    from gridrl.compare import format_summary
    from gridrl.config import read_toml
    from gridrl.pipeline import sweep
    from gridrl.sweep import plan_sweep

    data, source = ({}, "command line") if config is None else (read_toml(config), str(config))
    if config is not None:
        _check_kind(config, "training", data)
    runs = plan_sweep([f.strip() for f in feeders.split(",") if f.strip()],
                      [a.strip() for a in algos.split(",") if a.strip()], seeds, out=out, train=data,
                      source=source, steps=steps)
    result = sweep(runs, out=out, backend=backend, address=address,
                       baselines=[b.strip() for b in baselines.split(",") if b.strip()],
                       compare_days=_int_list(days, "--days"), progress=progress, report=report)
    print_table(format_summary(result.compare.summary), title="sweep: runs and baselines on the test days",
                keys=("feeder", "controller"), full_table=str(result.compare.out / "summary.md"))
    done = f"{result.trained} run(s) trained" + (f", {result.skipped} already done" if result.skipped else "")
    console.print(f"{done}; runs in {out / 'runs'} (runs.csv), comparison in {result.compare.out}"
                  + (" (report.html)" if report else ""), highlight=False)


@app.command("tune-droop")
@user_errors
def tune_droop_cmd(
    feeder: Annotated[str, typer.Option(help="Feeder name (see `gridrl feeders`) or path to a spec .toml.")],
    out: Annotated[Optional[Path], typer.Option(help="Curve file to write (default out/tuned/FEEDER.toml; "
                                                "$GRIDRL_OUT_DIR replaces out/).")] = None,
    budget: Annotated[int, typer.Option(help="Candidate curves scored in the search.")] = 160,
    search_days: Annotated[int, typer.Option(help="Representative training days each candidate is "
                                             "scored on (the final choice uses every training day).")] = 24,
    select_days: Annotated[Optional[int], typer.Option(help="Training days of the final choice "
                                                       "(default every one; fewer for very large feeders).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the search.")] = 0,
    refit: Annotated[bool, typer.Option(help="Fit again even if the cache holds this fit.")] = False,
) -> None:
    """Fit droop:tuned, the volt-var curve of one feeder, on its training days only.

    A black-box search (staged grids, then CMA-ES) over IEEE 1547-2018 four-point curves
    minimises the energy loss on the training days, keeping the controllable rate at least that
    of the best standard preset. Writes a curve file for `gridrl evaluate --curve` with the
    provenance (feeder, spec hash, scenario, days, objective) in its \\[fit] table; the same fit
    serves `--preset tuned` and `droop:tuned` from the cache."""
    _check_feeders(feeder)
    from gridrl.control.curvefile import write_curve_file
    from gridrl.control.tuning import TuneConfig, tuned_curve
    from gridrl.grid.feeder import load_feeder
    from gridrl.io import default_out

    try:
        cfg = TuneConfig(budget=budget, search_days=search_days, select_days=select_days, seed=seed)
    except ValueError as exc:
        raise fail(str(exc)) from None
    fd = load_feeder(feeder)
    say = lambda m: err_console.print(f"[dim]{m}[/]", highlight=False)  # noqa: E731
    fitted = tuned_curve(fd, config=cfg, cache=not refit, progress=say)
    path = write_curve_file(out or default_out("tuned", f"{fd.name}.toml"), fitted.curve, fitted.fit)
    fit = fitted.fit
    console.print(f"droop:tuned on {fd.name}: v_pu = {list(fitted.curve.v_pu)}, q = {list(fitted.curve.q)} "
                  f"(fractions of s_max)", highlight=False)
    rows = [{"curve": name, "loss MWh": round(r["energy_loss_mwh"], 3), "controllable": round(r["controllable_rate"], 4),
             "out-of-band bus-h": round(r["violation_bus_hours"], 2), "unsettled steps": r["unsettled_steps"]}
            for name, r in fit["figures"].items()]
    print_table(rows, title=f"{fd.name}: {len(fit['train_days'])} training days", keys=("curve",))
    console.print(f"fitted in {fit['seconds']:.0f} s ({fit['curves_scored']} curves, {fit['curve_days']} curve-days); "
                  f"curve file {path}", highlight=False)


@app.command("report")
@user_errors
def report_cmd(
    results: Annotated[Path, typer.Argument(help="Folder written by `gridrl compare`, `gridrl evaluate` or "
                                            "`gridrl train`.")],
    out: Annotated[Optional[Path], typer.Option(help="HTML file to write (default RESULTS/report.html).")] = None,
) -> None:
    """The self-contained HTML report of a results folder (plotly.js embedded: opens offline).

    For a training run: its training curves beside its comparison on the test days."""
    from gridrl.pipeline import write_report, write_run_report
    from gridrl.report import ReportError

    if not results.is_dir():
        what = "is not a folder" if results.exists() else "does not exist"
        raise ReportError(f"{results} {what}; give the --out folder of a `gridrl compare`, "
                          f"`gridrl evaluate` or `gridrl train` run")
    if (results / "checkpoint.pt").exists() or (results / "scalars.csv").exists():
        path = write_run_report(results, path=out)
    else:
        path = write_report(results, path=out)
    console.print(f"report written to {path}", highlight=False)


# --------------------------------------------------------------------------------------------
# train (learners; gridrl.marl)
# --------------------------------------------------------------------------------------------


@app.command("train")
@user_errors
def train_cmd(
    feeder: Annotated[Optional[str], typer.Argument(help="Feeder name (see `gridrl feeders`) or path to a spec .toml "
                                                    "(or --feeders).")] = None,
    algo: Annotated[Optional[str], typer.Option(help="Learner: dmpo, dppo, ippo or cppo (default: the config's, else dppo).")] = None,
    feeders: Annotated[Optional[str], typer.Option(help="Several feeders, comma-separated (instead of FEEDER): one "
                                                   "transferable policy trained on all of them (needs --transfer).")] = None,
    transfer: Annotated[bool, typer.Option("--transfer", help="Train a feeder-agnostic policy (learner.transfer = "
                                           "true): it acts on any feeder, fine-tunes with --init.")] = False,
    init: Annotated[Optional[Path], typer.Option(help="Start from this transferable run folder (fine-tuning); without "
                                                 "--config its settings are the run's.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="Training TOML (experiments/*.toml): top-level settings, "
                                                   "\\[env] and \\[learner] tables.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Budget in environment feeder steps (default: the config's).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of weights, exploration and the days drawn.")] = None,
    env_chunk: Annotated[Optional[int], typer.Option(help="Solve the training scenarios' power flows this many at a "
                                                     "time (a divisor of num_envs): arrays that scale with "
                                                     "the chunk, the same checkpoint bit for bit.")] = None,
    residual: Annotated[Optional[str], typer.Option(help="Train the policy as a residual on a droop curve: "
                                                    "droop:tuned (the feeder's tuned curve at each agent's own "
                                                    "measured voltage, plus the policy's action; recorded in the "
                                                    "run).")] = None,
    residual_damping: Annotated[Optional[float], typer.Option(help="With --residual: the base moves this share "
                                                              "(0-1] of the way from the inverter's reactive power "
                                                              "now to the curve each interval (1: the curve read "
                                                              "once, which swings on steep curves).")] = None,
    device: Annotated[str, typer.Option(help="cpu, or cuda when a GPU is present.")] = "cpu",
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default out/runs/FEEDER-ALGO-seedSEED); must "
                                                "not exist unless --resume.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint (a finished run is "
                                         "only evaluated again; an empty --out starts a new run).")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress: a bar with the latest validation figures on a "
                                           "terminal, one line per validation or evaluation in a pipe or log.")] = True,
) -> None:
    """Train a learner on the feeder's training days, then compare it on the test days.

    Without --config the settings and budget are those of the published experiment for the
    algorithm and the feeder's size (printed first, with the time it took there); the policy is
    chosen on the feeder's validation days, and the test-day figures are added to the results
    ledger (reports/ledger.csv).

    Shows environment steps, episode return, controllable rate, value loss and steps/s; writes
    checkpoints, scalars (CSV and TensorBoard), the resolved config, the comparison against
    none, droop and opf and a report into the run folder. Interrupted runs continue with --resume
    and end where an uninterrupted run would."""
    import json

    from rich.markup import escape

    from gridrl.config import read_toml

    # the checks that need no numerical package first, so a wrong argument is one line at once
    if device not in ("cpu", "cuda"):
        raise fail(f"--device must be cpu or cuda, got {device!r}")
    if (feeder is None) == (feeders is None):
        raise fail("give one feeder (FEEDER) or several (--feeders a,b,c), not both" if feeder else
                   "give the feeder to train on (FEEDER) or several (--feeders a,b,c)")
    names = [feeder] if feeder else [f.strip() for f in feeders.split(",") if f.strip()]
    _check_feeders(*names)
    if len(names) > 1 and not transfer and init is None and config is None:
        raise fail("training on several feeders needs a feeder-agnostic policy: add --transfer")
    if resume and out is None:
        raise fail("--resume needs --out RUN_DIR (the folder of the run to continue)")
    data, source = ({}, "command line")
    variant = "default"
    if config is not None:
        data, source = read_toml(config), str(config)
        variant = config.stem
        _check_kind(config, "training", data)

    from gridrl.compare import format_summary
    from gridrl.marl.train import CONFIG_FILE, resolve_train_config
    from gridrl.pipeline import train

    if config is None and resume and (out / CONFIG_FILE).is_file():
        try:
            data = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8"))["config"]
            source = str(out / CONFIG_FILE)
            variant = ""
        except (OSError, ValueError, KeyError):
            raise fail(f"{out / CONFIG_FILE} is damaged; give the run's settings with --config") from None
    elif config is None and init is not None:
        from gridrl.marl.run import open_run

        data, source, variant = _finetune_settings(open_run(init), names[0]), f"the settings of {init}", "finetune"
    elif config is None:
        from gridrl.grid.feeder import load_feeder
        from gridrl.marl.train import published_settings

        data, line = published_settings(load_feeder(names[0]), algo or "dppo")
        source = "the published settings"
        err_console.print(f"[dim]{line}[/]", highlight=False, soft_wrap=True)
    if transfer or init is not None:
        data = {**data, "learner": {**data.get("learner", {}), "transfer": True}}
        if variant == "default":
            variant = "transfer"
    overrides = {"algo": algo, "steps": steps, "seed": seed, "env_chunk": env_chunk, "residual": residual,
                 "residual_damping": residual_damping}
    cfg = resolve_train_config(data, source=source, overrides=overrides)
    label = "+".join(Path(n).stem for n in names)
    if out is None:
        from gridrl.io import default_out

        out = default_out("runs", f"{label}-{cfg.algo}-seed{cfg.seed}")
    try:
        result = train(names[0] if len(names) == 1 else names, cfg, out=out, resume=resume, device=device,
                       progress=progress, variant=variant, init=init,
                       log=lambda m: err_console.print(f"[dim]{escape(m)}[/]", highlight=False, soft_wrap=True))
    except KeyboardInterrupt:
        raise fail(_interrupted(feeder or f"--feeders {feeders}", out, cfg), 130) from None
    if result.compare is not None:
        print_table(format_summary(result.compare.summary), title=f"{cfg.algo} on {label}, test days",
                    keys=("feeder", "controller"), full_table=str(out / "compare" / "summary.md"))
    console.print(f"run folder {out} (checkpoint.pt, scalars.csv, tb/, compare/, report.html)", highlight=False)


def _settings_of(run) -> dict:
    """A run's training settings as a training table (:func:`_finetune_settings` starts from
    them): its learner and its environment, the budget and comparison left at their defaults."""
    import json

    try:
        config = json.loads((run.path / "config.json").read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError):
        raise fail(f"{run.path / 'config.json'} is missing or damaged; give the settings with --config") from None
    keep = ("algo", "num_envs", "band_margin_pu", "validation_days", "validate_every_steps", "env", "learner")
    return {k: v for k, v in config.items() if k in keep and v is not None}


def _finetune_settings(run, feeder: str) -> dict:
    """The training table of fine-tuning ``run`` on ``feeder``: the run's settings, selected on
    the validation days a run trained on ``feeder`` from scratch would be selected on (the run's
    own count was chosen for the feeders it trained on)."""
    from gridrl.grid.feeder import load_feeder
    from gridrl.marl.train import published_settings

    data = _settings_of(run)
    data.pop("validation_days", None)
    days = published_settings(load_feeder(feeder), data.get("algo", "dppo"))[0].get("validation_days")
    if days is not None:
        data["validation_days"] = days
    return data


def _interrupted(feeder: str, out: Path, cfg) -> str:
    """What an interrupted `gridrl train` kept, and how to go on."""
    from gridrl.marl.checkpoint import CHECKPOINT

    again = f"gridrl train {feeder} --out {out} --resume"
    if (out / CHECKPOINT).exists():
        return f"interrupted; {out} keeps its last checkpoint: continue with {again}"
    if out.is_dir() and any(out.iterdir()):
        return (f"interrupted before the first checkpoint (written every {cfg.checkpoint_every_s:g} s of training); "
                f"there is nothing to continue: {again} starts the run again from the beginning")
    return "interrupted before training started; nothing was written: run the same command again"


# --------------------------------------------------------------------------------------------
# benchmarks
# --------------------------------------------------------------------------------------------


@bench_app.command("powerflow")
@user_errors
def bench_powerflow(
    feeder: Annotated[str, typer.Option(help="Feeder name(s), comma-separated.")] = "ieee141",
    batch: Annotated[int, typer.Option(min=1, help="Scenarios per batch.")] = 1024,
    repeats: Annotated[int, typer.Option(min=1, help="Timed repeats per solver (the best counts).")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the random scenarios.")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Also write the markdown report here.")] = None,
) -> None:
    """gridrl's batched power flow against pandapower, lightsim2grid and power-grid-model, in one process."""
    from gridrl.grid.bench import machine_info, run_benchmark, to_markdown
    from gridrl.io import write_text

    names = [f.strip() for f in feeder.split(",") if f.strip()]
    with err_console.status("benchmarking") as status:  # transient: leaves no lines behind
        df = run_benchmark(names, batch, seed=seed, repeats=repeats,
                           progress=lambda m: status.update(f"benchmarking {m}"))
    report = to_markdown(df, command="gridrl bench powerflow " + " ".join(sys.argv[3:]), info=machine_info())
    console.print(report, highlight=False, markup=False)
    if out:
        write_text(out, report)


@bench_app.command("env")
@user_errors
def bench_env(
    feeder: Annotated[str, typer.Option(help="Feeder for the env vs pandapower step comparison.")] = "ieee141",
    num_envs: Annotated[int, typer.Option(min=1, help="Scenarios stepped together.")] = 256,
    agent_feeder: Annotated[str, typer.Option(help="Large feeder for agent-steps per second ('' to skip).")] = "mvlv-rural",
    contention: Annotated[bool, typer.Option(help="Also time the thread settings quiet and beside one "
                                             "CPU-bound process that the benchmark starts and stops.")] = True,
    rounds: Annotated[int, typer.Option(min=1, help="Quiet/contended rounds of the contention part.")] = 6,
    out: Annotated[Optional[Path], typer.Option(help="Also write the markdown report here.")] = None,
) -> None:
    """Full environment steps per second against a MAPDN-style pandapower step, and the thread
    policy quiet and contended."""
    from gridrl.env.bench import run_env_bench, to_markdown
    from gridrl.io import write_text

    r = run_env_bench(feeder, num_envs=num_envs, agent_feeder=agent_feeder or None,
                      contention=contention, contention_rounds=rounds)
    report = to_markdown(r, command="gridrl bench env " + " ".join(sys.argv[3:]))
    console.print(report, highlight=False, markup=False)
    if out:
        write_text(out, report)


@bench_app.command("train")
@user_errors
def bench_train(
    feeder: Annotated[str, typer.Option(help="Feeder to train on.")] = "ieee141",
    algo: Annotated[str, typer.Option(help="Learner: dmpo, dppo, ippo or cppo.")] = "dppo",
    num_envs: Annotated[Optional[int], typer.Option(min=1, help="Scenarios per iteration (default: the "
                                                    "training default).")] = None,
    rounds: Annotated[int, typer.Option(min=1, help="Timed iterations; medians are reported.")] = 5,
    threads: Annotated[Optional[int], typer.Option(min=1, help="Threads for this run (default: gridrl's "
                                                   "thread policy).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Also write the markdown report here.")] = None,
) -> None:
    """Training throughput end to end (feeder-steps/s including learning) and its split between
    environment, acting and updating, against the environment alone and a pandapower step."""
    from gridrl.io import write_text
    from gridrl.marl.bench import run_train_bench, to_markdown
    from gridrl.marl.train import ALGORITHMS, TrainError

    if algo not in ALGORITHMS:
        raise TrainError(f"unknown algorithm {algo!r} — known algorithms: {', '.join(ALGORITHMS)}")
    r = run_train_bench(feeder, algo=algo, num_envs=num_envs, rounds=rounds, threads=threads)
    report = to_markdown(r, command="gridrl bench train " + " ".join(sys.argv[3:]))
    console.print(report, highlight=False, markup=False)
    if out:
        write_text(out, report)


@app.command("warmup")
@user_errors
def warmup_cmd(
    feeder: Annotated[Optional[str], typer.Option(help="Feeder name(s), comma-separated (default: every shipped feeder).")] = None,
) -> None:
    """Build feeders into the cache and compile the power-flow kernel now, so that first commands
    start at once (`make setup` runs it; a second run only checks)."""
    from gridrl.grid.warmup import warm_up

    names = None if feeder is None else [f.strip() for f in feeder.split(",") if f.strip()]
    with err_console.status("warming up") as status:
        rows = warm_up(names, progress=lambda m: status.update(f"warming up: {m}"))
    print_table([{**r, "seconds": round(r["seconds"], 1)} for r in rows], title="gridrl warmup",
                keys=("what",))


@app.command("robustness")
@user_errors
def robustness_cmd(
    config: Annotated[Path, typer.Option(help="Suite TOML (experiments/robustness_*.toml): the feeder, baselines, "
                                         "groups of trained runs and conditions.")],
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: the config's out, else "
                                                "out/robustness; $GRIDRL_OUT_DIR replaces out/).")] = None,
    conditions: Annotated[Optional[str], typer.Option(help="Only these conditions, comma-separated (default: the "
                                                      "config's, else all): nominal, noise-0.005, noise-0.01, "
                                                      "dropout-0.2, dropout-0.5, dropout-1.0, worst-outage, "
                                                      "worst-outage-pair, outage-0.1, pv-1.5, load-1.2-pv-1.5, "
                                                      "no-q-night, or one the config defines (custom_conditions).")
                  ] = None,
) -> None:
    """The fault and growth suite: every controller under sensor noise, message loss, inverter
    outages, more PV and more load, and without reactive power at night, on the test days (or,
    with split = "val" in the config, the validation days).

    Writes one comparison folder per condition (resumable), table.csv and summary.md (rate /
    loss per condition and controller)."""
    import dataclasses

    from gridrl.robustness import load_config, run_robustness, summary_markdown

    cfg = load_config(config)
    if conditions is not None:
        cfg = dataclasses.replace(cfg, conditions=tuple(c.strip() for c in conditions.split(",") if c.strip()))
    with err_console.status("robustness") as status:
        tidy = run_robustness(cfg, out=out, progress=lambda m: status.update(f"robustness: {m}"))

    console.print(summary_markdown(tidy, feeder=cfg.feeder, split=cfg.split), highlight=False, markup=False)


@app.command("export")
@user_errors
def export_cmd(
    run: Annotated[Path, typer.Argument(help="A run folder of `gridrl train`.")],
    fmt: Annotated[str, typer.Option("--format", help="onnx: the policy as ONNX graphs with policy.json (inputs, "
                                        "normalisation, messages, output, envelope); curves: one IEEE 1547-2018 "
                                        "volt-var curve per inverter, distilled from the policy on the training "
                                        "days (FILE.json and FILE.csv).")] = "onnx",
    out: Annotated[Optional[Path], typer.Option(help="onnx: output folder (new, empty or a previous export); "
                                                "curves: output file, written as FILE.json and FILE.csv (default "
                                                "out/export/RUN-onnx or out/export/RUN-curves; $GRIDRL_OUT_DIR "
                                                "replaces out/).")] = None,
    envelope: Annotated[str, typer.Option(help="The safety envelope the exported policy acts through: clamp "
                                          "(default, as comparisons deploy it), ramp or off.")] = "clamp",
    days: Annotated[Optional[str], typer.Option(help="curves: only these training days, comma-separated (default "
                                                "every training day).")] = None,
) -> None:
    """Export a trained policy for real inverters: as ONNX, or as IEEE 1547-2018 volt-var curves.

    ONNX: message.onnx (what an agent sends its neighbours), action.onnx (its reactive power from
    its own measurements and the messages received, safety envelope included), network.onnx (the
    whole feeder, for simulation) and policy.json describing inputs, units, normalisation,
    messages and output. Curves: each agent's curve fitted to the policy's own reactive power on
    the training days (least squares, inside IEEE 1547 Category B and the inverter's reactive
    rating); evaluate them with `gridrl compare --controllers droop:curves=FILE.json`. Output is
    written all or nothing."""
    from gridrl.export import export_curves, export_onnx
    from gridrl.io import default_out

    if fmt not in ("onnx", "curves"):
        raise fail(f"--format must be onnx or curves, got {fmt!r}")
    if envelope not in ("clamp", "ramp", "off"):
        raise fail(f"--envelope must be clamp, ramp or off, got {envelope!r}")
    env = {"mechanism": envelope} if envelope != "off" else {"mechanism": "off", "handover_z": 0}
    name = run.resolve().name
    if fmt == "onnx":
        result = export_onnx(run, out or default_out("export", f"{name}-onnx"), envelope=env)
        sizes = ", ".join(f"{g['file']} {g['bytes'] / 1024:.1f} KiB" for g in result.description["graphs"].values())
        console.print(f"exported {run} to {result.folder}: {sizes}, policy.json", highlight=False)
        return
    say = lambda m: err_console.print(f"[dim]{m}[/]", highlight=False)  # noqa: E731
    result = export_curves(run, out or default_out("export", f"{name}-curves"), envelope=env,
                           days=_int_list(days, "--days"), progress=say)
    rows = [{k: r[k] for k in ("agent", "sgen", "VRef", "V1", "Q1", "V2", "Q2", "V3", "Q3", "V4", "Q4")}
            for r in result.inverters]
    print_table(rows, title=f"IEEE 1547-2018 volt-var curves (V p.u., Q % of nameplate) distilled from {name}",
                keys=("agent",))
    console.print(f"curves in {result.json_path} and {result.csv_path}; evaluate with "
                  f"`gridrl compare --feeders {result.fit['feeder']} --controllers droop:curves={result.json_path}`",
                  highlight=False)


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------


def main() -> None:  # pragma: no cover - console script
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
