#!/usr/bin/env bash
# Builds the procedural benchmark data used to train the shipped models:
# shapes (GLB + captions) -> Zero123++ rig views (reconstructor input) + random views (supervision).
# Usage: scripts/prepare_shapes.sh OUT N_TRAIN N_VAL N_TEST SIZE
set -euo pipefail
out=${1:-data}; ntrain=${2:-3000}; nval=${3:-200}; ntest=${4:-300}; size=${5:-128}
bin=${BIN:-.venv/bin}
for spec in "train $ntrain" "val $nval" "test $ntest"; do
  set -- $spec
  "$bin/triflow3d" shapes make --n "$2" --split "$1" --out "$out/shapes/$1"
  "$bin/triflow3d" render "$out/shapes/$1" --out "$out/views/$1" --rig zero123pp --size "$size"
  "$bin/triflow3d" render "$out/shapes/$1" --out "$out/views_random/$1" --rig random:8 --size "$size" --seed 1
done
