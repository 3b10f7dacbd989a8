#!/usr/bin/env python3
"""Throughput of the stage-1 corpus converter on a generated VoiceAssistant-400K copy.

    tools/venv/bin/python benchmarks/bench_converter.py [--rows 20000] [--seconds 4.0]
        [--sr 22050] [--shards 10] [--workdir /tmp/bench_converter] [--keep]

Writes ``--rows`` rows in the real VoiceAssistant-400K schema (``split_name, index, round,
question, answer, answer_snac, question_audio`` with the Hugging Face ``{bytes, path}``
audio struct holding a WAV of ``--seconds`` at ``--sr``; a fifth of the dialogues have a
second round, which the first-turn filter drops) into ``--shards`` parquet shards named as
on the hub, then runs :func:`espnet_ext.data.corpora.convert_corpus` over it once and
prints rows per second, audio seconds per second, the converter's peak resident memory
growth and the extrapolation to the real corpus's ~470,000 rows.  The converter streams
row groups (``pyarrow.parquet.ParquetFile.iter_batches``); what grows with the corpus is
the list of kept utterances' texts (written as one Kaldi dir at the end) and one WAV file
per kept row.

The generated answers are 60-word paragraphs, near the corpus's typical assistant answer;
real questions last a few seconds (``--seconds``).  Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
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
        pq.write_table(pa.table(cols, schema=schema),
                       root / "data" / f"train-{s:05d}-of-{shards:05d}.parquet", row_group_size=500)
    return root


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--seconds", type=float, default=4.0, help="audio seconds per question")
    p.add_argument("--sr", type=int, default=22050, help="source sampling rate (resampled to 16 kHz)")
    p.add_argument("--shards", type=int, default=10)
    p.add_argument("--workdir", default="/tmp/bench_converter")
    p.add_argument("--keep", action="store_true", help="keep the generated corpus and output")
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from espnet_ext.data.corpora import convert_corpus

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    src = write_corpus(work / "VoiceAssistant-400K", args.rows, args.shards, args.seconds, args.sr)
    gen_s = time.perf_counter() - t0
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    report = convert_corpus("voiceassistant", src, work / "data" / "train", "train", work / "wav")
    conv_s = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows_per_s = report.n_read / conv_s
    written_per_s = report.n_written / conv_s
    out = {
        "rows_read": report.n_read, "rows_written": report.n_written, "generate_s": round(gen_s, 1),
        "convert_s": round(conv_s, 1), "rows_read_per_s": round(rows_per_s, 1),
        "utts_written_per_s": round(written_per_s, 1),
        "audio_s_per_s": round(written_per_s * args.seconds, 1),
        "peak_rss_growth_mb": round((rss1 - rss0) / 1024, 1),
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
