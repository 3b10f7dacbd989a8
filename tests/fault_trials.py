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
the end is the one quoted in the README.  A job whose inputs come from earlier stages
gets them copied into each trial's directory first (``prepare``); they are not outputs.

    tools/venv/bin/python tests/fault_trials.py --trials 8 --seed 0
    tools/venv/bin/python tests/fault_trials.py --trials 6 --seed 0 --jobs "stage 1" --jobs "stage 6"
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from helpers import (  # noqa: E402
    QA,
    REPO,
    build_tiny_dumps,
    corpus_rows,
    train_cmd,
    train_config,
    write_corpus,
    write_noise_kaldi_dir,
)

ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
RECIPE = REPO / "egs2" / "speechimp"


@dataclass
class Job:
    """One recipe job: ``command(out)`` runs it into ``out``; ``compare(ref, out)`` lists
    the outputs of ``out`` that differ from the unbroken run's in ``ref``."""

    name: str
    command: Callable[[Path], List[str]]
    compare: Callable[[Path, Path], List[str]]  # differences (empty: equal)
    prepare: Optional[Callable[[Path], None]] = None  # puts the job's inputs into ``out`` first
    cwd: Optional[Path] = None  # where the command runs (default: here)
    env: Dict[str, str] = field(default_factory=dict)  # added to the environment
    continued: str = ""  # a regex the rerun logs when it continues a killed run's partial work
    by_default: bool = True  # False: only when --jobs names it (a long job)
    seconds: float = 0.0  # wall time of the unbroken run
    first_output: float = 0.0  # when its first output file appeared (start-up before it)
    trials: List[dict] = field(default_factory=list)

    def start(self, out: Path, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.command(out), env={**ENV, **self.env}, cwd=self.cwd, **kw)

    def run(self, out: Path) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(out), env={**ENV, **self.env}, cwd=self.cwd, capture_output=True,
                              text=True, timeout=900)


def wait_group_gone(pgid: int, timeout: float = 10.0) -> None:
    """Wait until no live (non-zombie) process of process group ``pgid`` is left."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        alive = False
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
                alive = True
                break
        if not alive:
            return
        time.sleep(0.05)


def run(cmd: List[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)


def files_of(d: Path) -> Set[Path]:
    return {f for f in d.rglob("*") if f.is_file()} if d.exists() else set()


def leftovers(d: Path) -> List[str]:
    """Temporary files and dirs a killed atomic write left behind (``.<name>.<random>.tmp``)."""
    return sorted(str(f.relative_to(d)) for f in d.rglob(".*.tmp")) if d.exists() else []


def compare_trees(a: Path, b: Path, root_a: Optional[Path] = None, root_b: Optional[Path] = None) -> List[str]:
    """Every file under ``a`` equals the same file under ``b`` and ``b`` has no other (hidden
    bookkeeping excepted); in the bytes, ``root_a`` and ``root_b`` (default: ``a``, ``b``),
    the unbroken run's and the trial's dirs, are replaced first."""
    def listing(d: Path) -> Dict[str, Path]:
        return {str(f.relative_to(d)): f for f in files_of(d)
                if not any(part.startswith(".") for part in f.relative_to(d).parts)}

    la, lb = listing(a), listing(b)
    diffs = [f"{n} missing" for n in sorted(set(la) - set(lb))] + [f"{n} extra" for n in sorted(set(lb) - set(la))]
    ra, rb = str((root_a or a).resolve()).encode(), str((root_b or b).resolve()).encode()
    # (a trial dir's own path, in text outputs, is the only allowed difference)
    for n in sorted(set(la) & set(lb)):
        da, db = la[n].read_bytes().replace(ra, b"<dir>"), lb[n].read_bytes().replace(rb, b"<dir>")
        if n.endswith("demo_manifest.json"):  # its sha256 covers the wav paths, i.e. the trial's dir
            da, db = (json.dumps({**json.loads(x), "sha256": None}).encode() for x in (da, db))
        if da != db:
            diffs.append(n)
    return diffs


def approx_equal(x, y, rel: float = 1e-6) -> bool:
    """JSON values equal, numbers to ``rel``."""
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(approx_equal(x[k], y[k], rel) for k in x)
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(approx_equal(u, v, rel) for u, v in zip(x, y))
    if isinstance(x, float) or isinstance(y, float):
        return isinstance(x, (int, float)) and isinstance(y, (int, float)) and (
            x == y or abs(x - y) <= rel * max(abs(x), abs(y)))
    return x == y


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
    if (a / "enc_feats.ark").read_bytes() != (b / "enc_feats.ark").read_bytes():
        diffs.append("enc_feats.ark bytes")
    return diffs


def compare_importance(a: Path, b: Path, table1: bool = True) -> List[str]:
    from safetensors.torch import load_file

    if not (b / "scores.safetensors").is_file():
        return [f"{b.name}/scores.safetensors missing"]
    sa, sb = load_file(a / "scores.safetensors"), load_file(b / "scores.safetensors")
    diffs = [k for k in sa if k not in sb or not (sa[k] - sb[k]).abs().max() <= 1e-6 * (1 + sa[k].abs().max())]
    ta, tb = a / "table1.json", b / "table1.json"
    if table1 and (not tb.is_file()
                   or json.loads(ta.read_text()).get("table") != json.loads(tb.read_text()).get("table")):
        diffs.append(f"{b.name}/table1.json")
    return diffs


def compare_analysis(a: Path, b: Path) -> List[str]:
    """The stage-6 analysis: every system's reports, analysis{,_detail}.json (less the stamp,
    which names the trial's paths) and the figures."""
    ea, eb = a / "exp", b / "exp"
    diffs = compare_importance(ea / "importance/full", eb / "importance/full")
    diffs += compare_importance(ea / "importance/full/speech", eb / "importance/full/speech", table1=False)
    for name in ("analysis.json", "analysis_detail.json"):
        fa, fb = ea / "results" / name, eb / "results" / name
        if not fb.is_file():
            diffs.append(f"{name} missing")
            continue
        ja, jb = json.loads(fa.read_text()), json.loads(fb.read_text())
        ja.pop("stamp", None), jb.pop("stamp", None)
        if not approx_equal(ja, jb):
            diffs.append(name)
    return diffs + compare_trees(ea / "results/figures", eb / "results/figures")


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

    if not (root / "data/big").exists():  # a set long enough to be killed in its middle
        import numpy as np

        rng = np.random.default_rng(1)
        write_noise_kaldi_dir(root / "data/big", root / "wav/big", [
            (f"spk-big{i:03d}", "spk", 0.5 + 0.01 * (i % 100), QA[i % len(QA)][0], [QA[i % len(QA)][1]])
            for i in range(400)], rng, scale=0.05)

    def dump(out: Path) -> List[str]:
        return py + ["espnet_ext.bin.dump_features", "--whisper", str(whisper), "--llm", str(llm),
                     "--data_dir", str(root / "data/train"), "--out_dir", str(out / "train"),
                     "--data_dir", str(root / "data/big"), "--out_dir", str(out / "big"),
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

    # ---- stage 1: data preparation, the demo and the four real-corpus converters + combine
    def data_demo(out: Path) -> List[str]:
        # flite (a process per utterance): espeak-ng's output depends on what the process spoke
        # before (espnet_ext/data/tts.py), so a rerun that skips finished sets speaks the rest
        # a few samples differently from an unbroken run
        return ["bash", "local/data.sh", "--data_source", "demo", "--datadir", f"{out}/data",
                "--max_utts_per_set", "4", "--demo_voices", "flite"]

    corpora = {"voiceassistant": "VOICEASSISTANT_400K", "spoken_alpaca": "SPOKEN_ALPACA_GPT4",
               "llama_questions": "LLAMA_QUESTIONS", "web_questions": "SPOKEN_WEB_QUESTIONS"}
    if not (root / "corpora").exists():
        for c in corpora:
            write_corpus(root / "corpora.tmp" / c, c, corpus_rows(c, 24))
        os.replace(root / "corpora.tmp", root / "corpora")

    def data_real(out: Path) -> List[str]:
        return ["bash", "local/data.sh", "--data_source", "real", "--datadir", f"{out}/data", "--n_dev", "6"]

    # ---- stage 6: the analysis of a trained system against the base report (the base model:
    # the training config without a checkpoint, as stage 2's model.yaml)
    from espnet_ext.tasks.systems import SystemInfo, write_system

    imp_conf = root / "importance_small.yaml"
    imp_conf.write_text(yaml.safe_dump({
        "scoring": {"num_utts": 4, "batch_size": 2}, "deactivation": {"num_utts": 2, "batch_size": 2},
        "analysis": {"layers": [0, 3], "change_layer": 1, "max_px": 16}}))
    base_report = root / "base_report"
    if not (base_report / "summary.json").exists():
        r = run(py + ["espnet_ext.bin.importance_score", "--config", str(imp_conf), "--model_config",
                      str(conf), "--data_dir", str(root / "dump/train"),
                      "--output_dir", str(base_report)])
        if r.returncode:
            raise SystemExit(r.stderr[-3000:])

    def analysis_inputs(out: Path) -> None:  # stage 3's base report, stage 4's system
        exp = out / "exp"
        shutil.copytree(base_report, exp / "importance/base")
        (exp / "full").mkdir(parents=True)
        shutil.copy(ref_model / "config.yaml", exp / "full/config.yaml")
        (exp / "full/valid.loss.best.pth").symlink_to(ref_model / "5epoch.pth")
        write_system(exp / "full", SystemInfo("Full-FT", "full_ft"))

    def analyze(out: Path) -> List[str]:
        return py + ["espnet_ext.bin.importance_analyze", "--config", str(imp_conf), "--exp_dir", str(out / "exp"),
                     "--systems", "full", "--base_model_config", str(conf),
                     "--data_dir", str(root / "dump/train"), "--eval_dir", str(root / "dump/dev"),
                     "--checkpoint", "valid.loss.best.pth"]

    # ---- stage 6: QA scoring of 12 decode dirs of 3000 questions (stage 5's hyp files and the
    # references of stage 2's dumps, made up here)
    from espnet_ext.data.kaldi_dir import Utterance, write_kaldi_dir
    from espnet_ext.eval.results import read_references

    decodes = [(tag, s, m) for tag in ("noft", "cascade", "full") for s in ("qa1", "qa2") for m in ("text", "speech")]
    for s in ("qa1", "qa2"):
        if not (root / "dump" / s).exists():
            write_kaldi_dir(root / "dump" / s, [
                Utterance(f"q{s}-{i:04d}", "q", "none.wav", f"Question {i} of {s}?",
                          [f"answer {i} {s}", f"{i} alternative", "São Paulo" if i % 7 == 0 else f"number {i}"])
                for i in range(3000)])

    def qa_inputs(out: Path) -> None:
        for k, (tag, s, m) in enumerate(decodes):
            d = out / "exp" / tag / f"decode_{s}_{m}"
            d.mkdir(parents=True)
            refs = read_references(root / "dump" / s)
            (d / "hyp").write_text("".join(
                f"{u} The answer is {refs[u][0]}\n" if (i + k) % 3 else f"{u} I am not sure.\n"
                for i, u in enumerate(sorted(refs))))
            (d / "decode_report.json").write_text(json.dumps({
                "n_utts": len(refs), "n_new_tokens": 6 * len(refs), "seconds": 1.5, "seconds_per_utt": 1.5 / len(refs),
                "batch_size": 2, "max_new_tokens": 8}) + "\n")

    def score(out: Path) -> List[str]:
        io = []
        for tag, s, m in decodes:
            io += ["--decode_dir", str(out / "exp" / tag / f"decode_{s}_{m}"), "--ref_dir", str(root / "dump" / s)]
        return py + ["espnet_ext.bin.score_qa", *io]

    # ---- stage 6: RESULTS.md from the scored decodes and the analysis (made once, unbroken)
    results_exp = root / "results_exp"
    if not (results_exp / "results/analysis.json").exists():
        build = root / "results_build"
        shutil.rmtree(build, ignore_errors=True)
        analysis_inputs(build)
        qa_inputs(build)
        for cmd in (analyze(build), score(build)):
            r = run(cmd)
            if r.returncode:
                raise SystemExit(r.stderr[-3000:])
        os.replace(build / "exp", results_exp)
    stage_times = root / "stage_times.tsv"
    stage_times.write_text("1\t12.5\n2\t30.0\n3\t8.0\n4\t60.0\n5\t20.0\n")

    def results(out: Path) -> List[str]:
        return py + ["espnet_ext.bin.make_results", "--exp_dir", str(results_exp), "--systems", "noft cascade full",
                     "--stage_times", str(stage_times), "--running_stage", "6=5", "--summary",
                     str(out / "summary.json"), "--out_md", str(out / "RESULTS.md"),
                     "--meta", "date=2025-01-01T00:00Z", "--meta", "commit=fault-trials"]

    return [
        Job("training (ESPnet Trainer, --resume true)", train,
            lambda a, b: compare_states(a, b, ["5epoch.pth", "checkpoint.pth"])),
        Job("sharded training (FSDP2, 2 processes, DCP, --resume true)", train_sharded,
            lambda a, b: compare_states(a, b, ["5epoch.pth"]), by_default=False),  # ~2 min a trial
        Job("decoding (S2T + T2T)", decode,
            lambda a, b: compare_files(a, b, ["s2t/hyp", "t2t/hyp"]),
            continued=r"resuming; \d+ batches already decoded"),
        Job("feature dump (stage 2)", dump,
            lambda a, b: compare_dump(a / "train", b / "train") + compare_dump(a / "big", b / "big"),
            continued=r"continuing an interrupted dump: \d+ of \d+ batches"),
        Job("importance scoring + Table 1 (stages 3, 6)", importance, compare_importance),
        Job("adaptor CTC warm-up (stage 2)", warmup, lambda a, b: compare_states(a, b, ["adaptor.pth"])),
        Job("data preparation, demo (stage 1: local/data.sh)", data_demo,
            lambda a, b: compare_trees(a / "data", b / "data", a, b) if (b / "data").exists() else ["data missing"],
            cwd=RECIPE),
        Job("data preparation, real corpora (stage 1: local/data.sh)", data_real,
            lambda a, b: compare_trees(a / "data", b / "data", a, b) if (b / "data").exists() else ["data missing"],
            cwd=RECIPE, env={v: str(root / "corpora" / c) for c, v in corpora.items()}),
        Job("importance analysis, Fig. 1-4 (stage 6)", analyze, compare_analysis, prepare=analysis_inputs),
        Job("QA scoring (stage 6)", score, lambda a, b: compare_trees(a / "exp", b / "exp", a, b), prepare=qa_inputs),
        Job("RESULTS.md (stage 6)", results, compare_trees),
    ]


def trial(job: Job, ref: Path, out: Path, rng: random.Random) -> dict:
    delay = rng.uniform(job.first_output, 0.95 * job.seconds)  # a trial run can be a bit faster
    if job.prepare:
        job.prepare(out)
    inputs = files_of(out)
    proc = job.start(out, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        first_rc = proc.wait(timeout=delay)  # ended on its own (an error, if not 0)
        killed = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        killed, first_rc = True, None
        wait_group_gone(proc.pid)  # its other processes (a job under bash) die a moment later
    # what the killed run had written (0: it died before its first output)
    files_at_kill = len(files_of(out) - inputs)
    reruns, rc, err, continued = 0, 1 if killed else first_rc, "", False
    while rc != 0 and reruns < 3:
        r = job.run(out)
        if reruns == 0 and job.continued:
            continued = re.search(job.continued, r.stderr) is not None
        reruns, rc, err = reruns + 1, r.returncode, r.stderr[-600:]
    diffs = job.compare(ref, out) if rc == 0 else ["did not complete"]
    return {"delay": round(delay, 2), "killed": killed, "first_rc": first_rc, "files_at_kill": files_at_kill,
            "reruns": reruns, "continued": continued, "completed": rc == 0, "diffs": diffs[:5],
            "error": err if rc else "", "temporaries_left": leftovers(out)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=8, help="SIGKILL trials per job")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="", help="keep the trial dirs here (default: a temp dir)")
    p.add_argument("--jobs", action="append", default=[],
                   help="only the jobs whose name contains this text (repeatable: any of them; default: every "
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
    jobs = [j for j in build_jobs(root, llm, whisper)
            if (any(t in j.name for t in args.jobs) if args.jobs else j.by_default)]
    for job in jobs:
        rng = random.Random(f"{args.seed}/{job.name}")  # each job's draws, whichever jobs run
        ref = root / f"ref_{jobs.index(job)}"
        shutil.rmtree(ref, ignore_errors=True)
        if job.prepare:
            job.prepare(ref)
        inputs = files_of(ref)
        t0 = time.perf_counter()
        log = root / f"ref_{jobs.index(job)}.log"
        with open(log, "w") as err:
            proc = job.start(ref, stdout=subprocess.DEVNULL, stderr=err)
            while proc.poll() is None:
                if not job.first_output and files_of(ref) - inputs:
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
    print("\n| job | SIGKILL trials | killed after writing outputs | survived | anything lost | rerun continued "
          "partial work | temporaries left | unbroken run (start-up) |")
    print("|---|---|---|---|---|---|---|---|")
    for job in jobs:
        t = job.trials
        lost = sum(1 for x in t if x["diffs"])
        wrote = sum(x["killed"] and x["files_at_kill"] > 0 for x in t)
        went_on = sum(x["continued"] for x in t) if job.continued else "-"
        left = sum(bool(x["temporaries_left"]) for x in t)
        print(f"| {job.name} | {len(t)} (seed {args.seed}) | {wrote} | "
              f"{sum(x['completed'] for x in t)} | {lost} | {went_on} | {left} | "
              f"{job.seconds:.1f} s ({job.first_output:.1f} s) |")
    if not args.workdir:
        shutil.rmtree(root, ignore_errors=True)
    if any(x["diffs"] for job in jobs for x in job.trials):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
