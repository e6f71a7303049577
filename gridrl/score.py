"""The task suite and its official score: numbers that mean the same thing in every paper.

A :class:`Task` fixes everything a result depends on besides the controller: the feeder, the
information model (what an agent observes), the reward the learner was given, the days (all
test days of the feeder unless the task names others, each run as a whole day from
midnight), the operating scenario and the fault setting, and the seeds of the random faults.
Tasks are versioned (``-v0``): a task's definition never changes; a changed one gets a new
version.

:func:`score` runs any controller on a task and returns the **official metrics**, with the
definitions of every gridrl comparison table (:mod:`gridrl.evaluate`); rates are averaged over
every step of every day and seed, energies and violation hours are summed over the task's days
(and averaged over its seeds):

* ``controllable_rate`` — share of steps with every monitored bus in the band (higher is better);
* ``share_out_of_band`` — share of bus-steps outside the band;
* ``violation_bus_hours`` — monitored buses outside the band × hours, summed over the days;
* ``max_abs_dv_pu`` — the largest |v − 1| seen;
* ``energy_loss_mwh`` — line losses summed over the days;
* ``reactive_energy_mvarh`` — Σ|q| of all inverters × hours;
* ``diverged_steps`` — steps whose power flow did not converge (counted as not controllable).

A controller is given as a spec string (:func:`load_controller`): a built-in (``none``,
``droop``, ``droop:PRESET``, ``droop:curves=FILE`` — per-inverter curves of ``gridrl export
--format curves`` —, ``opf``), a run folder of ``gridrl train``, ``module:function`` or
``path/file.py:function`` — a policy from any library as a Python callable — or an ``.onnx``
file (needs ``onnxruntime``). A callable receives every agent's observation ``obs`` ``[B, N,
obs_dim]`` (float32 torch tensor, layout ``env.obs_names``) and returns actions ``[B, N]`` (or
``[B, N, 1]``) in [-1, 1], torch or numpy; an object with an ``act(obs, env=...)`` method is
used as a gridrl controller. An ONNX model takes either ``[B, N, obs_dim]`` or, for
parameter-shared per-agent policies, ``[B·N, obs_dim]`` (chosen by its input's rank) and its
first output is the actions.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from gridrl.errors import GridrlError

__all__ = ["METRICS", "TASKS", "CallablePolicy", "OnnxPolicy", "Task", "TaskError", "get_task",
           "load_controller", "score", "task_table"]

METRICS = ("controllable_rate", "share_out_of_band", "violation_bus_hours", "max_abs_dv_pu",
           "energy_loss_mwh", "reactive_energy_mvarh", "diverged_steps")

Information = Literal["measured", "forecast-oracle"]


class TaskError(GridrlError, ValueError):
    """An unknown task, or a controller spec that cannot be loaded or acts wrongly."""


@dataclass(frozen=True, kw_only=True)
class Task:
    """One benchmark task (see the module docstring).

    name: the task's name, with its version (``ieee33-v0``).
    feeder: feeder name.
    description: one line for tables.
    information: ``"measured"`` (the agent's own sensors only, the default information model)
        or ``"forecast-oracle"`` (plus a next-step forecast of its own PV and zone load with
        EnvConfig's default forecast noise: an oracle no deployed inverter has; results must
        say so).
    reward: :class:`~gridrl.env.EnvConfig` reward fields the learner is meant to train on
        (barrier and weights); the official metrics do not depend on it.
    scenario: EnvConfig scenario fields (``load_scale``, ``pv_scale``, ``q_at_night``).
    faults: EnvConfig fault fields (``sensor_noise_pu``, ``message_dropout``, ``outage_prob``,
        ``outage_agents``).
    split, days: the days scored: every day of ``split`` unless ``days`` names some of them.
    seeds: seeds of the random faults; the score averages (rates) or sums (energies) over
        seeds and days.
    """

    name: str
    feeder: str
    description: str
    information: Information = "measured"
    reward: Mapping[str, Any] = field(default_factory=dict)
    scenario: Mapping[str, Any] = field(default_factory=dict)
    faults: Mapping[str, Any] = field(default_factory=dict)
    split: str = "test"
    days: tuple[int, ...] | None = None
    seeds: tuple[int, ...] = (0,)

    def env_config(self):
        """The :class:`~gridrl.env.EnvConfig` the task runs (training on it: the same, with
        your own episode length and start hours)."""
        from gridrl.config import from_dict
        from gridrl.env import EnvConfig

        table = {**self.reward, **self.scenario, **self.faults}
        if self.information == "forecast-oracle":
            table["forecast_steps"] = 1
        return from_dict(EnvConfig, table, source=f"task {self.name!r}")

    @property
    def fault_text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.faults.items()) or "none"


_FAULTS = {"sensor_noise_pu": 0.01, "message_dropout": 0.2, "outage_prob": 0.1}
_STRESS = {"load_scale": 1.2, "pv_scale": 1.5}  # experiments/compare_stress.toml's scenario

TASKS: dict[str, Task] = {t.name: t for t in [
    Task(name="ieee33-v0", feeder="ieee33", description="33 buses, 6 agents"),
    Task(name="ieee69-v0", feeder="ieee69", description="69 buses, 8 agents"),
    Task(name="ieee141-v0", feeder="ieee141", description="141 buses, 22 agents"),
    Task(name="mv-rural-v0", feeder="mv-rural", description="SimBench MV rural, 94 agents"),
    Task(name="mv-urban-v0", feeder="mv-urban", description="SimBench MV urban, 133 agents"),
    Task(name="mvlv-rural-v0", feeder="mvlv-rural", description="SimBench MV+LV rural, 571 agents"),
    Task(name="ieee33-oracle-v0", feeder="ieee33", information="forecast-oracle",
         description="ieee33 with a noisy next-step forecast (oracle)"),
    Task(name="ieee33-stress-v0", feeder="ieee33", scenario=_STRESS,
         description="ieee33 with 20 % more load and 50 % more PV"),
    Task(name="ieee141-stress-v0", feeder="ieee141", scenario=_STRESS,
         description="ieee141 with 20 % more load and 50 % more PV"),
    Task(name="ieee33-faults-v0", feeder="ieee33", faults=_FAULTS, seeds=(0, 1, 2),
         description="ieee33 with sensor noise, message loss and inverter outages"),
    Task(name="ieee141-faults-v0", feeder="ieee141", faults=_FAULTS, seeds=(0, 1, 2),
         description="ieee141 with sensor noise, message loss and inverter outages"),
]}


def get_task(name: str) -> Task:
    """The task called ``name``; :class:`TaskError` lists the known ones otherwise."""
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r} — known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def task_table() -> pd.DataFrame:
    """The task suite as a table: name, feeder, information, reward, scenario, faults, days, seeds."""
    return pd.DataFrame([{"task": t.name, "feeder": t.feeder, "information": t.information,
                          "reward": ", ".join(f"{k}={v}" for k, v in t.reward.items()) or "default",
                          "scenario": ", ".join(f"{k}={v}" for k, v in t.scenario.items()) or "as specified",
                          "faults": t.fault_text,
                          "days": f"all {t.split}" if t.days is None else f"{len(t.days)} {t.split}",
                          "seeds": len(t.seeds), "description": t.description}
                         for t in TASKS.values()])


# ------------------------------------------------------------------------------------------
# controllers from anywhere
# ------------------------------------------------------------------------------------------
class CallablePolicy:
    """A plain function ``fn(obs [B, N, D]) -> actions [B, N]`` as a gridrl controller.

    ``hops`` and ``communication`` are the function's own attributes when it declares them;
    otherwise ``hops = -1`` (nothing is known about what reaches an agent's action) and
    ``communication = nan``.
    """

    def __init__(self, fn, *, name: str):
        self.fn = fn
        self.name = name
        self.hops = int(getattr(fn, "hops", -1))
        self.communication = float(getattr(fn, "communication", float("nan")))

    def act(self, obs, *, env=None):
        import torch

        with torch.no_grad():
            return _check_actions(self.fn(obs), obs, self.name)


class OnnxPolicy:
    """An exported ONNX policy (see the module docstring for the input conventions)."""

    def __init__(self, path: str | Path, *, name: str | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise TaskError(f"{path}: scoring an ONNX policy needs onnxruntime "
                            f"(pip install 'gridrl[onnx]')") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own unrelated types for a bad file
            raise TaskError(f"{path}: not a readable ONNX model ({exc})") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.per_agent = len(inp.shape) == 2
        self.name = name or Path(path).stem
        self.hops, self.communication = -1, float("nan")

    def act(self, obs, *, env=None):
        x = np.asarray(obs.detach().cpu().numpy() if hasattr(obs, "detach") else obs, dtype=np.float32)
        B, N, D = x.shape
        feed = x.reshape(B * N, D) if self.per_agent else x
        out = np.asarray(self.session.run(None, {self.input_name: feed})[0])
        return _check_actions(out.reshape(B, N, -1) if self.per_agent else out, obs, self.name)


def _check_actions(actions, obs, name: str):
    import torch

    a = torch.as_tensor(np.asarray(actions.detach().cpu() if hasattr(actions, "detach") else actions,
                                   dtype=np.float64))
    B, N = obs.shape[0], obs.shape[1]
    if a.shape == (B, N, 1):
        a = a[..., 0]
    if a.shape != (B, N):
        raise TaskError(f"controller {name!r} returned actions of shape {list(a.shape)}; it must return "
                        f"[B, N] = [{B}, {N}] (or [B, N, 1]) for observations of shape {list(obs.shape)}")
    return a


def _import_callable(spec: str):
    target, _, attr = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise TaskError(f"controller {spec!r}: no file {path}")
            mod_name = f"gridrl_user_policy_{abs(hash(str(path.resolve())))}"
            module_spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[mod_name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ImportError as exc:
        raise TaskError(f"controller {spec!r}: cannot import {target!r} ({exc})") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise TaskError(f"controller {spec!r}: {target!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _run_policy(path: Path, feeder, env_config):
    """A run folder's policy, refused when its feeder or its observations differ from the task's
    (a policy trained with a forecast scores on the task with the oracle forecast, not without)."""
    from gridrl.marl.run import open_run

    run = open_run(path)
    run.check_feeder(feeder)
    if env_config is not None:
        wanted = run.evaluation_config(env_config)
        diff = [f"{k}={getattr(wanted, k)!r} (task: {getattr(env_config, k)!r})"
                for k in ("zone_layout", "forecast_steps", "forecast_noise_rel", "step_minutes")
                if getattr(wanted, k) != getattr(env_config, k)]
        if diff:
            raise TaskError(f"run {path} observes with {', '.join(diff)}; score it on a task with that "
                            f"information model (e.g. the -oracle- tasks for a forecast) or train it on this one")
    return run.policy(feeder=feeder)


def load_controller(spec: str, feeder, *, env_config=None):
    """The controller a spec string names (see the module docstring)."""
    from gridrl.control import CONTROLLERS, make_controller

    name, _, preset = spec.partition(":")
    if name == "droop" and preset.startswith("curves="):  # per-inverter curves of `gridrl export --format curves`
        from gridrl.control.curvefile import read_agent_curves

        path = Path(preset.removeprefix("curves="))
        ctrl = make_controller(name, feeder, curve=read_agent_curves(path), env_config=env_config)
        ctrl.name = f"droop-{path.stem}"
        return ctrl
    if name in CONTROLLERS:
        return make_controller(name, feeder, preset=preset or None, env_config=env_config)
    path = Path(spec)
    if spec.endswith(".onnx"):
        if not path.is_file():
            raise TaskError(f"no ONNX file {spec}")
        return OnnxPolicy(path)
    if path.is_dir():
        return _run_policy(path, feeder, env_config)
    if ":" in spec:
        obj = _import_callable(spec)
        if hasattr(obj, "act"):
            return obj
        if callable(obj):
            return CallablePolicy(obj, name=spec.rpartition(":")[2])
        raise TaskError(f"controller {spec!r} is neither callable nor has an act() method")
    raise TaskError(f"unknown controller {spec!r}: give none, droop, droop:PRESET, opf, a run folder, "
                    f"module:function, path/file.py:function or an .onnx file")


# ------------------------------------------------------------------------------------------
# the score
# ------------------------------------------------------------------------------------------
def score(task: Task | str, controller, *, num_envs: int | None = None,
          progress=None) -> tuple[dict[str, Any], pd.DataFrame]:
    """Run ``controller`` (a controller object or a spec string) on every day and seed of
    ``task``; returns ``(metrics, days)``: the official metrics (:data:`METRICS`, plus ``task``,
    ``controller``, ``days``, ``seeds``) and the per-day table they come from."""
    from gridrl.evaluate import evaluate
    from gridrl.grid.feeder import load_feeder

    task = get_task(task) if isinstance(task, str) else task
    feeder = load_feeder(task.feeder)
    cfg = task.env_config()
    ctrl = load_controller(controller, feeder, env_config=cfg) if isinstance(controller, str) else controller
    frames = []
    for seed in task.seeds:
        ev = evaluate(feeder, ctrl, split=task.split, days=task.days, seed=seed, num_envs=num_envs,
                      env_config=cfg, progress=progress)
        frames.append(ev.days)
    days = pd.concat(frames, ignore_index=True)
    steps = days["steps"].to_numpy(float)
    metrics = {
        "task": task.name,
        "controller": getattr(ctrl, "name", str(controller)),
        "controllable_rate": float(np.average(days["controllable_rate"], weights=steps)),
        "share_out_of_band": float(np.nanmean(days["share_out_of_band"])),
        "violation_bus_hours": float(days["violation_bus_hours"].sum() / len(task.seeds)),
        "max_abs_dv_pu": float(np.nanmax(days["max_abs_dv_pu"])),
        "energy_loss_mwh": float(days["energy_loss_mwh"].sum() / len(task.seeds)),
        "reactive_energy_mvarh": float(days["reactive_energy_mvarh"].sum() / len(task.seeds)),
        "diverged_steps": int(days["diverged_steps"].sum()),
        "days": int(days["day"].nunique()),
        "seeds": len(task.seeds),
    }
    return metrics, days

