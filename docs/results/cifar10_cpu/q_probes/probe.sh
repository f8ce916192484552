#!/usr/bin/env bash
# The q probes of README.md (beside ../): SharpDRO under the cifar10_cpu protocol, ImageNet-C constants,
# Gaussian noise, the tuning seed 0, four readings of its group weights and a stronger weight decay (with ERM
# beside it), and both at twice the epochs. sd_c3 was stopped after epoch 11.
# Usage: bash docs/results/cifar10_cpu/q_probes/probe.sh DATA_ROOT   (the extracted cifar10-jpeg folder)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="${1:?give the extracted cifar10-jpeg folder}"
probe() {
  local name=$1; shift
  local args=(--set data.root="$root" --set data.table=imagenet --set data.corruption=gaussian_noise
              --set algorithm.name=sharpdro --set seed=0)
  for o in "$@"; do args+=(--set "$o"); done
  sharpdro train -c "$here/../protocol.yaml" --out "$here/$name" "${args[@]}"
}
probe sd_default                                          # balanced batches, q_absent zero (the defaults)
probe sd_c1 algorithm.gen_adjustment=1                    # + group_DRO's adjustment C / sqrt(n_g), C = 1
probe sd_c3 algorithm.gen_adjustment=3                    # C = 3
probe sd_uskip data.sampler=uniform algorithm.q_absent=skip  # uniform batches, absent groups left out of the update
probe sd_wd5e3 train.weight_decay=0.005                    # weight decay 5e-3, 10x the recipe's (strong l2)
probe erm_wd5e3 algorithm.name=erm train.weight_decay=0.005  # ERM with the same weight decay
probe sd_e40 train.epochs=40                              # twice the protocol's epochs: does fitting more help?
probe erm_e40 algorithm.name=erm train.epochs=40          # ERM with the same schedule
