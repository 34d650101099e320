#!/usr/bin/env bash
# The single test entry point: install build dependencies, configure, build, run ctest. Exit code is ctest's.
# With a CUDA toolkit (nvcc) the CUDA backend and its tests are built too: on a machine with a GPU they run, elsewhere
# they are reported as skipped. Without one, the CPU-only rlcu and its tests are built (RLCU_CUDA=OFF).
#   BUILD_DIR        build directory (default: build)
#   CUDA_ARCH        CUDA architectures (default: 90a)
#   JOBS             parallel build jobs (default: number of cores)
#   SKIP_DEPS=1      do not run scripts/setup-deps.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

[ "${SKIP_DEPS:-0}" = 1 ] || bash scripts/setup-deps.sh
if ! command -v nvcc >/dev/null 2>&1; then
  for d in "${CUDA_HOME:-}" /usr/local/cuda; do
    if [ -n "$d" ] && [ -x "$d/bin/nvcc" ]; then export PATH="$d/bin:$PATH"; break; fi
  done
fi
cuda_flag=-DRLCU_CUDA=ON
command -v nvcc >/dev/null 2>&1 || cuda_flag=-DRLCU_CUDA=OFF
launcher=()
command -v ccache >/dev/null 2>&1 && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)

build="${BUILD_DIR:-build}"
jobs="${JOBS:-$(nproc)}"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90a}" \
  "$cuda_flag" "${launcher[@]}" ${CMAKE_EXTRA_ARGS:-}
cmake --build "$build" -j "$jobs"
cd "$build"
set +e
ctest --output-on-failure -j "$jobs" --timeout 900 2>&1 | tee ctest.log
rc=${PIPESTATUS[0]}
set -e
echo
echo "== ctest summary =="
grep -E "tests passed|tests failed|Total Test time" ctest.log || true
skipped=$(grep -c "\*\*\*Skipped\|Not Run\|SKIPPED" ctest.log || true)
[ "$skipped" != 0 ] && echo "($skipped skipped: see ctest.log; GPU tests skip on machines without a CUDA device)"
exit "$rc"
