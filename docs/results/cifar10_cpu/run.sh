#!/usr/bin/env bash
# Reproduce docs/results/cifar10_cpu: extract the CIFAR-10 JPEG archive, run (or resume) both arms'
# sweeps (equal tuning, then the selected trial of every method on the final seeds), then write the
# tables and plots, and measure sharpness per severity on the runs' checkpoints (present where the
# sweep ran; a clone's committed runs have none). Resumable: finished jobs and measurements are
# skipped, so run it again after an interruption.
# Usage: bash docs/results/cifar10_cpu/run.sh [PATH/TO/cifar10-jpeg.tar.gz]
#   SHARPDRO_WORKERS (default 2): parallel jobs, one thread each.
#   SHARPDRO_ARMS (default "imagenet_table cifar_table"): which arms to run, in this order.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
archive="${1:-$here/../../../../shared/data/cifar10-jpeg.tar.gz}"
data="$(bash "$here/../extract_cifar10.sh" "$archive")"
for arm in ${SHARPDRO_ARMS:-imagenet_table cifar_table}; do
  sharpdro sweep "$here/$arm.yaml" --out "$here/$arm" --set data.root="$data" \
    --launcher parallel --workers "${SHARPDRO_WORKERS:-2}" --no-progress
done
bash "$here/report.sh"
bash "$here/sharpness.sh"
