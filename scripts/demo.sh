#!/usr/bin/env bash
# The demo: a tiny randomly initialised model learns to solve linear equations ("3x+5=20, x=" -> "3x=15, x=5
# \boxed{5}"), first by supervised fine-tuning on worked solutions, then by GRPO with a math_answer reward; held-out
# accuracy (greedy decoding) is measured before and after GRPO on test-split problems, which appear in neither
# training file.
#
#   1. build rlcu (CMake into $BUILD_DIR, target rlcu only; no tests)
#   2. rlcu init-model       a byte-level qwen3 model              -> $DEMO_DIR/model
#   3. rlcu data synth       SFT data, RL prompts, held-out test    -> $DEMO_DIR/data
#   4. rlcu sft              configs/demo_sft.json                  -> $DEMO_DIR/sft (final model: $DEMO_DIR/sft_model)
#   5. rlcu eval             the SFT model on the test split        -> $DEMO_DIR/eval_sft.json
#   6. rlcu train            configs/demo.json (GRPO)               -> $DEMO_DIR/grpo
#   7. rlcu eval             the GRPO model on the test split       -> $DEMO_DIR/eval_grpo.json
#   8. scripts/plot_metrics.py (skipped when matplotlib is missing) -> $DEMO_DIR/{sft,grpo}/plots
#
# Runs on the GPU when `nvidia-smi` works, else on the CPU (a few minutes on two cores). Run it from anywhere; paths are relative to the repository root. Environment:
#   DEVICE       cuda | cpu (default: cuda when nvidia-smi lists a GPU)
#   BUILD_DIR    build directory (default: build)
#   CUDA_ARCH    CUDA architectures for the build (default: 90a)
#   JOBS         parallel build jobs (default: number of cores)
#   SKIP_BUILD=1 use the existing $BUILD_DIR/rlcu
#   DEMO_DIR     outputs (default: runs/demo; the configs' paths assume the default). It is wiped at the start.
#   SEED         one seed for the model's initialisation, the three synthesised data sets (seeds 3*SEED+1, +2, +3:
#                SFT data, RL prompts, held-out test problems) and the SFT and GRPO runs (run.seed) (default: 0)
#   THREADS      CPU threads of every rlcu command (default: all cores; results do not depend on it)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

build="${BUILD_DIR:-build}"
demo="${DEMO_DIR:-runs/demo}"
rlcu="$build/rlcu"
t_start=$SECONDS
stage() { echo; echo "== $* =="; }
elapsed() { echo "   ($(( SECONDS - $1 )) s)"; }

# ---- 1. build -----------------------------------------------------------------------------------------------------
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  stage "build ($build)"
  t=$SECONDS
  if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi
  launcher=()
  if command -v ccache >/dev/null 2>&1; then
    launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
  fi
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90a}" \
    "${launcher[@]}" >/dev/null
  cmake --build "$build" --target rlcu -j "${JOBS:-$(nproc)}"
  elapsed $t
fi
[ -x "$rlcu" ] || { echo "demo: $rlcu not found (build first or unset SKIP_BUILD)" >&2; exit 1; }

# ---- device and sizes -----------------------------------------------------------------------------------------------
if [ -z "${DEVICE:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then DEVICE=cuda; else DEVICE=cpu; fi
fi
case "$DEVICE" in
  cuda* | cpu) ;;
  *) echo "demo: DEVICE must be cuda or cpu, got '$DEVICE'" >&2; exit 2 ;;
esac
# One recipe for both devices (configs/demo_sft.json + configs/demo.json): a 2-layer, hidden-64 model (0.12M
# parameters) that ends in a few minutes on two CPU cores. GRPO samples at temperature 0.7 with a KL penalty to the
# SFT model (kl_coef 0.1) and 32 new tokens: without the penalty (lr 3e-4 or 1e-3) the tiny model's format falls
# apart within a few dozen steps of the CPU-sized batches (outputs that never reach \boxed{}) and the reward drops.
model_args=(--hidden 64 --layers 2 --heads 4 --kv-heads 2)
n_sft=2000; n_rl=2000; n_test=200
seed="${SEED:-0}"
case "$seed" in
  '' | *[!0-9]*) echo "demo: SEED must be a non-negative integer, got '$seed'" >&2; exit 2 ;;
esac
threads=()
if [ -n "${THREADS:-}" ]; then threads=(--threads "$THREADS"); fi
sft_set=(--set "run.seed=$seed"); grpo_set=(--set "run.seed=$seed")
if [ "$DEVICE" != cpu ]; then
  # The GPU does a GRPO step of this model in ~20 ms: the same recipe scaled up, 600 steps of 32 prompts x 16
  # samples instead of the CPU-sized 150 x 16 x 8 (same learning rate, temperature, KL penalty and token budget).
  grpo_set+=(--set train.steps=600 --set train.prompts_per_step=32 --set rollout.group_size=16)
fi
echo "demo: device $DEVICE, seed $seed, outputs in $demo"
if [ "$demo" != runs/demo ]; then
  # The configs name runs/demo/...; point every path at $DEMO_DIR instead.
  sft_set+=(--set "run.output_dir=$demo/sft" --set "model.path=$demo/model" --set "sft.path=$demo/data/sft.jsonl")
  grpo_set+=(--set "run.output_dir=$demo/grpo" --set "model.path=$demo/sft_model" --set "data.path=$demo/data/rl.jsonl")
fi
rm -rf "$demo"
mkdir -p "$demo/data"

# ---- 2-3. model and data ------------------------------------------------------------------------------------------
stage "init-model and data synth"
t=$SECONDS
"$rlcu" init-model --arch qwen3 "${model_args[@]}" --max-position 256 --byte-tokenizer --seed "$seed" --out "$demo/model"
"$rlcu" data synth --task linear --difficulty 1 --sft --n "$n_sft" --seed $(( 3 * seed + 1 )) --out "$demo/data/sft.jsonl"
"$rlcu" data synth --task linear --difficulty 1 --n "$n_rl" --seed $(( 3 * seed + 2 )) --out "$demo/data/rl.jsonl"
"$rlcu" data synth --task linear --difficulty 1 --n "$n_test" --seed $(( 3 * seed + 3 )) --split test \
  --out "$demo/data/test.jsonl"
elapsed $t

eval_model() {  # eval_model MODEL_DIR NAME
  "$rlcu" eval --model "$1" --data "$demo/data/test.jsonl" --greedy --max-new-tokens 32 --chat-template none \
    --device "$DEVICE" "${threads[@]}" --output "$demo/eval_$2.json" --samples-out "$demo/eval_$2_samples.jsonl"
}
accuracy() {  # accuracy NAME -> percentage with one decimal
  sed -n 's/^ *"accuracy": *\([-0-9.eE+]*\).*/\1/p' "$demo/eval_$1.json" | awk '{ printf "%.1f", 100 * $1 }'
}

# ---- 4-5. SFT and its evaluation ----------------------------------------------------------------------------------
stage "rlcu sft configs/demo_sft.json"
t=$SECONDS
"$rlcu" sft configs/demo_sft.json --device "$DEVICE" "${threads[@]}" "${sft_set[@]}"
ln -sfn "$(cd "$demo/sft/checkpoints" && pwd)/$(cat "$demo/sft/checkpoints/latest")" "$demo/sft_model"
elapsed $t
t_sft=$(( SECONDS - t ))
stage "rlcu eval (SFT model, held-out problems)"
eval_model "$demo/sft_model" sft

# ---- 6-7. GRPO and its evaluation ---------------------------------------------------------------------------------
stage "rlcu train configs/demo.json (GRPO)"
t=$SECONDS
"$rlcu" train configs/demo.json --device "$DEVICE" "${threads[@]}" "${grpo_set[@]}"
elapsed $t
t_grpo=$(( SECONDS - t ))
grpo_model="$(cd "$demo/grpo/checkpoints" && pwd)/$(cat "$demo/grpo/checkpoints/latest")"
stage "rlcu eval (GRPO model, held-out problems)"
eval_model "$grpo_model" grpo

# ---- 8. plots -----------------------------------------------------------------------------------------------------
stage "plots"
if command -v python3 >/dev/null 2>&1 && python3 -c "import matplotlib" >/dev/null 2>&1; then
  python3 scripts/plot_metrics.py "$demo/sft"
  python3 scripts/plot_metrics.py "$demo/grpo"
else
  echo "matplotlib is not installed: skipping plots (pip install matplotlib; then scripts/plot_metrics.py $demo/grpo)"
fi

# ---- summary ------------------------------------------------------------------------------------------------------
acc_sft=$(accuracy sft)
acc_grpo=$(accuracy grpo)
stage "summary ($DEVICE, seed $seed)"
echo "time: SFT ${t_sft} s, GRPO ${t_grpo} s, total $(( SECONDS - t_start )) s"
echo "outputs: $demo/sft, $demo/grpo (metrics.jsonl, samples.jsonl, checkpoints), $demo/eval_{sft,grpo}.json"
echo
echo "What the numbers mean: held-out accuracy is the share of the $n_test test-split equations (in neither the SFT"
echo "data nor the RL prompts) whose greedy answer \\boxed{x} is the solution. 'SFT' is the model after supervised"
echo "fine-tuning on worked solutions, 'GRPO' the same model after reinforcement learning with the math_answer reward"
echo "(1 for a correct boxed answer, else 0); the difference is in percentage points. One problem is $(awk -v n="$n_test" \
  'BEGIN { printf "%.1f", 100 / n }') points; SEED=1, 2, ... give other models, data and runs."
echo
echo "SFT $acc_sft% -> GRPO $acc_grpo% ($(awk -v a="$acc_sft" -v b="$acc_grpo" 'BEGIN { printf "%+.1f", b - a }') points)"
