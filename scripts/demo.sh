#!/usr/bin/env bash
# The main job on the shipped defaults. Extended as later stages land.
set -euo pipefail
bin=${1:-.venv/bin}
out=${2:-demo_out}
mkdir -p "$out"
"$bin/triflow3d" shapes make --n 4 --split test --out "$out/shapes"
"$bin/triflow3d" render "$out/shapes" --out "$out/views" --rig zero123pp --size 320
echo "demo outputs are in $out/"
