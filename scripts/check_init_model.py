#!/usr/bin/env python3
"""Checks a model directory written by `rlcu init-model` against Hugging Face transformers (run where torch and
transformers are installed, e.g. the GPU machine).

  1. Loads DIR with AutoModelForCausalLM (float32, eager attention) and, when DIR has tokenizer files,
     AutoTokenizer.
  2. Builds a few token sequences: with a tokenizer, the ids of some plain texts and of a chat-template rendering
     (add_special_tokens=False); without one, random ids. With a tokenizer the ids are also compared with
     `rlcu tokenize --tokenizer DIR` on the same texts (must match exactly).
  3. Log-probs log p(ids[t+1] | ids[..t]) from transformers vs `rlcu score --model DIR --input ...`
     (input lines {"ids": [...]}, output lines {"logprobs": [...]}, n-1 values per sequence).
Prints the max |diff| per sequence and overall; exits 1 when it is above --tol (default 1e-3 with --device cpu,
where rlcu computes in float32 like the reference; 5e-2 with --device cuda, where rlcu uses bf16 activations), or
when the tokenizations differ.

usage: scripts/check_init_model.py DIR [--rlcu build/rlcu] [--device cpu|cuda] [--tol X] [--seed S]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

TEXTS = [
    "12+7=19 \\boxed{19}",
    "Use 3 5 7 to make 22",
    "The quick brown fox jumps over the lazy dog.\n  Indented line with\ttabs and unicode: h\u00e9llo \u2713",
]


def default_rlcu():
    for cand in ("build/rlcu", "build-gpu/rlcu"):
        if os.path.exists(cand):
            return cand
    return shutil.which("rlcu") or "build/rlcu"


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stderr)
        raise SystemExit(f"command failed ({r.returncode}): {' '.join(cmd)}")
    return r.stdout


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--rlcu", default=default_rlcu())
    ap.add_argument("--device", default="cpu", help="device of `rlcu score` (cpu or cuda)")
    ap.add_argument("--tol", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tol = args.tol if args.tol is not None else (1e-3 if args.device == "cpu" else 5e-2)
    torch.manual_seed(args.seed)

    hf_device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(args.dir, torch_dtype=torch.float32, attn_implementation="eager")
    model = model.to(hf_device).eval()
    vocab = model.config.vocab_size

    tmp = tempfile.mkdtemp(prefix="rlcu_check_")
    ok = True
    seqs = []
    if os.path.exists(os.path.join(args.dir, "tokenizer.json")):
        tok = AutoTokenizer.from_pretrained(args.dir)
        texts = list(TEXTS)
        if tok.chat_template:
            texts.append(tok.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], tokenize=False,
                                                 add_generation_prompt=True))
        seqs = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        # The same texts through rlcu's tokenizer.
        tin = os.path.join(tmp, "texts.jsonl")
        write_jsonl(tin, [{"text": t} for t in texts])
        out = run([args.rlcu, "tokenize", "--tokenizer", args.dir, "--input", tin])
        rlcu_ids = [json.loads(line)["ids"] for line in out.splitlines() if line.strip()]
        for i, (a, b) in enumerate(zip(seqs, rlcu_ids)):
            same = a == b
            ok &= same
            print(f"tokenize {i}: {len(a)} ids, {'same' if same else 'DIFFERENT'} ids in transformers and rlcu")
            if not same:
                print(f"  transformers: {a}\n  rlcu:         {b}")
        if len(rlcu_ids) != len(seqs):
            ok = False
            print(f"rlcu tokenize returned {len(rlcu_ids)} lines for {len(seqs)} texts")
    gen = torch.Generator().manual_seed(args.seed)
    for n in (1, 2, 33, 97):
        seqs.append(torch.randint(0, vocab, (n,), generator=gen).tolist())

    sin = os.path.join(tmp, "ids.jsonl")
    write_jsonl(sin, [{"ids": s} for s in seqs])
    out = run([args.rlcu, "score", "--model", args.dir, "--input", sin, "--device", args.device])
    rlcu_lp = [json.loads(line)["logprobs"] for line in out.splitlines() if line.strip()]
    if len(rlcu_lp) != len(seqs):
        raise SystemExit(f"rlcu score returned {len(rlcu_lp)} lines for {len(seqs)} sequences")

    worst = 0.0
    with torch.no_grad():
        for i, (s, lp) in enumerate(zip(seqs, rlcu_lp)):
            ids = torch.tensor([s], device=hf_device)
            logits = model(ids).logits.float()[0]
            ref = torch.log_softmax(logits, dim=-1)[:-1].gather(1, ids[0, 1:, None])[:, 0].cpu()
            if len(lp) != len(s) - 1:
                ok = False
                print(f"seq {i}: rlcu gave {len(lp)} log-probs, expected {len(s) - 1}")
                continue
            diff = (ref.double() - torch.tensor(lp, dtype=torch.float64)).abs().max().item() if lp else 0.0
            worst = max(worst, diff)
            print(f"seq {i}: {len(s)} tokens, max |logprob(transformers) - logprob(rlcu)| = {diff:.3e}")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"max |diff| = {worst:.3e} (tolerance {tol:g}, rlcu on {args.device}, transformers float32 on {hf_device})")
    ok &= worst <= tol
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
