#!/usr/bin/env python3
"""Independent float64 numpy reference of the Qwen2 / Qwen3 / Llama decoder, and the bf16 fixture generator.

    reference_model.py check  DIR...   recompute each DIR/golden.jsonl and report the max abs error
    reference_model.py bf16   SRC DST  write DST: SRC's weights rounded to bf16 (BF16 safetensors), config.json
                                       with "dtype": "bfloat16", and golden.jsonl recomputed in float64 from the
                                       rounded weights
    reference_model.py greedy DIR N SEED   append N {"prompt", "greedy"} cases (random prompts of 3..24 tokens,
                                       8 greedy tokens each, float64) to DIR/golden.jsonl

The model (all in float64):
    x = embed[ids]
    per layer:  h = rmsnorm(x) * w_in;  q, k, v = h Wq^T (+bq), h Wk^T (+bk), h Wv^T (+bv)
                Qwen3: q, k = rmsnorm per head * q_norm / k_norm
                rope (NeoX half split, default or llama3-scaled inv_freq), causal GQA softmax attention
                x += attn Wo^T;  h = rmsnorm(x) * w_post;  x += (silu(h Wg^T) * (h Wu^T)) Wd^T
    logits = rmsnorm(x) * w_final @ (lm_head or embed)^T;  logprobs[t] = log_softmax(logits[t])[ids[t+1]]
Safetensors are read and written here directly (no safetensors/torch package): 8-byte little-endian header
length, JSON header, raw little-endian data.
"""
import json
import math
import os
import struct
import sys

import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        buf = data[b:e]
        shape = info["shape"]
        dt = info["dtype"]
        if dt == "F32":
            a = np.frombuffer(buf, dtype="<f4").astype(np.float64)
        elif dt == "F16":
            a = np.frombuffer(buf, dtype="<f2").astype(np.float64)
        elif dt == "BF16":
            u = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
            a = u.view(np.float32).astype(np.float64)
        elif dt == "F64":
            a = np.frombuffer(buf, dtype="<f8").copy()
        else:
            raise ValueError(f"{path}: {name}: unsupported dtype {dt}")
        out[name] = a.reshape(shape)
    return out


def f32_to_bf16_bits(a):
    """Round float32 values to bf16 (nearest, ties to even) and return the uint16 bit patterns."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def bf16_bits_to_f64(b):
    return (b.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def write_safetensors(path, tensors, metadata):
    """tensors: name -> (dtype string, shape, bytes). Sorted names, header padded with spaces to 8 bytes."""
    header = {"__metadata__": metadata}
    off = 0
    for name in sorted(tensors):
        dt, shape, buf = tensors[name]
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(buf)]}
        off += len(buf)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for name in sorted(tensors):
            f.write(tensors[name][2])


class Config:
    def __init__(self, d):
        self.model_type = d["model_type"]
        self.V = d["vocab_size"]
        self.H = d["hidden_size"]
        self.I = d["intermediate_size"]
        self.L = d["num_hidden_layers"]
        self.nq = d["num_attention_heads"]
        self.nkv = d.get("num_key_value_heads") or self.nq
        self.hd = d.get("head_dim") or self.H // self.nq
        self.eps = d.get("rms_norm_eps", 1e-6)
        self.tied = d.get("tie_word_embeddings", False)
        rp = d.get("rope_parameters")
        if rp is None:
            rp = dict(d.get("rope_scaling") or {})
            rp.setdefault("rope_theta", d.get("rope_theta", 10000.0))
        self.rope = rp
        self.rope_type = rp.get("rope_type", rp.get("type", "default"))
        self.qkv_bias = self.model_type == "qwen2" or d.get("attention_bias", False)
        self.o_bias = self.model_type != "qwen2" and d.get("attention_bias", False)
        self.qk_norm = self.model_type == "qwen3"


def inv_freq(cfg):
    base = cfg.rope["rope_theta"]
    dim = cfg.hd
    f = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    if cfg.rope_type == "default":
        return f
    if cfg.rope_type == "linear":
        return f / cfg.rope["factor"]
    if cfg.rope_type != "llama3":
        raise ValueError(f"rope type {cfg.rope_type}")
    factor = cfg.rope["factor"]
    lo = cfg.rope["low_freq_factor"]
    hi = cfg.rope["high_freq_factor"]
    old = cfg.rope["original_max_position_embeddings"]
    lo_wl = old / lo
    hi_wl = old / hi
    wl = 2 * math.pi / f
    scaled = np.where(wl > lo_wl, f / factor, f)
    smooth = (old / wl - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wl < hi_wl) & ~(wl > lo_wl)
    return np.where(medium, smoothed, scaled)


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, pos, freq):
    # x [T, n, hd]
    ang = pos[:, None] * freq[None, :]
    c = np.cos(ang)[:, None, :]
    s = np.sin(ang)[:, None, :]
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def forward_logits(cfg, W, ids):
    T = len(ids)
    pos = np.arange(T, dtype=np.float64)
    freq = inv_freq(cfg)
    x = W["model.embed_tokens.weight"][ids]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    g = cfg.nq // cfg.nkv
    for l in range(cfg.L):
        p = f"model.layers.{l}."
        h = rmsnorm(x, W[p + "input_layernorm.weight"], cfg.eps)
        qkv = []
        for n in ("q", "k", "v"):
            y = h @ W[p + f"self_attn.{n}_proj.weight"].T
            if cfg.qkv_bias:
                y = y + W[p + f"self_attn.{n}_proj.bias"]
            qkv.append(y)
        q = qkv[0].reshape(T, cfg.nq, cfg.hd)
        k = qkv[1].reshape(T, cfg.nkv, cfg.hd)
        v = qkv[2].reshape(T, cfg.nkv, cfg.hd)
        if cfg.qk_norm:
            q = rmsnorm(q, W[p + "self_attn.q_norm.weight"], cfg.eps)
            k = rmsnorm(k, W[p + "self_attn.k_norm.weight"], cfg.eps)
        q = rope(q, pos, freq)
        k = rope(k, pos, freq)
        out = np.empty((T, cfg.nq, cfg.hd))
        for hq in range(cfg.nq):
            hk = hq // g
            s = q[:, hq, :] @ k[:, hk, :].T / math.sqrt(cfg.hd) + mask
            s = s - s.max(axis=-1, keepdims=True)
            pr = np.exp(s)
            pr /= pr.sum(axis=-1, keepdims=True)
            out[:, hq, :] = pr @ v[:, hk, :]
        o = out.reshape(T, -1) @ W[p + "self_attn.o_proj.weight"].T
        if cfg.o_bias:
            o = o + W[p + "self_attn.o_proj.bias"]
        x = x + o
        h = rmsnorm(x, W[p + "post_attention_layernorm.weight"], cfg.eps)
        gt = h @ W[p + "mlp.gate_proj.weight"].T
        up = h @ W[p + "mlp.up_proj.weight"].T
        x = x + (gt / (1 + np.exp(-gt)) * up) @ W[p + "mlp.down_proj.weight"].T
    h = rmsnorm(x, W["model.norm.weight"], cfg.eps)
    head = W["model.embed_tokens.weight"] if cfg.tied else W["lm_head.weight"]
    return h @ head.T


def log_softmax(z):
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def logprobs(cfg, W, ids):
    ids = np.asarray(ids, dtype=np.int64)
    lp = log_softmax(forward_logits(cfg, W, ids))
    return lp[np.arange(len(ids) - 1), ids[1:]]


def greedy(cfg, W, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(np.argmax(forward_logits(cfg, W, np.asarray(ids))[-1])))
    return ids[len(prompt):]


def load(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = Config(json.load(f))
    return cfg, read_safetensors(os.path.join(model_dir, "model.safetensors"))


def read_golden(model_dir):
    with open(os.path.join(model_dir, "golden.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def check(model_dir):
    cfg, W = load(model_dir)
    worst = 0.0
    greedy_ok = True
    for rec in read_golden(model_dir):
        if "ids" in rec:
            lp = logprobs(cfg, W, rec["ids"])
            if len(lp):
                worst = max(worst, float(np.max(np.abs(lp - np.asarray(rec["logprobs"])))))
        else:
            greedy_ok &= greedy(cfg, W, rec["prompt"], len(rec["greedy"])) == rec["greedy"]
    print(f"{model_dir}: max |logprob - golden| = {worst:.3e}; greedy tokens {'match' if greedy_ok else 'DIFFER'}")
    return worst, greedy_ok


def make_bf16(src, dst):
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    cfg = Config(config)
    W = read_safetensors(os.path.join(src, "model.safetensors"))
    os.makedirs(dst, exist_ok=True)
    tensors = {}
    Wr = {}
    for name, a in W.items():
        bits = f32_to_bf16_bits(a.astype(np.float32))
        tensors[name] = ("BF16", a.shape, bits.astype("<u2").tobytes())
        Wr[name] = bf16_bits_to_f64(bits).reshape(a.shape)
    write_safetensors(os.path.join(dst, "model.safetensors"), tensors, {"format": "pt"})
    config["dtype"] = "bfloat16"
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    gen = os.path.join(src, "generation_config.json")
    if os.path.exists(gen):
        with open(gen) as f, open(os.path.join(dst, "generation_config.json"), "w") as g:
            g.write(f.read())
    with open(os.path.join(dst, "golden.jsonl"), "w") as f:
        for rec in read_golden(src):
            if "ids" in rec:
                out = {"ids": rec["ids"], "logprobs": [float(v) for v in logprobs(cfg, Wr, rec["ids"])]}
            else:
                out = {"prompt": rec["prompt"], "greedy": greedy(cfg, Wr, rec["prompt"], len(rec["greedy"]))}
            f.write(json.dumps(out) + "\n")
    print(f"{dst}: bf16 weights and float64 golden written")


def add_greedy(model_dir, n, seed):
    cfg, W = load(model_dir)
    W = {k: v.astype(np.float64) for k, v in W.items()}
    rng = np.random.default_rng(seed)
    vocab = W["model.embed_tokens.weight"].shape[0]
    with open(os.path.join(model_dir, "golden.jsonl"), "a") as f:
        for _ in range(n):
            prompt = [int(t) for t in rng.integers(0, vocab, size=int(rng.integers(3, 25)))]
            f.write(json.dumps({"prompt": prompt, "greedy": greedy(cfg, W, prompt, 8)}) + "\n")
    print(f"{model_dir}: {n} greedy cases appended")


def main(argv):
    if len(argv) >= 2 and argv[0] == "check":
        bad = False
        for d in argv[1:]:
            worst, ok = check(d)
            bad |= worst > 1e-6 or not ok
        return 1 if bad else 0
    if len(argv) == 4 and argv[0] == "greedy":
        add_greedy(argv[1], int(argv[2]), int(argv[3]))
        return 0
    if len(argv) == 3 and argv[0] == "bf16":
        make_bf16(argv[1], argv[2])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
