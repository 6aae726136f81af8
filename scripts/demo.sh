#!/usr/bin/env bash
# Sets up .venv and runs the demo sweep: every mode on the default model, GPU if there is one.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m torchao_nb run --modes all --out "${1:-results/demo}"
