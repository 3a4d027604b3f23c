#!/usr/bin/env bash
# On the GPU machine (PyTorch + JAX, Python 3.12, no network): install the wheels that travelled in
# .gpu/ (benchmarks/gpu_prepare.sh), then run airbench94_muon and cifarlab's fast recipe side by side.
# Extra arguments go to benchmarks/gpu_side_by_side.py (e.g. --backends jax,torch --runs 5).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
export PYTHONPATH="/tmp/site:$PWD/src" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 benchmarks/gpu_side_by_side.py --pack .gpu/cifar10-jpeg-pack.npz --peers .gpu/peers --out "${OUT:-.}" "$@"
