#!/usr/bin/env bash
# Sets up, exports the embedded flux-tiny model (once) and serves it on http://127.0.0.1:8000 with
# seer-serve (Ray Serve, two replicas); extra arguments go to seer-serve. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# export again unless out/flux-tiny is a complete directory this seer reads
if ! .venv/bin/python -c "from seer.engines.manifest import open_engine_dir; open_engine_dir('out/flux-tiny')" 2>/dev/null; then
  .venv/bin/seer-export flux-tiny --out out/flux-tiny --overwrite
fi
exec .venv/bin/seer-serve out/flux-tiny --replicas 2 "$@"
