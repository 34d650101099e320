#!/usr/bin/env bash
# The sanitizer check: a clang build with AddressSanitizer + UndefinedBehaviorSanitizer on every library, the
# CLI and the tests (-DRLCU_FUZZ=ON, CPU backend), then the CPU test suite under the sanitizers and every libFuzzer
# target for FUZZ_SECONDS each from its committed seeds. Any sanitizer report, test failure or fuzz finding fails it.
#   BUILD_DIR     build directory (default: build-san)
#   JOBS          parallel build/test jobs (default: number of cores)
#   FUZZ_SECONDS  seconds per fuzz target (default: 30; 0 skips fuzzing)
#   SKIP_DEPS=1   do not install clang
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
build="${BUILD_DIR:-build-san}"
jobs="${JOBS:-$(nproc)}"
fuzz_seconds="${FUZZ_SECONDS:-30}"
if [ "${SKIP_DEPS:-0}" != 1 ] && ! command -v clang++ >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  echo "sanitize: installing clang"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends clang libclang-rt-14-dev 2>/dev/null ||
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends clang
fi
launcher=()
command -v ccache >/dev/null 2>&1 && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ -DRLCU_CUDA=OFF \
  -DRLCU_FUZZ=ON -DRLCU_BUILD_TESTS=ON -DRLCU_WERROR=OFF "${launcher[@]}" >/dev/null
cmake --build "$build" -j "$jobs"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
echo "== sanitizer tests =="
set +e
(cd "$build" && ctest --output-on-failure -j "$jobs" --timeout 900 2>&1 | tee ctest.log; exit "${PIPESTATUS[0]}")
rc=$?
set -e
grep -E "tests passed|tests failed|Total Test time" "$build/ctest.log" || true
[ "$rc" = 0 ] || { echo "sanitize: the tests failed under ASan/UBSan" >&2; exit "$rc"; }
if [ "$fuzz_seconds" != 0 ]; then
  echo "== fuzzing (${fuzz_seconds} s per target) =="
  for seeds in tests/fuzz/corpus/*/; do
    target=$(basename "$seeds")
    if BUILD_DIR="$build" bash scripts/fuzz.sh "$target" "$fuzz_seconds" > "$build/$target.log" 2>&1; then
      echo "$target: no finding ($(grep -oE '#[0-9]+' "$build/$target.log" | tail -1 | tr -d '#') runs)"
    else
      echo "$target: FINDING"; tail -40 "$build/$target.log"; exit 1
    fi
  done
fi
echo "sanitize: clean"
