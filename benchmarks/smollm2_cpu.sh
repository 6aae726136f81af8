#!/usr/bin/env bash
# SmolLM2-135M on the CPU: the 4-mode sweep (perplexity, agreement, texts, generation speed, save/reload) must exit 0
# in under 10 minutes with a cold inductor cache; then its report. Usage: benchmarks/smollm2_cpu.sh [OUT]
# (PYTHON overrides the interpreter). Prints the load average before and after: other processes skew the timings.
set -euo pipefail
OUT=${1:-results/smollm2-cpu}
PY=${PYTHON:-python3}
CACHE=$(mktemp -d)  # a cold inductor cache: every mode compiles from scratch
trap 'rm -rf "$CACHE"' EXIT
echo "before: $(uptime)"
start=$(date +%s)
TORCHINDUCTOR_CACHE_DIR="$CACHE" "$PY" -m torchao_nb run --model smollm2-135m \
  --modes noquant,int8weightonly,int8dynamic,int4weightonly --device cpu --quiet --out "$OUT"
wall=$(( $(date +%s) - start ))
echo "after: $(uptime)"
echo "wall ${wall} s (target < 600 s)"
"$PY" -m torchao_nb report "$OUT" --out "$OUT/report.html"
[ "$wall" -lt 600 ]
