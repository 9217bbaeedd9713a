#!/usr/bin/env bash
# Builds libseer, seer-generate and seer-conformance into cpp/build (CMake, C++17). Needs g++, cmake,
# pkg-config and Debian's libicu-dev, libssl-dev and libpng-dev (installed when missing and run as root);
# fetches ONNX Runtime's headers (fetch_deps.sh); the library loaded by default is the onnxruntime
# wheel's in .venv (bash scripts/setup.sh makes it).
set -euo pipefail
cd "$(dirname "$0")"
missing=()
for pkg in libicu-dev libssl-dev libpng-dev pkg-config cmake g++; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null
  else
    echo "error: libseer needs the Debian packages ${missing[*]}; install them (sudo apt-get install ${missing[*]})" >&2
    exit 2
  fi
fi
bash fetch_deps.sh
python=../.venv/bin/python
ort_lib=""
if [ -x "$python" ]; then
  ort_lib=$("$python" -c "import glob, os, onnxruntime; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi', 'libonnxruntime.so*')))[-1])")
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DSEER_ONNXRUNTIME_LIB="$ort_lib" >/dev/null
cmake --build build -j "$(nproc)" 2>&1 | grep -v "^\[" || true
test -x build/seer-generate && test -x build/seer-conformance
