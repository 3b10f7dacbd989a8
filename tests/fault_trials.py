#!/usr/bin/env python3
"""SIGKILL fault trials of the recipe's jobs on tiny random models (``make fault-trials``).

Not part of ``make test`` (it takes several minutes).  For each job:

1. run it once unbroken and keep its outputs;
2. per trial (seeded): start the same job in a fresh directory, SIGKILL it after a
   random delay drawn uniformly between the moment the unbroken run wrote its first
   output file and 95 % of its wall time (a kill during Python start-up proves
   nothing), rerun the same command (resuming where the job supports it) until it
   exits 0 (at most 3 reruns), and compare the outputs with the unbroken run's.

A trial "survived" when a rerun completed; "anything lost" counts trials whose final
outputs differ from the unbroken run's (or that never completed).  The table printed at
the end is the one quoted in the README.

    tools/venv/bin/python tests/fault_trials.py --trials 8 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from helpers import REPO, build_tiny_dumps, train_cmd, train_config  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@dataclass
class Job:
    """One recipe job: ``command(out)`` runs it into ``out``; ``compare(ref, out)`` lists
    the outputs of ``out`` that differ from the unbroken run's in ``ref``."""

    name: str
    command: Callable[[Path], List[str]]
    compare: Callable[[Path, Path], List[str]]  # differences (empty: equal)
    by_default: bool = True  # False: only when --jobs names it (a long job)
    seconds: float = 0.0  # wall time of the unbroken run
    first_output: float = 0.0  # when its first output file appeared (start-up before it)
    trials: List[dict] = field(default_factory=list)


def run(cmd: List[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)


def compare_states(a: Path, b: Path, names: List[str]) -> List[str]:
    import torch

    diffs = []
    for n in names:
        if not (b / n).exists():
            diffs.append(f"{n} missing")
            continue
        sa = torch.load(a / n, map_location="cpu", weights_only=False)
        sb = torch.load(b / n, map_location="cpu", weights_only=False)
        if "model" in sa:  # a training checkpoint: its model and its epoch
            if sa["reporter"]["epoch"] != sb["reporter"]["epoch"]:
                diffs.append(f"{n}: epoch {sb['reporter']['epoch']}")
            sa, sb = sa["model"], sb["model"]
        for k in sa:
            if not torch.allclose(sa[k], sb[k], atol=1e-6, rtol=0):
                diffs.append(f"{n}:{k}")
    return diffs


def compare_files(a: Path, b: Path, names: List[str]) -> List[str]:
    return [n for n in names if not (b / n).is_file() or (a / n).read_bytes() != (b / n).read_bytes()]


def compare_dump(a: Path, b: Path) -> List[str]:
    import kaldiio
    import numpy as np

    diffs = compare_files(a, b, ["text", "answer", "llm_len.speech", "llm_len.text"])
    if not (b / "enc_feats.scp").is_file():
        return diffs + ["enc_feats.scp missing"]
    fa, fb = kaldiio.load_scp(str(a / "enc_feats.scp")), kaldiio.load_scp(str(b / "enc_feats.scp"))
    if sorted(fa) != sorted(fb):
        return diffs + ["enc_feats.scp keys"]
    diffs += [f"enc_feats[{u}]" for u in fa if not np.allclose(fa[u], fb[u], atol=1e-5)]
    return diffs


def compare_importance(a: Path, b: Path) -> List[str]:
    from safetensors.torch import load_file

    if not (b / "scores.safetensors").is_file():
        return ["scores.safetensors missing"]
    sa, sb = load_file(a / "scores.safetensors"), load_file(b / "scores.safetensors")
    diffs = [k for k in sa if k not in sb or not (sa[k] - sb[k]).abs().max() <= 1e-6 * (1 + sa[k].abs().max())]
    ta, tb = a / "table1.json", b / "table1.json"
    if not tb.is_file() or json.loads(ta.read_text()).get("table") != json.loads(tb.read_text()).get("table"):
        diffs.append("table1.json")
    return diffs


def build_jobs(root: Path, llm: Path, whisper: Path) -> List[Job]:
    conf = train_config(root, llm, whisper, max_epoch=5, num_iters_per_epoch=4,
                        scheduler_conf={"total_steps": 20, "warmup_ratio": 0.2})
    py = [sys.executable, "-m"]
    ref_model = root / "ref_model"
    if not (ref_model / "5epoch.pth").exists():
        r = run(py + ["espnet_ext.bin.speechllm_train", *train_cmd(root, conf, ref_model)])
        if r.returncode:
            raise SystemExit(r.stderr[-3000:])

    def train(out: Path) -> List[str]:
        return py + ["espnet_ext.bin.speechllm_train", *train_cmd(root, conf, out, "--resume", "true")]

    def train_sharded(out: Path) -> List[str]:  # 2 gloo processes, FSDP2, DCP checkpoints
        return py + ["torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                     "espnet_ext.bin.speechllm_train", "--multiprocessing_distributed", "false",
                     "--dist_backend", "gloo",
                     *train_cmd(root, conf, out, "--resume", "true", "--sharding_conf", "param_dtype=float32")]

    def decode(out: Path) -> List[str]:
        return py + ["espnet_ext.bin.speechllm_inference", "--config", str(ref_model / "config.yaml"),
                     "--model_file", str(ref_model / "5epoch.pth"),
                     "--modality", "speech", "--data_dir", str(root / "dump/dev"), "--output_dir", str(out / "s2t"),
                     "--modality", "text", "--data_dir", str(root / "dump/train"), "--output_dir", str(out / "t2t"),
                     "--batch_size", "2", "--max_new_tokens", "6"]

    def dump(out: Path) -> List[str]:
        return py + ["espnet_ext.bin.dump_features", "--whisper", str(whisper), "--llm", str(llm),
                     "--data_dir", str(root / "data/train"), "--out_dir", str(out / "train"),
                     "--data_dir", str(root / "data/dev"), "--out_dir", str(out / "dev"),
                     "--downsample_rate", "5", "--batch_size", "2"]

    def importance(out: Path) -> List[str]:
        return py + ["espnet_ext.bin.importance_score", "--config", str(REPO / "conf/importance.yaml"),
                     "--model_config", str(ref_model / "config.yaml"), "--model_file", str(ref_model / "5epoch.pth"),
                     "--data_dir", str(root / "dump/train"), "--eval_dir", str(root / "dump/dev"),
                     "--output_dir", str(out)]

    warmup_conf = root / "warmup.yaml"
    warmup_conf.write_text(yaml.safe_dump({
        "warmup_conf": {"steps": 40, "batch_size": 4, "warmup_steps": 4, "eval_every": 10, "checkpoint_every": 5},
        "alignment_conf": {"num_utts": 0}}))

    def warmup(out: Path) -> List[str]:
        return py + ["espnet_ext.bin.adaptor_warmup", "--config", str(warmup_conf),
                     "--model_config", str(ref_model / "config.yaml"), "--train_dump", str(root / "dump/train"),
                     "--valid_dump", str(root / "dump/dev"), "--output_dir", str(out)]

    return [
        Job("training (ESPnet Trainer, --resume true)", train,
            lambda a, b: compare_states(a, b, ["5epoch.pth", "checkpoint.pth"])),
        Job("sharded training (FSDP2, 2 processes, DCP, --resume true)", train_sharded,
            lambda a, b: compare_states(a, b, ["5epoch.pth"]), by_default=False),  # ~2 min a trial
        Job("decoding (S2T + T2T)", decode,
            lambda a, b: compare_files(a, b, ["s2t/hyp", "t2t/hyp"])),
        Job("feature dump (stage 2)", dump,
            lambda a, b: compare_dump(a / "train", b / "train") + compare_dump(a / "dev", b / "dev")),
        Job("importance scoring + Table 1 (stages 3, 6)", importance, compare_importance),
        Job("adaptor CTC warm-up (stage 2)", warmup, lambda a, b: compare_states(a, b, ["adaptor.pth"])),
    ]


def trial(job: Job, ref: Path, out: Path, rng: random.Random) -> dict:
    delay = rng.uniform(job.first_output, 0.95 * job.seconds)  # a trial run can be a bit faster
    proc = subprocess.Popen(job.command(out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        proc.wait(timeout=delay)
        killed = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = True
    # what the killed run had written (0: it died before its first output)
    files_at_kill = sum(1 for f in out.rglob("*") if f.is_file()) if out.exists() else 0
    reruns, rc, err = 0, 0 if not killed else 1, ""
    while rc != 0 and reruns < 3:
        r = run(job.command(out))
        reruns, rc, err = reruns + 1, r.returncode, r.stderr[-600:]
    diffs = job.compare(ref, out) if rc == 0 else ["did not complete"]
    return {"delay": round(delay, 2), "killed": killed, "files_at_kill": files_at_kill, "reruns": reruns,
            "completed": rc == 0, "diffs": diffs[:5], "error": err if rc else ""}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=8, help="SIGKILL trials per job")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="", help="keep the trial dirs here (default: a temp dir)")
    p.add_argument("--jobs", default="", help="only the jobs whose name contains this text (default: every "
                   "job but the sharded training, which --jobs sharded runs)")
    args = p.parse_args()
    from espnet_ext.convert.tiny import build_tiny_llm, build_tiny_whisper

    root = Path(args.workdir or tempfile.mkdtemp(prefix="speechimp-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    llm, whisper = root / "llm", root / "whisper"
    if not llm.exists():
        build_tiny_llm(llm)
        build_tiny_whisper(whisper)
        build_tiny_dumps(root, llm, whisper)
    rng = random.Random(args.seed)
    jobs = [j for j in build_jobs(root, llm, whisper) if (args.jobs in j.name if args.jobs else j.by_default)]
    for job in jobs:
        ref = root / f"ref_{jobs.index(job)}"
        shutil.rmtree(ref, ignore_errors=True)
        t0 = time.perf_counter()
        log = root / f"ref_{jobs.index(job)}.log"
        with open(log, "w") as err:
            proc = subprocess.Popen(job.command(ref), env=ENV, stdout=subprocess.DEVNULL, stderr=err)
            while proc.poll() is None:
                if not job.first_output and ref.exists() and any(f.is_file() for f in ref.rglob("*")):
                    job.first_output = time.perf_counter() - t0
                time.sleep(0.05)
        job.seconds = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"{job.name}: the unbroken run failed:\n{log.read_text()[-3000:]}")
        for i in range(args.trials):
            out = root / f"trial_{jobs.index(job)}_{i}"
            shutil.rmtree(out, ignore_errors=True)
            res = trial(job, ref, out, rng)
            job.trials.append(res)
            print(f"{job.name} trial {i}: {res}", flush=True)
    print("\n| job | SIGKILL trials | killed after writing outputs | survived | anything lost | unbroken run "
          "(start-up) |")
    print("|---|---|---|---|---|---|")
    for job in jobs:
        t = job.trials
        lost = sum(1 for x in t if x["diffs"])
        wrote = sum(x["killed"] and x["files_at_kill"] > 0 for x in t)
        print(f"| {job.name} | {len(t)} (seed {args.seed}) | {wrote} | "
              f"{sum(x['completed'] for x in t)} | {lost} | {job.seconds:.1f} s ({job.first_output:.1f} s) |")
    if not args.workdir:
        shutil.rmtree(root, ignore_errors=True)
    if any(x["diffs"] for job in jobs for x in job.trials):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
