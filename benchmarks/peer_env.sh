#!/usr/bin/env bash
# The peer's own virtual environment (.venv-peer): airbench94_muon imports torchvision, and PyPI's
# torchvision does not import beside the CPU build of torch that the project installs.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-peer
.venv-peer/bin/python -m pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 numpy pillow
.venv-peer/bin/python -c "import torch, torchvision; print('peer env: torch', torch.__version__, 'torchvision', torchvision.__version__)"
