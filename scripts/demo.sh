#!/usr/bin/env bash
# Sets up, exports the embedded flux-tiny model and generates one image with TaylorSeer forecasting.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/seer-export flux-tiny --out out/flux-tiny --overwrite
.venv/bin/seer-run out/flux-tiny --prompt "${PROMPT:-a red circle at the top left}" --seed 0 --steps 50 \
  --interval 6 --order 1 --warmup 3 --out out/flux-tiny.png
