#!/usr/bin/env bash
# Train the runs of the robustness experiment (finished runs are only re-evaluated, interrupted
# ones resumed): seeds 0-2 of each learner, robust training (the defaults), and the ablations.
# Usage: experiments/robustness_train.sh [VARIANT...]   (variants: main, norand, oracle, night;
# default main; night: inverters give reactive power at night, experiments/robustness_train_ieee69_night.toml)
# Environment: FEEDER (default ieee33; the training config is feeder-agnostic), ALGOS (default
# "dmpo dppo"), RUNS (default out/robustness/runs), JOBS (runs at a time, default 2), RUNNER
# (a command each run goes through, e.g. a CPU-slot queue; default none). Run folders are
# RUNS/FEEDER-ALGO-seedK (main) and RUNS/FEEDER-VARIANT-ALGO-seedK (ablations).
set -euo pipefail
cd "$(dirname "$0")/.."
GRIDRL=${GRIDRL:-gridrl}
FEEDER=${FEEDER:-ieee33}
RUNS=${RUNS:-out/robustness/runs}
jobs=()
for variant in "${@:-main}"; do
  case $variant in
    main)   cfg=experiments/robustness_train_ieee33.toml; name=$FEEDER ;;
    norand) cfg=experiments/robustness_train_ieee33_norand.toml; name=$FEEDER-norand ;;
    oracle) cfg=experiments/robustness_train_ieee33_oracle.toml; name=$FEEDER-oracle ;;
    night)  cfg=experiments/robustness_train_ieee69_night.toml; name=$FEEDER-night ;;
    *) echo "unknown variant $variant (main, norand, oracle, night)" >&2; exit 2 ;;
  esac
  for seed in 0 1 2; do
    for algo in ${ALGOS:-dmpo dppo}; do
      jobs+=("${RUNNER:-} $GRIDRL train $FEEDER --config $cfg --algo $algo --seed $seed --out $RUNS/$name-$algo-seed$seed --resume --no-progress")
    done
  done
done
printf '%s\n' "${jobs[@]}" | xargs -P "${JOBS:-2}" -I{} sh -c 'nice -n 10 {} > /dev/null 2>&1 || echo "failed: {}" >&2'
