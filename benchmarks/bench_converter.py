#!/usr/bin/env python3
"""Throughput of the stage-1 corpus converter on a generated VoiceAssistant-400K copy.

    tools/venv/bin/python benchmarks/bench_converter.py [--rows 20000] [--seconds 4.0]
        [--sr 22050] [--shards 10] [--workdir /tmp/bench_converter] [--keep]

Writes ``--rows`` rows in the real VoiceAssistant-400K schema (``split_name, index, round,
question, answer, answer_snac, question_audio`` with the Hugging Face ``{bytes, path}``
audio struct holding a WAV of ``--seconds`` at ``--sr``; a fifth of the dialogues have a
second round, which the first-turn filter drops) into ``--shards`` parquet shards named as
on the hub, then runs :func:`espnet_ext.data.corpora.convert_corpus` over it once, in a
fresh process, and prints rows per second (wall clock and per CPU second of the converter
process), audio seconds per second, that process's peak resident memory (after its
imports, and at its peak) and the extrapolation to the real corpus's ~470,000 rows.  The
converter streams row groups (``pyarrow.parquet.ParquetFile.iter_batches``) and writes
each utterance's Kaldi lines as it goes; what grows with the corpus is a few integers per
row of the first-turn pass, and one WAV file per kept row on disk.

The generated answers are 60-word paragraphs, near the corpus's typical assistant answer;
real questions last a few seconds (``--seconds``).  Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REAL_ROWS = 470_000


def _wav_bytes(seconds: float, sr: int, seed: int) -> bytes:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    wav = 0.3 * np.sin(2 * np.pi * (150 + 50 * rng.random()) * t) + 0.01 * rng.standard_normal(t.size)
    buf = io.BytesIO()
    sf.write(buf, wav.astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def write_corpus(root: Path, rows: int, shards: int, seconds: float, sr: int) -> Path:
    """``rows`` VoiceAssistant-400K rows in ``shards`` parquet files under ``root/data``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    audio_struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("split_name", pa.string()), ("index", pa.int64()), ("round", pa.string()),
                        ("question", pa.string()), ("answer", pa.string()), ("answer_snac", pa.string()),
                        ("question_audio", audio_struct)])
    clips = [_wav_bytes(seconds, sr, s) for s in range(16)]  # reused: encoding is not what is measured
    answer = " ".join(["The assistant explains the answer in plain words."] * 8)
    per_shard = -(-rows // shards)
    (root / "data").mkdir(parents=True, exist_ok=True)
    dialogue = 0
    for s in range(shards):
        n = min(per_shard, rows - s * per_shard)
        if n <= 0:
            break
        cols = {k: [] for k in schema.names}
        r = 0
        while r < n:
            turns = 2 if dialogue % 5 == 0 and r + 1 < n else 1
            for rd in range(turns):
                q = f"Question number {dialogue} about topic {dialogue % 97}?"
                if rd:
                    q = f"<USER>: {q}\n<ASSISTANT>: {answer[:40]}\n<USER>: And then?"
                cols["split_name"].append("ultrachat")
                cols["index"].append(dialogue)
                cols["round"].append(str(rd))
                cols["question"].append(q)
                cols["answer"].append(answer)
                cols["answer_snac"].append("# 1 2 3 #")
                cols["question_audio"].append({"bytes": clips[(dialogue + rd) % 16], "path": None})
                r += 1
            dialogue += 1
        # 500 rows of 4 s audio per row group: ~88 MB, near the 100 MB row groups of the hub's
        # parquet files; no dictionary for the audio, so every row stores its own bytes as
        # distinct recordings would (the 16 reused clips would otherwise be stored once)
        pq.write_table(pa.table(cols, schema=schema),
                       root / "data" / f"train-{s:05d}-of-{shards:05d}.parquet", row_group_size=500,
                       use_dictionary=["split_name", "round", "question", "answer", "answer_snac"])
    return root


def _status_mb(field: str) -> float:
    """A memory field of ``/proc/self/status`` (Linux) in MB: ``VmRSS`` (now), ``VmHWM`` (peak).

    Not ``getrusage``'s ``ru_maxrss``: Linux carries it across ``fork`` + ``exec``, so a
    child started from the corpus generator would report the generator's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def convert_child(src: str, out_dir: str, wav_dir: str) -> None:
    """The measured conversion (run in its own process): prints one JSON line."""
    from espnet_ext.data.corpora import convert_corpus

    rss_imported = _status_mb("VmRSS")
    t0, cpu0 = time.perf_counter(), time.process_time()
    report = convert_corpus("voiceassistant", src, out_dir, "train", wav_dir)
    print(json.dumps({"n_read": report.n_read, "n_written": report.n_written,
                      "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - cpu0,
                      "rss_after_imports_mb": rss_imported, "peak_rss_mb": _status_mb("VmHWM"),
                      "rss_at_end_mb": _status_mb("VmRSS")}))


def main(argv=None) -> int:
    if argv is None and sys.argv[1:2] == ["--child"]:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        convert_child(*sys.argv[2:5])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--seconds", type=float, default=4.0, help="audio seconds per question")
    p.add_argument("--sr", type=int, default=22050, help="source sampling rate (resampled to 16 kHz)")
    p.add_argument("--shards", type=int, default=10)
    p.add_argument("--workdir", default="/tmp/bench_converter")
    p.add_argument("--keep", action="store_true", help="keep the generated corpus and output")
    args = p.parse_args(argv)
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    src = write_corpus(work / "VoiceAssistant-400K", args.rows, args.shards, args.seconds, args.sr)
    gen_s = time.perf_counter() - t0
    child = subprocess.run([sys.executable, __file__, "--child", str(src), str(work / "data" / "train"),
                            str(work / "wav")], capture_output=True, text=True, check=False)
    if child.returncode != 0:
        sys.stderr.write(child.stderr[-3000:])
        return child.returncode
    r = json.loads(child.stdout.strip().splitlines()[-1])
    rows_per_s = r["n_read"] / r["wall_s"]
    written_per_s = r["n_written"] / r["wall_s"]
    out = {
        "rows_read": r["n_read"], "rows_written": r["n_written"], "generate_s": round(gen_s, 1),
        "convert_s": round(r["wall_s"], 1), "convert_cpu_s": round(r["cpu_s"], 1),
        "rows_read_per_s": round(rows_per_s, 1), "rows_read_per_cpu_s": round(r["n_read"] / r["cpu_s"], 1),
        "utts_written_per_s": round(written_per_s, 1),
        "audio_s_per_s": round(written_per_s * args.seconds, 1),
        "rss_after_imports_mb": round(r["rss_after_imports_mb"], 1), "peak_rss_mb": round(r["peak_rss_mb"], 1),
        "rss_at_end_mb": round(r["rss_at_end_mb"], 1),
        "extrapolated_470k_rows_min": round(REAL_ROWS / rows_per_s / 60, 1),
        "wav_bytes_per_utt": int(np.mean([os.path.getsize(f) for f in list((work / "wav").iterdir())[:200]])),
        "cpu_cores": os.cpu_count(),
    }
    print(json.dumps(out, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
