#!/usr/bin/env bash
# GPU check of the model zoo: llama-1b one-token decode at batch 1 and prefill at batch 8, bf16, compiled.
# Usage: benchmarks/zoo_gpu_check.sh [OUT]   (PYTHON, DECODE_MODES, PREFILL_MODES override the defaults)
set -euo pipefail
OUT=${1:-results/zoo-gpu}
PY=${PYTHON:-python3}
"$PY" -m torchao_nb run --model llama-1b --device cuda --dtype bfloat16 --batch-sizes 1 --quiet \
  --modes "${DECODE_MODES:-noquant,int8weightonly,int4weightonly,float8weightonly}" --out "$OUT/decode"
"$PY" -m torchao_nb run --model llama-1b:prefill --device cuda --dtype bfloat16 --batch-sizes 8 --quiet \
  --modes "${PREFILL_MODES:-noquant,int8dynamic,float8dynamic}" --out "$OUT/prefill"
