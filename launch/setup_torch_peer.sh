#!/usr/bin/env bash
# Creates ./.venv-torch (git-ignored) with CPU PyTorch + transformers, peft, torchvision and
# timm: the optional peer of `python -m ptft_jax.bench --peer` and the environment of the
# tools/ fixture and check scripts (HF decoders, exports, vision weights).
# torch never enters requirements.txt; ptft_jax itself never imports it.
#
#   bash launch/setup_torch_peer.sh
#   .venv/bin/python -m ptft_jax.bench --peer            # finds .venv-torch/bin/python
#   .venv-torch/bin/python tools/bench_torch_peer.py     # the peer alone
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv-torch/bin/python ]; then
  "$PYTHON" -m venv .venv-torch
fi
# Set TORCH_INDEX_URL to a CPU-only wheel index to skip the CUDA libraries.
.venv-torch/bin/python -m pip install -q --disable-pip-version-check \
  ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.13.0 torchvision==0.28.0
# The versions the committed fixtures were made with (tests/fixtures/*/ name them).
.venv-torch/bin/python -m pip install -q --disable-pip-version-check transformers==5.24.0 \
  peft==0.21.2 timm==1.0.31 numpy safetensors
echo "PyTorch peer environment: $(pwd)/.venv-torch/bin/python"
