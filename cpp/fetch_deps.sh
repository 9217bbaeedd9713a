#!/usr/bin/env bash
# Fetches the headers libseer builds against into cpp/deps/ (git-ignored), from Debian's archive:
# ONNX Runtime's C/C++ API headers (trixie's libonnxruntime-dev; no PyPI package ships them) and
# nlohmann-json (bookworm). Nothing is installed: the packages are downloaded and unpacked with
# dpkg -x. The ONNX Runtime library itself comes from the onnxruntime wheel in .venv, loaded at run
# time. Idempotent: does nothing when the headers are already there.
set -euo pipefail
cd "$(dirname "$0")"
deps="$PWD/deps"
if [ -f "$deps/.complete" ]; then exit 0; fi
rm -rf "$deps.partial" && mkdir -p "$deps.partial"
apt_dir="$deps.partial/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/etc"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
cat > "$apt_dir/etc/sources.list" <<SOURCES
deb [signed-by=$keyring] http://deb.debian.org/debian trixie main
deb [signed-by=$keyring] http://deb.debian.org/debian bookworm main
SOURCES
opts=(-o "Dir::Etc::SourceList=$apt_dir/etc/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State=$apt_dir" -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::State::status=/dev/null"
      -o "Dir::Cache=$apt_dir/cache" -o Debug::NoLocking=1 -o APT::Sandbox::User=root -q)
apt-get "${opts[@]}" update >/dev/null
# ONNX Runtime's C API only appends: 1.21 headers run against the newer library of the pinned wheel.
(cd "$deps.partial" && apt-get "${opts[@]}" download "libonnxruntime-dev/trixie" "nlohmann-json3-dev/bookworm" >/dev/null)
for deb in "$deps.partial"/*.deb; do dpkg -x "$deb" "$deps.partial/root"; done
mkdir -p "$deps.partial/include"
cp -r "$deps.partial/root/usr/include/onnxruntime" "$deps.partial/include/onnxruntime"
cp -r "$deps.partial/root/usr/include/nlohmann" "$deps.partial/include/nlohmann"
test -f "$deps.partial/include/onnxruntime/onnxruntime_cxx_api.h"
test -f "$deps.partial/include/nlohmann/json.hpp"
rm -rf "$deps.partial/root" "$apt_dir" "$deps.partial"/*.deb
touch "$deps.partial/.complete"
rm -rf "$deps" && mv "$deps.partial" "$deps"
