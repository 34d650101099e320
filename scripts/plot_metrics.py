#!/usr/bin/env python3
"""Plots a training run's RUN_DIR/metrics.jsonl (one JSON object per step with an integer "step") as PNGs.

One figure per group, x axis = step, one line per key; a key missing from a record (or null / not a number) is
skipped for that step, and a group none of whose keys appear is not drawn:

  reward.png             reward, reward/mean (with a +-std band from reward/std when present), rewards/<name>/mean
  kl.png                 kl, kl/*
  entropy.png            entropy, entropy/*
  clip_ratio.png         clip_ratio/low_mean, clip_ratio/high_mean and any other clip_ratio/*
  completion_length.png  completions/mean_length and the other completions/*length* keys
  grad_norm.png          grad_norm
  loss.png               loss, policy_loss, value_loss
  lr.png                 lr
  timing.png             every key starting with time/ (seconds)
  throughput.png         every key starting with tokens_per_s (and throughput/*)

Lines that are not valid JSON (a torn last line of a run still writing) are skipped with a warning.

usage: scripts/plot_metrics.py RUN_DIR [--out DIR]     (default DIR: RUN_DIR/plots; prints the files written)
"""
import argparse
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def number(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def read_metrics(path):
    records = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                print(f"{path}:{lineno}: not valid JSON, skipped", file=sys.stderr)
                continue
            if not isinstance(r, dict) or number(r.get("step")) is None:
                print(f"{path}:{lineno}: no numeric \"step\", skipped", file=sys.stderr)
                continue
            records.append(r)
    records.sort(key=lambda r: r["step"])
    return records


def series(records, key):
    xs, ys = [], []
    for r in records:
        y = number(r.get(key))
        if y is not None:
            xs.append(r["step"])
            ys.append(y)
    return xs, ys


def groups(keys):
    """(file name, title, keys) for every figure, keys in a stable order."""
    ks = sorted(keys)
    out = [
        ("reward", "reward", [k for k in ("reward", "reward/mean") if k in keys] +
         [k for k in ks if k.startswith("rewards/") and k.endswith("/mean")]),
        ("kl", "KL", [k for k in ks if k == "kl" or k.startswith("kl/")]),
        ("entropy", "entropy", [k for k in ks if k == "entropy" or k.startswith("entropy/")]),
        ("clip_ratio", "clip ratio", [k for k in ("clip_ratio/low_mean", "clip_ratio/high_mean") if k in keys] +
         [k for k in ks if k.startswith("clip_ratio/") and k not in ("clip_ratio/low_mean", "clip_ratio/high_mean")]),
        ("completion_length", "completion length (tokens)",
         [k for k in ("completions/mean_length",) if k in keys] +
         [k for k in ks if k.startswith("completions/") and "length" in k and k != "completions/mean_length"]),
        ("grad_norm", "grad norm", [k for k in ("grad_norm",) if k in keys]),
        ("loss", "loss", [k for k in ("loss", "policy_loss", "value_loss") if k in keys]),
        ("lr", "learning rate", [k for k in ("lr",) if k in keys]),
        ("timing", "time per step (s)", [k for k in ks if k.startswith("time/")]),
        ("throughput", "throughput", [k for k in ks if k.startswith("tokens_per_s") or k.startswith("throughput/")]),
    ]
    return [g for g in out if g[2]]


def plot(records, out_dir):
    keys = set()
    for r in records:
        keys.update(k for k, v in r.items() if number(v) is not None)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, title, ks in groups(keys):
        fig, ax = plt.subplots(figsize=(7, 4))
        for k in ks:
            xs, ys = series(records, k)
            if not xs:
                continue
            ax.plot(xs, ys, label=k, marker="." if len(xs) < 50 else None, linewidth=1.2)
            if k == "reward/mean":
                sx, sd = series(records, "reward/std")
                mean = dict(zip(xs, ys))
                band = [(x, mean[x], s) for x, s in zip(sx, sd) if x in mean]
                if band:
                    bx = [b[0] for b in band]
                    ax.fill_between(bx, [b[1] - b[2] for b in band], [b[1] + b[2] for b in band], alpha=0.2,
                                    label="reward/mean +- std")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, name + ".png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main():
    ap = argparse.ArgumentParser(description="Plot RUN_DIR/metrics.jsonl as PNGs.")
    ap.add_argument("run_dir")
    ap.add_argument("--out", default=None, help="output directory (default: RUN_DIR/plots)")
    args = ap.parse_args()
    path = os.path.join(args.run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        print(f"{path}: missing", file=sys.stderr)
        return 1
    records = read_metrics(path)
    if not records:
        print(f"{path}: no metrics records", file=sys.stderr)
        return 1
    written = plot(records, args.out or os.path.join(args.run_dir, "plots"))
    for p in written:
        print(p)
    if not written:
        print(f"{path}: none of the plotted keys is present", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
