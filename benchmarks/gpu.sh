#!/usr/bin/env bash
# The GPU benchmark suite: one short run (about 3 minutes on an H200), every part under its own timeout.
#
#   OUT=/some/dir bash benchmarks/gpu.sh          # on the GPU machine (python3, PYTHONPATH=src)
#   GPU_BENCH_DEVICE=cpu GPU_BENCH_QUICK=1 PYTHON=.venv/bin/python bash benchmarks/gpu.sh   # CPU smoke run
#
# Parts, in priority order (a part is skipped when the total budget is spent):
#   train_paper    benchmarks/train.py --preset paper: TriFlow train step, fp32 and bf16, batch 32
#                  (halved on CUDA OOM down to 8), triplane 3 x 80 x 64 x 64, 768-d text
#   generate       benchmarks/generate.py --sampler-only: 25 Euler steps with CFG for 4 prompts, small and
#                  paper TriFlow, fp32 and bf16; density grid 128^3 / 256^3 through the decoder
#   encode         benchmarks/reconstruct.py --encode: instantmesh-nerf-large forward_planes, 6 x 320^2
#                  views, fp32 and bf16 autocast, batch 1 and 8
#   render         benchmarks/reconstruct.py --render: rays/s plain vs fast, C = 80, instant-nerf-large
#   train_small    benchmarks/train.py --preset small (for comparison with the CPU figures)
#   (the two parts above time the loader loop, as before the resident loop existed; issue 17's parts:)
#   flow_small     TriFlow small, resident loop + torch.compile, batch 1024 (halved on OOM), bf16 and fp32:
#                  samples/s, MFU, kernel share
#   flow_paper     TriFlow paper, resident loop + torch.compile, bf16, batch 64: MFU
#   recon          lrm-small `recon train` step, resident loop, dense render path, batch 64 and 256: objects/s
# All weights are random. JSON lines go to $OUT/gpu_bench.jsonl (and are echoed); each part's full
# stdout / stderr is in $OUT/logs/. Env: OUT (default ./out), PYTHON (python3), GPU_BENCH_DEVICE (cuda),
# GPU_BENCH_QUICK (1: tiny sizes), GPU_BENCH_BUDGET_S (total seconds for all parts, default 280),
# GPU_BENCH_PARTS (the parts to run, default all but issue 17's: "flow_small flow_paper recon" runs those).
set -u
cd "$(dirname "$0")/.."

OUT="${OUT:-./out}"
PY="${PYTHON:-python3}"
DEVICE="${GPU_BENCH_DEVICE:-cuda}"
QUICK="${GPU_BENCH_QUICK:-0}"
BUDGET="${GPU_BENCH_BUDGET_S:-280}"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT/logs"
JSONL="$OUT/gpu_bench.jsonl"
: > "$JSONL"

if [ "$QUICK" = 1 ]; then
  THREADS=1
  TRAIN_PAPER=(--preset tiny --batch 4 --min-batch 2 --warmup 1 --steps 2)
  GENERATE=(--presets tiny small --steps 3 --prompts 2 --repeats 1 --grid-res 32 48)
  ENCODE=(--encoder lrm-small --image-size 128 --batches 1 2 --warmup 1 --iters 2)
  RENDER=(--preset tiny --features 40 --size 16 --views 2 --chunk 256)
  TRAIN_SMALL=(--preset small --batch 4 --min-batch 2 --warmup 1 --steps 1)
  FLOW_SMALL=(--preset tiny --batch 8 --min-batch 4 --warmup 1 --steps 2 --modes bf16 --profile-steps 1)
  FLOW_PAPER=(--preset tiny --batch 4 --min-batch 2 --warmup 1 --steps 2 --modes bf16 --profile-steps 1)
  RECON=(--preset lrm-small --batches 2 --rays 64 --occ-points 64 --objects 2 --warmup 1 --steps 1 --profile-steps 1)
else
  THREADS=8
  TRAIN_PAPER=(--preset paper --batch 32 --min-batch 8 --warmup 3 --steps 10 --mode-timeout 75)
  GENERATE=(--presets small paper --steps 25 --cfg 4 --prompts 4 --repeats 3 --grid-res 128 256)
  ENCODE=(--encoder instantmesh-nerf-large --image-size 320 --batches 1 8 --warmup 3 --iters 10)
  RENDER=(--preset instant-nerf-large --features 80 --size 128 --views 8 --chunk 32768)
  TRAIN_SMALL=(--preset small --batch 32 --min-batch 8 --warmup 3 --steps 10 --mode-timeout 40)
  FLOW_SMALL=(--preset small --batch 1024 --min-batch 64 --warmup 5 --steps 20 --modes bf16 fp32 --mode-timeout 100)
  FLOW_PAPER=(--preset paper --batch 64 --min-batch 8 --warmup 4 --steps 8 --modes bf16 --mode-timeout 200)
  RECON=(--preset lrm-small --batches 64 256 --warmup 2 --steps 6)
fi
PARTS=" ${GPU_BENCH_PARTS:-train_paper generate encode render train_small} "

emit() {  # one JSON line -> the JSONL file and the console
  echo "$1" | tee -a "$JSONL"
}

START=$SECONDS
run() {  # run NAME TIMEOUT_S CMD...: JSON lines of CMD's stdout -> $JSONL; a line per part with rc / wall
  local name=$1 secs=$2 left rc t0
  shift 2
  [[ "$PARTS" == *" $name "* ]] || return 0
  left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt 20 ]; then
    emit "{\"bench\": \"part\", \"name\": \"$name\", \"error\": \"skipped: budget of ${BUDGET} s spent\"}"
    return
  fi
  [ "$secs" -gt "$left" ] && secs=$left
  echo "== $name (timeout ${secs} s): $*"
  t0=$SECONDS
  timeout -k 10 "$secs" "$@" >"$OUT/logs/$name.out" 2>"$OUT/logs/$name.err"
  rc=$?
  grep '^{' "$OUT/logs/$name.out" | tee -a "$JSONL"
  local err=""
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    err=", \"error\": \"timeout after ${secs} s\""
  elif [ $rc -ne 0 ]; then
    err=", \"error\": \"exit $rc\""
    tail -n 8 "$OUT/logs/$name.err"
  fi
  emit "{\"bench\": \"part\", \"name\": \"$name\", \"rc\": $rc, \"wall_s\": $((SECONDS - t0))$err}"
}

echo "== machine"
if command -v nvidia-smi >/dev/null; then nvidia-smi -L; else echo "nvidia-smi: not found"; fi
emit "$("$PY" - "$DEVICE" <<'EOF'
import json, os, platform, sys

import torch

dev = sys.argv[1]
info = {"bench": "env", "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(), "device": dev,
        "cpus": os.cpu_count()}
if dev.startswith("cuda") and torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info |= {"gpu": p.name, "gpu_mem_gib": round(p.total_memory / 2**30, 1), "capability": f"{p.major}.{p.minor}",
             "bf16_supported": torch.cuda.is_bf16_supported()}
print(json.dumps(info))
EOF
)"

run train_paper 150 "$PY" benchmarks/train.py --device "$DEVICE" --threads "$THREADS" "${TRAIN_PAPER[@]}" \
  --loop loader --compile off
run generate 120 "$PY" benchmarks/generate.py --sampler-only --device "$DEVICE" --threads "$THREADS" "${GENERATE[@]}"
run encode 90 "$PY" benchmarks/reconstruct.py --encode --device "$DEVICE" --threads "$THREADS" "${ENCODE[@]}"
run render 60 "$PY" benchmarks/reconstruct.py --render --device "$DEVICE" --threads "$THREADS" "${RENDER[@]}"
run train_small 60 "$PY" benchmarks/train.py --device "$DEVICE" --threads "$THREADS" "${TRAIN_SMALL[@]}" \
  --loop loader --compile off
run flow_small 220 "$PY" benchmarks/train.py --device "$DEVICE" --threads "$THREADS" "${FLOW_SMALL[@]}" \
  --loop resident
run flow_paper 220 "$PY" benchmarks/train.py --device "$DEVICE" --threads "$THREADS" "${FLOW_PAPER[@]}" \
  --loop resident
run recon 150 "$PY" benchmarks/recon_train.py --device "$DEVICE" --threads "$THREADS" "${RECON[@]}" \
  --paths dense --loop resident

echo "== done in $((SECONDS - START)) s; $(grep -c . "$JSONL") JSON lines in $JSONL"
