#!/usr/bin/env bash
# Reproduce the measurements of docs/baselines.md: extract the CIFAR-10 JPEG archive, run (or resume) the
# q_absent x sampler sweep (24 jobs), then the pre-stage measurements of JTT and EIIL, then the tables.
# Resumable: finished jobs are skipped. Usage: bash docs/baselines/run.sh [PATH/TO/cifar10-jpeg.tar.gz]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
archive="${1:-$here/../../../shared/data/cifar10-jpeg.tar.gz}"
data="$(bash "$here/../results/extract_cifar10.sh" "$archive")"
sharpdro sweep "$here/baselines.yaml" --out "$here/sweep" --set data.root="$data" --set train.threads=1 \
  --launcher parallel --workers 2 --no-progress
python "$here/prestage.py" --data "$data" --out "$here/prestage.json"
sharpdro report "$here/sweep" --out "$here/sweep_table" --format md,json
python "$here/tables.py" "$here" > "$here/tables.md"
