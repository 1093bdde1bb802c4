#!/usr/bin/env bash
# One command: set up, export the pretrained EfficientNet-Lite0 and explain the bundled photos.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh export
exec .venv/bin/onnx-explain demo --out "${1:-demo-output}"
