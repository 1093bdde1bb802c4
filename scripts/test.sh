#!/usr/bin/env bash
# One command: set up and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
exec .venv/bin/pytest -n 2 -q "$@"
