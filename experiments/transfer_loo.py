"""Leave-one-out transfer: train on the other feeders, control the left-out one zero-shot, fine-tune.

    python experiments/transfer_loo.py --config experiments/transfer_loo.toml --leave-out ieee69 --seed 0

For the left-out feeder F (one of the config's ``feeders``) and a seed, into the config's
``runs`` folder (finished runs are reused, interrupted ones resumed):

1. ``loo-F-dppo-seedS``: one transferable policy trained on every other feeder
   (``gridrl train --feeders … --transfer``), ``steps_per_feeder`` steps on each;
2. ``F-dppo-seedS``: the feeder-specific learner (``gridrl train F --algo dppo``, the published
   settings), unless ``--specific RUN`` names one already trained;
3. ``loo-F-finetune-seedS``: the policy of 1 fine-tuned on F (``gridrl train F --init …``) with
   ``finetune_share`` of the feeder-specific run's steps, selected on the validation days of F the
   feeder-specific run was selected on (every one on the IEEE feeders, 7 on the SimBench ones);

then compares the baselines, 1 (zero-shot), 3 and 2 on F's test days (``--days N``: N of them,
evenly spread) into ``out/loo-F-seedS/compare``, appends a ledger row for every trained policy
looked at, and writes ``out/loo-F-seedS/summary.md`` with the targets of issue 25 (no HTML
report: ``gridrl report out/loo-F-seedS/compare`` writes one where it is wanted).

``--reuse DIR``: take the finished ``opf`` and ``droop-tuned`` cells of F from the comparison
folder DIR (e.g. ``reports/baselines``, every test day) instead of running them again — the
optimum costs several seconds per day on the SimBench feeders. ``none`` and IEEE 1547-B still run,
so the summary shows whether this code still gives DIR's figures; a droop-tuned cell whose fit's
key is not the one this code would make runs again (the comparison checks it).

``--loss-guard G`` (``unseen`` or ``all``): instead, the zero-shot policy of the finished run 1
through the safety envelope with the loss guard ``G`` (:mod:`gridrl.env.envelope`), beside the
baselines, into ``out/loo-F-seedS-loss-guard-G/compare``; one ledger row, and ``summary.md`` with
the zero-shot targets.

``--zero-shot``: the zero-shot policy of the finished run 1 as a comparison deploys it by default
(the envelope's defaults of this code: on the left-out feeder the ``unseen`` loss guard), beside
the baselines, into ``out/loo-F-seedS-zero-shot/compare``; one ledger row and ``summary.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

from gridrl import ledger
from gridrl.compare import CompareConfig, ControllerSpec, parse_controllers
from gridrl.compare.folder import cell_folder
from gridrl.compare.run import prepare_out
from gridrl.config import read_toml
from gridrl.grid.feeder import load_feeder
from gridrl.io import write_text
from gridrl.marl.train import published_settings, resolve_train_config
from gridrl.pipeline import compare
from gridrl.pipeline import train as train_run


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _train(feeders, data: dict, out: Path, *, init: Path | None = None) -> Path:
    cfg = resolve_train_config(data, source=str(out))
    if not (out / "checkpoint.pt").exists() or not _finished(out):
        train_run(feeders if len(feeders) > 1 else feeders[0], cfg, out=out, resume=True, progress=False, log=_say,
                  init=init)
    return out


def _finished(out: Path) -> bool:
    from gridrl.marl.checkpoint import read_checkpoint

    return bool(read_checkpoint(out)["driver"].get("finished"))


def _steps(run: Path) -> int:
    return int(json.loads((run / "config.json").read_text(encoding="utf-8"))["config"]["steps"])


def _validation_days(run: Path) -> int | None:
    """How many validation days ``run`` was selected on (``None``: every one of its feeder's)."""
    return json.loads((run / "config.json").read_text(encoding="utf-8"))["config"].get("validation_days")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=Path("experiments/transfer_loo.toml"))
    ap.add_argument("--leave-out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--specific", type=Path, help="a feeder-specific run on the left-out feeder to compare with")
    ap.add_argument("--days", type=int, help="only this many test days, evenly spread (default: all)")
    ap.add_argument("--reuse", type=Path, help="a comparison folder on every test day whose opf and droop-tuned "
                                               "cells of the left-out feeder are copied in instead of run again")
    ap.add_argument("--loss-guard", choices=("unseen", "all"),
                    help="compare the zero-shot policy through the envelope's loss guard (needs the finished run 1)")
    ap.add_argument("--zero-shot", action="store_true",
                    help="compare the zero-shot policy as deployed by default (needs the finished run 1)")
    args = ap.parse_args(argv)

    exp = read_toml(args.config)
    left, seed = args.leave_out, args.seed
    if left not in exp["feeders"]:
        raise SystemExit(f"--leave-out {left!r} is not one of the experiment's feeders ({', '.join(exp['feeders'])})")
    if args.reuse is not None and (args.days is not None or not (args.reuse / "config.json").is_file()):
        raise SystemExit(f"--reuse {args.reuse}: give a comparison folder (one with config.json) and no --days "
                         f"(its cells cover every test day)")
    others = [f for f in exp["feeders"] if f != left]
    runs, out = Path(exp["runs"]), Path(exp["out"]) / f"loo-{left}-seed{seed}"
    table = dict(exp["train"])
    per_feeder = table.pop("steps_per_feeder")
    feeder = load_feeder(left)

    zero = _train(others, {**table, "seed": seed, "steps": per_feeder * len(others)},
                  runs / f"loo-{left}-{table['algo']}-seed{seed}")
    if args.loss_guard is not None and args.zero_shot:
        raise SystemExit("--zero-shot compares the envelope's defaults; give it or --loss-guard, not both")
    if args.loss_guard is not None:
        return _zero_shot(exp, left, others, seed, zero, args, out.with_name(f"{out.name}-loss-guard-{args.loss_guard}"))
    if args.zero_shot:
        return _zero_shot(exp, left, others, seed, zero, args, out.with_name(f"{out.name}-zero-shot"))
    if args.specific is not None:
        specific = args.specific
    else:
        data, line = published_settings(feeder, table["algo"])
        _say(line)
        specific = _train([left], {**data, "seed": seed, "compare": []}, runs / f"{left}-{table['algo']}-seed{seed}")
    ft_steps = int(_steps(specific) * float(exp["finetune_share"]))
    # selected like the feeder-specific learner it is held against: on the same validation days of F
    ft_data = {**{k: v for k, v in table.items() if k != "validation_days"}, "seed": seed, "steps": ft_steps,
               "validate_every_steps": max(1024, ft_steps // 4)}
    n_val = _validation_days(specific)
    if n_val is not None:
        ft_data["validation_days"] = n_val
    tuned = _train([left], ft_data, runs / f"loo-{left}-finetune-seed{seed}", init=zero)
    on_left = f"selected on {'every validation day' if n_val is None else f'{n_val} validation days'} of {left}"
    notes = {"zero-shot": "selected on validation days of the feeders it trained on",
             "fine-tuned": on_left + ", as the feeder-specific run", "specific": on_left}

    test = [int(d) for d in feeder.days("test")]
    days = None if args.days is None else tuple(sorted({test[int((k + 0.5) * len(test) / args.days)]
                                                        for k in range(args.days)}))
    labels = {"zero-shot": "transfer-zero-shot", "fine-tuned": "transfer-fine-tuned", "specific": "feeder-specific"}
    controllers = parse_controllers(",".join(exp["baselines"])) + (
        ControllerSpec(run=str(zero.resolve()), label=labels["zero-shot"]),
        ControllerSpec(run=str(tuned.resolve()), label=labels["fine-tuned"]),
        ControllerSpec(run=str(Path(specific).resolve()), label=labels["specific"]))
    config = CompareConfig(feeders=(left,), controllers=controllers, split="test", days=days)
    if args.reuse is not None:
        _reuse(args.reuse, config, out / "compare", left)
    result = compare(config, out=out / "compare", progress=False, report=False)
    summary = result.summary
    source = (f"experiments/transfer_loo.py --leave-out {left} --seed {seed}" + (f" --days {args.days}" if days else "")
              + (f" --reuse {args.reuse}" if args.reuse is not None else ""))
    for key, run, variant in (("zero-shot", zero, f"transfer:zero-shot (trained on {'+'.join(others)})"),
                              ("fine-tuned", tuned, f"transfer:fine-tuned ({ft_steps} steps from loo-{left})"),
                              ("specific", Path(specific), "feeder-specific")):
        row = summary[summary["controller"] == labels[key]].iloc[0]
        best = ledger.selected(run)
        recorded = json.loads((run / "config.json").read_text(encoding="utf-8"))
        ledger.append(feeder=left, algorithm=recorded["config"]["algo"], variant=variant, seed=seed,
                      selected_step=best["env_steps"] if best else "", test_days=int(row["days"]),
                      controllable_rate=float(row["controllable_rate"]), energy_loss_mwh=float(row["energy_loss_mwh"]),
                      config=recorded["identity"], source=f"{source} (run {run})",
                      note=notes[key])
    write_text(out / "summary.md", _summary(summary, left, others, labels, ft_steps, _steps(specific), source))
    _say((out / "summary.md").read_text(encoding="utf-8"))
    return 0


def _zero_shot(exp: dict, left: str, others: list[str], seed: int, zero: Path, args, out: Path) -> int:
    """The zero-shot policy ``zero`` on ``left``'s test days beside the baselines, through the loss
    guard ``args.loss_guard`` (``None``: the envelope's defaults): the comparison, one ledger row,
    ``out/summary.md``."""
    guard = args.loss_guard
    label = "transfer-zero-shot" + (f"-loss-guard-{guard}" if guard else "")
    controllers = parse_controllers(",".join(exp["baselines"])) + (
        ControllerSpec(run=str(zero.resolve()), label=label, envelope={"loss_guard": guard} if guard else None),)
    config = CompareConfig(feeders=(left,), controllers=controllers, split="test", days=None)
    if args.reuse is not None:
        _reuse(args.reuse, config, out / "compare", left)
    summary = compare(config, out=out / "compare", progress=False, report=False).summary
    source = (f"experiments/transfer_loo.py --leave-out {left} --seed {seed} "
              + (f"--loss-guard {guard}" if guard else "--zero-shot")
              + (f" --reuse {args.reuse}" if args.reuse is not None else ""))
    row = summary[summary["controller"] == label].iloc[0]
    best = ledger.selected(zero)
    recorded = json.loads((zero / "config.json").read_text(encoding="utf-8"))
    variant = f"transfer:zero-shot (trained on {'+'.join(others)})"
    ledger.append(feeder=left, algorithm=recorded["config"]["algo"],
                  variant=variant + (f" + loss guard ({guard})" if guard else ", envelope defaults"),
                  seed=seed, selected_step=best["env_steps"] if best else "", test_days=int(row["days"]),
                  controllable_rate=float(row["controllable_rate"]), energy_loss_mwh=float(row["energy_loss_mwh"]),
                  config=recorded["identity"], source=f"{source} (run {zero})",
                  note="selected on validation days of the feeders it trained on; the guard chosen on validation "
                       "days of the left-out feeder" + ("" if guard else f"; knew: {row.get('information', '')}"))
    title = f"{left}, zero-shot " + (f"through the loss guard ({guard})" if guard else "as deployed by default")
    lines = _zero_shot_lines(summary, label, title, source)
    write_text(out / "summary.md", "\n".join(lines) + "\n")
    _say((out / "summary.md").read_text(encoding="utf-8"))
    return 0


def _reuse(source: Path, config: CompareConfig, out: Path, feeder: str) -> None:
    """Copy ``source``'s finished opf and droop-tuned cells of ``feeder`` into the comparison ``out``
    (the comparison runs a droop-tuned cell again when its fit's key is not this code's)."""
    prepare_out(config, out)
    for key in ("opf", "droop-tuned"):
        src, dst = cell_folder(source, feeder, key, 0), cell_folder(out, feeder, key, 0)
        if not (src / "days.parquet").is_file() or dst.exists():
            continue
        shutil.copytree(src, dst.with_name(dst.name + ".tmp"), dirs_exist_ok=True)
        dst.with_name(dst.name + ".tmp").rename(dst)
        _say(f"reused {src} (not run again)")


def _zero_shot_lines(summary, label: str, title: str, source: str) -> list[str]:
    """The summary's table and the zero-shot targets of the controller ``label``."""
    s = summary.set_index("controller")
    b = s.loc["droop-ieee1547-b"] if "droop-ieee1547-b" in s.index else s.loc["droop"]
    z = s.loc[label]
    tuned = next((s.loc[k] for k in s.index if k.startswith("droop-tuned")), None)
    lines = [f"# Leave-one-out transfer: {title}", "", f"Command: `{source}`", "",
             "| controller | days | controllable rate | energy loss MWh |", "|---|---|---|---|"]
    for name, r in s.iterrows():
        lines.append(f"| {name} | {int(r['days'])} | {r['controllable_rate']:.4f} | {r['energy_loss_mwh']:.2f} |")
    if "information" in s.columns:
        lines += ["", f"{label} knew: {z['information']}"]
    lines += ["", "## Targets", "",
              f"- zero-shot rate ≥ 1547-B's: {z['controllable_rate']:.4f} vs {b['controllable_rate']:.4f} — "
              f"{'met' if z['controllable_rate'] >= b['controllable_rate'] else 'missed'}",
              f"- zero-shot loss ≤ 1547-B's: {z['energy_loss_mwh']:.2f} vs {b['energy_loss_mwh']:.2f} MWh — "
              f"{'met' if z['energy_loss_mwh'] <= b['energy_loss_mwh'] else 'missed'}"]
    if tuned is not None:
        lines.append(f"- aim, zero-shot loss ≤ tuned droop's: {z['energy_loss_mwh']:.2f} vs "
                     f"{tuned['energy_loss_mwh']:.2f} MWh — "
                     f"{'met' if z['energy_loss_mwh'] <= tuned['energy_loss_mwh'] else 'missed'}")
    return lines


def _summary(summary, left, others, labels, ft_steps, specific_steps, source) -> str:
    s = summary.set_index("controller")
    f, sp = s.loc[labels["fine-tuned"]], s.loc[labels["specific"]]
    lines = _zero_shot_lines(summary, labels["zero-shot"], f"{left} (trained on {', '.join(others)})", source)
    gap = 100.0 * (f["energy_loss_mwh"] / sp["energy_loss_mwh"] - 1.0)
    lines.append(f"- fine-tuned within 2 % of the feeder-specific loss with ≤ 1/4 of its steps: "
                 f"{f['energy_loss_mwh']:.2f} vs {sp['energy_loss_mwh']:.2f} MWh ({gap:+.1f} %), {ft_steps:,} of "
                 f"{specific_steps:,} steps — {'met' if gap <= 2.0 and ft_steps * 4 <= specific_steps else 'missed'} "
                 f"(rates {f['controllable_rate']:.4f} vs {sp['controllable_rate']:.4f})")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
