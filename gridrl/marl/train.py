"""The train driver: one run of one learner on one feeder, in one run directory, resumable.

``gridrl train FEEDER --algo dppo --out RUN_DIR`` and :func:`train` do the same::

    RUN_DIR/config.json       the resolved configuration (every default filled in)
    RUN_DIR/checkpoint.pt     the latest checkpoint (atomic; see gridrl.marl.checkpoint), with the
                              selected policy (see below)
    RUN_DIR/scalars.csv       tidy scalars: iteration, env_steps, wall_s, tag, value
    RUN_DIR/tb/               the same scalars as TensorBoard event files

``gridrl train`` then compares the run with ``TrainConfig.compare`` on the test days
(``RUN_DIR/compare/``) and writes ``RUN_DIR/report.html``: that chain is
:func:`gridrl.pipeline.train`'s; this driver trains and nothing else.

The driver owns what every learner needs around its iterations — the training environment, the
progress bar, logging, periodic evaluation on whole days (the learning curves against real
environment steps), checkpoints and resume and the NaN guard — and asks the
learner only for ``iterate()``, ``state_dict()`` / ``load_state_dict()``, ``policy``, ``critic``,
``communication_training``, ``env_steps`` and ``iteration``. A model-based learner plugs in the
same way (add it to :data:`ALGORITHMS`).

Training runs on the feeder's training days; test days are only ever evaluated. The feeder's
validation days (``feeder.days("val")``, disjoint from both) choose the run's policy: the
deterministic policy is evaluated on them every ``validate_every_steps`` and at the end, and
:func:`select` picks one of those policies — the lowest energy loss among those whose controllable
rate is within ``selection_tolerance_steps`` validation steps of the best rate — as the run's policy (what
:func:`~gridrl.marl.run.load_policy`, ``gridrl evaluate`` and ``gridrl compare`` use). PPO's
policy drifts between updates; this early stopping on validation days keeps the test days out of
every choice, and the tolerance keeps a single out-of-band validation step from flipping it.
Its comparison on the test days (:func:`gridrl.pipeline.train`) appends one row to the results
ledger (:mod:`gridrl.ledger`). A transferable learner (``learner.transfer``) may train on several
feeders at once (:class:`~gridrl.marl.multi.FeederMix`, validated on each one's validation days)
and start from another transferable run (``init``: fine-tuning). Every learner
trains on a reward aligned with what it is judged by — line losses plus a penalty outside a band
``band_margin_pu`` inside the feeder's — unless the ``[env]`` table says otherwise.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gridrl.config import from_dict
from gridrl.errors import CheckpointError, GridrlError, SpecError

__all__ = ["ALGORITHMS", "TRAIN_ENV_DEFAULTS", "TrainConfig", "TrainError", "TrainResult", "TrainingDiverged",
           "learner_class", "published_settings", "resolve_train_config", "select", "train", "validation_split"]

ALGORITHMS = {"dmpo": ("gridrl.marl.dmpo", "DMPO"), "dppo": ("gridrl.marl.dppo", "DPPO"),
              "ippo": ("gridrl.marl.ippo", "IPPO"), "cppo": ("gridrl.marl.cppo", "CPPO")}

# the training environment unless the [env] table overrides it: episodes of 8 hours from random
# days and times; agents act on what they measure (no forecast: that is an opt-in oracle);
# losses plus a steep penalty outside a band slightly narrower than the feeder's (the margin
# is TrainConfig.band_margin_pu); a small reactive-power cost; and robust training: each
# episode draws its own operating point (loads ×0.7–1.3, PV ×0.5–1.6, ratings with it), an
# agent's inverters are out for a whole episode with probability 0.05, voltage sensors read
# with 0.005 p.u. noise and a message is lost with probability 0.2
TRAIN_ENV_DEFAULTS: dict[str, Any] = {"start_hour": None, "episode_hours": 8.0, "forecast_steps": 0,
                                      "barrier": "courant_beltrami", "voltage_weight": 1000.0,
                                      "loss_weight_per_mw": 10.0, "q_weight_per_mvar": 0.001,
                                      "load_scale_range": (0.7, 1.3), "pv_scale_range": (0.5, 1.6),
                                      "outage_prob": 0.05, "sensor_noise_pu": 0.005, "message_dropout": 0.2}

CONFIG_FILE, SCALARS_FILE = "config.json", "scalars.csv"


class TrainError(GridrlError, ValueError):
    """A training run that cannot start as asked (its folder, its configuration)."""


class TrainingDiverged(GridrlError):
    """An update produced NaN or infinite values; the last good checkpoint is kept."""


def learner_class(algo: str):
    """The learner class of ``algo`` (``dmpo``, ``dppo``, ``ippo``, ``cppo``)."""
    import importlib

    if algo not in ALGORITHMS:
        raise TrainError(f"unknown algorithm {algo!r} — known algorithms: {', '.join(ALGORITHMS)}")
    module, name = ALGORITHMS[algo]
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run (an experiment TOML's top level, ``[env]`` and ``[learner]`` tables).

    algo: ``dmpo``, ``dppo``, ``ippo`` or ``cppo``.
    steps: budget in environment feeder steps (one step of one scenario; the run stops at the
        first iteration boundary at or past it).
    seed: weights, action noise, minibatch order and the training days and start times drawn.
    num_envs: scenarios stepped together; each iteration runs one episode in each.
    env_chunk: the training environment's physics (power flows, branch losses and loadings)
        solved this many scenarios at a time, a divisor of ``num_envs`` (default: all at once).
        Its arrays then scale with the chunk, not the batch (on this project's feeders they are
        megabytes either way: what chunking shows here is that batching changes nothing), and no
        number changes: the checkpoint is bit for bit the one without chunks
        (``tests/test_chunking.py``), so it is not part of the run's identity and a run may
        resume with another chunk. Random draws
        and the networks' passes stay whole-batch: CPU matrix-product kernels round a row by
        how many rows share the call (on this project's machine, policy passes over chunks of 1
        or 3 scenarios moved actions by up to 1.4e-9, chunks of 2, 4, 8 or 16 did not), and
        those passes keep no gradients at collection.
    band_margin_pu: the training reward's band is the feeder's, narrowed by this on both sides
        (unless ``[env]`` sets ``v_min_pu`` / ``v_max_pu``): a safety margin, since
        evaluation counts any bus outside the feeder's band.
    checkpoint_every_s: wall-clock seconds between checkpoints (0: after every iteration); the
        last one is always written.
    eval_every_steps: environment steps between evaluations on whole days for the learning
        curves (0: only at the end).
    eval_split: days of those evaluations: ``test`` (curves are reported, nothing is chosen by
        them), ``val`` (for tuning) or ``train`` (in-sample, for diagnosis).
    eval_days: only these days of ``eval_split`` (default: all).
    compare: controllers the trained policy is compared with on the test days at the end
        (``none``, ``droop``, ``droop:PRESET``, ``opf``; empty: no comparison).
    compare_days: only these test days in that comparison (default: all).
    validation_days: how many of the feeder's validation days the policy is validated on (evenly
        spread through them; default: every one); :func:`select` picks the run's policy among
        the validated ones (0: no validation, the run's policy is the last one).
    validate_every_steps: environment steps between validations (there is always one at the end).
    selection_tolerance_steps: the selection rule's tolerance, in validation steps: the run's
        policy is the lowest-loss one among the validated policies whose controllable rate is at
        most this many steps (of all validation days' steps) below the best one's. 3 steps are a
        rate of 0.00084 on 37 days of 96 steps.
    tuning: a tuning run: it chooses settings, so it may look at validation days only; a test
        day anywhere (``eval_split = "test"``, a comparison) is refused.
    residual: train the policy as a residual on a droop curve (``"droop:tuned"``: the feeder's
        tuned curve of :mod:`gridrl.control.tuning` for the default scenario at the run's step
        length, as a comparison's ``droop:tuned`` uses it): agent i sends
        ``clip(a_tuned(v_i) + a_policy_i, −1, 1)`` with ``v_i`` its own measured voltage
        (:mod:`gridrl.env.residual`). The curve is recorded in the checkpoint and ``config.json``
        and read from there wherever the run is evaluated (``None``: no base, the default).
    residual_damping: ``α`` in (0, 1]: the base moves from the agent's own reactive power now
        only this share of the way to the curve (1: the curve read once; see
        :mod:`gridrl.env.residual`).
    env: the training :class:`~gridrl.env.EnvConfig` (defaults: :data:`TRAIN_ENV_DEFAULTS`).
    learner: the algorithm's config (:class:`~gridrl.marl.dppo.DppoConfig`, …).
    """

    algo: str = "dppo"
    steps: int = 300_000
    seed: int = 0
    num_envs: int = 64
    env_chunk: int | None = None
    band_margin_pu: float = 0.005
    checkpoint_every_s: float = 60.0
    eval_every_steps: int = 0
    eval_split: str = "test"
    eval_days: tuple[int, ...] | None = None
    compare: tuple[str, ...] = ("none", "droop", "opf")
    compare_days: tuple[int, ...] | None = None
    validation_days: int | None = None
    validate_every_steps: int = 25_000
    selection_tolerance_steps: int = 3
    tuning: bool = False
    residual: str | None = None
    residual_damping: float = 1.0
    env: Any = None
    learner: Any = None

    def __post_init__(self) -> None:
        problems = []
        if self.algo not in ALGORITHMS:
            problems.append(f"algo: unknown algorithm {self.algo!r} (known: {', '.join(ALGORITHMS)})")
        for name in ("steps", "num_envs"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.env_chunk is not None and not (1 <= self.env_chunk and self.num_envs % self.env_chunk == 0):
            divisors = [d for d in range(1, self.num_envs) if self.num_envs % d == 0][-4:]
            problems.append(f"env_chunk must be a divisor of num_envs ({self.num_envs}) of at least 1, got "
                            f"{self.env_chunk}; e.g. {', '.join(map(str, divisors or [self.num_envs]))}")
        for name in ("band_margin_pu", "checkpoint_every_s", "eval_every_steps"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if self.validation_days is not None and self.validation_days < 0:
            problems.append(f"validation_days must be ≥ 0 (or omitted: every validation day), got {self.validation_days}")
        if self.validate_every_steps < 1:
            problems.append(f"validate_every_steps must be ≥ 1, got {self.validate_every_steps}")
        if self.selection_tolerance_steps < 0:
            problems.append(f"selection_tolerance_steps must be ≥ 0, got {self.selection_tolerance_steps}")
        if self.eval_split not in ("test", "val", "train"):
            problems.append(f"eval_split must be 'test', 'val' or 'train', got {self.eval_split!r}")
        if self.tuning and self.eval_split == "test":
            problems.append("tuning = true evaluates on validation days only: eval_split = 'test' would look at "
                            "test days; use eval_split = 'val'")
        if self.tuning and self.compare:
            problems.append(f"tuning = true evaluates on validation days only: compare = {list(self.compare)} "
                            f"runs on the test days; set compare = []")
        from gridrl.env.residual import RESIDUAL_BASES

        if self.residual is not None and self.residual not in RESIDUAL_BASES:
            problems.append(f"residual must be {' or '.join(map(repr, RESIDUAL_BASES))} (a residual on the feeder's "
                            f"tuned droop curve) or left out, got {self.residual!r}")
        if not 0 < self.residual_damping <= 1:
            problems.append(f"residual_damping must lie in (0, 1] (1: the curve read once), got {self.residual_damping}")
        elif self.residual is None and self.residual_damping != 1:
            problems.append(f"residual_damping = {self.residual_damping} damps a residual's base: add residual = "
                            f"\"droop:tuned\" (--residual droop:tuned) or leave residual_damping out")
        if problems:
            raise ValueError("; ".join(problems))


_SECTIONS = ("env", "learner")

# The settings and budgets of the published experiments, by feeder size (agents), for
# `gridrl train FEEDER --algo A` without --config. `measured`: what `gridrl train FEEDER --algo A`
# with these defaults took on this project's 2-core machine beside one other CPU-bound run (load
# average 2.5-3.5, 2026-12-07; README, *The experiment protocol*): wall-clock minutes of the whole
# command (validations and the comparison included) and CPU minutes of training alone. `cpu_min`:
# training CPU minutes of the published experiment's runs (mean over 3 seeds, evaluations aside,
# reports/dmpo/*/summary.md), quoted where no default run was timed.
PUBLISHED: tuple[dict[str, Any], ...] = (
    {"max_agents": 12, "source": "experiments/dmpo_ieee33.toml", "measured_on": "ieee33",
     "steps": {"dmpo": 40960, "dppo": 40960, "ippo": 40960, "cppo": 40960},
     "cpu_min": {"dmpo": 2.0, "dppo": 0.3, "ippo": 0.2, "cppo": 0.2},
     "measured": {"dmpo": {"wall_min": 2.9, "train_cpu_min": 1.4}, "dppo": {"wall_min": 0.6, "train_cpu_min": 0.2},
                  "ippo": {"wall_min": 0.8, "train_cpu_min": 0.2}, "cppo": {"wall_min": 1.0, "train_cpu_min": 0.2}},
     "train": {"num_envs": 32, "eval_every_steps": 4096, "validate_every_steps": 4096, "band_margin_pu": 0.005,
               "learner": {"hidden": 64, "message_dim": 32}}},
    {"max_agents": 40, "source": "experiments/dmpo_ieee141.toml", "measured_on": "ieee141",
     "steps": {"dmpo": 49152, "dppo": 147456, "ippo": 147456, "cppo": 147456},
     "cpu_min": {"dmpo": 6.1, "dppo": 1.8, "ippo": 1.5, "cppo": 1.3},
     "measured": {"dmpo": {"wall_min": 6.6, "train_cpu_min": 4.9}, "dppo": {"wall_min": 2.3, "train_cpu_min": 1.5}},
     "train": {"num_envs": 32, "eval_every_steps": 8192, "validate_every_steps": 8192, "band_margin_pu": 0.005,
               "learner": {"hidden": 64, "message_dim": 32}}},
    {"max_agents": None, "source": "experiments/dmpo_mv_urban.toml", "measured_on": "mv-urban",
     "steps": {"dmpo": 4096, "dppo": 32768, "ippo": 32768, "cppo": 32768},
     "cpu_min": {"dmpo": 2.7, "dppo": 1.5, "ippo": 1.1, "cppo": 0.8},
     "train": {"num_envs": 8, "eval_every_steps": 0, "validate_every_steps": 1024, "validation_days": 7,
               "band_margin_pu": 0.005, "env": {"zone_layout": "pool"}, "learner": {"hidden": 64, "message_dim": 32}},
     "compare_days": 7},
)


def published_settings(feeder, algo: str) -> tuple[dict[str, Any], str]:
    """The training table (``gridrl train --config``'s format) of the published experiment for
    ``algo`` on a feeder of ``feeder``'s size, and a line naming its source, budget and the time
    it took (measured with these defaults where that was done, else the experiment's)."""
    if algo not in ALGORITHMS:
        raise TrainError(f"unknown algorithm {algo!r} — known algorithms: {', '.join(ALGORITHMS)}")
    n = len(feeder.agents)
    row = next(r for r in PUBLISHED if r["max_agents"] is None or n <= r["max_agents"])
    data = json.loads(json.dumps(row["train"]))
    data.update(algo=algo, steps=row["steps"][algo])
    if row.get("compare_days"):
        test = feeder.days("test")
        k = min(row["compare_days"], len(test))
        data["compare_days"] = sorted({int(test[int((i + 0.5) * len(test) / k)]) for i in range(k)})
    head = f"settings and budget of {row['source']} for {algo} ({n} agents; "
    timed = row.get("measured", {}).get(algo)
    if timed:
        line = (head + f"with these defaults `gridrl train {row['measured_on']} --algo {algo}` took "
                f"{timed['wall_min']:.1f} min in all, validations and the comparison included, "
                f"{timed['train_cpu_min']:.1f} CPU min of it training, on a 2-core machine beside one other run)")
    else:
        line = (head + f"that experiment's {row['measured_on']} runs took {row['cpu_min'][algo]:.1f} CPU min of "
                f"training on a 2-core machine, evaluations aside)")
    return data, line


def resolve_train_config(data: Mapping[str, Any], *, source: str, overrides: Mapping[str, Any] = {}) -> TrainConfig:
    """A :class:`TrainConfig` from a TOML mapping plus command-line ``overrides`` (top-level
    keys), every default filled in; one :class:`SpecError` lists every problem of every table."""
    from gridrl.env import EnvConfig

    data = dict(data)
    data.update({k: v for k, v in overrides.items() if v is not None})
    top = {k: v for k, v in data.items() if k not in _SECTIONS}
    problems: list[str] = []
    base = _collect(TrainConfig, top, source, problems, skip=_SECTIONS)
    algo = top.get("algo", TrainConfig.algo)
    env_table = data.get("env", {})
    learner_table = data.get("learner", {})
    for name, table in (("env", env_table), ("learner", learner_table)):
        if not isinstance(table, Mapping):
            problems.append(f"{name}: expected a table [{name}], got {table!r}")
    env = None
    if isinstance(env_table, Mapping):
        transfer = isinstance(learner_table, Mapping) and learner_table.get("transfer") is True
        if transfer and env_table.get("zone_layout", "pool") != "pool":
            problems.append(f"env.zone_layout = {env_table['zone_layout']!r}: a transferable policy (learner.transfer "
                            f"= true) reads the 'pool' layout, which does not depend on a feeder's zone sizes; "
                            f"remove zone_layout from [env]")
        if transfer and top.get("residual") is not None:
            problems.append(f"residual = {top['residual']!r} is bound to one feeder's curve, a transferable policy "
                            f"(learner.transfer) acts on any feeder; drop one of them")
        layout = {"zone_layout": "pool"} if transfer else {}
        env = _collect(EnvConfig, {**TRAIN_ENV_DEFAULTS, **layout, **env_table}, source, problems, prefix="env")
    learner = None
    if algo in ALGORITHMS and isinstance(learner_table, Mapping):
        learner = _collect(learner_class(algo).Config, learner_table, source, problems, prefix="learner")
    if problems:
        raise SpecError(source, problems)
    return dataclasses.replace(base, env=env, learner=learner)


def _collect(cls, table: Mapping[str, Any], source: str, problems: list[str], *, prefix: str = "",
             skip: tuple[str, ...] = ()):
    """``from_dict(cls, table)``, its problems added to ``problems`` (prefixed) instead of raised."""
    try:
        return from_dict(cls, {k: v for k, v in table.items() if k not in skip}, source=source)
    except SpecError as exc:
        problems.extend(f"{prefix}.{p}" if prefix else p for p in exc.problems)
        return None


def _identity(cfg: TrainConfig) -> dict[str, Any]:
    """What determines a run's results: a resumed run must agree on all of it."""
    from gridrl.marl.checkpoint import config_dict

    d = config_dict(cfg)
    for key in ("checkpoint_every_s", "env_chunk"):  # neither changes a number of the run
        d.pop(key)
    return json.loads(json.dumps(d))


@dataclass(frozen=True)
class TrainResult:
    """A finished run: its folder, the final policy and the scalars."""

    out: Path
    policy: Any
    scalars: Any
    resumed_from: int = 0
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


def train(feeder_name: str | Sequence[str], config: TrainConfig, *, out: str | Path, resume: bool = False,
          device: str = "cpu", progress: bool = True, log: Callable[[str], None] | None = None,
          on_steps: Callable[[int], None] | None = None, init: str | Path | None = None,
          residual_curve: Mapping[str, Any] | None = None) -> TrainResult:
    """Train ``config.learner`` on ``feeder_name`` into ``out`` (see the module docstring).

    feeder_name: one feeder, or several (a list): one transferable policy trained on all of them
        (:class:`~gridrl.marl.multi.FeederMix`; needs ``learner.transfer``), validated on each
        one's validation days; the run records the feeders it saw.
    init: a transferable run folder to start from (fine-tuning): its selected policy (actor and
        observation statistics) and, for the same algorithm, its critic; the learner's
        architecture must be the run's.

    residual_curve: the curve of ``config.residual`` (a curve mapping ``{v_pu, q, reference,
        fit}``; :func:`gridrl.control.tuning.residual_curve` resolves it, as ``gridrl train``
        does): recorded in ``config.json`` and the checkpoint; a resumed run must bring the same.
    resume: continue the run in ``out`` from its checkpoint (its configuration must be the same);
        a run that finished is not trained further, only evaluated again if needed; with nothing
        in ``out`` yet, a new run starts there (so one command both starts and resumes).
    on_steps: called with the environment steps of each iteration (first with those a resumed
        run had already taken): progress for a caller elsewhere (a sweep on a cluster).
    progress: a progress bar on a terminal (with the latest validation figures); without one
        (a pipe, a log file) one line per validation or evaluation instead.
    Raises :class:`TrainError` (folder or configuration problems, nothing written),
    :class:`CheckpointError` (an unusable checkpoint) or :class:`TrainingDiverged`.
    """
    from gridrl.env import make_env
    from gridrl.grid.feeder import load_feeder
    from gridrl.marl.checkpoint import make_header, read_checkpoint, write_checkpoint

    say = log or (lambda m: print(m, file=sys.stderr))
    out = Path(out)
    if device == "cuda" and not torch.cuda.is_available():  # before anything is written
        raise TrainError("--device cuda: no CUDA device is available here; use --device cpu")
    started_here = not (out.is_dir() and any(out.iterdir()))
    if not resume and not started_here:  # before the slow part
        raise TrainError(f"{out} already exists; add --resume to continue that run, or choose another --out")
    names = [feeder_name] if isinstance(feeder_name, str) else list(feeder_name)
    if len(names) > 1 and not getattr(config.learner, "transfer", False):
        raise TrainError(f"training on several feeders ({', '.join(names)}) needs a feeder-agnostic policy: add "
                         f"--transfer (or transfer = true in [learner])")
    if len(set(names)) != len(names):
        raise TrainError(f"each feeder once, please: got {', '.join(names)}")
    residual = _residual(config, residual_curve, several=len(names) > 1)
    feeders = [load_feeder(n) for n in names]
    feeder = feeders[0]
    config = _with_band(config, feeder)
    source = _init_source(init, config) if init is not None else None
    checkpoint = _claim(out, feeders, config, resume=resume, init=source, residual=residual)
    if resume and checkpoint is None:  # never silently from the beginning
        say(f"nothing to resume in {out}: starting a new run there" if started_here else
            f"{out} holds no checkpoint (the run stopped before its first): starting it again from the beginning")
    splits = [validation_split(f, config.validation_days) for f in feeders]
    envs = [make_env(f, split="train", num_envs=config.num_envs, seed=config.seed, days=train_days,
                     config=config.env, chunk=config.env_chunk) for f, (train_days, _) in zip(feeders, splits)]
    env, val_days = envs[0], [d for _, days in splits for d in days]
    # the learner's torch operations on one thread, whatever the thread policy: torch splits large
    # sums between its threads and each split rounds differently, so a dmpo run on two threads
    # ended elsewhere than on one. The power flow keeps the policy's threads: it solves each
    # scenario on one thread, the same bits either way. Restored when the run ends.
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cls = learner_class(config.algo)
        if len(feeders) > 1:
            from gridrl.marl.multi import FeederMix

            learner = FeederMix(cls, envs, config.learner, seed=config.seed, total_steps=config.steps, device=device)
        else:
            learner = cls(env, config.learner, seed=config.seed, total_steps=config.steps, device=device)
        if residual is not None:
            from gridrl.env.residual import ResidualBase

            learner.policy.residual = ResidualBase(config.residual, residual, env.obs_names,
                                                   damping=config.residual_damping).to(device)
    except BaseException:
        torch.set_num_threads(torch_threads)
        raise
    rng = learner if len(feeders) > 1 else env  # whose generators the checkpoint keeps
    header = make_header(algo=config.algo, feeder=feeder, env=env, env_config=config.env,
                         learner_config=config.learner, seed=config.seed)
    if residual is not None:
        header["residual"] = learner.policy.residual.record()
    if len(feeders) > 1:
        header.update(feeder="+".join(names), feeder_hash=_feeders_hash(feeders), feeders=names)
    if source is not None:
        header["init"] = {"run": str(source.path), "checkpoint_hash": source.hash}
    driver = {"wall_s": 0.0, "cpu_s": 0.0, "eval_s": 0.0, "next_eval": config.eval_every_steps or math.inf,
              "next_val": config.validate_every_steps, "best": None, "finished": False,
              "validations": [], "candidates": []}
    # the selected policy's state (driver["best"]: its validation); driver["validations"] holds
    # every validation's figures, driver["candidates"] the policies the rule may still select
    selected = None
    if checkpoint is not None:
        selected = checkpoint.get("selected")
        learner.load_state_dict(checkpoint["learner"])
        rng.set_rng_state(checkpoint["env_rng"])
        driver.update(checkpoint["driver"])
        say(f"resuming {out} at iteration {learner.iteration} ({learner.env_steps:,} environment steps)")
    elif source is not None:
        _initialize(learner, source, config, say)
    resumed_from = learner.iteration
    if on_steps is not None and learner.env_steps:
        on_steps(learner.env_steps)
    scalars = _ScalarLog(out, resume_iteration=learner.iteration if checkpoint is not None else None,
                         purge_step=learner.env_steps + 1 if checkpoint is not None else None)

    def save() -> None:
        if not _finite(learner):
            return
        scalars.flush()  # first: a resumed run drops rows past its checkpoint, never lacks any
        write_checkpoint(out, header=header, learner=learner.state_dict(), env_rng=rng.rng_state(), driver=driver,
                         selected=selected)

    if len(feeders) > 1:
        curves = _FeederCurves(learner, [_Curves(f, config.env, config.eval_split, config.eval_days, prefix="eval")
                                         for f in feeders])
        validation = _FeederCurves(learner, [_Curves(f, config.env, "val", days, prefix="val")
                                             for f, (_, days) in zip(feeders, splits)]) if val_days else None
    else:
        curves = _Curves(feeder, config.env, config.eval_split, config.eval_days, prefix="eval")
        validation = _Curves(feeder, config.env, "val", val_days, prefix="val") if val_days else None
    from gridrl.terminal import is_terminal

    bar_on = progress and is_terminal(sys.stderr)
    bar = _progress(bar_on, config.steps, learner.env_steps)
    if progress and learner.env_steps < config.steps:
        say(_budget_line(config, env, val_days))
    last_save = time.perf_counter()
    latest: dict[str, float] = {}  # the last evaluation's and validation's figures, for the bar
    started = time.perf_counter() - driver["wall_s"]
    # CPU seconds of this process (all threads) spent training, evaluations excluded, carried over
    # a resume like the wall clock: on a shared machine the wall clock also measures the
    # neighbours, the CPU time only this run
    cpu_started = time.process_time() - driver.get("cpu_s", 0.0)
    try:
        while learner.env_steps < config.steps:
            t0 = time.perf_counter()
            good = {"iteration": learner.iteration, "env_steps": learner.env_steps}
            stats = learner.iterate()
            if on_steps is not None:
                on_steps(learner.env_steps - good["env_steps"])
            if not _finite(learner) or not all(math.isfinite(v) for k, v in stats.items() if k.startswith("loss/")):
                raise TrainingDiverged(_nan_message(out, good, learner.iteration))
            stats["time/steps_per_s"] = stats["iteration_steps"] / max(time.perf_counter() - t0, 1e-9)
            stats["comm/acting"] = float(learner.policy.communication)
            stats["comm/training"] = float(learner.communication_training)
            driver["wall_s"] = time.perf_counter() - started
            driver["cpu_s"] = stats["time/cpu_s"] = time.process_time() - cpu_started
            last = learner.env_steps >= config.steps
            evaluate = learner.env_steps >= driver["next_eval"] or last
            validate = validation is not None and (learner.env_steps >= driver["next_val"] or last)
            if evaluate or validate:
                t_eval, cpu_eval = time.perf_counter(), time.process_time()
                if evaluate:
                    stats.update(curves(learner.policy))
                if validate:
                    val = validation(learner.policy)
                    record = {"iteration": learner.iteration, "env_steps": learner.env_steps,
                              "controllable_rate": val["val/controllable_rate"],
                              "energy_loss_mwh": val["val/energy_loss_mwh"]}
                    driver.setdefault("validations", []).append(record)
                    state = {k: v.detach().clone() for k, v in learner.policy.state_dict().items()}
                    tolerance = config.selection_tolerance_steps / (len(val_days) * validation.episode_steps)
                    driver["candidates"] = _still_selectable(driver.get("candidates", []) + [{**record, "policy": state}],
                                                             tolerance)
                    pick = select(driver["candidates"], tolerance)
                    driver["best"] = {k: v for k, v in pick.items() if k != "policy"}
                    selected = pick["policy"]
                    stats.update(val)
                    stats["val/selected_env_steps"] = float(driver["best"]["env_steps"])
                stats["time/eval_s"] = time.perf_counter() - t_eval
                cpu_started += time.process_time() - cpu_eval
                driver["eval_s"] = driver.get("eval_s", 0.0) + stats["time/eval_s"]
                driver["wall_s"] = time.perf_counter() - started  # so that wall_s - eval_s is the training's
                while driver["next_eval"] <= learner.env_steps:
                    driver["next_eval"] += config.eval_every_steps or math.inf
                while driver["next_val"] <= learner.env_steps:
                    driver["next_val"] += config.validate_every_steps
            scalars.add(learner.iteration, learner.env_steps, driver["wall_s"], stats)
            if progress and learner.iteration == resumed_from + 1 and not last:
                say(_estimate_line(config, learner.env_steps - good["env_steps"], time.perf_counter() - t0,
                                   learner.env_steps))
            bar.update(learner.env_steps - bar.n)
            latest.update({k: v for k, v in stats.items() if k.startswith(("val/", "eval/"))})
            bar.set_postfix_str(_postfix({**stats, **latest}), refresh=False)
            if not bar_on and progress and (evaluate or validate):
                say(_progress_line(learner.env_steps, config.steps, driver["wall_s"], stats))
            if time.perf_counter() - last_save >= config.checkpoint_every_s or learner.env_steps >= config.steps:
                save()
                last_save = time.perf_counter()
    finally:
        torch.set_num_threads(torch_threads)
        bar.close()
        scalars.close()
    if not driver["finished"]:
        driver["finished"] = True
        save()
    say(f"trained {learner.env_steps:,} environment steps in {driver['wall_s'] - driver['eval_s']:.0f} s "
        f"(+ {driver['eval_s']:.0f} s evaluating); checkpoint in {out}")
    best = driver.get("best")
    if best is not None:
        top = max(v["controllable_rate"] for v in driver.get("validations") or [best])
        say(f"selected the policy of {best['env_steps']:,} environment steps (on {len(val_days)} validation days: "
            f"controllable rate {best['controllable_rate']:.4f}, {best['energy_loss_mwh']:.2f} MWh; the lowest loss "
            f"among validations at most {config.selection_tolerance_steps} steps below the best rate {top:.4f})")
    policy = learner.policy
    if len(feeders) > 1:
        learner.bind(0)
    if selected is not None:
        policy.load_state_dict(selected)
    policy.name = out.name or config.algo
    read_checkpoint(out)  # the run folder is usable as a controller
    return TrainResult(out=out, policy=policy, scalars=scalars.frame(), resumed_from=resumed_from,
                       seconds=driver["wall_s"])


def _with_band(config: TrainConfig, feeder) -> TrainConfig:
    """The training band: the feeder's, narrowed by ``band_margin_pu``, unless [env] gives one."""
    env = config.env
    if env.v_min_pu is not None or config.band_margin_pu == 0:
        return config
    m = config.band_margin_pu
    env = dataclasses.replace(env, v_min_pu=round(feeder.v_min_pu + m, 9), v_max_pu=round(feeder.v_max_pu - m, 9))
    return dataclasses.replace(config, env=env)


def _feeders_hash(feeders) -> str:
    """One content hash for several feeders (in the order given)."""
    import hashlib

    return hashlib.sha256("+".join(f.spec.content_hash() for f in feeders).encode()).hexdigest()[:16]


def _residual(config: TrainConfig, curve: Mapping[str, Any] | None, *, several: bool) -> dict[str, Any] | None:
    """The residual's curve as the run records it, or ``None``; a :class:`TrainError` (one line)
    when ``config.residual`` and the curve given do not go together."""
    if config.residual is None:
        if curve is not None:
            raise TrainError("a residual curve was given but the config sets no residual; add "
                             "residual = \"droop:tuned\" (--residual droop:tuned) or give no curve")
        return None
    if several:
        raise TrainError(f"residual = {config.residual!r} is one feeder's curve; train on one feeder")
    if not isinstance(curve, Mapping) or not {"v_pu", "q"} <= set(curve):
        raise TrainError(f"residual = {config.residual!r} needs its curve: `gridrl train` fits or reads it "
                         f"(gridrl.control.tuning.residual_curve); pass residual_curve={{v_pu, q, reference, fit}}")
    return json.loads(json.dumps({k: curve[k] for k in ("v_pu", "q", "reference", "fit") if k in curve}))


def _claim(out: Path, feeders, config: TrainConfig, *, resume: bool, init=None,
           residual: Mapping[str, Any] | None = None) -> dict | None:
    """Make ``out`` this run's folder; returns the checkpoint to resume from (or None). The
    residual's curve (``residual``) is part of the run's identity: a resumed run keeps its own."""
    from gridrl.io import write_json
    from gridrl.marl.checkpoint import CHECKPOINT, read_checkpoint

    feeder = feeders[0]
    name = "+".join(f.name for f in feeders)
    fhash = feeder.spec.content_hash() if len(feeders) == 1 else _feeders_hash(feeders)
    ident = {"feeder": name, "feeder_hash": fhash, **_identity(config)}
    if len(feeders) > 1:
        ident["feeders"] = [f.name for f in feeders]
    if init is not None:
        ident["init"] = {"run": str(init.path), "checkpoint_hash": init.hash}
    if residual is not None:  # the numbers that act, not the fit's provenance
        ident["residual_curve"] = {k: residual[k] for k in ("v_pu", "q", "reference") if k in residual}
    cfg_file = out / CONFIG_FILE
    if out.exists() and not out.is_dir():
        raise TrainError(f"{out} is a file; give a folder path for --out")
    if out.exists() and any(out.iterdir()):
        if not resume:
            raise TrainError(f"{out} already exists; add --resume to continue that run, or choose another --out")
        try:
            old = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise TrainError(f"{out} holds no readable {CONFIG_FILE}; it is not a `gridrl train` run folder — "
                             f"choose another --out") from None
        old_ident = old.get("identity", {})
        diff = sorted(k for k in set(old_ident) | set(ident) if old_ident.get(k) != ident.get(k))
        if diff:
            raise TrainError(f"{out} holds a run with other settings ({', '.join(diff)} differ); resume it with "
                             f"its own settings (drop the changed options) or choose another --out")
        if not (out / CHECKPOINT).exists():
            return None  # stopped before its first checkpoint: start again from the beginning
        ckpt = read_checkpoint(out)
        h = ckpt["header"]
        if h["algo"] != config.algo or h["feeder"] != name or h["feeder_hash"] != ident["feeder_hash"]:
            raise CheckpointError(f"{out / CHECKPOINT} is a {h['algo']} checkpoint on {h['feeder']} "
                                  f"(feeder version {h['feeder_hash'][:8]}), not {config.algo} on {name} "
                                  f"(version {ident['feeder_hash'][:8]}); choose another --out")
        return ckpt
    from gridrl.marl.checkpoint import config_dict

    record = {"feeder": name, "config": config_dict(config), "identity": ident}
    if residual is not None:
        record["residual_curve"] = dict(residual)
    write_json(cfg_file, record)
    return None


def _init_source(init: str | Path, config: TrainConfig):
    """The run ``--init`` names, refused in one line unless a fine-tuning run can start from it:
    a transferable run whose policy has this run's architecture and observations."""
    from gridrl.marl.run import open_run

    run = open_run(init)
    if not run.transferable:
        raise TrainError(f"--init {init}: that run is feeder-specific (trained without transfer, its policy is bound "
                         f"to {run.feeder}); fine-tune from a run trained with --transfer")
    if not getattr(config.learner, "transfer", False):
        raise TrainError(f"--init {init}: fine-tuning trains a transferable policy; add --transfer (or transfer = "
                         f"true in [learner])")
    theirs, ours = run.header["learner_config"], dataclasses.asdict(config.learner)
    diff = [f"{k} {theirs.get(k)!r} ≠ {ours.get(k)!r}" for k in ("hidden", "message_dim", "hops", "transfer")
            if theirs.get(k) != ours.get(k)]
    for k in ("zone_layout", "forecast_steps", "observation"):
        if run.header["env_config"].get(k) != getattr(config.env, k):
            diff.append(f"env.{k} {run.header['env_config'].get(k)!r} ≠ {getattr(config.env, k)!r}")
    if diff:
        raise TrainError(f"--init {init}: its policy has another architecture or observations ({'; '.join(diff)}); "
                         f"train with the run's settings (leave out --config to take them)")
    return run


def _initialize(learner, run, config: TrainConfig, say: Callable[[str], None]) -> None:
    """Start ``learner`` from ``run``'s selected policy and, for the same algorithm, its critic."""
    ckpt = run.checkpoint
    learner.policy.load_state_dict(ckpt.get("selected") or _learner_state(ckpt["learner"])["policy"])
    took = "policy"
    if run.algo == config.algo:
        try:
            learner.critic.load_state_dict(_learner_state(ckpt["learner"])["critic"])
            took = "policy and critic"
        except RuntimeError:  # a critic that reads a feeder's whole state (cppo) cannot move
            pass
    say(f"starting from the {took} of {run.path} (trained on {', '.join(run.feeders)})")


def _learner_state(state: dict) -> dict:
    """A learner's state, or the first feeder's learner of a several-feeder run."""
    return state["sites"][0] if "sites" in state else state


def validation_split(feeder, n: int | None = None) -> tuple[list[int], list[int]]:
    """The feeder's training days, and the validation days a run validates on: ``n`` of the
    feeder's validation days (``feeder.days("val")``) evenly spread through them, every one for
    ``None``, none for 0. The same for every seed; never a training or test day."""
    train_days = [int(d) for d in feeder.days("train")]
    pool = [int(d) for d in feeder.days("val")]
    if n is None or n == len(pool):
        return train_days, pool
    if n == 0:
        return train_days, []
    if n > len(pool):
        raise TrainError(f"validation_days = {n}, but {feeder.name} has {len(pool)} validation days; choose at most "
                         f"{len(pool)} (or leave it out to validate on every one)")
    return train_days, sorted({pool[int((k + 0.5) * len(pool) / n)] for k in range(n)})


def select(validations: list[dict], tolerance: float) -> dict:
    """The selection rule: among ``validations`` (dicts with ``controllable_rate``,
    ``energy_loss_mwh`` and ``env_steps``), those whose controllable rate is within
    ``tolerance`` of the best one's, and of them the one with the lowest energy loss (the
    earlier one on a tie).

    Keeping the band comes first, but one validation step out of band (0.0003 on 37 days) no
    longer sends the choice back to an early, much lossier policy that happened to keep every
    step in: the choice moves only when the rate drops by more than ``tolerance``.
    """
    if not validations:
        raise ValueError("select: no validations to choose from")
    top = max(v["controllable_rate"] for v in validations)
    ok = [v for v in validations if v["controllable_rate"] >= top - tolerance - 1e-12]
    return min(ok, key=lambda v: (v["energy_loss_mwh"], v["env_steps"]))


def _still_selectable(candidates: list[dict], tolerance: float) -> list[dict]:
    """The candidates the rule may still select: the best rate only grows, so a candidate more
    than ``tolerance`` below it now never comes back (its policy state need not be kept)."""
    top = max(c["controllable_rate"] for c in candidates)
    return [c for c in candidates if c["controllable_rate"] >= top - tolerance - 1e-12]


def _finite(learner) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in learner.policy.parameters()) and \
        all(bool(torch.isfinite(p).all()) for p in learner.critic.parameters())


def _nan_message(out: Path, good: dict, iteration: int) -> str:
    from gridrl.marl.checkpoint import CHECKPOINT

    kept = (f"the last good checkpoint (iteration {_last_checkpoint_iteration(out)}) is kept in {out}"
            if (out / CHECKPOINT).exists() else f"no checkpoint had been written yet in {out}")
    return (f"NaN in the update of iteration {iteration} (after {good['env_steps']:,} environment steps); "
            f"training stopped and {kept}; lower learner.lr or learner.max_grad_norm and train again")


def _last_checkpoint_iteration(out: Path) -> int | str:
    from gridrl.marl.checkpoint import read_checkpoint

    try:
        return int(read_checkpoint(out)["learner"]["iteration"])
    except GridrlError:
        return "?"


class _FeederCurves:
    """:class:`_Curves` on each feeder of a several-feeder run, the shared policy bound to each in
    turn; the figures combine them: the controllable rate over all their steps, the energy loss,
    violations and reactive energy summed."""

    def __init__(self, learner, curves: list):
        self.learner, self.curves = learner, curves

    @property
    def episode_steps(self) -> int:
        return self.curves[0].env.episode_steps

    def __call__(self, policy) -> dict[str, float]:
        parts, bound = [], self.learner.bound
        for k, curve in enumerate(self.curves):
            self.learner.bind(k)
            figures = curve(policy)
            parts.append((len(curve.days), figures))
        self.learner.bind(bound)
        out = {}
        for key in parts[0][1]:
            if key.endswith("controllable_rate"):
                out[key] = sum(n * p[key] for n, p in parts) / sum(n for n, _ in parts)
            else:
                out[key] = sum(p[key] for _, p in parts)
        return out


def _whole_days_config(train_env):
    """The environment a run's validations and learning curves evaluate whole days in: the default
    scenario (the feeder's band, no randomisation, no sensor noise or message loss) with the run's
    observation settings and its inverters' reactive capability at night (``q_at_night``: the
    plant it was trained for and is deployed on), each day from midnight."""
    from gridrl.marl.run import evaluation_env_config

    return dataclasses.replace(evaluation_env_config(train_env), q_at_night=train_env.q_at_night, start_hour=0.0,
                               episode_hours=24.0, day_sampling="cycle")


class _Curves:
    """Whole days of ``split`` with the deterministic policy: the learning curves' points (prefix
    ``eval``) and the validations (prefix ``val``).

    One environment (every evaluated day a scenario, from midnight, with the run's observation
    settings and reactive capability at night: :func:`_whole_days_config`) is built at the first evaluation and reused; the figures are the environment's
    own episode aggregates, the same definitions as :func:`gridrl.evaluate.evaluate`'s.
    """

    def __init__(self, feeder, env_config, split: str, days, *, prefix: str):
        self.feeder, self.env_config, self.split, self.days, self.prefix = feeder, env_config, split, days, prefix
        self.env = None

    @property
    def episode_steps(self) -> int:
        """Steps of one evaluated day (after the first evaluation)."""
        return self.env.episode_steps

    def __call__(self, policy) -> dict[str, float]:
        import torch

        if self.env is None:
            from gridrl.env import make_env
            from gridrl.grid.days import check_days

            self.days = check_days(self.feeder, self.split, self.days)
            self.env = make_env(self.feeder, split=self.split, num_envs=len(self.days), days=self.days,
                                config=_whole_days_config(self.env_config))
        from gridrl.marl.run import deployed

        env = self.env
        # as compared: through the safety envelope, its trained ratings those of the training scenario
        policy = deployed(policy, self.feeder, env.config, trained=self.env_config)
        obs, mask = env.reset(days=self.days), None
        dropout = env.config.message_dropout > 0
        for _ in range(env.episode_steps):
            obs, _, done, info = env.step(policy.act(obs, env=env, message_mask=mask))  # env: hand-overs settle
            mask = info["message_mask"] if dropout else None
            if bool(done.all()):
                break
        m = {k: v.to(torch.float64) for k, v in env.episode_metrics().items()}
        p = self.prefix
        return {f"{p}/days": float(len(self.days)),
                f"{p}/controllable_rate": float((m["controllable_rate"] * m["steps"]).sum() / m["steps"].sum()),
                f"{p}/energy_loss_mwh": float(m["energy_loss_mwh"].sum()),
                f"{p}/violation_bus_hours": float(m["violation_bus_hours"].sum()),
                f"{p}/reactive_energy_mvarh": float(m["q_energy_mvarh"].sum())}


def _progress(enabled: bool, total: int, start: int):
    """The progress bar on a terminal; a disabled one (writes nothing) otherwise."""
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", unit_scale=True, disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, desc="train")


def _postfix(stats: dict[str, float]) -> str:
    """The bar's figures: training, then the latest validation (and the policy it selected) and
    evaluation."""
    parts = []
    for key, label, fmt in (("train/episode_return", "return", "{:.3g}"),
                            ("train/controllable_rate", "controllable", "{:.3f}"),
                            ("val/controllable_rate", "val ctrl", "{:.4f}"),
                            ("val/energy_loss_mwh", "val MWh", "{:.2f}"),
                            ("val/selected_env_steps", "selected", "{:,.0f}"),
                            ("eval/controllable_rate", "eval ctrl", "{:.4f}"),
                            ("eval/energy_loss_mwh", "eval MWh", "{:.2f}"),
                            ("time/steps_per_s", "steps/s", "{:.0f}")):
        if key in stats:
            parts.append(f"{label} {fmt.format(stats[key])}")
    return ", ".join(parts)


def _progress_line(env_steps: int, total: int, wall_s: float, stats: dict[str, float]) -> str:
    """One line per validation or evaluation, for logs without a terminal (no carriage returns)."""
    left = f", about {wall_s / env_steps * (total - env_steps) / 60:.1f} min left" if 0 < env_steps < total else ""
    parts = [f"step {env_steps:,}/{total:,} ({100 * env_steps / total:.0f} %), {wall_s:.0f} s{left}"]
    if "val/controllable_rate" in stats:
        parts.append(f"validation: controllable {stats['val/controllable_rate']:.4f}, "
                     f"{stats['val/energy_loss_mwh']:.3f} MWh (selected: the policy of "
                     f"{stats['val/selected_env_steps']:,.0f} steps)")
    if "eval/controllable_rate" in stats:
        parts.append(f"evaluation: controllable {stats['eval/controllable_rate']:.4f}, "
                     f"{stats['eval/energy_loss_mwh']:.3f} MWh")
    return "; ".join(parts)


def _budget_line(config: TrainConfig, env, val_days: list[int]) -> str:
    per_iter = config.num_envs * env.episode_steps
    iterations = math.ceil(config.steps / per_iter)
    val = (f"validation on {len(val_days)} validation days every {config.validate_every_steps:,} steps"
           if val_days else "no validation (the last policy is the run's)")
    return (f"budget: {config.steps:,} environment steps of {config.algo} ({iterations} iterations of "
            f"{config.num_envs} scenarios × {env.episode_steps} steps); {val}")


def _estimate_line(config: TrainConfig, steps: int, seconds: float, done: int) -> str:
    left = max(config.steps - done, 0) / max(steps, 1) * seconds
    slower = ("; dmpo's later iterations fit its model on more replay: its default runs on ieee33 and ieee141 "
              "trained for 2 to 3 times this estimate" if config.algo == "dmpo" else "")
    return (f"first iteration: {seconds:.1f} s for {steps:,} steps; about {left / 60:.1f} min of training left at "
            f"this speed on this machine (evaluations and the comparison come on top{slower})")



class _ScalarLog:
    """Scalars kept in memory, written to ``scalars.csv`` atomically with each checkpoint (so the
    table always matches the checkpoint) and to TensorBoard at once (x-axis: environment steps)."""

    COLUMNS = ("iteration", "env_steps", "wall_s", "tag", "value")

    def __init__(self, out: Path, *, resume_iteration: int | None, purge_step: int | None):
        self.path = out / SCALARS_FILE
        self.rows: list[tuple] = []
        if resume_iteration is not None and self.path.exists():
            with self.path.open(newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    try:
                        if int(row["iteration"]) <= resume_iteration:
                            self.rows.append((int(row["iteration"]), int(row["env_steps"]), float(row["wall_s"]),
                                              row["tag"], float(row["value"])))
                    except (KeyError, TypeError, ValueError):
                        continue  # a damaged line: the checkpoint's rows are what counts
        self._tb = _tensorboard(out / "tb", purge_step)

    def add(self, iteration: int, env_steps: int, wall_s: float, stats: dict[str, float]) -> None:
        for tag, value in stats.items():
            self.rows.append((iteration, env_steps, round(wall_s, 3), tag, float(value)))
            if self._tb is not None:
                self._tb.add_scalar(tag, float(value), global_step=env_steps, walltime=None)

    def flush(self) -> None:
        from gridrl.io import write_text

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.COLUMNS)
        w.writerows(self.rows)
        write_text(self.path, buf.getvalue())
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(self.COLUMNS))


def _tensorboard(folder: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency; a broken install only loses the event files
        return None
    return SummaryWriter(log_dir=str(folder), purge_step=purge_step)
