#!/usr/bin/env python3
"""Plots the metrics.jsonl of one or more rlcu runs as PNGs; several runs are overlaid, one figure per metric.

Each RUN_DIR holds metrics.jsonl (one JSON object per step with an integer "step") and, for the legend of an
overlay, config.json: a run is labelled by the config keys whose values differ between the runs
("optimizer.lr=0.001"), or by its directory when they all agree. One figure per group, x axis = step; a key missing
from a record (or null / not a number) is skipped for that step, and a group none of whose keys appear is not drawn
(an overlay of a group of several keys draws one panel per key):

  reward.png             `reward` (faint), its moving average over --smooth steps and a band of +- the moving
                         average of `reward_std` (the std of the step's rewards)
  reward_components.png  rewards/<name>/mean, when the runs have more than one reward component
  eval_accuracy.png      eval/* accuracies, as points
  kl.png                 kl, kl/*
  entropy.png            entropy, entropy/*
  clip_ratio.png         clip_ratio/low_mean, clip_ratio/high_mean and any other clip_ratio/*
  completion_length.png  completions/mean_length and the other completions/*length* keys
  grad_norm.png          grad_norm
  loss.png               loss, policy_loss, value_loss as lines; eval_loss (SFT held-out loss) as points
  lr.png                 learning_rate (`lr` in runs of earlier rlcu versions)
  timing.png             every key starting with time/ (seconds)
  throughput.png         every key starting with tokens_per_s (and throughput/*)

Lines that are not valid JSON (a torn last line of a run still writing) are skipped with a warning. Needs
matplotlib; without it the script says so and exits with status 1.

usage: scripts/plot_metrics.py RUN_DIR [RUN_DIR...] [--out DIR] [--smooth N] [--dpi N]
       (default DIR: RUN_DIR/plots for one run, COMMON_PARENT/plots for several; prints the files written)
"""
import argparse
import json
import math
import os
import sys


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


def read_config(run_dir):
    """The run's config.json flattened to {"section.key": value}, or {} when it has none."""
    path = os.path.join(run_dir, "config.json")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}
    flat = {}
    for sec, keys in cfg.items() if isinstance(cfg, dict) else []:
        if isinstance(keys, dict):
            for k, v in keys.items():
                flat[f"{sec}.{k}"] = v
    return flat


def run_labels(run_dirs, configs):
    """Legend label of each run: the config keys that differ between the runs, else the directory."""
    if len(run_dirs) == 1:
        return [""]
    keys = sorted(set().union(*configs) - {"run.output_dir"})
    diff = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
    labels = []
    for d, c in zip(run_dirs, configs):
        text = ", ".join(f"{k}={c[k] if isinstance(c[k], str) else json.dumps(c[k])}" for k in diff if k in c)
        labels.append(text or d.rstrip("/"))
    if len(set(labels)) < len(labels):  # configs agree (or are missing): the directories tell the runs apart
        labels = [d.rstrip("/") for d in run_dirs]
    return labels


def series(records, key):
    xs, ys = [], []
    for r in records:
        y = number(r.get(key))
        if y is not None:
            xs.append(r["step"])
            ys.append(y)
    return xs, ys


def moving_average(ys, window):
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= window:
            acc -= ys[i - window]
        out.append(acc / min(i + 1, window))
    return out


def groups(keys):
    """(file name, title, keys) of the plain line figures, keys in a stable order."""
    ks = sorted(keys)
    out = [
        ("kl", "KL", [k for k in ks if k == "kl" or k.startswith("kl/")]),
        ("entropy", "entropy", [k for k in ks if k == "entropy" or k.startswith("entropy/")]),
        ("clip_ratio", "clip ratio", [k for k in ("clip_ratio/low_mean", "clip_ratio/high_mean") if k in keys] +
         [k for k in ks if k.startswith("clip_ratio/") and k not in ("clip_ratio/low_mean", "clip_ratio/high_mean")]),
        ("completion_length", "completion length (tokens)",
         [k for k in ("completions/mean_length",) if k in keys] +
         [k for k in ks if k.startswith("completions/") and "length" in k and k != "completions/mean_length"]),
        ("grad_norm", "grad norm", [k for k in ("grad_norm",) if k in keys]),
        ("lr", "learning rate", [k for k in ("learning_rate", "lr") if k in keys]),
        ("timing", "time per step (s)", [k for k in ks if k.startswith("time/")]),
        ("throughput", "throughput", [k for k in ks if k.startswith("tokens_per_s") or k.startswith("throughput/")]),
    ]
    return [g for g in out if g[2]]


LINESTYLES = ["-", "--", ":", "-."]


class Plotter:
    def __init__(self, plt, runs, out_dir, smooth, dpi):
        self.plt = plt
        self.dpi = dpi
        self.runs = runs  # [(label, records)]
        self.out_dir = out_dir
        self.smooth = smooth
        self.written = []
        self.overlay = len(runs) > 1
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        self.run_color = [colors[i % len(colors)] for i in range(len(runs))]
        self.key_color = colors

    def save(self, fig, axes, name, title):
        for ax in axes:
            ax.set_xlabel("step")
            ax.grid(True, alpha=0.3)
        if len(axes) == 1:
            axes[0].set_title(title)
        else:
            fig.suptitle(title)
        if axes[0].get_legend_handles_labels()[0]:
            axes[0].legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(self.out_dir, name + ".png")
        fig.savefig(path, dpi=self.dpi)
        self.plt.close(fig)
        self.written.append(path)

    def window(self, n):
        return self.smooth if self.smooth else max(1, round(n / 20))

    def reward(self):
        if not any(series(recs, "reward")[0] for _, recs in self.runs):
            return
        fig, ax = self.plt.subplots(figsize=(7, 4))
        windows = set()
        for i, (run_label, recs) in enumerate(self.runs):
            xs, ys = series(recs, "reward")
            if not xs:
                continue
            color = self.run_color[i] if self.overlay else self.key_color[0]
            w = self.window(len(xs))
            windows.add(w)
            mean = moving_average(ys, w)
            ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(xs, mean, color=color, linewidth=1.6, label=run_label if self.overlay else "reward")
            std_by_step = dict(zip(*series(recs, "reward_std")))
            band = [(x, m, std_by_step[x]) for x, m in zip(xs, mean) if x in std_by_step]
            if band:
                sd = moving_average([b[2] for b in band], w)
                ax.fill_between([b[0] for b in band], [b[1] - s for b, s in zip(band, sd)],
                                [b[1] + s for b, s in zip(band, sd)], color=color, alpha=0.15,
                                label=None if self.overlay else "+- reward_std")
        smoothing = f"moving average over {windows.pop()} steps" if len(windows) == 1 else "moving averages"
        self.save(fig, [ax], "reward", f"reward ({smoothing}; faint: per step)")

    def lines(self, name, title, keys, points=()):
        """`keys` as lines, `points` (held-out values) as markers; an overlay of several keys gets a panel per key."""
        split = self.overlay and len(keys) > 1
        panels = [[(k, False)] for k in keys] if split else [[(k, False) for k in keys]]
        panels[0] += [(k, True) for k in points]
        cols = 1 if len(panels) == 1 else 2
        rows = math.ceil(len(panels) / cols)
        fig, grid = self.plt.subplots(rows, cols, squeeze=False,
                                      figsize=(7, 4) if len(panels) == 1 else (11, 2.6 * rows + 0.6))
        axes = [ax for row in grid for ax in row]
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        drawn = False
        for ax, panel in zip(axes, panels):
            if split:
                ax.set_title(panel[0][0], fontsize=9)
            n_lines = sum(1 for _, is_points in panel if not is_points)
            for i, (run_label, recs) in enumerate(self.runs):
                for j, (k, is_points) in enumerate(panel):
                    xs, ys = series(recs, k)
                    if not xs:
                        continue
                    if self.overlay:
                        color, ls = self.run_color[i], LINESTYLES[j % len(LINESTYLES)]
                        label = run_label if not is_points and n_lines == 1 else f"{run_label}: {k}"
                    else:
                        color, ls, label = self.key_color[j % len(self.key_color)], "-", k
                    if is_points:
                        ax.plot(xs, ys, color=color, linestyle="none", marker="o", markersize=5, label=label)
                    else:
                        ax.plot(xs, ys, color=color, linestyle=ls, linewidth=1.2,
                                marker="." if len(xs) < 50 else None, label=label)
                    drawn = True
        if drawn:
            self.save(fig, axes[:len(panels)], name, title)
        else:
            self.plt.close(fig)

    def all(self):
        keys = set()
        for _, recs in self.runs:
            for r in recs:
                keys.update(k for k, v in r.items() if number(v) is not None)
        self.reward()
        components = sorted(k for k in keys if k.startswith("rewards/") and k.endswith("/mean"))
        if len(components) > 1:
            self.lines("reward_components", "reward components (per step)", components)
        accuracies = sorted(k for k in keys if k.startswith("eval/"))
        if accuracies:
            self.lines("eval_accuracy", "held-out accuracy", [], points=accuracies)
        loss_keys = [k for k in ("loss", "policy_loss", "value_loss") if k in keys]
        if loss_keys or "eval_loss" in keys:
            self.lines("loss", "loss (points: held-out eval_loss)" if "eval_loss" in keys else "loss", loss_keys,
                       points=["eval_loss"] if "eval_loss" in keys else [])
        for name, title, ks in groups(keys):
            self.lines(name, title, ks)
        return self.written


def main():
    ap = argparse.ArgumentParser(description="Plot the metrics.jsonl of one or more runs as PNGs (several runs: "
                                             "overlaid, labelled by what differs between their configs).")
    ap.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    ap.add_argument("--out", default=None,
                    help="output directory (default: RUN_DIR/plots, or COMMON_PARENT/plots for several runs)")
    ap.add_argument("--smooth", type=int, default=0,
                    help="moving-average window of the reward, in steps (default: 1/20 of the steps)")
    ap.add_argument("--dpi", type=int, default=110, help="resolution of the PNGs (default: 110)")
    args = ap.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_metrics.py: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return 1
    runs = []
    for d in args.run_dirs:
        path = os.path.join(d, "metrics.jsonl")
        if not os.path.exists(path):
            print(f"{path}: missing", file=sys.stderr)
            return 1
        records = read_metrics(path)
        if not records:
            print(f"{path}: no metrics records", file=sys.stderr)
            return 1
        runs.append(records)
    labels = run_labels(args.run_dirs, [read_config(d) for d in args.run_dirs])
    if args.out:
        out = args.out
    elif len(args.run_dirs) == 1:
        out = os.path.join(args.run_dirs[0], "plots")
    else:
        out = os.path.join(os.path.commonpath([os.path.abspath(d) for d in args.run_dirs]), "plots")
    os.makedirs(out, exist_ok=True)
    written = Plotter(plt, list(zip(labels, runs)), out, args.smooth, args.dpi).all()
    for p in written:
        print(p)
    if not written:
        print("none of the plotted keys is present", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
