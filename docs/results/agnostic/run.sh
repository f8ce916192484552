#!/usr/bin/env bash
# Reproduce docs/results/agnostic: extract the CIFAR-10 JPEG archive, measure the scores on an ERM model
# (scores.json), run (or resume) the sweep, summarise it and plot it. Resumable: finished jobs are skipped.
# Usage: bash docs/results/agnostic/run.sh [PATH/TO/cifar10-jpeg.tar.gz]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
archive="${1:-$here/../../../../shared/data/cifar10-jpeg.tar.gz}"
data="$(bash "$here/../extract_cifar10.sh" "$archive")"
if [ ! -f "$here/scores.json" ]; then
  python "$here/measure_scores.py" --data "$data" --out "$here/scores.json" | tee "$here/scores.txt"
fi
sharpdro sweep "$here/agnostic.yaml" --out "$here/runs" --set data.root="$data" --set train.threads=1 \
  --launcher parallel --workers 2 --no-progress
python "$here/summarise.py" "$here/runs" > "$here/summary.md"
sharpdro plot "$here/runs" --out "$here/plots"
