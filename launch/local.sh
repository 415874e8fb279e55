#!/usr/bin/env bash
# Runs one experiment on this machine (all local CPUs / GPUs / TPU cores).
#   launch/local.sh configs/quickstart.py runs/quickstart [--config.x=y ...]
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${1:?usage: launch/local.sh CONFIG WORKDIR [overrides...]}"
WORKDIR="${2:?usage: launch/local.sh CONFIG WORKDIR [overrides...]}"
shift 2
exec .venv/bin/python -m ptft_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
