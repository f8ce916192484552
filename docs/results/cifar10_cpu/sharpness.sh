#!/usr/bin/env bash
# Sharpness per severity of the final runs of ERM, GroupDRO and SharpDRO (every final seed), on the test
# images, measured on each run's selected checkpoint (checkpoints/best.pt: not committed, so this runs
# where the sweeps ran). One figure and one combined sharpness.json per arm and corruption, in
# sharpness/<arm>_<corruption>/; each run's own sharpness.json goes to its run directory.
# Usage: bash docs/results/cifar10_cpu/sharpness.sh [RUNS_ROOT]   (default: this folder; the arms'
# run directories are RUNS_ROOT/<arm>/<hash>)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
runs="${1:-$here}"
for arm in imagenet_table cifar_table; do
  json="$here/${arm}_table.json"
  [ -f "$json" ] || continue
  python - "$json" "$runs/$arm" <<'PY' | while read -r corruption labels dirs; do
import json, sys
from pathlib import Path
table, root = json.load(open(sys.argv[1])), Path(sys.argv[2])
by_corruption = {}
for row in table["rows"]:
    if row["algorithm"] not in ("erm", "groupdro", "sharpdro") or row.get("variant"):
        continue
    for r in row["runs"]:
        d = root / r["run"]
        if r["status"] == "done" and (d / "checkpoints" / "best.pt").exists():
            by_corruption.setdefault(row["corruption"], []).append((f"{row['method']} s{r['seed']}", str(d)))
for corruption, runs in by_corruption.items():
    print(corruption, ",".join(l.replace(" ", "_") for l, _ in runs), " ".join(d for _, d in runs))
PY
    out="$here/sharpness/${arm}_${corruption}"
    # done already for exactly these runs (about 2 CPU-minutes a run): keep it; SHARPDRO_FORCE=1 measures again
    if [ -z "${SHARPDRO_FORCE:-}" ] && [ -f "$out/sharpness.json" ] && python -c "
import json, sys; d = json.load(open(sys.argv[1])); sys.exit([r['label'] for r in d['runs']] != sys.argv[2].split(','))
" "$out/sharpness.json" "$labels"; then
      echo "sharpness: $arm $corruption already measured for these runs ($out)"; continue
    fi
    # shellcheck disable=SC2086
    sharpdro sharpness $dirs --labels "$labels" --split test --max-images 500 --seed 0 \
      --out "$out" --no-progress
  done
done
