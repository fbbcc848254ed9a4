#!/usr/bin/env bash
# Configures and builds pcluster into ./build against Debian's /usr/bin/python3.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f build/build.ninja ]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE=/usr/bin/python3
fi
cmake --build build -j "$(nproc)"
