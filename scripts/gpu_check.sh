#!/usr/bin/env bash
# GPU check (target: 8 minutes of device time, cold, in one call): llama-8b-shapes (Llama-3.1-8B's layer shapes,
# as many layers as the plan fits) in bf16 — batch-1 decode and a serving-batch decode (128 rows per matmul), each
# with every mode and float8 dynamic's per-tensor scales, CUDA graphs — in one process; a summary beside torchao's
# published ratios, an HTML report, the compile costs it measured (RESULTS/compile-costs.json: copy it to
# docs/gpu/compile-costs.json for the next plan) and each step's compile cache for the next lend.
#
#   scripts/gpu_check.sh RESULTS [--wheels DIR] [--diagnose] [--pack DIR] [--dry-run] [--tuning T] [--layers N]
#                                [--compile-cache EARLIER_RESULTS] [--costs FILE]
#
# --wheels DIR  install the wheels in DIR (e.g. torchao) into a private folder first
# --diagnose    a profiler table of each cell's top GPU kernels, and its compiler counters, in the summary
# --pack DIR    also write summary.txt and gpu_check.tar.gz (everything but the caches folder) into DIR
# --dry-run     print the GPU plan (cells, compiles, the layers and tuning that fit, estimated time), then the same
#               pipeline on the CPU
# --tuning T, --layers N   force batch-1 decode's tuning (torchao | fast | off) or the layer count
# --compile-cache EARLIER_RESULTS   an earlier lend's RESULTS (unpacked): each step loads its compile-cache.bin
# Inductor's and Triton's caches stay in RESULTS/cache (left out of the pack). Each sweep has a deadline;
# rows are saved as they finish, so a deadline keeps what was done.
set -uo pipefail
cd "$(dirname "$0")/.."

RESULTS="" WHEELS="" ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    --pack) ARGS+=(--pack "$2"); shift 2 ;;
    --dry-run|--diagnose) ARGS+=("$1"); shift ;;
    --tuning|--layers|--compile-cache|--costs) ARGS+=("$1" "$2"); shift 2 ;;
    -*) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
    *) RESULTS="$1"; shift ;;
  esac
done
[ -n "$RESULTS" ] || { echo "usage: scripts/gpu_check.sh RESULTS [--wheels DIR] [--diagnose] [--pack DIR] [--dry-run] [--tuning T] [--layers N] [--compile-cache EARLIER_RESULTS] [--costs FILE]" >&2; exit 2; }
mkdir -p "$RESULTS/cache"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCHINDUCTOR_CACHE_DIR="$PWD/$RESULTS/cache/inductor" TRITON_CACHE_DIR="$PWD/$RESULTS/cache/triton"
case "$RESULTS" in /*) export TORCHINDUCTOR_CACHE_DIR="$RESULTS/cache/inductor" TRITON_CACHE_DIR="$RESULTS/cache/triton" ;; esac

if [ -n "$WHEELS" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site "$WHEELS"/*.whl \
    || { echo "gpu_check: could not install the wheels in $WHEELS" >&2; exit 1; }
  export PYTHONPATH="/tmp/gpu_check_site:$PYTHONPATH"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
  | tee "$RESULTS/gpu.txt"
"$PY" scripts/gpu_check.py "$RESULTS" "${ARGS[@]}" 2> >(tee "$RESULTS/gpu_check.log" >&2)
