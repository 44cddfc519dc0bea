#!/usr/bin/env bash
# The GPU benchmark suite in one command (bench/gpu_suite.py: full fine-tuning under sdpa,
# flash_attention_2 and flex_attention, packed and unpacked; LoRA, QLoRA; Liger on/off; targets).
#
#   bash bench/gpu.sh [OUT_DIR] [gpu_suite.py options]          # one GPU: about 4-7 minutes on an H100
#   bash bench/gpu.sh --smoke OUT_DIR [gpu_suite.py options]    # the same cases on CPU, tiny (CI)
#   GPU_SUITE_SMOKE=1 bash bench/gpu.sh OUT_DIR                 # the same as --smoke
#
# OUT_DIR (default bench-gpu-<date>-<time>) gets gpu-suite.json, gpu-suite.md, gpu-suite-logs.txt and
# gpu-suite-console.log. Offline: HF_HUB_OFFLINE=1 (the model and data are built locally).
# PYTHON picks the interpreter (default: python).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mode=()
if [[ "${1:-}" == "--smoke" ]]; then
    mode=(--smoke)
    shift
elif [[ "${GPU_SUITE_SMOKE:-0}" == "1" ]]; then
    mode=(--smoke)
fi
out="bench-gpu-$(date +%Y-%m-%d-%H%M%S)"
if [[ $# -gt 0 && "$1" != -* ]]; then
    out="$1"
    shift
fi
mkdir -p "$out"

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    if command -v nvidia-smi >/dev/null 2>&1; then
        echo "device: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n 1)"
    else
        echo "device: no nvidia-smi (CPU)"
    fi
    echo "output: $out${mode[*]:+ (smoke)}"
    "${PYTHON:-python}" "$here/gpu_suite.py" ${mode[@]+"${mode[@]}"} --out "$out" "$@"
} 2>&1 | tee "$out/gpu-suite-console.log"
