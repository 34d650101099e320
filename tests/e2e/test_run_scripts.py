#!/usr/bin/env python3
"""scripts/compare_runs.py and scripts/plot_metrics.py on synthetic run directories (ctest `run_scripts`).

Three tiny runs are written by hand (config.json + metrics.jsonl, no training): two GRPO runs that differ in
optimizer.lr and rollout.group_size (one with eval/accuracy, one with a torn last line) and an SFT run. The test
checks compare_runs.py's Markdown and CSV tables cell by cell against values computed here from the same numbers,
its errors for a directory that is not a run, and plot_metrics.py: the overlay files for several runs and the
single-run files when matplotlib is installed, else a clear message and exit status 1.

usage: test_run_scripts.py REPO_ROOT
"""
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)


def write_run(path, cfg, records, torn=False):
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        if torn:
            f.write('{"step": 99, "rew')


def base_config(lr, group, out):
    return {"run": {"seed": 0, "output_dir": out, "device": "cpu", "tensorboard": True},
            "optimizer": {"lr": lr, "beta1": 0.9}, "rollout": {"group_size": group, "temperature": 1.0}}


def main():
    root = sys.argv[1]
    compare = os.path.join(root, "scripts", "compare_runs.py")
    plot = os.path.join(root, "scripts", "plot_metrics.py")
    work = tempfile.mkdtemp(prefix="rlcu_run_scripts_")
    try:
        a, b, s = (os.path.join(work, n) for n in ("lr0.001", "lr0.003", "sft"))
        # Run a: 20 steps, reward = step / 20, tokens/s 100..119 (median 109.5), 0.5 s per step; no eval.
        recs_a = [{"step": i, "reward": i / 20, "reward_std": 0.1, "tokens_per_s/step": 99 + i, "time/step_s": 0.5,
                   "loss": 1.0 / i, "skipped_update": False, "note": "x"} for i in range(1, 21)]
        write_run(a, base_config(0.001, 8, a), recs_a)
        # Run b: 25 steps (last tenth = 3 steps), eval/accuracy at steps 10 and 25, a torn last line.
        recs_b = [{"step": i, "reward": 1.0 if i > 22 else 0.0, "reward_std": 0.2, "tokens_per_s/step": 50.0,
                   "time/step_s": 2.0} for i in range(1, 26)]
        recs_b[9]["eval/accuracy"] = 0.25
        recs_b[24]["eval/accuracy"] = 0.75
        write_run(b, base_config(0.003, 4, b), recs_b, torn=True)
        # SFT: tokens_per_s/train, eval_loss at steps 0 and 4.
        recs_s = [{"step": 0, "eval_loss": 2.0}] + [
            {"step": i, "loss": 2.0 - i / 10, "tokens_per_s/train": 1000.0 * i, "time/step_s": 1.25} for i in range(1, 5)]
        recs_s[-1]["eval_loss"] = 1.5
        write_run(s, base_config(0.001, 8, s), recs_s)

        md = subprocess.run([sys.executable, compare, a, b], capture_output=True, text=True)
        check(md.returncode == 0, f"compare_runs markdown exit {md.returncode}: {md.stderr}")
        want_md = ("| run | optimizer.lr | rollout.group_size | final reward | eval accuracy | tokens/s | wall time (s) |\n"
                   "|---|---|---|--:|--:|--:|--:|\n"
                   f"| {a} | 0.001 | 8 | 0.9750 |  | 110 | 10.0 |\n"
                   f"| {b} | 0.003 | 4 | 1.0000 | 0.7500 | 50 | 50.0 |\n")
        check(md.stdout == want_md, f"markdown table:\n{md.stdout}\nexpected:\n{want_md}")

        c = subprocess.run([sys.executable, compare, "--format", "csv", a, b, s], capture_output=True, text=True)
        check(c.returncode == 0, f"compare_runs csv exit {c.returncode}: {c.stderr}")
        rows = list(csv.reader(io.StringIO(c.stdout)))
        check(rows[0] == ["run", "optimizer.lr", "rollout.group_size", "final reward", "eval accuracy", "eval loss",
                          "tokens/s", "wall time (s)"], f"csv header {rows[0]}")
        check(rows[1] == [a, "0.001", "8", "0.975", "", "", "109.5", "10"], f"csv row a {rows[1]}")
        check(rows[2] == [b, "0.003", "4", "1", "0.75", "", "50", "50"], f"csv row b {rows[2]}")
        check(rows[3] == [s, "0.001", "8", "", "", "1.5", "2500", "5"], f"csv row sft {rows[3]}")
        check(len(rows) == 4, f"{len(rows)} csv rows")

        bad = subprocess.run([sys.executable, compare, a, work], capture_output=True, text=True)
        check(bad.returncode != 0 and os.path.join(work, "config.json") in bad.stderr,
              f"a non-run directory: exit {bad.returncode}, stderr {bad.stderr!r}")

        have_mpl = subprocess.run([sys.executable, "-c", "import matplotlib"], capture_output=True).returncode == 0
        p = subprocess.run([sys.executable, plot, a, b], capture_output=True, text=True)
        if have_mpl:
            check(p.returncode == 0, f"plot_metrics overlay exit {p.returncode}: {p.stderr}")
            written = sorted(os.path.basename(x) for x in p.stdout.split())
            for name in ("reward.png", "loss.png", "eval_accuracy.png", "timing.png", "throughput.png"):
                check(name in written, f"overlay: {name} not in {written}")
            check(all(os.path.dirname(x) == os.path.join(work, "plots") for x in p.stdout.split()),
                  f"overlay written outside {work}/plots: {p.stdout}")
            p1 = subprocess.run([sys.executable, plot, s], capture_output=True, text=True)
            check(p1.returncode == 0 and os.path.join(s, "plots", "loss.png") in p1.stdout.split(),
                  f"single run: exit {p1.returncode}, {p1.stdout} {p1.stderr}")
            print("plot_metrics.py: overlay and single-run figures written")
        else:
            check(p.returncode == 1 and "matplotlib is not installed" in p.stderr and "Traceback" not in p.stderr,
                  f"without matplotlib: exit {p.returncode}, stderr {p.stderr!r}")
            print("plot_metrics.py: matplotlib is not installed here; checked its message and exit status")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if failures:
        print("FAILED:\n" + "\n".join(failures))
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
