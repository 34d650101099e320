#!/usr/bin/env bash
# Configure and build on a GPU machine that lacks PCRE2/utf8proc development files: uses .deps/ made by
# scripts/device-deps.sh when present. Usage: scripts/gpu-build.sh [BUILD_DIR]   (default build-gpu)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
build="${1:-build-gpu}"
extra=()
[ -d .deps/usr ] && extra+=("-DCMAKE_PREFIX_PATH=$root/.deps/usr" "-DCMAKE_INCLUDE_PATH=$root/.deps/usr/include"
  "-DCMAKE_LIBRARY_PATH=$root/.deps/usr/lib/x86_64-linux-gnu")
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90a}" \
  -DRLCU_WERROR=OFF "${extra[@]}" >/dev/null
cmake --build "$build" -j "${JOBS:-$(nproc)}"
