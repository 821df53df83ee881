#!/usr/bin/env bash
# The main job on the shipped default weights: text -> 3D assets (GLB/OBJ/PLY meshes, turntable GIF,
# a PNG grid of the six rig views) with the shipped TriFlow small + lrm-small models, on the CPU.
set -euo pipefail
bin=${1:-.venv/bin}
out=${2:-demo_out}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
"$bin/triflow3d" generate \
  "a red office chair with wheels" "a blue mug with a handle" "a green pine tree with a brown trunk" \
  --out "$out" --seed 0 --format glb,obj,ply,gif,png
echo
echo "demo outputs (one folder per prompt) are in $out/:"
ls -1 "$out"
