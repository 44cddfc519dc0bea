#!/usr/bin/env bash
# Install trainer into the current Python (3.10+). Usage: bash scripts/install.sh [extras, e.g. dev]
# torch 2.13.0 goes first: on a CPU machine pip takes the local CPU build instead of pulling the
# multi-GB CUDA stack that a bare `torch` requirement would bring.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install --quiet "torch==2.13.0"
if [ -n "${1:-}" ]; then
  "$PYTHON" -m pip install --quiet -e ".[$1]"
else
  "$PYTHON" -m pip install --quiet -e .
fi
