#!/usr/bin/env bash
# GPU check (< 5 minutes on an H100): the llama-1b decoder in bf16, compiled, every mode —
# batch-1 decode (CUDA graphs) and batch-8 prefill — then the results table and an HTML report.
#
#   scripts/gpu_check.sh OUT_DIR [--wheels DIR] [--dry-run]
#
# --wheels DIR  install the wheels in DIR (e.g. torchao) into a private folder first
# --dry-run     the same pipeline on the CPU with llama-tiny, eager and few samples (for tests)
# Each sweep has a time limit; rows are saved as they finish, so a limit hit keeps what was done.
# GPU_CHECK_ARGS adds options to both sweeps, e.g. GPU_CHECK_ARGS=--torchao-tuning (coordinate
# descent tuning for every compiled cell: int8 weight-only's GEMV needs it; compiles take longer).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="" WHEELS="" DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -*) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
    *) OUT="$1"; shift ;;
  esac
done
[ -n "$OUT" ] || { echo "usage: scripts/gpu_check.sh OUT_DIR [--wheels DIR] [--dry-run]" >&2; exit 2; }
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ -n "$WHEELS" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site "$WHEELS"/*.whl \
    || { echo "gpu_check: could not install the wheels in $WHEELS" >&2; exit 1; }
  export PYTHONPATH="/tmp/gpu_check_site:$PYTHONPATH"
fi

# Most informative first: a sweep stopped by its time limit loses the last modes.
MODES=noquant,int4weightonly,int8weightonly,float8weightonly,float8dynamic,int8dynamic,autoquant
if [ "$DRY" = 1 ]; then
  DECODE=(--model llama-tiny --device cpu --no-compile --quick)
  PREFILL=(--model llama-tiny:prefill --device cpu --no-compile --quick --seq-len 16)
  LIMIT_DECODE=120 LIMIT_PREFILL=120
else
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
  DECODE=(--model llama-1b --device cuda --dtype bfloat16 --compile-mode reduce-overhead)
  PREFILL=(--model llama-1b:prefill --device cuda --dtype bfloat16 --seq-len 256)
  LIMIT_DECODE=${LIMIT_DECODE:-180} LIMIT_PREFILL=${LIMIT_PREFILL:-100}
fi

run() {  # name, limit, args...
  local name=$1 limit=$2; shift 2
  echo "== $name: $*"
  # shellcheck disable=SC2086  # GPU_CHECK_ARGS is a list of options
  timeout --signal=INT --kill-after=20 "$limit" "$PY" -m torchao_nb run "$@" ${GPU_CHECK_ARGS:-} --modes "$MODES" --quiet --out "$OUT/$name" \
    2>"$OUT/$name.log"
  local rc=$?
  [ $rc -eq 0 ] || echo "gpu_check: $name stopped with status $rc (time limit $limit s or error); rows it finished are kept; see $name.log"
}
run decode "$LIMIT_DECODE" "${DECODE[@]}" --batch-sizes 1
run prefill "$LIMIT_PREFILL" "${PREFILL[@]}" --batch-sizes 8

# Results folders that hold rows (a sweep stopped by its limit keeps rows.jsonl).
dirs=()
for d in "$OUT/decode" "$OUT/prefill"; do [ -s "$d/rows.jsonl" ] && dirs+=("$d"); done
[ ${#dirs[@]} -gt 0 ] || { echo "gpu_check: no rows were produced" >&2; exit 1; }
"$PY" - "${dirs[@]}" <<'PY' | tee "$OUT/summary.txt"
import sys
from torchao_nb import tables
from torchao_nb.results import ResultSet
for d in sys.argv[1:]:
    rs = ResultSet.load(d)
    print(f"\n## {d}")
    print(tables.text(rs))
PY
if "$PY" -c 'import torchao_nb.report' 2>/dev/null; then
  "$PY" -m torchao_nb report "${dirs[@]}" --out "$OUT/report.html" >/dev/null 2>"$OUT/report.log" \
    || echo "gpu_check: the HTML report failed; see report.log"
fi
echo "gpu_check: results in $OUT"
