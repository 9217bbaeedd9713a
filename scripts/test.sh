#!/usr/bin/env bash
# Sets up and runs the whole test suite (CPU only, offline: every model is built on the spot).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q -rs "$@"
