#!/usr/bin/env bash
# On a GPU machine: build, run every test (CUDA included), the Hugging Face parity check, and the training
# benchmark side by side with the PyTorch baseline (when .carry/bench/baseline_hf_train.py is present).
# Logs go to $OUT (or ./gpu-logs); a summary is printed last.
#   STAGES  space-separated subset of: build test models parity bench rollout baseline   (default: all but models)
#           models: only write the random-init Hugging Face models that parity also writes
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${OUT:-$root/gpu-logs}"
mkdir -p "$out"
stages="${STAGES:-build test parity bench rollout baseline}"
has() { [[ " $stages " == *" $1 "* ]]; }
summary=()

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" 2>&1
summary+=("gpu: $(head -1 "$out/gpu.txt")")
if has build; then
  JOBS=16 bash scripts/gpu-build.sh build-gpu > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
  summary+=("build: ok")
fi
if has test; then
  (cd build-gpu && ctest -j4 --output-on-failure --timeout 600) > "$out/ctest.log" 2>&1
  summary+=("ctest: $(grep -E 'tests passed' "$out/ctest.log")")
  grep -E "Failed|\*\*\*" "$out/ctest.log" | head -20
fi
model=/tmp/rlcu_parity/qwen3-0.6b
if has parity; then
  PYTHONUNBUFFERED=1 python3 scripts/parity_hf.py --tool build-gpu/tests/rlcu_grad_dump --out /tmp/rlcu_parity \
    > "$out/parity.log" 2>&1
  summary+=("parity (exit $?):" "$(grep -E '^\|' "$out/parity.log")")
fi
if has models && ! has parity; then
  python3 scripts/parity_hf.py --out /tmp/rlcu_parity --save-only > "$out/models.log" 2>&1
  summary+=("models (exit $?)")
fi
if has bench && [ -d "$model" ]; then
  for ck in "" "--checkpointing"; do
    build-gpu/rlcu bench train --model "$model" --batch 64 --seq-len 512 --steps 5 $ck >> "$out/bench.log" 2>&1
  done
  summary+=("bench:" "$(grep -E '^\| (qwen|model)' "$out/bench.log" | sort -u)")
fi
if has rollout && [ -d "$model" ]; then
  for shape in "32 8" "8 8"; do
    set -- $shape
    build-gpu/rlcu bench rollout --model "$model" --prompts "$1" --samples "$2" --prompt-len 128 --new-tokens 256 \
      >> "$out/rollout.log" 2>&1
  done
  summary+=("rollout:" "$(grep -E '^\| [A-Z]' "$out/rollout.log")")
fi
if has baseline && [ -f .carry/bench/baseline_hf_train.py ]; then
  PYTHONUNBUFFERED=1 python3 .carry/bench/baseline_hf_train.py > "$out/baseline.log" 2>&1
  summary+=("baseline:" "$(cat "$out/baseline.log" | grep '^{')")
fi
echo
printf '%s\n' "${summary[@]}"
