#!/usr/bin/env bash
# Creates the Python environment for training and export (~5 GB: torch pulls CUDA wheels even
# on CPU-only machines). Idempotent. Not part of the test command: CI never trains.
set -euo pipefail
VENV="${AIC_TRAIN_VENV:-$HOME/aic-train-venv}"
cd "$(dirname "$0")"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r requirements-train.txt
echo "training venv ready: $VENV"
