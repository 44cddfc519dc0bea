#!/usr/bin/env bash
# Install trainer with its dev tools (and the qlora, galore, deepspeed and qat extras, whose features are
# tested on CPU) and run the whole test suite (slow multi-process tests too).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`. Tests run on 2 pytest-xdist
# workers; the multi-process tests (group "multiprocess") share one worker, one at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
bash scripts/install.sh dev,qlora,galore,deepspeed,serve,eval,qat  # QLoRA, GaLore, DeepSpeed ZeRO and QAT run on CPU
"$PYTHON" -m ruff check .
"$PYTHON" -m ruff format --check .
"$PYTHON" -m mypy
"$PYTHON" -m pytest -n 2 --dist loadgroup --durations=20 "$@"
