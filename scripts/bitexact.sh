#!/usr/bin/env bash
# Fingerprints of rlcu's outputs on the CPU, for refactors that must not change any result bit:
#   scripts/bitexact.sh RLCU_BIN OUT_DIR        writes OUT_DIR/fingerprints.txt (and the runs beside it)
# Compare two builds with `diff A/fingerprints.txt B/fingerprints.txt`. Covers short GRPO, PPO, RLOO and
# REINFORCE++ runs with a reference model (kl_coef 0.04, two updates per batch), an SFT run, `rlcu score` on the
# three test models and `rlcu generate` with sampling. Weights and trainer states are hashed; metrics.jsonl is
# hashed without its timing and throughput fields.
set -euo pipefail
bin="$(realpath "$1")"
out="$(realpath -m "$2")"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rm -rf "$out"
mkdir -p "$out"
cd "$root"
fp="$out/fingerprints.txt"
: > "$fp"
strip_metrics() {
  python3 - "$1" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    for k in list(m):
        if k.startswith(("time/", "tokens_per_s", "memory/", "eta")) or k in ("tokens_per_s",):
            del m[k]
    print(json.dumps(m, sort_keys=True))
PY
}
fingerprint_run() {  # name run_dir
  local ck
  ck="$(ls -d "$2"/checkpoints/step-* | sort | tail -1)"
  for f in model.safetensors trainer_state.safetensors; do
    echo "$1 $f $(sha256sum "$ck/$f" | cut -c1-16)" >> "$fp"
  done
  echo "$1 metrics $(strip_metrics "$2/metrics.jsonl" | sha256sum | cut -c1-16)" >> "$fp"
}
for alg in grpo ppo rloo reinforce_pp; do
  "$bin" train configs/smoke_cpu.json --set run.output_dir="$out/$alg" --set train.steps=12 \
    --set algorithm.name=$alg --set algorithm.kl_coef=0.04 --set algorithm.num_iterations=2 \
    --set run.device=cpu > "$out/$alg.log" 2>&1
  fingerprint_run "$alg" "$out/$alg"
done
head -200 tests/fixtures/data/linear_d1_train.jsonl | python3 -c \
  "import json,sys;[print(json.dumps({'prompt':json.loads(l)['prompt'],'completion':json.loads(l)['answer']})) for l in sys.stdin]" \
  > "$out/sft.jsonl"
"$bin" sft configs/demo_sft.json --set run.output_dir="$out/sft" --set run.device=cpu --set sft.steps=6 \
  --set model.path=tests/fixtures/models/byte-tiny --set sft.path="$out/sft.jsonl" > "$out/sft.log" 2>&1
fingerprint_run sft "$out/sft"
for m in qwen3-tiny qwen2-tiny llama3-tiny; do
  python3 -c "import json;[print(json.dumps({'ids':json.loads(l)['ids']})) for l in open('tests/fixtures/models/$m/golden.jsonl') if 'ids' in json.loads(l)]" \
    > "$out/$m.ids.jsonl"
  "$bin" score --model tests/fixtures/models/$m --input "$out/$m.ids.jsonl" --device cpu > "$out/$m.score.jsonl"
  echo "score $m $(sha256sum < "$out/$m.score.jsonl" | cut -c1-16)" >> "$fp"
  "$bin" generate --model tests/fixtures/models/$m --input "$out/$m.ids.jsonl" --n 3 --max-new-tokens 12 \
    --seed 5 --device cpu > "$out/$m.gen.jsonl" 2>/dev/null
  echo "generate $m $(sha256sum < "$out/$m.gen.jsonl" | cut -c1-16)" >> "$fp"
done
cat "$fp"
