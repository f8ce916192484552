#!/usr/bin/env bash
# Tables (md, csv, tex, json; the paired differences in *_paired.csv), cost (*_cost.*) and plots of both arms, from
# whatever runs are finished. Hyperparameters: each method's best trial on the tuning seed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
for arm in imagenet_table cifar_table; do
  [ -d "$here/$arm" ] || continue
  sharpdro report "$here/$arm" --select-hparams worst --out "$here/${arm}_table" --format md,csv,tex,json
  sharpdro cost "$here/$arm" --out "$here/${arm}_cost"
  sharpdro plot "$here/$arm" --select-hparams worst --format png --out "$here/plots/$arm"
done
python "$here/findings.py" "$here" > "$here/findings.md"
