#!/usr/bin/env bash
# lrm-small on a GPU: CUDA parity of the shipped models, then continued training of the shipped lrm-small
# on the same procedural data (rebuilt there), and its held-out quality. One short run (about 9 minutes on
# an H200), every part under its own timeout. Ran once (2026-11-26): every part up to the probe worked; the
# main run's loading crashed (3D labels were threaded then; now processes). See docs/benchmarks.md.
#
#   OUT=/some/dir bash benchmarks/gpu_recon.sh        # on the GPU machine (python3, .whl carried, ref/)
#   GPU_RECON_DEVICE=cpu GPU_RECON_QUICK=1 PYTHON=.venv/bin/python bash benchmarks/gpu_recon.sh   # smoke run
#
# Parts, in order:
#   deps      the wheels in .whl/ (trimesh, manifold3d, embreex, pymcubes) -> /tmp/site, when carried
#   data      in the background: `shapes make` + `render` (zero123pp rig and random:8, 128 px) of the train
#             split (N_TRAIN objects), one process per core: the same shapes and cameras as
#             scripts/prepare_shapes.sh makes (seeded by split/index), drawn by the CPU ray caster (the
#             CPU data came from EGL: mean colour difference under 1/255, same masks). The test views
#             (first 40 objects) are carried in .gpu_data/ when present, else rendered the same way
#   parity    benchmarks/cuda_parity.py --check ref/cuda_parity.safetensors (made here by --save)
#   eval0     recon eval of the shipped lrm-small on the rebuilt test views (must equal the CPU figure:
#             the data are the same)
#   probe     20 training steps on 64 objects, to size the run to its time
#   train     recon train --device cuda --init lrm-small (the shipped v2) for the steps that fit
#   eval      recon eval of the result; its weights are copied to $OUT/lrm-small-gpu/
# $OUT: results.jsonl (every JSON result), lrm-small-gpu/ (weights + card), logs.tar.gz (logs, log.jsonl).
# Env: OUT (./out), PYTHON (python3), GPU_RECON_DEVICE (cuda), GPU_RECON_QUICK (1: tiny sizes),
# GPU_RECON_TRAIN_S (seconds for the main training run, default 300, cut to fit GPU_RECON_DEADLINE_S, 540),
# GPU_RECON_BATCH (16).
set -u
cd "$(dirname "$0")/.."

OUT="${OUT:-./out}"
PY="${PYTHON:-python3}"
DEVICE="${GPU_RECON_DEVICE:-cuda}"
QUICK="${GPU_RECON_QUICK:-0}"
TRAIN_S="${GPU_RECON_TRAIN_S:-300}"
BATCH="${GPU_RECON_BATCH:-16}"
DEADLINE_S="${GPU_RECON_DEADLINE_S:-540}"  # the whole script should end by then
WORK="${GPU_RECON_WORK:-/tmp/gpu_recon}"
NPROC=$(nproc)
if [ "$QUICK" = 1 ]; then
  N_TRAIN=16; N_TEST=4; TRAIN_S=20; BATCH=2; RAYS=256; OCC=512; PROBE=2
else
  N_TRAIN=3000; N_TEST=40; RAYS=2048; OCC=4096; PROBE=20
fi
mkdir -p "$OUT/logs" "$WORK"
RESULTS="$OUT/results.jsonl"  # every JSON result line; logs and the run's log.jsonl go to $OUT/logs.tar.gz
: >"$RESULTS"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
START=$SECONDS
stamp() { echo "== $1 at $((SECONDS - START)) s"; }

stamp deps
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
CLI=("$PY" -m triflow3d)

# --- data, in the background ------------------------------------------------------------------------
make_split() {  # make_split SPLIT N: shapes + both rigs, NPROC shards each, then one manifest per folder
  local split=$1 n=$2 r
  for r in $(seq 0 $((NPROC - 1))); do
    "${CLI[@]}" shapes make --n "$n" --split "$split" --out "$WORK/shapes/$split" --rank "$r" --world-size "$NPROC" &
  done
  wait
  for r in $(seq 0 $((NPROC - 1))); do
    "${CLI[@]}" render "$WORK/shapes/$split" --out "$WORK/views/$split" --rig zero123pp --size 128 \
      --backend raycast --rank "$r" --world-size "$NPROC" &
    "${CLI[@]}" render "$WORK/shapes/$split" --out "$WORK/views_random/$split" --rig random:8 --size 128 \
      --seed 1 --backend raycast --rank "$r" --world-size "$NPROC" &
  done
  wait
  "${CLI[@]}" render --merge --out "$WORK/views/$split"
  "${CLI[@]}" render --merge --out "$WORK/views_random/$split"
}
if [ -d .gpu_data/views/test ]; then  # the exact test views the CPU figures were measured on, carried
  mkdir -p "$WORK/views" "$WORK/views_random"
  cp -r .gpu_data/views/test "$WORK/views/test" && cp -r .gpu_data/views_random/test "$WORK/views_random/test"
  MAKE_TEST=true
else
  MAKE_TEST="make_split test $N_TEST"
fi
( $MAKE_TEST && make_split train "$N_TRAIN" ) >"$OUT/logs/data.out" 2>"$OUT/logs/data.err" &
DATA_PID=$!

# --- parity (GPU) while the CPUs render ---------------------------------------------------------------
stamp parity
if [ -f ref/cuda_parity.safetensors ]; then
  timeout -k 5 120 "$PY" benchmarks/cuda_parity.py --check ref/cuda_parity.safetensors --device "$DEVICE" \
    2>"$OUT/logs/parity.err" | tee -a "$RESULTS"
else
  echo "ref/cuda_parity.safetensors not carried: parity skipped"
fi

stamp "waiting for data"
wait "$DATA_PID" || { echo "data failed"; tail -n 20 "$OUT/logs/data.err"; exit 1; }
stamp "data ready: $(ls "$WORK/views/train" | grep -c -- '-0') train objects"

EVAL=(recon eval --data "$WORK/views/test" --views-from "$WORK/views_random/test" --size 128 --limit "$N_TEST"
      --max-views 4 --json --device "$DEVICE")
stamp eval0
"${CLI[@]}" "${EVAL[@]}" --encoder lrm-small 2>>"$OUT/logs/eval.err" | tee -a "$RESULTS"

stamp "cuda tests"
timeout -k 5 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_recon.py -k "cuda or resume" 2>&1 | tail -n 3

TRAIN=(recon train --data "$WORK/views/train" --supervision "$WORK/views_random/train" --device "$DEVICE"
       --batch "$BATCH" --rays "$RAYS" --samples 32 --lr 3e-4 --warmup 50 --occ-weight 1.0 --occ-points "$OCC"
       --camera-noise 0 --init lrm-small --workers "$NPROC" --log-every 25 --no-fast-render)
# --no-fast-render: one dense decoder call per pass; the fast path is launch-bound on a GPU (docs/benchmarks.md)
stamp probe
"${CLI[@]}" "${TRAIN[@]}" --out "$WORK/probe" --steps "$PROBE" --limit 64 --ckpt-every 1000000 \
  >"$OUT/logs/probe.out" 2>"$OUT/logs/probe.err" || { tail -n 20 "$OUT/logs/probe.err"; exit 1; }
STEP_S=$("$PY" -c "import json,sys; print(json.loads(open(sys.argv[1]).read().split(chr(10))[-2])['wall_s'] / $PROBE)" \
  "$OUT/logs/probe.out")
LEFT=$((DEADLINE_S - (SECONDS - START) - 100))  # 100 s: loading the data, export and the last eval
[ "$TRAIN_S" -gt "$LEFT" ] && TRAIN_S=$LEFT
STEPS=$("$PY" -c "print(max(10, int($TRAIN_S / $STEP_S)))")
stamp "probe: $STEP_S s/step -> $STEPS steps"
echo "{\"probe_step_s\": $STEP_S, \"steps\": $STEPS, \"batch\": $BATCH}" >>"$RESULTS"

stamp train
timeout -k 10 $((TRAIN_S + 150)) "${CLI[@]}" "${TRAIN[@]}" --out "$WORK/run" --steps "$STEPS" --ckpt-every 500 \
  >"$OUT/logs/train.out" 2>"$OUT/logs/train.err"
echo "train rc $?"; tail -n 1 "$OUT/logs/train.out" | tee -a "$RESULTS"
cp "$WORK/run/log.jsonl" "$WORK/run/train_config.json" "$OUT/logs/" 2>/dev/null
"${CLI[@]}" recon export --run "$WORK/run" --export "$OUT/lrm-small-gpu" >/dev/null 2>>"$OUT/logs/eval.err"

stamp eval
"${CLI[@]}" "${EVAL[@]}" --encoder "lrm-small:$OUT/lrm-small-gpu" 2>>"$OUT/logs/eval.err" | tee -a "$RESULTS"
stamp done
tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$OUT/logs"
