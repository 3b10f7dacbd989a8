"""The cascade baseline: Whisper's own decoder transcribes, the No-FT LLM answers (T2T).

An addition to the paper's systems.  It is what a user would build instead of an
end-to-end speech LLM from the same weights, so it is the bar for S2T: the speech LLM's
encoder is this Whisper model's encoder, and its LLM is the No-FT LLM.

1. :func:`transcribe` runs ``WhisperForConditionalGeneration.generate`` (greedy, the
   model's own generation config) on each utterance's audio (``wav.scp`` of a data dir);
2. :func:`write_asr_dump` writes a text-only dump dir whose ``text`` is the transcript
   (``answer`` and ``llm_len.text`` come from the real dump), plus ``asr_report.json`` with
   the word error rate against the question's true transcript;
3. the No-FT model decodes that dump T2T, exactly as it decodes the true transcripts
   (:func:`espnet_ext.inference.decode.decode_dump_dir`), into ``decode_<set>_speech``:
   the cascade's input is speech.

Under ``torch.distributed`` (``torchrun``) both steps are sharded: each rank transcribes
every ``world_size``-th batch of the duration-sorted utterances, rank 0 gathers the
transcripts and writes the ASR dump, and the LLM decode shards its batches the same way.
The batches do not depend on the number of ranks, so the outputs equal a one-process run's.
"""

from __future__ import annotations

import json
import logging
import re
import time
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from espnet_ext.data.audio import TARGET_SR, load_audio
from espnet_ext.data.kaldi_dir import DataError, read_table
from espnet_ext.utils.atomic import atomic_dir

logger = logging.getLogger(__name__)

ASR_REPORT = "asr_report.json"
#: the files of a dump dir that a text-only decode reads
_DUMP_FILES = ("answer", "llm_len.text")


@dataclass
class AsrReport:
    """Word error rate of one transcribed set."""

    data_dir: str
    n_utts: int
    n_ref_words: int
    n_word_errors: int
    n_utts_with_error: int
    seconds: float

    @property
    def wer(self) -> float:
        """Word error rate in percent."""
        return 100.0 * self.n_word_errors / max(self.n_ref_words, 1)


def normalize_words(text: str) -> List[str]:
    """Lower-cased words without punctuation (apostrophes inside words are kept)."""
    text = unicodedata.normalize("NFKC", text).lower().replace("’", "'")
    return re.findall(r"[\w]+(?:'[\w]+)*", text)


def word_errors(ref: str, hyp: str) -> Tuple[int, int]:
    """``(substitutions + deletions + insertions, reference words)`` after :func:`normalize_words`."""
    r, h = normalize_words(ref), normalize_words(hyp)
    prev = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        cur = [i] + [0] * len(h)
        for j, hw in enumerate(h, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (rw != hw))
        prev = cur
    return prev[-1], len(r)


@dataclass
class AsrFrontEnd:
    """Whisper's feature extractor and the tokenizer its decoder writes with."""

    feature_extractor: object
    tokenizer: object


def load_asr(whisper_dir: str | Path, device: str | torch.device = "cpu") -> Tuple[object, AsrFrontEnd]:
    """``(WhisperForConditionalGeneration, AsrFrontEnd)`` of a Whisper folder (stage 2)."""
    from transformers import AutoTokenizer, WhisperFeatureExtractor, WhisperForConditionalGeneration

    whisper_dir = Path(whisper_dir)
    if not (whisper_dir / "config.json").is_file():
        raise FileNotFoundError(f"{whisper_dir} is not a Whisper model folder (run stage 2 first)")
    model = WhisperForConditionalGeneration.from_pretrained(str(whisper_dir)).to(device).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(whisper_dir))
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"{whisper_dir}: no tokenizer for Whisper's decoder ({e})") from e
    return model, AsrFrontEnd(WhisperFeatureExtractor.from_pretrained(str(whisper_dir)), tokenizer)


def _rank_world() -> Tuple[bool, int, int]:
    """``(distributed, rank, world size)`` of this process."""
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not dist:
        return False, 0, 1
    return True, torch.distributed.get_rank(), torch.distributed.get_world_size()


@torch.inference_mode()
def transcribe(model, processor, wav_paths: Dict[str, str], batch_size: int = 16,
               max_new_tokens: int = 128, rank: int = 0, world_size: int = 1) -> Dict[str, str]:
    """Greedy Whisper transcripts of ``utt id → wav path`` (batches sorted by duration); with
    ``world_size`` > 1 only batches ``rank``, ``rank + world_size``, ... are transcribed."""
    audio = {u: load_audio(p, u) for u, p in wav_paths.items()}
    order = sorted(audio, key=lambda u: (len(audio[u]), u))
    device = next(model.parameters()).device
    # the decoder's prompt (start, language, task tokens) shares its position table
    max_new_tokens = min(max_new_tokens, model.config.max_target_positions - 4)
    out: Dict[str, str] = {}
    for start in range(rank * batch_size, len(order), world_size * batch_size):
        ids = order[start:start + batch_size]
        feats = processor.feature_extractor([audio[u] for u in ids], sampling_rate=TARGET_SR,
                                            return_tensors="pt").input_features.to(device)
        tokens = model.generate(feats, max_new_tokens=max_new_tokens, num_beams=1, do_sample=False)
        texts = processor.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        out.update({u: " ".join(t.split()) for u, t in zip(ids, texts)})
    return out


def write_asr_dump(src_dump: str | Path, transcripts: Dict[str, str], out_dir: str | Path,
                   report: AsrReport, stamp: Optional[dict] = None) -> None:
    """A text-only dump dir whose ``text`` holds the ASR transcripts (atomically)."""
    src_dump = Path(src_dump)
    tables = {name: read_table(src_dump / name) for name in _DUMP_FILES}
    missing = sorted(set(tables["answer"]) - set(transcripts))
    if missing:
        raise DataError(f"{src_dump}: no transcript for utterance {missing[0]} ({len(missing)} missing)")
    with atomic_dir(out_dir) as tmp:
        for name, table in {**tables, "text": transcripts}.items():
            lines = "".join(f"{u} {table[u]}\n" for u in sorted(tables["answer"]))
            (tmp / name).write_text(lines, encoding="utf-8")
        record = {**asdict(report), "wer": round(report.wer, 2), "stamp": stamp}
        (tmp / ASR_REPORT).write_text(json.dumps(record, indent=2) + "\n")


def transcribe_set(model, processor, data_dir: str | Path, dump_dir: str | Path, out_dir: str | Path,
                   batch_size: int = 16, stamp: Optional[dict] = None) -> AsrReport:
    """Transcribe ``data_dir``'s utterances that ``dump_dir`` holds into the ASR dump ``out_dir``
    (``stamp``, what the transcripts were made from, goes into its report)."""
    data_dir, dump_dir = Path(data_dir), Path(dump_dir)
    wavs = read_table(data_dir / "wav.scp")
    refs = read_table(dump_dir / "text")
    missing = sorted(set(refs) - set(wavs))
    if missing:
        raise DataError(f"{data_dir}/wav.scp: no audio for utterance {missing[0]} of {dump_dir}")
    start = time.perf_counter()
    dist, rank, world = _rank_world()
    hyps = transcribe(model, processor, {u: wavs[u] for u in refs}, batch_size, rank=rank, world_size=world)
    if dist:  # every rank gets all transcripts; rank 0 writes them
        gathered: List[Optional[Dict[str, str]]] = [None] * world
        torch.distributed.all_gather_object(gathered, hyps)
        hyps = {u: h for g in gathered for u, h in g.items()}
    errors = [word_errors(refs[u], hyps[u]) for u in sorted(refs)]
    report = AsrReport(str(data_dir), len(refs), sum(n for _, n in errors), sum(e for e, _ in errors),
                       sum(1 for e, _ in errors if e), round(time.perf_counter() - start, 3))
    if rank == 0:
        write_asr_dump(dump_dir, hyps, out_dir, report, stamp)
    if dist:
        torch.distributed.barrier()  # the dump is on disk before any rank reads it
    logger.info("%s: %d utterances, WER %.1f %% (%d with an error), %.1f s", data_dir, report.n_utts,
                report.wer, report.n_utts_with_error, report.seconds)
    return report


