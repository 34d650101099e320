#!/usr/bin/env bash
# Times GRPO steps of `rlcu train` on a model directory (default: the random-init Qwen3-0.6B shape that
# scripts/parity_hf.py writes): 8 prompts x 8 samples x 256 new tokens (EOS ignored by choosing prompts the
# random model never ends), a reference model (kl_coef 0.04), mu = 1, and prints the per-phase times of each step
# from metrics.jsonl. The model directory needs tokenizer files; when it has none, the Qwen3 tokenizer from
# tests/fixtures/tokenizers/qwen3 is copied next to a copy of its config and weights.
#   usage: scripts/bench-grpo.sh [MODEL_DIR] [STEPS] [extra rlcu train args...]
# e.g. recomputed old log-probs with TIS: scripts/bench-grpo.sh DIR 4 --set algorithm.old_logprobs=recompute
#   --set algorithm.rollout_correction=tis; the table then adds the recompute phase (time/recompute_s, to compare
#   with the reference forward's time/reference_s), the rollout-vs-recomputed log-prob gap and the IS ratio range.
# The table goes to stderr; the last line on stdout is the work directory (config, metrics, checkpoints).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model="${1:-/tmp/rlcu_parity/qwen3-0.6b}"
steps="${2:-4}"
shift $(( $# > 2 ? 2 : $# ))
rlcu="${RLCU:-$root/build-gpu/rlcu}"
[ -x "$rlcu" ] || rlcu="$root/build/rlcu"
work="$(mktemp -d /tmp/rlcu-bench-grpo.XXXXXX)"
if [ ! -f "$model/tokenizer.json" ]; then
  mkdir -p "$work/model"
  for f in "$model"/*; do ln -s "$(readlink -f "$f")" "$work/model/"; done
  cp "$root"/tests/fixtures/tokenizers/qwen3/tokenizer*.json "$work/model/"
  model="$work/model"
fi
# 64 prompts of about 120 tokens each (8 are used per step).
python3 - "$work/prompts.jsonl" <<'PY'
import json, random, sys
random.seed(0)
words = "the of and to in is that for it as was with be by on not he this are or his from at which but have an they you were her she there had one all we can their has been if more when will would who so no".split()
with open(sys.argv[1], "w") as f:
    for i in range(64):
        text = " ".join(random.choice(words) for _ in range(110))
        f.write(json.dumps({"prompt": f"Question {i}: {text}", "answer": str(i)}) + "\n")
PY
cat > "$work/config.json" <<JSON
{
  "run": {"seed": 1, "output_dir": "$work/run", "device": "cuda", "save_every": 0},
  "model": {"path": "$model", "chat_template": "none"},
  "data": {"path": "$work/prompts.jsonl", "max_prompt_tokens": 256},
  "optimizer": {"lr": 1e-6},
  "algorithm": {"name": "grpo", "kl_coef": 0.04, "num_iterations": 1},
  "train": {"steps": $steps, "prompts_per_step": 8, "micro_batch_tokens": 16384, "log_samples": 0},
  "rollout": {"group_size": 8, "max_new_tokens": 256, "temperature": 1.0}
}
JSON
"$rlcu" train "$work/config.json" "$@" 1>&2
python3 - "$work/run/metrics.jsonl" 1>&2 <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
keys = ["time/step_s", "time/rollout_s", "time/reward_s", "time/reference_s", "time/advantage_s", "time/train_s"]
extra = [k for k in ("time/recompute_s", "sampling/logprob_diff/mean", "sampling/logprob_diff/max",
                     "sampling/importance_sampling_ratio/min", "sampling/importance_sampling_ratio/max")
         if rows and k in rows[-1]]
print("| step | " + " | ".join(k.split("/")[1] for k in keys) + " | new tokens/s (rollout) | mean length | mean abs ratio-1 |"
      + "".join(f" {k} |" for k in extra))
print("|---" * (len(keys) + 4 + len(extra)) + "|")
for r in rows:
    print(f"| {r['step']} | " + " | ".join(f"{r[k]:.3f}" for k in keys) +
          f" | {r['tokens_per_s/rollout']:.0f} | {r['completions/mean_length']:.1f} | {r.get('ratio/first_update_mean_abs_dev', 0):.2e} |"
          + "".join(f" {r[k]:.4g} |" for k in extra))
PY
echo "checkpoint: $(cat "$work/run/checkpoints/latest")  in $work/run/checkpoints" >&2
echo "$work"
