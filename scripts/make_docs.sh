#!/usr/bin/env bash
# Regenerates docs/dashboard.png (shown in README.md) from a real sweep.
#   scripts/make_docs.sh               run the demo sweep (every mode, CPU) into results/docs-demo, then draw it
#   scripts/make_docs.sh RESULTS_DIR   draw an existing results folder instead
# THREADS (default 1): on a busy shared machine one thread is disturbed far less by other load than two.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
RESULTS=${1:-}
if [ -z "$RESULTS" ]; then
  RESULTS=results/docs-demo
  rm -rf "$RESULTS"
  "$PY" -m torchao_nb run --modes all --device cpu --threads "${THREADS:-1}" --out "$RESULTS" --quiet
fi
mkdir -p docs
"$PY" - "$RESULTS" docs/dashboard.png <<'PYEOF'
import sys

from torchao_nb import ResultSet, plots
from torchao_nb.results import atomic_write

atomic_write(sys.argv[2], plots.to_png(plots.dashboard(ResultSet.load(sys.argv[1])), dpi=80))
print(f"wrote {sys.argv[2]} from {sys.argv[1]}")
PYEOF
