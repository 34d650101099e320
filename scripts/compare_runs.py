#!/usr/bin/env python3
"""Compares rlcu runs: one row per run directory (RUN/config.json and RUN/metrics.jsonl), as Markdown or CSV.

Columns:
  run             the directory as given
  <section.key>   every config key whose resolved value differs between the runs (run.output_dir left out)
  final reward    mean of `reward` over the last tenth of the steps that have it (at least one step)
  eval accuracy   the last `eval/accuracy` of the run; blank when it has none
  eval loss       the last `eval_loss` (SFT held-out loss); the column appears when some run has it
  tokens/s        median of `tokens_per_s/step` (`rlcu train`), or of `tokens_per_s/train` (`rlcu sft`;
                  `tokens_per_s` in runs of earlier rlcu versions)
  wall time (s)   sum of `time/step_s`
A value a run does not have is left blank. Lines of metrics.jsonl that are not JSON (a torn last line) are skipped.

usage: scripts/compare_runs.py RUN_DIR... [--format markdown|csv]
"""
import argparse
import csv
import io
import json
import math
import os
import statistics
import sys


def number(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def flatten(cfg, prefix=""):
    out = {}
    for k, v in cfg.items():
        key = prefix + k
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def read_run(run_dir):
    """(flat config, metrics records) of one run; raises SystemExit naming a missing or broken file."""
    cfg_path = os.path.join(run_dir, "config.json")
    met_path = os.path.join(run_dir, "metrics.jsonl")
    for p in (cfg_path, met_path):
        if not os.path.isfile(p):
            raise SystemExit(f"{p}: missing (not an rlcu run directory?)")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise SystemExit(f"{cfg_path}: invalid JSON: {e}")
    if not isinstance(cfg, dict):
        raise SystemExit(f"{cfg_path}: expected a JSON object")
    records = []
    with open(met_path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(r, dict) and number(r.get("step")) is not None:
                records.append(r)
    records.sort(key=lambda r: r["step"])
    return flatten(cfg), records


def values(records, key):
    return [v for v in (number(r.get(key)) for r in records) if v is not None]


def summarize(records):
    out = {}
    rewards = values(records, "reward")
    if rewards:
        tail = max(1, math.ceil(len(rewards) / 10))
        out["final reward"] = statistics.fmean(rewards[-tail:])
    for col, key in (("eval accuracy", "eval/accuracy"), ("eval loss", "eval_loss")):
        v = values(records, key)
        if v:
            out[col] = v[-1]
    tps = values(records, "tokens_per_s/step") or values(records, "tokens_per_s/train") or values(records, "tokens_per_s")
    if tps:
        out["tokens/s"] = statistics.median(tps)
    steps = values(records, "time/step_s")
    if steps:
        out["wall time (s)"] = sum(steps)
    return out


def differing_keys(configs):
    keys = sorted(set().union(*configs))
    absent = "\0absent"
    return [k for k in keys if k != "run.output_dir" and
            len({json.dumps(c[k], sort_keys=True) if k in c else absent for c in configs}) > 1]


def config_text(v):
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    return json.dumps(v)


def table(run_dirs):
    runs = [(d.rstrip("/") or d, *read_run(d)) for d in run_dirs]
    diff = differing_keys([cfg for _, cfg, _ in runs])
    summaries = [summarize(recs) for _, _, recs in runs]
    metrics_cols = ["final reward", "eval accuracy"]
    if any("eval loss" in s for s in summaries):
        metrics_cols.append("eval loss")
    metrics_cols += ["tokens/s", "wall time (s)"]
    header = ["run"] + diff + metrics_cols
    rows = []
    for (name, cfg, _), s in zip(runs, summaries):
        rows.append([name] + [cfg.get(k) for k in diff] + [s.get(c) for c in metrics_cols])
    return header, rows, len(diff)


def metric_text(col, v, csv_mode):
    if v is None:
        return ""
    if csv_mode:
        return format(v, ".10g")
    if col == "tokens/s":
        return f"{v:.0f}"
    if col == "wall time (s)":
        return f"{v:.1f}"
    return f"{v:.4f}"


def render(header, rows, n_diff, fmt):
    csv_mode = fmt == "csv"
    cells = []
    for row in rows:
        cells.append([row[0]] + [config_text(v) for v in row[1:1 + n_diff]] +
                     [metric_text(c, v, csv_mode) for c, v in zip(header[1 + n_diff:], row[1 + n_diff:])])
    if csv_mode:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(cells)
        return buf.getvalue()
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join("---" if i <= n_diff else "--:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description="One row per rlcu run: what differs, final reward, eval accuracy, "
                                             "tokens/s, wall time.")
    ap.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    ap.add_argument("--format", choices=["markdown", "csv"], default="markdown")
    a = ap.parse_args()
    header, rows, n_diff = table(a.run_dirs)
    sys.stdout.write(render(header, rows, n_diff, a.format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
