#!/usr/bin/env python3
"""Parity of rlcu with Hugging Face transformers on random-init models of real shapes (run on a GPU machine).

For each shape (Qwen3-0.6B: head_dim 128, tied, vocab 151,936; Qwen2.5-0.5B: head_dim 64, q/k/v bias) this
builds a random-init model with transformers, saves it in bf16, and compares
  * per-token log-probs of random packed sequences, and
  * the gradients of the GRPO-like loss L = sum_t w_t * logprob_t for every parameter tensor,
between rlcu (bf16 weights and activations, fp32 accumulation, the trainer's F32 residual stream and saved head
softmax; through build/tests/rlcu_grad_dump) and PyTorch
in float32 on the same bf16-rounded weights. Prints one JSON line per model and a summary table; exits 1 when a
bound fails (mean |dlogprob| <= 1e-2, cosine similarity >= 0.99 for every tensor).

usage: scripts/parity_hf.py [--tool build-gpu/tests/rlcu_grad_dump] [--out DIR] [--models qwen3,qwen25]
"""
import argparse, json, os, subprocess, sys, time

import torch
from safetensors.torch import load_file
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

SHAPES = {
    "qwen3-0.6b": lambda: Qwen3ForCausalLM(Qwen3Config(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rope_theta=1e6,
        tie_word_embeddings=True, rms_norm_eps=1e-6)),
    "qwen2.5-0.5b": lambda: Qwen2ForCausalLM(Qwen2Config(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True,
        rms_norm_eps=1e-6)),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tool", default="build-gpu/tests/rlcu_grad_dump")
    ap.add_argument("--out", default="/tmp/rlcu_parity")
    ap.add_argument("--models", default=",".join(SHAPES))
    ap.add_argument("--lengths", default="300,17,1,180")
    ap.add_argument("--save-only", action="store_true", help="only write the random-init model directories")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    lengths = [int(x) for x in args.lengths.split(",")]
    ok_all = True
    rows = []
    for name in args.models.split(","):
        d = os.path.join(args.out, name)
        model = SHAPES[name]().to(torch.bfloat16)
        # Perturb norms and biases away from their init so that a mistake in them shows.
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "norm" in n or n.endswith(".bias"):
                    p.add_(torch.randn_like(p) * 0.1)
        model.save_pretrained(d)
        if args.save_only:
            print(f"saved {d}")
            continue
        model = model.float().cuda()
        model.config._attn_implementation = "eager"
        seqs = [torch.randint(0, 151936, (n,)).tolist() for n in lengths]
        weights = [torch.randn(max(n - 1, 0)).tolist() for n in lengths]
        with open(os.path.join(d, "ids.jsonl"), "w") as f:
            for s in seqs:
                f.write(json.dumps({"ids": s}) + "\n")
        with open(os.path.join(d, "weights.jsonl"), "w") as f:
            for w in weights:
                f.write(json.dumps({"weights": w}) + "\n")
        # PyTorch float32 reference: one sequence at a time, L = sum w * logprob.
        model.zero_grad(set_to_none=True)
        ref_lp = []
        for s, w in zip(seqs, weights):
            ids = torch.tensor([s], device="cuda")
            logits = model(ids).logits[0, :-1].float()
            lp = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
            (lp * torch.tensor(w, device="cuda")).sum().backward()
            ref_lp.append(lp.detach().cpu())
        t = time.time()
        cmd = [args.tool, "--model", d, "--input", os.path.join(d, "ids.jsonl"), "--weights",
               os.path.join(d, "weights.jsonl"), "--device", "cuda", "--out-logprobs", os.path.join(d, "lp.jsonl"),
               "--out-grads", os.path.join(d, "grads.safetensors")]
        subprocess.run(cmd, check=True)
        ours_lp = [torch.tensor(json.loads(l)["logprobs"]) for l in open(os.path.join(d, "lp.jsonl"))]
        diffs = torch.cat([(a - b).abs() for a, b in zip(ours_lp, ref_lp)])
        grads = load_file(os.path.join(d, "grads.safetensors"))
        cos_min, cos_name, missing = 1.0, "", []
        for n, p in model.named_parameters():
            if n not in grads:
                missing.append(n)
                continue
            g_ref = p.grad.detach().float().flatten().cpu()
            g = grads[n].float().flatten()
            cos = torch.nn.functional.cosine_similarity(g, g_ref, dim=0).item()
            if cos < cos_min:
                cos_min, cos_name = cos, n
        ok = diffs.mean().item() <= 1e-2 and cos_min >= 0.99 and not missing
        ok_all &= ok
        row = dict(model=name, tokens=sum(lengths), mean_abs_dlogprob=diffs.mean().item(),
                   max_abs_dlogprob=diffs.max().item(), min_grad_cosine=cos_min, min_grad_cosine_tensor=cos_name,
                   tensors=len(list(model.named_parameters())), missing=missing, ok=ok,
                   rlcu_seconds=round(time.time() - t, 2))
        rows.append(row)
        print(json.dumps(row), flush=True)
        del model
        torch.cuda.empty_cache()
    print("\n| model | tokens | mean abs dlogprob | max abs dlogprob | min grad cosine (tensor) | ok |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['tokens']} | {r['mean_abs_dlogprob']:.2e} | {r['max_abs_dlogprob']:.2e} | "
              f"{r['min_grad_cosine']:.5f} ({r['min_grad_cosine_tensor']}) | {r['ok']} |")
    sys.exit(0 if ok_all else 1)


if __name__ == "__main__":
    main()
