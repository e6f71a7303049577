#!/usr/bin/env bash
# Train the runs of the robustness experiment on ieee33, two at a time (finished runs are only
# re-evaluated, interrupted ones resumed): dmpo and dppo, seeds 0-2, robust training (the
# defaults), then the ablation without randomisation. Usage: experiments/robustness_train.sh [VARIANT...]
# (variants: main, norand, oracle; default main).
set -euo pipefail
cd "$(dirname "$0")/.."
GRIDRL=${GRIDRL:-gridrl}
jobs=()
for variant in "${@:-main}"; do
  case $variant in
    main)   cfg=experiments/robustness_train_ieee33.toml ;;
    norand) cfg=experiments/robustness_train_ieee33_norand.toml ;;
    oracle) cfg=experiments/robustness_train_ieee33_oracle.toml ;;
    *) echo "unknown variant $variant (main, norand, oracle)" >&2; exit 2 ;;
  esac
  for seed in 0 1 2; do
    for algo in dmpo dppo; do
      jobs+=("$GRIDRL train ieee33 --config $cfg --algo $algo --seed $seed --out out/robustness/runs/$variant-$algo-s$seed --resume --no-progress")
    done
  done
done
printf '%s\n' "${jobs[@]}" | xargs -P 2 -I{} sh -c 'nice -n 10 {} > /dev/null 2>&1 || echo "failed: {}" >&2'
