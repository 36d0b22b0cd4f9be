#!/usr/bin/env bash
# The GPU suite: every accelerator figure of issue 16 in one unattended run (< 8 minutes on one H100/H200).
#
#   benchmarks/gpu_suite.sh OUTDIR                                   # CUDA, full sizes
#   benchmarks/gpu_suite.sh OUTDIR --device cpu                      # CPU fallback: tiny sizes, a smoke run
#   benchmarks/gpu_suite.sh OUTDIR --python .venv/bin/python --trl-python /path/to/trl-env/bin/python
#
# Runs, each under its own time limit, going on when one fails:
#   1. engine vs transformers generate, Qwen2.5-0.5B shape (24 layers), bf16, batch 1 / 16 / 64 (bench_engine.py)
#   2. training MFU, ~0.5B dense (Qwen2.5-0.5B shape) and a ~0.5B DeepSeek-V3-style MoE, bf16 (bench_train.py)
#   3. log-probs + backward memory at vocabulary 151,936, full logits vs the chunked head (bench_logprob_memory.py)
#   4. GRPO step r1kit vs TRL GRPOTrainer, when a python with trl is given or importable (bench_grpo_trl.py)
#   5. the r1kit GRPO step again with the rollouts' decode compiled from the first step (--engine-compile on:
#      CUDA graphs on a GPU; last, so a failed capture costs no other figure)
# Writes OUTDIR/<name>.txt (each benchmark's output), OUTDIR/summary.md (the tables, with the device named)
# and OUTDIR/results.json (status and seconds of each part).
set -u

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
OUT=$1
shift
DEVICE=cuda
PY=${PYTHON:-python}
TRL_PY=""
while [ $# -gt 0 ]; do
  case $1 in
    --device) DEVICE=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    --trl-python) TRL_PY=$2; shift 2 ;;
    -h|--help) usage ;;
    *) echo "unknown option $1 (valid: --device, --python, --trl-python)" >&2; exit 2 ;;
  esac
done

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT" || exit 1

if [ "$DEVICE" = cpu ]; then
  # smoke sizes: checks every part runs, in a few minutes on 2 cores
  ENGINE_ARGS=(--layers 1 --dtype float32 --modes eager --threads 2 --new 8 --repeats 1)
  BATCHES=(1 4)
  TRAIN_ARGS=(--steps 1 --warmup 0 --batch 2 --seq 64)
  MEM_ARGS=(--layers 1 --vocab 8192 --batch 2 --length 64 --prompt-len 8 --chunk 32 --threads 2)
  GRPO_ARGS=(--steps 2 --warmup 1 --rounds 1 --threads 2)
  LIMIT=600
else
  # bf16 weights: the bf16-head mode would be eager again, so eager and compiled only
  ENGINE_ARGS=(--layers 24 --dtype bfloat16 --modes eager compiled --new 128 --repeats 2)
  BATCHES=(1 16 64)
  TRAIN_ARGS=(--size 0.5b --batch 8 --seq 1024 --steps 4 --warmup 2 --precision auto)
  MEM_ARGS=(--layers 24 --batch 8 --length 512)
  GRPO_ARGS=(--steps 6 --warmup 2 --rounds 2)
  LIMIT=150
fi

declare -a NAMES STATUS SECONDS_

run_part() {  # name, limit (s), command...
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*" >&2
  local t0=$SECONDS rc
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>"$OUT/$name.err"
  rc=$?
  NAMES+=("$name")
  SECONDS_+=($((SECONDS - t0)))
  if [ $rc -eq 0 ]; then STATUS+=("ok"); elif [ $rc -eq 124 ]; then STATUS+=("timeout"); else STATUS+=("failed rc=$rc"); fi
  echo "   ${STATUS[-1]} in $((SECONDS - t0)) s" >&2
}

{
  echo "# GPU suite ($DEVICE)"
  echo
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  if [ "$DEVICE" != cpu ] && command -v nvidia-smi >/dev/null; then
    echo "device: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
  fi
  echo "cpu: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1);" \
    "flags: $(grep -o -w -E 'avx512f|avx512_bf16|amx_bf16|amx_tile|avx2' /proc/cpuinfo 2>/dev/null | sort -u | tr '\n' ' ')"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1
} >"$OUT/env.txt"

for b in "${BATCHES[@]}"; do
  run_part "engine_b$b" "$LIMIT" "$PY" benchmarks/bench_engine.py --device "$DEVICE" --only e --batch "$b" "${ENGINE_ARGS[@]}"
done
run_part train "$LIMIT" "$PY" benchmarks/bench_train.py --device "$DEVICE" "${TRAIN_ARGS[@]}"
run_part logprob_memory "$LIMIT" "$PY" benchmarks/bench_logprob_memory.py --device "$DEVICE" "${MEM_ARGS[@]}" \
  --json "$OUT/logprob_memory.json"
if [ -z "$TRL_PY" ] && "$PY" -c "import trl" 2>/dev/null; then TRL_PY=$PY; fi
if [ -n "$TRL_PY" ]; then
  run_part grpo_trl "$((LIMIT * 2))" "$PY" benchmarks/bench_grpo_trl.py --device "$DEVICE" --trl-python "$TRL_PY" \
    --workdir "$OUT/grpo_trl_work" "${GRPO_ARGS[@]}"
else
  run_part grpo_r1kit_only "$LIMIT" "$PY" benchmarks/bench_grpo_trl.py --device "$DEVICE" --skip-trl \
    --workdir "$OUT/grpo_trl_work" "${GRPO_ARGS[@]}"
fi
run_part grpo_r1kit_compiled_decode "$LIMIT" "$PY" benchmarks/bench_grpo_trl.py --device "$DEVICE" --skip-trl \
  --engine-compile on --workdir "$OUT/grpo_compiled_work" "${GRPO_ARGS[@]}"

{
  cat "$OUT/env.txt"
  echo
  for i in "${!NAMES[@]}"; do
    echo "## ${NAMES[$i]} (${STATUS[$i]}, ${SECONDS_[$i]} s)"
    echo
    grep -E '^\||^(sampling|speed-up|step FLOP|target|max \||per-token|GRPO step|batch|Device|Peak|r1kit time|r1kit first)' "$OUT/${NAMES[$i]}.txt" || true
    if [ "${STATUS[$i]}" != ok ]; then echo; echo '```'; tail -n 15 "$OUT/${NAMES[$i]}.err"; echo '```'; fi
    echo
  done
  [ -n "$TRL_PY" ] || echo "TRL not installed: the GRPO row is r1kit only (pass --trl-python)."
} >"$OUT/summary.md"

{
  echo "{\"device\": \"$DEVICE\", \"parts\": ["
  for i in "${!NAMES[@]}"; do
    sep=","; [ "$i" -eq $((${#NAMES[@]} - 1)) ] && sep=""
    echo "  {\"name\": \"${NAMES[$i]}\", \"status\": \"${STATUS[$i]}\", \"seconds\": ${SECONDS_[$i]}}$sep"
  done
  echo "]}"
} >"$OUT/results.json"

echo "wrote $OUT/summary.md and $OUT/results.json" >&2
for s in "${STATUS[@]}"; do [ "$s" = ok ] || exit 1; done
