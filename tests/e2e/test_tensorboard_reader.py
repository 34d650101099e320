#!/usr/bin/env python3
"""TensorBoard's own reader on rlcu's event files (ctest `tensorboard_reader`).

Makes (once) a virtual environment with `pip install tensorboard` under the build directory, then:
  - GRPO: a 4-step CPU smoke run (configs/smoke_cpu.json, checkpoints every 2 steps), its step-4 checkpoint removed
    and the run resumed from step 2, so that steps 3 and 4 are written twice, in two event files;
  - SFT: a 3-step `rlcu sft` run of the same tiny model on synthetic arithmetic (held-out loss at steps 0, 2, 3);
and for each run checks that tensorboard.backend.event_processing.event_accumulator.EventAccumulator loads exactly
the numeric fields of metrics.jsonl: the same tags, each step once and in order, the values as float32 (booleans as
0 / 1). Every record's two CRCs are also checked with TensorBoard's masked_crc32c.

Exit 77 (ctest SKIP_RETURN_CODE) when the venv or the pip install cannot be made, e.g. without network access.

usage: test_tensorboard_reader.py --rlcu BIN --source REPO_ROOT --venv DIR
"""
import argparse
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile

SKIP = 77

READER = r"""
import json, math, os, struct, sys
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

run = sys.argv[1]
files = sorted(f for f in os.listdir(run) if f.startswith("events.out.tfevents."))
records = 0
for name in files:
    data = open(os.path.join(run, name), "rb").read()
    at = 0
    while at < len(data):
        header = data[at:at + 8]
        (n,) = struct.unpack("<Q", header)
        (hcrc,) = struct.unpack("<I", data[at + 8:at + 12])
        payload = data[at + 12:at + 12 + n]
        (pcrc,) = struct.unpack("<I", data[at + 12 + n:at + 16 + n])
        assert hcrc == masked_crc32c(header), (name, at, "length crc")
        assert pcrc == masked_crc32c(payload), (name, at, "data crc")
        at += 16 + n
        records += 1
ea = event_accumulator.EventAccumulator(run, size_guidance={event_accumulator.SCALARS: 0})
ea.Reload()
out = {tag: [[e.step, e.value] for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}
print(json.dumps({"files": files, "records": records, "scalars": out}))
"""


def f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def expected_scalars(metrics_path):
    want = {}
    with open(metrics_path) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            for k, v in r.items():
                if k == "step":
                    continue
                if isinstance(v, bool):
                    v = 1.0 if v else 0.0
                elif not isinstance(v, (int, float)):
                    continue
                want.setdefault(k, []).append([r["step"], f32(float(v))])
    return want


def run(cmd, cwd):
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"FAILED ({p.returncode}): {' '.join(cmd)}\n{p.stdout}{p.stderr}")
    return p.stdout


def ensure_venv(venv):
    py = os.path.join(venv, "bin", "python")
    check = [py, "-c", "import tensorboard.backend.event_processing.event_accumulator"]
    if os.path.exists(py) and subprocess.run(check, capture_output=True).returncode == 0:
        return py
    try:
        if not os.path.exists(py):
            subprocess.run([sys.executable, "-m", "venv", venv], check=True, capture_output=True, timeout=300)
        subprocess.run([py, "-m", "pip", "install", "--disable-pip-version-check", "-q", "tensorboard"], check=True,
                       capture_output=True, text=True, timeout=900)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        detail = getattr(e, "stderr", "") or ""
        print(f"SKIP: cannot make a venv with tensorboard in {venv}: {e}\n{detail[-2000:]}")
        sys.exit(SKIP)
    if subprocess.run(check, capture_output=True).returncode != 0:
        print(f"SKIP: tensorboard installed in {venv} but its event reader does not import")
        sys.exit(SKIP)
    return py


def check_run(py, run_dir, n_files):
    got = json.loads(run([py, "-c", READER, run_dir], cwd=run_dir))
    want = expected_scalars(os.path.join(run_dir, "metrics.jsonl"))
    errors = []
    if len(got["files"]) != n_files:
        errors.append(f"{len(got['files'])} event files, expected {n_files}: {got['files']}")
    if set(got["scalars"]) != set(want):
        errors.append(f"tags differ: only in TensorBoard {sorted(set(got['scalars']) - set(want))}, "
                      f"only in metrics.jsonl {sorted(set(want) - set(got['scalars']))}")
    for tag in sorted(set(want) & set(got["scalars"])):
        g, w = got["scalars"][tag], want[tag]
        if [s for s, _ in g] != [s for s, _ in w]:
            errors.append(f"{tag}: steps {[s for s, _ in g]} in TensorBoard, {[s for s, _ in w]} in metrics.jsonl")
            continue
        for (s, gv), (_, wv) in zip(g, w):
            if not (gv == wv or (math.isnan(gv) and math.isnan(wv))):
                errors.append(f"{tag} step {s}: {gv} in TensorBoard, {wv} in metrics.jsonl")
    if errors:
        sys.exit(f"FAILED: {run_dir}:\n  " + "\n  ".join(errors))
    n_points = sum(len(v) for v in want.values())
    print(f"ok: {run_dir}: {len(want)} tags, {n_points} points, {got['records']} records in {got['files']}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rlcu", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--venv", required=True)
    a = ap.parse_args()
    a.rlcu, a.source, a.venv = (os.path.abspath(x) for x in (a.rlcu, a.source, a.venv))
    py = ensure_venv(a.venv)
    work = tempfile.mkdtemp(prefix="rlcu_tb_")
    try:
        # GRPO, resumed over two already-written steps.
        grpo = os.path.join(work, "grpo")
        run([a.rlcu, "train", "configs/smoke_cpu.json", "--set", "train.steps=4", "--set", "run.save_every=2",
             "--set", "train.prompts_per_step=4", "--set", "run.output_dir=" + grpo], cwd=a.source)
        shutil.rmtree(os.path.join(grpo, "checkpoints", "step-000004"))
        run([a.rlcu, "train", "--resume", grpo], cwd=a.source)
        steps = [json.loads(l)["step"] for l in open(os.path.join(grpo, "metrics.jsonl")) if l.strip()]
        if steps != [1, 2, 3, 4]:
            sys.exit(f"FAILED: metrics.jsonl steps {steps} after the resume")
        check_run(py, grpo, n_files=2)

        # SFT with held-out loss points.
        data = os.path.join(work, "sft.jsonl")
        run([a.rlcu, "data", "synth", "--task", "arithmetic", "--n", "60", "--sft", "--seed", "1", "--out", data],
            cwd=a.source)
        sft = os.path.join(work, "sft")
        cfg = {"run": {"device": "cpu", "output_dir": sft},
               "model": {"path": os.path.join(a.source, "tests/fixtures/models/byte-tiny"), "chat_template": "none"},
               "train": {"micro_batch_tokens": 512}, "data": {"max_prompt_tokens": 0},
               "sft": {"path": data, "steps": 3, "batch_tokens": 512, "eval_every": 2, "eval_fraction": 0.2}}
        cfg_path = os.path.join(work, "sft.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        run([a.rlcu, "sft", cfg_path], cwd=a.source)
        evals = [r["step"] for r in map(json.loads, open(os.path.join(sft, "metrics.jsonl"))) if "eval_loss" in r]
        if evals != [0, 2, 3]:
            sys.exit(f"FAILED: eval_loss at steps {evals}, expected [0, 2, 3]")
        check_run(py, sft, n_files=1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
