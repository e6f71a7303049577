"""From a trained run to real inverters: the policy as ONNX with its message protocol, or
distilled into the IEEE 1547-2018 volt-var curves inverters accept today.

- :func:`export_onnx`: ``gridrl export RUN --format onnx --out DIR`` writes ``message.onnx``,
  ``action.onnx``, ``network.onnx`` (see :mod:`gridrl.export.onnx_graph`) and ``policy.json``
  (see :mod:`gridrl.export.protocol`) into DIR, all or nothing.
- :func:`export_curves`: ``gridrl export RUN --format curves --out FILE`` fits one volt-var curve
  per agent to the deployed policy's own reactive power on the feeder's training days
  (:mod:`gridrl.control.distill`) and writes ``FILE.json`` and ``FILE.csv``
  (:mod:`gridrl.control.curvefile`), which ``droop:curves=FILE`` evaluates like any droop.

Both export the policy as a comparison deploys it (:func:`gridrl.marl.run.deployed`: through the
safety envelope, with the hand-over to 1547-B) in the run's evaluation environment.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gridrl.errors import GridrlError, OutputError

__all__ = ["CurvesExport", "ExportError", "OnnxExport", "deployed_run", "export_curves", "export_onnx",
           "record_observations"]


class ExportError(GridrlError, ValueError):
    """A run that cannot be exported as asked, or an output in the way."""


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote: the folder, graph name → file, and ``policy.json``'s content."""

    folder: Path
    files: dict[str, str]
    description: dict[str, Any]


@dataclass(frozen=True)
class CurvesExport:
    """What :func:`export_curves` wrote: the JSON and CSV files, one row per inverter, the fit's provenance."""

    json_path: Path
    csv_path: Path
    inverters: list[dict[str, Any]]
    fit: dict[str, Any]


def deployed_run(run_dir: str | os.PathLike, *, envelope: Mapping[str, Any] | None = None):
    """``(run, feeder, env_config, deployed)``: a run folder's policy as a comparison deploys it,
    in the run's evaluation environment (the default scenario, the run's observation settings)."""
    from gridrl.grid.feeder import load_feeder
    from gridrl.marl.run import deployed, open_run

    run = open_run(run_dir)
    feeder = load_feeder(run.feeder)
    run.check_feeder(feeder)
    env_config = run.evaluation_config()
    return run, feeder, env_config, deployed(run.policy(), feeder, env_config, envelope=envelope,
                                             trained=run.env_config)


def export_onnx(run_dir: str | os.PathLike, out: str | os.PathLike, *,
                envelope: Mapping[str, Any] | None = None) -> OnnxExport:
    """Export a run's deployed policy as ONNX graphs and ``policy.json`` into the folder ``out``
    (new, empty, or a previous export, which is replaced only once the new one is complete)."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ExportError("exporting to ONNX needs the onnx package: pip install 'gridrl[onnx]'") from None
    from gridrl.env import make_env
    from gridrl.export.onnx_graph import export_graphs, sizes
    from gridrl.export.protocol import describe_policy
    from gridrl.io import write_json

    out = Path(out)
    _check_folder(out)
    run, feeder, env_config, policy = deployed_run(run_dir, envelope=envelope)
    if getattr(policy.config, "neighbour_outage", False):  # a rule over neighbours' messages, not in the graphs
        raise ExportError("the envelope's neighbour-outage rule is not part of the exported graphs; export with it off")
    if getattr(policy.config, "hold_pu", 0):  # a state kept between steps, which the graphs do not keep
        raise ExportError("the envelope's hold (hold_pu) keeps each agent's edge region of the previous step, which "
                          "the exported graphs do not; export with hold_pu = 0")
    if getattr(policy.config, "smoothing", 1.0) < 1:  # reads the set-point in force, which the graphs do not
        raise ExportError("the envelope's smoothing is not part of the exported graphs; export with smoothing = 1")
    if getattr(policy, "guarded_agents", 0):  # per-agent signs the graphs do not carry (none held: the same actions)
        raise ExportError(f"the envelope's loss guard holds {policy.guarded_agents} of {len(policy.agents)} agents on "
                          f"{feeder.name}, which the exported graphs do not carry; export with loss_guard off and "
                          f"deploy the guard beside the graphs, or use the run through gridrl evaluate or compare")
    env = make_env(feeder, split="test", num_envs=1, config=env_config)
    result: dict[str, Any] = {}

    def build(tmp: Path) -> None:
        files = export_graphs(policy, tmp)
        desc = describe_policy(run=run, feeder=feeder, env=env, deployed=policy, graphs=files,
                               sizes=sizes(tmp, files))
        write_json(tmp / "policy.json", desc)
        result.update(files=files, description=desc)

    _publish_folder(out, build)
    return OnnxExport(folder=out, files=result["files"], description=result["description"])


def export_curves(run_dir: str | os.PathLike, out: str | os.PathLike, *, envelope: Mapping[str, Any] | None = None,
                  days: Sequence[int] | None = None, design: int = 256, generations: int = 80,
                  progress: Callable[[str], None] | None = None) -> CurvesExport:
    """Distil a run's deployed policy into one IEEE 1547-2018 volt-var curve per agent, fitted on
    the feeder's training days (``days``: only these of them), and write ``out`` with the
    suffixes ``.json`` and ``.csv`` (see the module docstring and :mod:`gridrl.control.distill`)."""
    import dataclasses

    from gridrl.control.curvefile import curve_points, write_agent_curves
    from gridrl.control.distill import IMITATION_OBJECTIVE, fit_agent_curve
    from gridrl.control.fitted import scenario_of
    from gridrl.control.tuning import CATEGORY_B, TuneConfig, q_rating
    from gridrl.evaluate import evaluate
    from gridrl.grid.days import check_days
    from gridrl.version import __version__

    out = Path(out)
    json_path, csv_path = _curve_paths(out)
    _check_file(json_path)
    _check_file(csv_path)
    say = progress or (lambda _m: None)
    run, feeder, env_config, policy = deployed_run(run_dir, envelope=envelope)
    train_days = check_days(feeder, "train", days)
    say(f"{feeder.name}: recording the deployed policy of {run.path} on {len(train_days)} training days")
    ev = evaluate(feeder, policy, split="train", days=train_days, voltage_days=train_days, env_config=env_config)
    steps = ev.agents
    s_max = feeder.inverters.groupby("agent", sort=False)["s_max_mva"].sum()
    space = dataclasses.replace(TuneConfig(), q_limit=min(TuneConfig().q_limit, q_rating(feeder)))
    # the envelope's rule carries over to the curve: never weaker than 1547-B near the band's edges
    envelope_on = policy.config.mechanism != "off"
    c = policy.config
    edges = (policy.v_min_pu + c.low_margin_pu, policy.v_max_pu - c.margin_pu) if envelope_on else None
    inverters, per_agent = [], {}
    for agent in feeder.agents:
        rows = steps[steps["agent"] == agent]
        s = float(s_max[agent])
        q_avail = rows["q_avail_mvar"].to_numpy(np.float64) / s
        live = q_avail > 0  # without headroom every curve gives q = 0: nothing to learn from
        vm = rows["vm_pu"].to_numpy(np.float64)[live]
        q = rows["q_mvar"].to_numpy(np.float64)[live] / s
        fit = fit_agent_curve(vm, q, q_avail[live], space=space, edges=edges, design=design, generations=generations)
        per_agent[agent] = {"rmse_of_s_max": round(float(np.sqrt(fit.mse)), 6),
                            "r2": round(1.0 - fit.mse / fit.var, 4) if fit.var > 0 else None,
                            "steps": int(live.sum()),
                            "beyond_rating_share": round(float((np.abs(q) > space.q_limit + 1e-9).mean()), 4)}
        say(f"{feeder.name}: agent {agent}: rmse {per_agent[agent]['rmse_of_s_max']:.4f} of s_max, "
            f"R² {per_agent[agent]['r2']}")
        points = curve_points(fit.curve)
        for sgen, r in feeder.inverters[feeder.inverters["agent"] == agent].iterrows():
            inverters.append({"sgen": int(sgen), "bus": int(r["bus"]), "agent": agent,
                              "s_rated_mva": float(r["s_max_mva"]), "q_rating_pct": round(100 * space.q_limit, 4),
                              **points})
    fit_info = {
        "feeder": feeder.name, "spec_hash": feeder.spec.content_hash(), "scenario": scenario_of(feeder, env_config),
        "gridrl_version": __version__, "run": str(run.path), "algo": run.algo, "checkpoint_sha256_16": run.hash,
        "selected_step": (run.checkpoint["driver"].get("best") or {}).get("env_steps"),
        "policy": f"deployed ({policy.config.label})", "objective": IMITATION_OBJECTIVE,
        "train_days": [int(d) for d in train_days], "q_max_of_s_max": round(space.q_limit, 6),
        "edges_pu": None if edges is None else [round(edges[0], 6), round(edges[1], 6)],
        "category_b": CATEGORY_B, "search": {"design": design, "generations": generations, "seed": space.seed},
        "agents": per_agent,
    }
    write_agent_curves(json_path, csv_path, inverters, fit_info)
    return CurvesExport(json_path=json_path, csv_path=csv_path, inverters=inverters, fit=fit_info)


def record_observations(run_dir: str | os.PathLike, *, split: str = "test", days: Sequence[int] | None = None,
                        envelope: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Observations ``[T·B, N, D]`` (float32) met by a run's deployed policy over whole ``days``
    of ``split``, and the actions it sent ``[T·B, N]`` (float64): the reference an exported
    policy must reproduce."""
    import dataclasses

    import torch

    from gridrl.env import make_env
    from gridrl.grid.days import check_days

    run, feeder, env_config, policy = deployed_run(run_dir, envelope=envelope)
    chosen = check_days(feeder, split, days)
    cfg = dataclasses.replace(env_config, start_hour=0.0, episode_hours=24.0, day_sampling="cycle")
    env = make_env(feeder, split=split, num_envs=len(chosen), days=chosen, config=cfg)
    obs = env.reset(days=chosen)
    seen, sent = [], []
    for _ in range(env.episode_steps):
        with torch.no_grad():
            a = policy.act(obs)
        seen.append(obs.numpy().copy())
        sent.append(a.numpy().copy())
        obs, _, done, _ = env.step(a)
        if bool(done.all()):
            break
    return np.concatenate(seen), np.concatenate(sent)


# --------------------------------------------------------------------------------------------
# writing at the edge: all or nothing
# --------------------------------------------------------------------------------------------
def _curve_paths(out: Path) -> tuple[Path, Path]:
    """``FILE.json`` and ``FILE.csv`` for ``--out FILE`` (with or without either suffix)."""
    base = out.with_suffix("") if out.suffix.lower() in (".json", ".csv") else out
    return base.with_name(base.name + ".json"), base.with_name(base.name + ".csv")


def _check_file(path: Path) -> None:
    """Refuse at once an output file that cannot be written (before minutes of fitting)."""
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder; give a file path")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and (not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK)):
        what = "is a file, not a folder" if not parent.is_dir() else "is not writable"
        raise OutputError(f"cannot write {path}: {parent} {what}; choose another path or fix its permissions")


def _check_folder(out: Path) -> None:
    """Refuse at once an output folder that is a file, holds other things, or cannot be written."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"cannot write {out}: it is a file; give a folder for the ONNX export")
    if out.is_dir() and any(out.iterdir()) and not (out / "policy.json").is_file():
        raise ExportError(f"{out} holds other files; give a new or empty folder (a previous export is replaced)")
    _check_file(out / "policy.json")


def _publish_folder(out: Path, build: Callable[[Path], None]) -> None:
    """Build the folder's content in a temporary folder beside it and move it into place in one
    step; a previous export there is replaced only then, and a failure leaves it as it was."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}; choose another path or fix its "
                          f"permissions") from None
    old = None
    try:
        build(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        if out.is_dir() and any(out.iterdir()):
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        elif out.is_dir():
            out.rmdir()
        os.replace(tmp, out)
    except OSError as exc:
        if old is not None and not out.exists():
            os.replace(old, out)
            old = None
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}; choose another path or fix its "
                          f"permissions") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
