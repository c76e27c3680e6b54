#!/usr/bin/env bash
# One short check on a CUDA machine: training throughput and peak GPU memory of the BN CNN and VGG16 configs
# (fp32, bf16-mixed, DDP when 2 GPUs are visible) and frozen BatchNorm statistics under DDP + sync_batchnorm +
# FreezeBackbone. Without CUDA it runs a dry mode on CPU and says so. Options: see benchmarks/gpu_check.py --help.
#   bash benchmarks/gpu_check.sh [--steps 50] [--warmup 10]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
exec "$PYTHON" benchmarks/gpu_check.py "$@"
