#!/usr/bin/env bash
# The main job, from a fresh clone: install, build the tiny Llama + toy task, fine-tune, and print
# held-out before/after numbers (the config's evals: exact match of greedy answers, eval loss and
# perplexity), then generate with the trained model.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# One torch thread: the tiny model gains little from a second one, and when anything else holds a
# core, two spinning OpenMP threads make each step 10-30x slower (measured here).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
bash scripts/install.sh
"$PYTHON" scripts/make_tiny_model.py --out models/tiny-llama
"$PYTHON" scripts/make_toy_data.py --out data/toy
"$PYTHON" -m trainer.cli.validate examples/quickstart.yml
time "$PYTHON" -m trainer.cli.train examples/quickstart.yml overwrite_output_dir=true
"$PYTHON" -m trainer.cli.generate runs/quickstart --prompt "Reverse the word: model
Answer: " --prompt "Reverse the word: python
Answer: " --max-new-tokens 16
