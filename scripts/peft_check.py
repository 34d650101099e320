#!/usr/bin/env python3
"""A LoRA checkpoint of rlcu in Hugging Face PEFT, on a GPU machine (torch + transformers + peft).

Given an rlcu LoRA checkpoint (adapter_config.json + adapter_model.safetensors) and its base model directory:
  1. `rlcu merge-lora` merges it into OUT/merged; `rlcu score --device DEVICE` scores random sequences with it;
  2. transformers loads the base (float32), `PeftModel.from_pretrained(base, ADAPTER)` loads the adapter, and scores
     the same sequences; transformers also loads OUT/merged and scores them;
  3. compares: PEFT vs rlcu (mean |dlogprob| <= --tol, bf16 tolerance by default) and PEFT vs the merged model in
     transformers (mean |dlogprob| <= --tol).
Prints one JSON line; exits 1 when a bound fails.

usage: scripts/peft_check.py --rlcu build-gpu/rlcu --adapter RUN/checkpoints/step-000004 [--base BASE_DIR]
                             [--out /tmp/peft_check] [--device cuda] [--seqs 4] [--len 64] [--tol 2e-2]
"""
import argparse, json, os, random, subprocess, sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def logprobs(model, seqs, device):
    out = []
    with torch.no_grad():
        for s in seqs:
            ids = torch.tensor([s], device=device)
            logits = model(input_ids=ids).logits.float()
            out.append(torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1).cpu())
    return torch.cat(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rlcu", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--base", default="")
    ap.add_argument("--out", default="/tmp/peft_check")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seqs", type=int, default=4)
    ap.add_argument("--len", type=int, default=64)
    ap.add_argument("--tol", type=float, default=2e-2)
    a = ap.parse_args()
    cfg = json.load(open(os.path.join(a.adapter, "adapter_config.json")))
    base = a.base or cfg["base_model_name_or_path"]
    os.makedirs(a.out, exist_ok=True)
    merged = os.path.join(a.out, "merged")
    subprocess.run([a.rlcu, "merge-lora", "--adapter", a.adapter, "--base", base, "--out", merged], check=True)
    vocab = json.load(open(os.path.join(base, "config.json")))["vocab_size"]
    rng = random.Random(0)
    seqs = [[rng.randrange(vocab) for _ in range(a.len)] for _ in range(a.seqs)]
    ids_path, lp_path = os.path.join(a.out, "ids.jsonl"), os.path.join(a.out, "rlcu.jsonl")
    with open(ids_path, "w") as f:
        for s in seqs:
            f.write(json.dumps({"ids": s}) + "\n")
    subprocess.run([a.rlcu, "score", "--model", merged, "--input", ids_path, "--output", lp_path, "--device",
                    a.device.split(":")[0] if a.device.startswith("cuda") else a.device], check=True)
    rlcu_lp = torch.tensor([x for line in open(lp_path) for x in json.loads(line)["logprobs"]])

    dev = a.device
    base_model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(dev)
    peft_model = PeftModel.from_pretrained(base_model, a.adapter).to(dev).eval()
    peft_lp = logprobs(peft_model, seqs, dev)
    del peft_model, base_model
    merged_model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).to(dev).eval()
    merged_lp = logprobs(merged_model, seqs, dev)
    d_rlcu = (peft_lp - rlcu_lp).abs()
    d_merged = (peft_lp - merged_lp).abs()
    res = {"adapter": a.adapter, "base": base, "r": cfg["r"], "lora_alpha": cfg["lora_alpha"],
           "tokens": int(peft_lp.numel()),
           "peft_vs_rlcu_mean_abs": d_rlcu.mean().item(), "peft_vs_rlcu_max_abs": d_rlcu.max().item(),
           "peft_vs_merged_hf_mean_abs": d_merged.mean().item(), "peft_vs_merged_hf_max_abs": d_merged.max().item(),
           "tol_mean_abs": a.tol}
    res["ok"] = res["peft_vs_rlcu_mean_abs"] <= a.tol and res["peft_vs_merged_hf_mean_abs"] <= a.tol
    print(json.dumps(res))
    sys.exit(0 if res["ok"] else 1)


if __name__ == "__main__":
    main()
