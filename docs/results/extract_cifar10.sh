#!/usr/bin/env bash
# Print the folder of the extracted CIFAR-10 JPEG copy, extracting the archive given as $1 there first
# when it is not there yet: $SHARPDRO_DATA/cifar10-jpeg (default ~/.cache/sharpdro/data/cifar10-jpeg).
# Used by the reproductions' run.sh scripts.
set -euo pipefail
data="${SHARPDRO_DATA:-$HOME/.cache/sharpdro/data}/cifar10-jpeg"
if [ ! -d "$data/train" ]; then
  mkdir -p "$data" && tar xzf "$1" -C "$data"
fi
echo "$data"
