"""Checkpoints: one file per run directory, written atomically, with a header checked on load.

``RUN_DIR/checkpoint.pt`` (``torch.save`` of plain values and tensors, read back with
``weights_only=True`` so loading never runs code) holds

- ``header``: what the checkpoint is for — gridrl version, checkpoint layout version, algorithm,
  feeder name and content hash, the agents, the observation layout, the agent graph's hop
  distances, the environment and learner configs and the run's seed;
- ``learner``: the learner's ``state_dict`` (policy with its normaliser, critic, optimizer,
  generators, step counters);
- ``env_rng``: the training environment's generators (:meth:`VoltageControlEnv.rng_state`);
- ``driver``: the train driver's own counters (wall-clock time so far, next evaluation, the best
  validation so far);
- ``selected`` (when the run validates): the policy ``state_dict`` of its best validation, which
  is the run's policy; without it the run's policy is the learner's last.

A checkpoint is replaced only by a complete new one (temporary file, then rename), so a run
killed at any moment leaves the previous checkpoint intact. Anything wrong with one — not a
checkpoint, damaged, another layout, another feeder or algorithm — is a
:class:`~gridrl.errors.CheckpointError` with one line that says what and how to go on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from gridrl.errors import CheckpointError
from gridrl.io import atomic_write

__all__ = ["CHECKPOINT", "CLOCK_KEYS", "LAYOUT_VERSION", "checkpoint_hash", "config_dict", "make_header",
           "read_checkpoint", "state_fingerprint", "write_checkpoint"]

CHECKPOINT = "checkpoint.pt"
LAYOUT_VERSION = 1

# the driver's entries that time the run: the only ones two runs of the same training differ in
CLOCK_KEYS = ("wall_s", "cpu_s", "eval_s")

_HEADER_KEYS = ("gridrl_version", "layout_version", "algo", "feeder", "feeder_hash", "agents", "obs_names",
                "hop_distance", "env_config", "learner_config", "seed")


def config_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as plain values, ``None`` fields kept (unlike :func:`gridrl.config.to_dict`,
    which drops them for TOML): ``cls(**config_dict(cfg))`` rebuilds it exactly, tuples aside."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = config_dict(v) if dataclasses.is_dataclass(v) else (list(v) if isinstance(v, tuple) else v)
    return out


def make_header(*, algo: str, feeder, env, env_config, learner_config, seed: int) -> dict[str, Any]:
    """The header of a checkpoint of ``algo`` trained on ``feeder`` in ``env``."""
    from gridrl.version import __version__

    return {"gridrl_version": __version__, "layout_version": LAYOUT_VERSION, "algo": algo,
            "feeder": feeder.name, "feeder_hash": feeder.spec.content_hash(), "agents": list(env.agents),
            "obs_names": list(env.obs_names), "hop_distance": torch.as_tensor(env.hop_distance, dtype=torch.int16),
            "env_config": config_dict(env_config), "learner_config": config_dict(learner_config), "seed": int(seed)}


def write_checkpoint(run_dir: str | Path, *, header: dict, learner: dict, env_rng: dict, driver: dict,
                     selected: dict | None = None) -> Path:
    """Write ``RUN_DIR/checkpoint.pt`` atomically; returns its path."""
    payload = {"header": header, "learner": learner, "env_rng": env_rng, "driver": driver}
    if selected is not None:
        payload["selected"] = selected
    return atomic_write(Path(run_dir) / CHECKPOINT, lambda p: torch.save(payload, p))


def read_checkpoint(run_dir: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint of a run directory, its header checked for completeness and layout.

    Raises :class:`CheckpointError` (one line) when the folder or file is missing, the file is
    not a gridrl checkpoint or is damaged, or it was written by another checkpoint layout.
    """
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT
    if not run_dir.is_dir():
        what = "is not a folder" if run_dir.exists() else "does not exist"
        raise CheckpointError(f"{run_dir} {what}; give the --out folder of a `gridrl train` run")
    if not path.is_file():
        raise CheckpointError(f"{run_dir} holds no {CHECKPOINT}; it is not a `gridrl train` run folder, or its "
                              f"run stopped before the first checkpoint (train it again)")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is damaged or not a gridrl checkpoint ({first[:120]}); "
                              f"train the run again or resume from a copy") from None
    header = data.get("header") if isinstance(data, dict) else None
    if not isinstance(header, dict) or any(k not in header for k in _HEADER_KEYS):
        raise CheckpointError(f"{path} is not a gridrl checkpoint (its header is missing or incomplete)")
    if header["layout_version"] != LAYOUT_VERSION:
        raise CheckpointError(f"{path} has checkpoint layout {header['layout_version']} (gridrl "
                              f"{header['gridrl_version']}); this gridrl reads layout {LAYOUT_VERSION}: "
                              f"train the run again with this version")
    for key in ("learner", "env_rng", "driver"):
        if not isinstance(data.get(key), dict):
            raise CheckpointError(f"{path} is incomplete (no {key} state); train the run again")
    if not isinstance(data.get("selected", {}), dict):
        raise CheckpointError(f"{path} is damaged (its selected policy is not a state); train the run again")
    return data


def checkpoint_hash(run_dir: str | Path) -> str:
    """SHA-256 of the checkpoint file (first 16 hex digits): changes whenever the run does."""
    h = hashlib.sha256()
    with (Path(run_dir) / CHECKPOINT).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def state_fingerprint(checkpoint: dict[str, Any]) -> str:
    """SHA-256 (first 16 hex digits) of everything a checkpoint holds but the clock
    (:data:`CLOCK_KEYS`): every tensor byte for byte, every other value by its ``repr``. Two runs
    with the same fingerprint trained, validated and selected the same, bit for bit (the file's
    own hash, :func:`checkpoint_hash`, also changes with the seconds the run took)."""
    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            for k in sorted(x, key=str):
                h.update(repr(k).encode())
                walk(x[k])
        elif isinstance(x, list | tuple):
            h.update(b"[%d" % len(x))
            for v in x:
                walk(v)
        elif isinstance(x, torch.Tensor):
            h.update(f"{x.dtype}{tuple(x.shape)}".encode())
            h.update(x.detach().contiguous().cpu().numpy().tobytes())
        else:
            h.update(repr(x).encode())

    walk({**checkpoint, "driver": {k: v for k, v in checkpoint["driver"].items() if k not in CLOCK_KEYS}})
    return h.hexdigest()[:16]
