#!/usr/bin/env bash
# Here, before a GPU call (issue 18): gather into .gpu/ (ignored by git) what the GPU machine lacks and
# cannot fetch: the JPEG pack (53 MiB), the peer's files as shipped in ../shared/peers, and the wheels
# of the pure-Python or cp312 packages its image does not hold (Keras and two of its needs).
# Then: device run with carry [".gpu"] and the command `bash benchmarks/gpu_side_by_side.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu/peers .gpu/whl
cp ../shared/data/cifar10-jpeg-pack.npz .gpu/
cp ../shared/peers/{airbench94_muon.py,make_airbench_data.py,cpu_port.py,LICENSE-airbench} .gpu/peers/
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .gpu/whl keras==3.15.1 namex==0.1.0 optree==0.20.0
du -sh .gpu
