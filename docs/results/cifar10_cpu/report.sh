#!/usr/bin/env bash
# Tables (md, csv, tex, json; the paired differences in *_paired.csv), cost (*_cost.*) and plots of both arms, from
# whatever runs are finished. Hyperparameters: each method's best trial on the tuning seed. The scale study last.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
for arm in imagenet_table cifar_table; do
  [ -d "$here/$arm" ] || continue
  sharpdro report "$here/$arm" --select-hparams worst --out "$here/${arm}_table" --format md,csv,tex,json
  sharpdro cost "$here/$arm" --out "$here/${arm}_cost"
  sharpdro plot "$here/$arm" --select-hparams worst --format png --out "$here/plots/$arm"
done
python "$here/findings.py" "$here" > "$here/findings.md"
# The scale study (issue 27): each regime's table (one configuration per method; its columns show each
# method's own hyperparameters) and cost, then the study across regimes, its figure and the README blocks.
# A regime whose grid is still running is read from a copy of its finished runs: a committed table counts
# exactly what a clone has (a run in progress would show as "unfinished" here and as "not started" there).
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
for sweep in "$here"/scale/scale_*/; do
  sweep="${sweep%/}"
  [ -f "$sweep/sweep.json" ] || continue
  copy="$stage/$(basename "$sweep")"
  mkdir "$copy"
  cp "$sweep/sweep.json" "$copy/"
  for run in "$sweep"/*/; do
    [ -f "$run/done" ] || continue
    mkdir "$copy/$(basename "$run")"
    find "$run" -maxdepth 1 -type f -exec cp {} "$copy/$(basename "$run")/" \;
  done
  sharpdro report "$copy" --out "${sweep}_table" --format md,csv,tex,json
  sharpdro cost "$copy" --out "${sweep}_cost"
done
python "$here/scale_study.py" "$here" > /dev/null
python "$here/scale_study.py" --update-readme "$here"
