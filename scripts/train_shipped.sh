#!/usr/bin/env bash
# The exact commands that produced the shipped weights (src/triflow3d/weights/), in order.
# Runs for about 1.5-2 hours on a 2-core CPU; see the model cards for measured times and quality.
set -euo pipefail
bin=${BIN:-.venv/bin}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

# 0. data: procedural shapes (train/val/test splits) rendered on the Zero123++ rig + 8 random views, 128 px
bash scripts/prepare_shapes.sh data 3000 200 300 128

# 1. lrm-small: our reconstructor (images -> 3 x 8 x 32 x 32 triplanes), rays + 3D occupancy supervision
"$bin/triflow3d" recon train --data data/views/train --supervision data/views_random/train --out runs/lrm-small \
  --steps 3000 --batch 2 --rays 1024 --samples 32 --lr 1e-3 --warmup 200 --ckpt-every 250 --occ-weight 1.0 --threads 2
"$bin/triflow3d" recon export --run runs/lrm-small --export src/triflow3d/weights/lrm-small
"$bin/triflow3d" recon eval --data data/views/test --views-from data/views_random/test --encoder lrm-small \
  --size 128 --limit 40 --max-views 4 --json

# 2. latents: encode the train split with the shipped lrm-small, then statistics and spatial weights
"$bin/triflow3d" encode data/views/train --encoder lrm-small --out data/latents/train --batch 16
"$bin/triflow3d" latents stats data/latents/train
"$bin/triflow3d" latents weights data/latents/train --grid 32

# 3. TriFlow small on the latents (MiniLM text, class-balanced, bf16 autocast)
"$bin/triflow3d" train --preset small --data data/latents/train --out runs/triflow-small --steps 1500 \
  --lr 6e-4 --min-lr 6e-5 --warmup-steps 100 --ema-decay 0.995 --log-every 25 --ckpt-every 250 --sample-every 0

# 4. package the EMA weights with a reference to the shipped lrm-small
"$bin/python" - <<'PY'
from triflow3d.pipeline import TextTo3DPipeline
pipe = TextTo3DPipeline.from_pretrained("runs/triflow-small")
pipe.reconstructor_ref = "lrm-small"
pipe.save_pretrained("src/triflow3d/weights/triflow-small")
# store the network in fp16 (it is loaded into the fp32 model); normaliser and text centre stay fp32
from safetensors import safe_open
from safetensors.torch import load_file, save_file
path = "src/triflow3d/weights/triflow-small/model.safetensors"
with safe_open(path, "pt") as f:
    meta = f.metadata()
sd = load_file(path)
save_file({k: v.half() if k.startswith("model.") else v for k, v in sd.items()}, path, metadata=meta)
PY

# 5. measure it
"$bin/triflow3d" eval --model src/triflow3d/weights/triflow-small --prompts shapes:test --n-prompts 60 \
  --out out/eval-triflow-small --json
