#!/usr/bin/env bash
# One machine with one CUDA GPU, ≤ 8 minutes, one JSON file: selfcheck on CUDA (bf16 clipping included),
# pytest -m gpu, the ddpm32 profile of every method at the largest batch that fits, 20 steps of a cifar10
# cell. Parts and options: benchmarks/gpu_check.py (--help). On CPU: --device cpu --dry-run.
#   bash benchmarks/gpu_check.sh --out gpu-check.json
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec python benchmarks/gpu_check.py "$@"
