#!/usr/bin/env python3
"""Writes tests/fixtures/models/byte-tiny-lora: tests/fixtures/models/byte-tiny with its final RMSNorm weight
multiplied by SCALE (default 8), every other file and tensor unchanged.

byte-tiny is randomly initialised: its tied embeddings (std 0.02) bound every logit to about 0.02 * sqrt(64) per unit
of the final norm's output, so its next-token distribution is nearly uniform whatever its layers compute. Full
fine-tuning grows the embeddings; LoRA, which leaves the head and the norms frozen, cannot. A larger final-norm weight
gives the frozen head the logit range a pretrained model has, so that adapters on the linear layers can move the
distribution (configs/smoke_lora_cpu.json). Standard library only:
    python3 scripts/make_lora_fixture.py [SCALE]
"""
import json
import os
import shutil
import struct
import sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
src = os.path.join(root, "tests/fixtures/models/byte-tiny")
dst = os.path.join(root, "tests/fixtures/models/byte-tiny-lora")
scale = float(sys.argv[1]) if len(sys.argv) > 1 else 8.0


def bf16_to_f32(u):
    return struct.unpack("<f", struct.pack("<I", u << 16))[0]


def f32_to_bf16(f):
    u = struct.unpack("<I", struct.pack("<f", f))[0]
    u += 0x7FFF + ((u >> 16) & 1)  # round to nearest even (finite values only)
    return (u >> 16) & 0xFFFF


os.makedirs(dst, exist_ok=True)
for f in os.listdir(src):
    if f != "model.safetensors":
        shutil.copy(os.path.join(src, f), os.path.join(dst, f))
data = bytearray(open(os.path.join(src, "model.safetensors"), "rb").read())
n = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8:8 + n])
e = header["model.norm.weight"]
assert e["dtype"] == "BF16", e
b, end = e["data_offsets"]
base = 8 + n
for i in range(base + b, base + end, 2):
    v = struct.unpack("<H", data[i:i + 2])[0]
    data[i:i + 2] = struct.pack("<H", f32_to_bf16(bf16_to_f32(v) * scale))
open(os.path.join(dst, "model.safetensors"), "wb").write(bytes(data))
print(f"wrote {dst} (model.norm.weight x {scale})")
