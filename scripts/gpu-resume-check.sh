#!/usr/bin/env bash
# On a GPU machine: a run stopped after 2 steps and resumed to 4 must end with a model.safetensors byte-identical to
# an uninterrupted 4-step run on the same card. Uses configs/smoke_cpu.json on CUDA, for GRPO (with a reference
# model, kl_coef 0.04) and PPO, and configs/smoke_lora_cpu.json (LoRA GRPO with the base as the reference), whose
# checkpoint is the PEFT adapter (adapter_model.safetensors). Prints one line per run; exits 1 on a difference.
#   usage: scripts/gpu-resume-check.sh [RLCU_BIN]
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rlcu="${1:-build-gpu/rlcu}"
work="$(mktemp -d /tmp/rlcu-resume.XXXXXX)"
status=0
for algo in grpo ppo grpo_lora; do
  config=configs/smoke_cpu.json weights=model.safetensors
  if [ "$algo" = grpo_lora ]; then config=configs/smoke_lora_cpu.json weights=adapter_model.safetensors; fi
  common=("$config" --device cuda --set train.steps=4 --set algorithm.name=${algo%_lora}
          --set algorithm.kl_coef=0.04)
  "$rlcu" train "${common[@]}" --set run.output_dir="$work/$algo-full" > "$work/$algo-full.log" 2>&1
  "$rlcu" train "${common[@]}" --set run.output_dir="$work/$algo-resumed" --stop-after 2 > "$work/$algo-a.log" 2>&1
  "$rlcu" train --resume "$work/$algo-resumed" > "$work/$algo-b.log" 2>&1
  a="$work/$algo-full/checkpoints/step-000004/$weights"
  b="$work/$algo-resumed/checkpoints/step-000004/$weights"
  if cmp -s "$a" "$b"; then
    echo "$algo: identical ($(sha256sum < "$a" | cut -c1-16)), grad_norm of step 4: $(tail -1 "$work/$algo-full/metrics.jsonl" | grep -o '"grad_norm":[0-9.e-]*')"
  else
    echo "$algo: DIFFERENT"; tail -3 "$work/$algo-full.log" "$work/$algo-b.log"; status=1
  fi
done
exit $status
