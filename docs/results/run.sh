#!/usr/bin/env bash
# Reproduce docs/results: extract the CIFAR-10 JPEG archive, run (or resume) the sweep, build the
# report and plots. Resumable: finished jobs are skipped, so run it again after an interruption.
# Usage: bash docs/results/run.sh [PATH/TO/cifar10-jpeg.tar.gz]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
archive="${1:-$here/../../../shared/data/cifar10-jpeg.tar.gz}"
data="$(bash "$here/extract_cifar10.sh" "$archive")"
sweep="$here/cifar10_small"
sharpdro sweep "$here/cifar10_small.yaml" --out "$sweep" --set data.root="$data" --no-progress
sharpdro report "$sweep" --out "$here/cifar10_small_table" --format md,csv,tex,json
sharpdro plot "$sweep" --out "$here/plots"
