#!/usr/bin/env bash
# Reconstructor quality on the real glTF/OBJ assets in assets/real (see assets/real/README.md):
# render them with the Zero123++ rig (reconstructor input) and 8 random views (novel-view targets),
# then print `triflow3d recon eval` as one JSON line with per-object PSNR / silhouette IoU.
# Usage: scripts/eval_real_assets.sh [ENCODER] [OUT]
#   ENCODER  NAME or NAME:CHECKPOINT, as `triflow3d recon eval --encoder` takes it (default lrm-small)
#   OUT      scratch folder for the renders (default /tmp/triflow3d_real_eval); re-runs reuse them
# Environment: BIN (default .venv/bin), SIZE (default 128), ASSETS (default assets/real).
set -euo pipefail
encoder=${1:-lrm-small}; out=${2:-/tmp/triflow3d_real_eval}
bin=${BIN:-.venv/bin}; size=${SIZE:-128}; assets=${ASSETS:-assets/real}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
"$bin/triflow3d" render "$assets" --out "$out/zero123pp" --rig zero123pp --size "$size" >&2
"$bin/triflow3d" render "$assets" --out "$out/random8" --rig random:8 --size "$size" --seed 1 >&2
"$bin/triflow3d" recon eval --data "$out/zero123pp" --views-from "$out/random8" \
  --encoder "$encoder" --size "$size" --per-object --json
