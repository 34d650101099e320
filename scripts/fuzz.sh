#!/usr/bin/env bash
# Runs one libFuzzer target for a bounded time: scripts/fuzz.sh TARGET SECONDS [libFuzzer args...]
#   TARGET: fuzz_config, fuzz_safetensors, fuzz_safetensors_index, fuzz_tokenizer, fuzz_chat_template, fuzz_jsonl or
#           fuzz_reward_reply.
# Configures and builds build-fuzz (clang, -DRLCU_FUZZ=ON: ASan + UBSan + coverage on every library) when needed,
# starts from the committed seeds in tests/fuzz/corpus/TARGET and keeps what it finds in build-fuzz/corpus/TARGET
# (the committed seeds are never modified). Exits non-zero on a finding (the crash input is written to
# build-fuzz/findings/). BUILD_DIR overrides build-fuzz; JOBS the build parallelism (default 1).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 TARGET SECONDS [libFuzzer args...]" >&2
  exit 2
fi
target=$1
secs=$2
shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build-fuzz}
seeds=$root/tests/fuzz/corpus/$target
if [ ! -d "$seeds" ]; then
  echo "$0: no seed corpus $seeds (unknown target $target?)" >&2
  exit 2
fi
if [ ! -f "$build/build.ninja" ]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
    -DRLCU_CUDA=OFF -DRLCU_FUZZ=ON -DRLCU_BUILD_TESTS=OFF -DRLCU_WERROR=OFF >/dev/null
fi
ninja -C "$build" -j"${JOBS:-1}" "$target" >/dev/null
mkdir -p "$build/corpus/$target" "$build/findings"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
exec "$build/tests/fuzz/$target" -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 \
  -artifact_prefix="$build/findings/$target-" "$@" "$build/corpus/$target" "$seeds"
