"""Batched greedy decoding of a dump directory, T2T or S2T (recipe stage 5).

The model is built once (from an exp dir's ``config.yaml`` + checkpoint, or from a
training YAML alone for the No-FT baseline, i.e. the pretrained LLM), utterances are
sorted by their LLM prompt length so each batch wastes little padding, and generation
uses the KV cache and stops at the end-of-turn token (``max_new_tokens`` caps it).
Every batch goes through :class:`~espnet_ext.inference.speechllm.SpeechLLMInference`, the
object a user calls from Python; S2T batches carry what the dump holds (cached encoder
outputs, or on the fly the 16 kHz audio, encoded by the model), each read when its turn
comes (:class:`~espnet_ext.train.batches.DumpReader`).
Under ``torch.distributed`` each rank decodes every ``world_size``-th batch and rank 0
gathers and writes the results.

A killed decode resumes where it stopped: each rank appends every finished batch to a
journal (``output_dir/.hyp.partial.rank<R>.jsonl``, flushed and fsynced per batch, headed
by the model stamp and the batching), and a rerun with the same model and options skips
the batches it holds; a torn last line is ignored.  The batches themselves are the same
on a rerun, so the hypotheses are too.  The journals are removed once ``hyp`` is written.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Dict, List, Literal, Optional

import torch
from tqdm import tqdm

from espnet_ext.inference.decode_dir import hyp_damage
from espnet_ext.inference.speechllm import SpeechLLMInference
from espnet_ext.models.speech_llm import ESPnetSpeechLLM
from espnet_ext.train.batches import DumpReader
from espnet_ext.utils.atomic import DiskFullError, atomic_open, atomic_write_text
from espnet_ext.utils.stamps import canonical, file_identity, has_stamp

logger = logging.getLogger(__name__)


@dataclass
class DecodeReport:
    """Timing and size of one decoding run."""

    data_dir: str
    modality: str
    n_utts: int
    n_new_tokens: int
    seconds: float
    batch_size: int
    max_new_tokens: int
    world_size: int
    n_resumed_batches: int = 0  # batches taken from a killed run's journal

    @property
    def seconds_per_utt(self) -> float:
        return self.seconds / max(self.n_utts, 1)


def model_stamp(config: str | Path, model_file: Optional[str | Path], modality: str, max_new_tokens: int) -> dict:
    """What a decode dir was produced from (the config's content, the checkpoint's size and
    mtime, and options).  The config is identified by content: ESPnet rewrites an exp dir's
    ``config.yaml`` on every (resumed) training run, even when nothing is left to train."""
    return canonical({"config": file_identity(config, content=True),
                      "model_file": file_identity(model_file, content=False),
                      "modality": modality, "max_new_tokens": max_new_tokens})


def is_decoded(output_dir: str | Path, stamp: dict) -> bool:
    """True when ``output_dir`` holds a finished, undamaged decode of the same model and options."""
    if not has_stamp(Path(output_dir) / "decode_report.json", stamp, required=[Path(output_dir) / "hyp"]):
        return False
    why = hyp_damage(output_dir)
    if why:
        logger.warning("%s: %s; decoding it again", Path(output_dir) / "hyp", why)
    return why is None


class BatchJournal:
    """Append-only record of the decoded batches of one rank (see the module docstring)."""

    def __init__(self, path: Path, header: dict) -> None:
        self.path = path
        self.done: Dict[int, dict] = {}
        header = json.loads(json.dumps(header))
        if path.is_file():
            lines = path.read_text(encoding="utf-8").split("\n")[:-1]  # a torn last line has no "\n"
            try:
                records = [json.loads(line) for line in lines]
            except json.JSONDecodeError:
                records = []
            if records and records[0] == header:
                self.done = {r["batch"]: r for r in records[1:]}
            elif records:
                logger.info("%s is from another model or options; decoding from the start", path)
        # the kept records (a torn last line dropped) rewritten atomically, then appended to
        with atomic_open(path) as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in [header, *self.done.values()])
        self._f: IO = open(path, "a", encoding="utf-8")

    def _write(self, record: dict) -> None:
        try:
            self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            raise DiskFullError(
                errno.ENOSPC, f"no space left on the device while writing {self.path}; the {len(self.done)} "
                "batch(es) decoded before are kept there and a rerun of the same command continues from them "
                "(free space first)") from e

    def add(self, batch: int, hyps: Dict[str, str], n_tokens: int) -> None:
        record = {"batch": batch, "hyps": hyps, "n_tokens": n_tokens}
        self._write(record)
        self.done[batch] = record

    def close(self, remove: bool) -> None:
        try:
            self._f.close()
        except OSError:  # ENOSPC again while flushing a torn line: a rerun drops it
            pass
        if remove:
            self.path.unlink(missing_ok=True)


def decode_dump_dir(
    model: ESPnetSpeechLLM,
    data_dir: str | Path,
    output_dir: str | Path,
    modality: Literal["speech", "text", "chat"],
    batch_size: int = 16,
    max_new_tokens: int = 64,
    stamp: Optional[dict] = None,
) -> DecodeReport:
    """Decode every utterance of a dump dir and write ``output_dir/hyp`` (``<utt> <answer>``)."""
    data_dir = Path(data_dir)
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if dist else 0
    world = torch.distributed.get_world_size() if dist else 1
    engine = SpeechLLMInference(model, batch_size, max_new_tokens)
    # "chat" (T2T in the LLM's own template) reads the same text batches as "text"
    reader = DumpReader(data_dir, engine.preprocessor, "text" if modality == "chat" else modality,
                        with_answer=False, device=engine.device)
    batches = reader.plan(batch_size)  # utterance ids per batch; features or audio read per batch
    journal = BatchJournal(Path(output_dir) / f".hyp.partial.rank{rank}.jsonl",
                           {"stamp": stamp, "data_dir": str(data_dir), "modality": modality, "batch_size": batch_size,
                            "max_new_tokens": max_new_tokens, "world_size": world, "n_batches": len(batches)})
    n_resumed = len(journal.done)
    if n_resumed:
        logger.info("%s: resuming; %d batches already decoded by a killed run", output_dir, n_resumed)
    start = time.perf_counter()
    try:
        for index in tqdm(range(rank, len(batches), world), desc=f"decode {data_dir.name} {modality}",
                          unit="batch", disable=rank != 0):
            if index in journal.done:
                continue
            ids = batches[index]
            outs = engine.generate(reader.load(ids), modality)
            journal.add(index, {u: engine.detokenize(out) for u, out in zip(ids, outs)}, sum(len(out) for out in outs))
    except BaseException:
        journal.close(remove=False)  # what is decoded stays for the rerun
        raise
    seconds = time.perf_counter() - start
    hyps = {u: h for r in journal.done.values() for u, h in r["hyps"].items()}
    n_tokens = sum(r["n_tokens"] for r in journal.done.values())
    if dist:
        gathered: List[Optional[dict]] = [None] * world
        torch.distributed.all_gather_object(gathered, {"hyps": hyps, "n": n_tokens, "s": seconds})
        hyps = {k: v for g in gathered for k, v in g["hyps"].items()}
        n_tokens = sum(g["n"] for g in gathered)
        seconds = max(g["s"] for g in gathered)
    report = DecodeReport(str(data_dir), modality, len(hyps), n_tokens, seconds, batch_size, max_new_tokens, world,
                          n_resumed)
    if rank == 0:
        out = Path(output_dir)
        with atomic_open(out / "hyp") as f:
            f.writelines(f"{u} {hyps[u]}\n" for u in sorted(hyps))
        atomic_write_text(out / "decode_report.json", json.dumps(
            {**asdict(report), "seconds_per_utt": report.seconds_per_utt, "stamp": stamp}, indent=2) + "\n")
    if dist:
        torch.distributed.barrier()  # hyp is written before any rank drops its journal
    journal.close(remove=True)
    return report
