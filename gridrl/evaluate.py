"""Rollouts of one controller (or trained policy) over whole days, as tidy tables.

:func:`evaluate` runs every requested day of a split as one batch through the batched
environment (B = number of days, each scenario one full day from midnight) and returns an
:class:`Evaluation`: one row per day, one row per step, and for a few chosen days (the report's
detail day) the voltage of every bus and the power of every agent's inverters at every step.
Nothing is written here; see :mod:`gridrl.compare`.

Metrics (monitored buses only, the feeder's band unless the environment config says otherwise):

- ``controllable_rate``: share of steps with every monitored bus in the band;
- ``share_out_of_band``: share of bus-steps outside the band;
- ``mean_abs_dv_pu`` / ``max_abs_dv_pu``: mean / max of |v − 1| over bus-steps;
- ``energy_loss_mwh``: branch losses integrated over the day, and its parts: ``line_loss_mwh``
  (lines and other non-transformer branches), ``trafo_load_loss_mwh`` (transformers' series,
  copper losses) and ``trafo_noload_loss_mwh`` (their magnetizing, iron losses: set by the
  voltage, nearly constant); ``controllable_loss_mwh`` = lines + transformer load losses, the
  part a reactive-power controller can change (gaps to the optimum are computed on it);
- ``max_loading_pct``: highest loading of any rated line or transformer over the day (as
  pandapower's ``loading_percent``; NaN on a feeder without ratings), ``overload_branch_hours``:
  rated branches above 100 % × hours;
- ``tap_operations``: moves of the substation tap changer over the day (0 without one);
- ``reactive_energy_mvarh``: Σ|q| of all inverters integrated over the day;
- ``violation_bus_hours``: monitored buses out of band × hours;
- ``unsettled_steps``: steps at which the controller's inner solve hit its iteration cap (droop's
  fixed point, the OPF's SQP); ``infeasible_steps``: steps at which the OPF found the band
  impossible to meet; ``diverged_steps``: steps whose power flow did not converge;
- ``communication``: floats sent per agent per step; ``hops``: κ of the controller;
- ``information``: what the controller knew when it acted (a trained policy: ``measured`` or
  ``previous step``, sensor noise, ``+ oracle forecast``; droop: its own voltage during the
  interval; ``opf``: everything, an oracle);
- ``handover_share`` / ``envelope_share``: share of agent-steps at which a deployed policy
  handed over to 1547-B droop (outside its training statistics) / had its action changed by the
  safety envelope (:mod:`gridrl.control.envelope`; NaN for controllers without one).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from gridrl.grid.days import DaysNotInSplit, check_days

__all__ = ["DAY_COLUMNS", "DaysNotInSplit", "Evaluation", "check_days", "evaluate"]

DAY_COLUMNS = ["feeder", "controller", "seed", "day", "date", "steps", "controllable_rate", "share_out_of_band",
               "mean_abs_dv_pu", "max_abs_dv_pu", "energy_loss_mwh", "controllable_loss_mwh", "line_loss_mwh",
               "trafo_load_loss_mwh", "trafo_noload_loss_mwh", "reactive_energy_mvarh",
               "violation_bus_hours", "max_loading_pct", "overload_branch_hours", "tap_operations", "unsettled_steps",
               "infeasible_steps", "diverged_steps", "communication", "hops", "information", "handover_share",
               "envelope_share", "seconds", "q_at_night"]


@dataclass(frozen=True)
class Evaluation:
    """Tidy results of one controller on one feeder with one seed.

    days: one row per day (columns :data:`DAY_COLUMNS`).
    steps: one row per day and step: ``day, step, hour, loss_mw, line_loss_mw,
        trafo_load_loss_mw, trafo_noload_loss_mw, v_min_pu, v_max_pu, share_out_of_band,
        controllable, max_loading_pct, tap_pos, q_abs_mvar, q_mvar, pv_p_mw, load_p_mw, unsettled,
        infeasible, converged`` (``tap_pos``: the tap changer's position during the step, NaN
        without one) (plus ``feeder, controller, seed``); ``q_mvar`` is the signed sum
        over inverters (positive injects), ``pv_p_mw`` the PV output of all inverters and
        ``load_p_mw`` the total load of the step, the same for every controller; measurements in
        float32.
    voltages: ``day, step, bus, monitored, vm_pu`` of every bus at every step of the
        ``voltage_days`` (plus ``feeder, controller, seed``); ``monitored`` marks the buses the
        band applies to; float32 to keep files small.
    agents: ``day, step, agent, p_mw, q_mvar, q_avail_mvar, vm_pu`` of every agent at every
        step of the ``voltage_days``: its inverters' PV output, reactive power (positive
        injects) and headroom summed, and the voltage at its own bus; float32.
    """

    days: pd.DataFrame
    steps: pd.DataFrame
    voltages: pd.DataFrame
    agents: pd.DataFrame


def evaluate(feeder, controller, *, split: str = "test", days: Sequence[int] | None = None, seed: int = 0,
             num_envs: int | None = None, voltage_days: Sequence[int] = (), env_config=None,
             progress: Callable[[int], None] | None = None) -> Evaluation:
    """Run ``controller`` over whole days of ``split`` (or the given ``days`` of it).

    controller: anything with ``act(obs, env=env) -> [B, N]`` actions, ``name``, ``hops``,
        ``communication`` and optionally ``reset()`` and ``last_info`` (controllers and policies).
        One with ``reads_messages = True`` (a trained policy) is also given ``message_mask``, the
        ``info["message_mask"]`` that came with ``obs`` (``None`` before the first step).
    num_envs: days per batch (default: all days in one batch).
    voltage_days: days whose per-bus voltages and per-agent powers are kept in
        ``Evaluation.voltages`` and ``Evaluation.agents``.
    env_config: an :class:`~gridrl.env.EnvConfig`; days always start at midnight and last 24 h.
    progress: called with the number of environment steps just taken (for progress bars).
    """
    import dataclasses

    from gridrl.env import EnvConfig, make_env

    day_list = check_days(feeder, split, days)
    cfg = env_config or EnvConfig()
    cfg = dataclasses.replace(cfg, start_hour=0.0, episode_hours=24.0, day_sampling="cycle")
    batch = len(day_list) if not num_envs else min(int(num_envs), len(day_list))
    keep_v = set(int(d) for d in voltage_days)
    day_rows, step_frames, volt_frames, agent_frames = [], [], [], []
    for start in range(0, len(day_list), batch):
        chunk = day_list[start:start + batch]
        t0 = time.perf_counter()
        env = make_env(feeder, split=split, num_envs=len(chunk), seed=seed, days=chunk, config=cfg)
        rec = _rollout(env, controller, chunk, progress)
        seconds = (time.perf_counter() - t0) / len(chunk)
        d, s, v, a = _tables(feeder, env, controller, chunk, rec, keep_v, seconds)
        day_rows.append(d)
        step_frames.append(s)
        volt_frames.append(v)
        agent_frames.append(a)
    label = {"feeder": feeder.name, "controller": controller.name, "seed": int(seed)}
    out = []
    for frames in (day_rows, step_frames, volt_frames, agent_frames):
        df = pd.concat(frames, ignore_index=True)
        for i, (k, v) in enumerate(label.items()):
            df.insert(i, k, v)
        out.append(df)
    out[0] = out[0][DAY_COLUMNS]
    return Evaluation(*out)


def _rollout(env, controller, days: list[int], progress) -> dict[str, np.ndarray]:
    """Step every scenario through its day; per-step records ``[T, B, …]``."""
    obs = env.reset(days=days)
    if hasattr(controller, "reset"):
        controller.reset()
    keys = ("loss_mw", "q_abs_mvar", "out_of_band_share", "controllable", "dv_mean_pu", "dv_max_pu", "converged",
            "line_loss_mw", "trafo_load_loss_mw", "trafo_noload_loss_mw", "max_loading_pct", "overloaded_branches",
            "tap_pos")
    per_inverter = ("q_mvar", "p_mw", "q_avail_mvar")
    rec: dict[str, list] = {k: [] for k in (*keys, *per_inverter, "vm_pu", "load_p_mw", "unsettled", "infeasible",
                                            "handover", "envelope")}
    batch = env.num_envs
    # trained policies read which neighbours' messages arrived with the observation
    messages = getattr(controller, "reads_messages", False)
    mask = None
    for _ in range(env.episode_steps):
        rec["load_p_mw"].append(_np(env.pending()["load_p_mw"]).sum(axis=1))
        with torch.no_grad():
            actions = controller.act(obs, env=env, message_mask=mask) if messages else controller.act(obs, env=env)
        obs, _, done, info = env.step(actions)
        if messages and env.config.message_dropout > 0:
            mask = info["message_mask"]
        for k in keys:
            rec[k].append(_np(info[k]))
        for k in ("vm_pu", *per_inverter):
            rec[k].append(_np(info[k]).astype(np.float32))
        li = getattr(controller, "last_info", None) or {}
        for k in ("unsettled", "infeasible"):
            rec[k].append(np.asarray(li.get(k, np.zeros(batch, dtype=bool)), dtype=bool))
        for k in ("handover", "envelope"):  # agents per scenario; NaN: the controller has no envelope
            rec[k].append(np.asarray(li.get(k, np.full(batch, np.nan)), dtype=np.float64))
        if progress is not None:
            progress(1)
        if bool(_np(done).all()):
            break
    out = {k: np.stack(v) for k, v in rec.items()}
    # the tap's moves, counted by the environment (the move after the last step included)
    out["tap_operations"] = _np(env.episode_metrics()["tap_operations"])
    return out


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _tables(feeder, env, controller, days, rec, keep_v, seconds):
    n_steps, batch = rec["loss_mw"].shape
    hours = env.step_hours
    mon = _np(env.monitored).astype(bool)
    vm = rec["vm_pu"]                                      # [T, B, n_bus]
    vmon = vm[:, :, mon].astype(np.float64)
    conv = rec["converged"].astype(bool)
    start = feeder.profiles.start
    day_rows = []
    for b, day in enumerate(days):
        ok = conv[:, b]
        dv = np.abs(vmon[ok, b] - 1.0)
        day_rows.append({
            "day": int(day),
            "date": (start + pd.Timedelta(days=int(day))).date().isoformat(),
            "steps": int(n_steps),
            "controllable_rate": float(np.mean(rec["controllable"][:, b])),
            "share_out_of_band": float(np.nanmean(rec["out_of_band_share"][ok, b])) if ok.any() else np.nan,
            "mean_abs_dv_pu": float(dv.mean()) if dv.size else np.nan,
            "max_abs_dv_pu": float(dv.max()) if dv.size else np.nan,
            "energy_loss_mwh": float(np.nansum(rec["loss_mw"][:, b]) * hours),
            "controllable_loss_mwh": float(np.nansum(rec["line_loss_mw"][:, b] + rec["trafo_load_loss_mw"][:, b])
                                           * hours),
            "line_loss_mwh": float(np.nansum(rec["line_loss_mw"][:, b]) * hours),
            "trafo_load_loss_mwh": float(np.nansum(rec["trafo_load_loss_mw"][:, b]) * hours),
            "trafo_noload_loss_mwh": float(np.nansum(rec["trafo_noload_loss_mw"][:, b]) * hours),
            "max_loading_pct": (float(np.nanmax(rec["max_loading_pct"][ok, b]))
                                if ok.any() and np.isfinite(rec["max_loading_pct"][ok, b]).any() else np.nan),
            "overload_branch_hours": float(np.nansum(rec["overloaded_branches"][:, b]) * hours),
            "tap_operations": int(rec["tap_operations"][b]),
            "reactive_energy_mvarh": float(np.nansum(rec["q_abs_mvar"][:, b]) * hours),
            "violation_bus_hours": float(np.nansum(rec["out_of_band_share"][:, b]) * mon.sum() * hours),
            "unsettled_steps": int(rec["unsettled"][:, b].sum()),
            "infeasible_steps": int(rec["infeasible"][:, b].sum()),
            "diverged_steps": int((~ok).sum()),
            "communication": float(controller.communication),
            "hops": int(controller.hops if controller.hops is not None else -1),
            "information": information_of(controller, env.config),
            "handover_share": float(np.mean(rec["handover"][:, b]) / env.n_agents),
            "envelope_share": float(np.mean(rec["envelope"][:, b]) / env.n_agents),
            "seconds": float(seconds),
            "q_at_night": bool(env.q_at_night),  # the inverters' capability the figures were measured with
        })
    steps = pd.DataFrame({
        "day": np.repeat(np.asarray(days, dtype=np.int64)[None, :], n_steps, 0).T.ravel(),
        "step": np.tile(np.arange(n_steps), batch),
        "hour": np.tile(np.arange(n_steps) * hours, batch),
        "loss_mw": rec["loss_mw"].T.ravel(),
        "line_loss_mw": rec["line_loss_mw"].T.ravel(),
        "trafo_load_loss_mw": rec["trafo_load_loss_mw"].T.ravel(),
        "trafo_noload_loss_mw": rec["trafo_noload_loss_mw"].T.ravel(),
        "v_min_pu": np.where(conv, vmon.min(axis=2, initial=np.inf), np.nan).T.ravel(),
        "v_max_pu": np.where(conv, vmon.max(axis=2, initial=-np.inf), np.nan).T.ravel(),
        "share_out_of_band": rec["out_of_band_share"].T.ravel(),
        "controllable": rec["controllable"].astype(bool).T.ravel(),
        "max_loading_pct": rec["max_loading_pct"].T.ravel(),
        "tap_pos": rec["tap_pos"].T.ravel(),
        "q_abs_mvar": rec["q_abs_mvar"].T.ravel(),
        "q_mvar": rec["q_mvar"].sum(axis=2, dtype=np.float64).T.ravel(),
        "pv_p_mw": rec["p_mw"].sum(axis=2, dtype=np.float64).T.ravel(),
        "load_p_mw": rec["load_p_mw"].T.ravel(),
        "unsettled": rec["unsettled"].T.ravel(),
        "infeasible": rec["infeasible"].T.ravel(),
        "converged": conv.T.ravel(),
    })
    # float32 keeps committed result tables small; the per-day figures above use float64
    floats = [c for c in steps.columns if steps[c].dtype == np.float64 and c != "hour"]
    steps[floats] = steps[floats].astype(np.float32)
    bus = np.asarray(feeder.net.bus.index)
    frames = []
    for b, day in enumerate(days):
        if int(day) in keep_v:
            frames.append(pd.DataFrame({
                "day": np.int64(day),
                "step": np.repeat(np.arange(n_steps), len(bus)),
                "bus": np.tile(bus, n_steps),
                "monitored": np.tile(mon, n_steps),
                "vm_pu": vm[:, b, :].ravel().astype(np.float32),
            }))
    volts = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        {"day": pd.Series(dtype=np.int64), "step": pd.Series(dtype=np.int64), "bus": pd.Series(dtype=np.int64),
         "monitored": pd.Series(dtype=bool), "vm_pu": pd.Series(dtype=np.float32)})
    return pd.DataFrame(day_rows), steps, volts, _agent_table(env, days, rec, keep_v)


def _agent_table(env, days, rec, keep_v) -> pd.DataFrame:
    """Per-agent p, q, headroom and own-bus voltage at every step of the kept days."""
    n_steps = rec["loss_mw"].shape[0]
    agents = np.asarray(env.agents, dtype=object)
    of_inverter = _np(env.inverter_agent)
    own_bus = _np(env.agent_bus_pos)
    frames = []
    for b, day in enumerate(days):
        if int(day) not in keep_v:
            continue
        cols = {}
        for k in ("p_mw", "q_mvar", "q_avail_mvar"):
            per_agent = np.zeros((n_steps, len(agents)), dtype=np.float64)
            np.add.at(per_agent, (slice(None), of_inverter), rec[k][:, b, :])  # [T, N]: an agent's inverters summed
            cols[k] = per_agent.ravel().astype(np.float32)
        frames.append(pd.DataFrame({
            "day": np.int64(day),
            "step": np.repeat(np.arange(n_steps), len(agents)),
            "agent": np.tile(agents, n_steps),
            **cols,
            "vm_pu": rec["vm_pu"][:, b, own_bus].ravel().astype(np.float32),
        }))
    if frames:
        return pd.concat(frames, ignore_index=True)
    return pd.DataFrame({"day": pd.Series(dtype=np.int64), "step": pd.Series(dtype=np.int64),
                         "agent": pd.Series(dtype=object),
                         **{k: pd.Series(dtype=np.float32) for k in ("p_mw", "q_mvar", "q_avail_mvar", "vm_pu")}})


def information_of(controller, env_config) -> str:
    """What ``controller`` knew when it acted in an environment of ``env_config`` (a table cell)."""
    info = getattr(controller, "information", "") or ""
    if not info:
        from gridrl.marl.run import information_label

        info = information_label(env_config)
    elif info.startswith("own voltage") and env_config.sensor_noise_pu > 0:
        info += f", sensor noise {env_config.sensor_noise_pu:g} p.u."
    return info

