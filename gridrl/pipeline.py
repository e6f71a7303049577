"""The chains the command line runs: compare → report, train → compare → report, sweep → compare → report.

Each step is a library function a Python user can call alone — :func:`gridrl.compare.run_compare`,
:func:`gridrl.marl.train.train`, :func:`gridrl.sweep.train_sweep`, :func:`gridrl.report.build_report`,
:func:`gridrl.training_report.build_run_report` — and none of them calls a layer above its own:
training does not compare, comparing does not write a report. This module only chains them, as
``gridrl train``, ``gridrl compare``, ``gridrl evaluate`` and ``gridrl sweep`` do; it holds no
logic of its own beyond which step follows which.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gridrl.compare import CompareConfig, CompareResult, ControllerSpec, parse_controllers, run_compare
from gridrl.env import EnvConfig

__all__ = ["TrainedRun", "compare", "compare_run", "residual_curve_of", "sweep", "train", "write_report",
           "write_run_report"]


def write_report(results_dir: str | Path, *, path: str | Path | None = None) -> Path:
    """``RESULTS/report.html`` (or ``path``): the report of a comparison or evaluation folder."""
    from gridrl.io import write_html
    from gridrl.report import build_report

    return write_html(build_report(results_dir), path or Path(results_dir) / "report.html")


def write_run_report(run_dir: str | Path, *, path: str | Path | None = None) -> Path:
    """``RUN_DIR/report.html`` (or ``path``): a training run's curves, beside its comparison if it has one."""
    from gridrl.io import write_html
    from gridrl.training_report import build_run_report

    return write_html(build_run_report(run_dir), path or Path(run_dir) / "report.html")


def compare(config: CompareConfig, *, out: str | Path | None = None, backend: str | None = None,
            address: str | None = None, progress: bool = True, report: bool = True) -> CompareResult:
    """Run (or resume) a comparison (:func:`~gridrl.compare.run_compare`), then write its report."""
    result = run_compare(config, out=out, backend=backend, address=address, progress=progress)
    if report:
        write_report(result.out)
    return result


@dataclass(frozen=True)
class TrainedRun:
    """A trained run (:class:`~gridrl.marl.train.TrainResult`), its comparison on the test days
    (``None`` when ``TrainConfig.compare`` is empty) and its report."""

    train: Any
    compare: CompareResult | None
    report: Path


def train(feeder: str | Sequence[str], config, *, out: str | Path, resume: bool = False, device: str = "cpu",
          progress: bool = True, log: Callable[[str], None] | None = None, variant: str = "",
          init: str | Path | None = None) -> TrainedRun:
    """Train (or resume) a run, compare it with ``config.compare`` on the test days into
    ``RUN_DIR/compare`` and add that look to the results ledger (:func:`gridrl.ledger.append_run`;
    ``variant`` names the settings there; without a comparison, a learning curve that looked at
    the test days in this call adds its own row, :func:`gridrl.ledger.append_curve`), and write ``RUN_DIR/report.html`` (what ``gridrl
    train`` does). Progress: a bar on a terminal, otherwise lines (see :func:`gridrl.marl.train.train`).

    Several feeders (a list) train one transferable policy; no comparison follows (it would be
    on the feeders it trained on): evaluate it on any feeder with ``gridrl evaluate RUN --feeder F``.
    ``init``: a transferable run to start from (fine-tuning)."""
    from gridrl import ledger
    from gridrl.marl.train import train as train_run
    from gridrl.terminal import is_terminal

    out = Path(out)
    result = train_run(feeder, config, out=out, resume=resume, device=device, progress=progress, log=log, init=init,
                       residual_curve=residual_curve_of(feeder, config, log=log))
    compared = None
    several = not isinstance(feeder, str) and len(feeder) > 1
    if several and config.compare and log is not None:
        log(f"trained on {len(feeder)} feeders: no comparison; evaluate the run on a feeder with "
            f"`gridrl evaluate {out} --feeder FEEDER`")
    if not isinstance(feeder, str):
        feeder = feeder[0]
    if config.compare and not several:
        if progress and not is_terminal() and log is not None:
            log(f"comparing with {', '.join(config.compare)} on the test days")
        compared = compare_run(out, feeder, config, progress=progress and is_terminal())
        label = _own_label(out / "compare") or out.resolve().name  # the run's row in its comparison
        row = ledger.append_run(out, compared.summary, label=label, variant=variant)
        if row is not None and log is not None:
            log(f"ledger: row added to {ledger.ledger_path()} (settings {row['config_hash']}, commit {row['commit']})")
    sc = result.scalars
    looked = sc is not None and len(sc) and ((sc["tag"] == "eval/days") & (sc["iteration"] > result.resumed_from)).any()
    if compared is None and looked:  # the learning curve's test-day look, when no comparison row names it
        row = ledger.append_curve(out, variant=variant)
        if row is not None and log is not None:
            log(f"ledger: the learning curve's test-day look added to {ledger.ledger_path()}")
    return TrainedRun(train=result, compare=compared, report=write_run_report(out))


def residual_curve_of(feeder: str | Sequence[str], config, *, log: Callable[[str], None] | None = None):
    """The curve of ``config.residual`` on ``feeder`` (:func:`gridrl.control.tuning.residual_curve`),
    or ``None`` without a residual (or with several feeders, which training refuses)."""
    if config.residual is None or not isinstance(feeder, str):
        return None
    from gridrl.control.tuning import residual_curve
    from gridrl.grid.feeder import load_feeder

    return residual_curve(load_feeder(feeder), config.residual, step_minutes=config.env.step_minutes, progress=log)


def compare_run(out: str | Path, feeder: str, config, *, progress: bool = True) -> CompareResult:
    """The trained policy of the run in ``out`` against ``config.compare`` (a
    :class:`~gridrl.marl.train.TrainConfig`'s) on the test days, into ``RUN_DIR/compare``.

    The run is labelled by its folder's name, as ``gridrl compare`` and ``gridrl evaluate`` label it.
    """
    out = Path(out)
    run = ControllerSpec(run=str(out.resolve()), label=_own_label(out / "compare"))
    # every controller at the run's own step length, like with like
    cfg = CompareConfig(feeders=(feeder,), controllers=parse_controllers(",".join(config.compare)) + (run,),
                        split="test", days=config.compare_days,
                        env=EnvConfig(step_minutes=config.env.step_minutes))
    return run_compare(cfg, out=out / "compare", progress=progress)


def _runs_to_evaluate(config: CompareConfig, out: Path) -> set[str]:
    """The labels of the trained runs whose comparison cells are not finished in ``out``: the
    runs the comparison is about to evaluate on the test days (a resumed comparison keeps the
    finished cells and looks at nothing again)."""
    from gridrl.compare.cells import cells_of

    return {c.controller.key for c in cells_of(config, out) if c.controller.run is not None and not c.done}


def _own_label(folder: Path) -> str | None:
    """The label the run had in a comparison written before runs were labelled by their folder
    (by their algorithm), so that such a run resumes into its own comparison; ``None`` otherwise."""
    try:
        controllers = json.loads((folder / "config.json").read_text(encoding="utf-8"))["controllers"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    labels = [c.get("label") for c in controllers if isinstance(c, dict) and c.get("run") is not None]
    return labels[0] if labels else None


def sweep(runs: Sequence, *, out: str | Path, backend: str = "local", address: str | None = None,
          baselines: Sequence[str] = ("none", "droop", "opf"), compare_days: Sequence[int] | None = None,
          progress: bool = True, report: bool = True):
    """Train every run of :func:`~gridrl.sweep.plan_sweep` not finished yet
    (:func:`~gridrl.sweep.train_sweep`), write each trained run's report, then compare them all
    with the ``baselines`` on their feeders' test days (``compare_days``: only these) in one
    report, on the same executor. Each run the comparison evaluates (not the runs whose cells a
    resumed comparison keeps) adds its row to the results ledger (variant ``sweep``). A
    :class:`~gridrl.sweep.SweepResult`.

    Raises :class:`~gridrl.sweep.SweepError` when ``out`` holds another sweep (nothing is written
    then); errors of the comparison's settings come before any training.
    """
    from gridrl import ledger
    from gridrl.cluster import executor
    from gridrl.compare import config_problems
    from gridrl.sweep import SweepError, SweepResult, claim_sweep, train_sweep

    out = Path(out)
    feeders = tuple(dict.fromkeys(r.feeder for r in runs))
    specs = parse_controllers(",".join(baselines))
    days = tuple(compare_days) if compare_days else None
    base_cfg = CompareConfig(feeders=feeders, controllers=specs, days=days)
    problems = config_problems(base_cfg)  # before hours of training, not after
    if problems:
        raise SweepError("; ".join(problems))
    ex = executor(backend, address=address)
    claim_sweep(out, runs, baselines=baselines, compare_days=days)
    with ex:
        table, trained = train_sweep(runs, ex, out=out, progress=progress)
        for run in trained:
            write_run_report(run.out)
        cfg = dataclasses.replace(base_cfg, controllers=specs + tuple(ControllerSpec(run=str(r.out)) for r in runs))
        fresh = _runs_to_evaluate(cfg, out / "compare")
        result = compare(cfg, out=out / "compare", backend=backend, progress=progress, report=report)
    for r in runs:  # each run evaluated on the test days now is a look: a row of the results ledger
        if r.name in fresh:
            ledger.append_run(r.out, result.summary, label=r.name, variant="sweep", source=f"gridrl sweep --out {out}")
    return SweepResult(out=out, runs=table, compare=result, trained=len(trained), skipped=len(runs) - len(trained))
