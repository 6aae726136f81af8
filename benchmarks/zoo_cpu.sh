#!/usr/bin/env bash
# The model zoo's CPU figures: MiniLM's task cosine under int8 dynamic, and llama-small decode tokens/s (compiled).
# Usage: benchmarks/zoo_cpu.sh [OUT]   (PYTHON overrides the interpreter). Timings need a quiet machine.
set -euo pipefail
OUT=${1:-results/zoo-cpu}
PY=${PYTHON:-python3}
"$PY" -m torchao_nb run --model minilm --modes noquant,int8dynamic --device cpu --quiet --out "$OUT/minilm"
"$PY" -m torchao_nb run --model llama-small --modes noquant,int8dynamic --device cpu --quiet --out "$OUT/llama-small-decode"
