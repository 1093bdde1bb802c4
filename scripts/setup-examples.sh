#!/usr/bin/env bash
# The JavaScript examples' packages (examples/web: onnxruntime-web, playwright-core;
# examples/node: onnxruntime-node, pngjs, jpeg-js) from package-lock.json, and Debian's
# Chromium for the browser test (never a browser download by an npm package).
# Without node/npm this says so and does nothing: the tests that need them then skip.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "skipping the JavaScript examples' setup: node/npm not found (their tests will be skipped)"
  exit 0
fi
for dir in examples/web examples/node; do
  # --ignore-scripts: onnxruntime-node's CPU binaries are in its package; its install script
  # would only look for CUDA binaries to download.
  (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
done
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
  else
    echo "Chromium not found and not installable here (apt-get as root): the browser test will be skipped"
  fi
fi
