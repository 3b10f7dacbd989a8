"""Converters for the four real spoken-QA corpora (stage 1, local copies of HF datasets).

Users bring local copies of the Hugging Face datasets; nothing is downloaded here.
:func:`convert_corpus` turns one split of one corpus into a Kaldi-style directory
(:mod:`espnet_ext.data.kaldi_dir`) plus one 16 kHz, 16-bit PCM WAV per utterance.

Corpora (``name`` → what becomes ``text`` / ``answer`` / audio):

* ``voiceassistant`` — gpt-omni/VoiceAssistant-400K (parquet, train only; columns
  ``split_name, index, round, question, answer, answer_snac, question_audio``).
  ``question`` / ``[answer]`` / ``question_audio``.  Only **first-turn** rows are kept
  (the paper trains on first-turn dialogues).  A row is first-turn when

  1. its question carries no dialogue history: no ``<ASSISTANT>:``-style marker and at
     most one ``<USER>:``-style marker (history is written into the question as
     ``<USER>: … <ASSISTANT>: … <USER>: …``), and
  2. its ``round`` is the lowest round of its dialogue, the dialogue being the rows
     sharing ``(split_name, index)``; a ``round`` without a leading integer leaves the
     decision to rule 1 alone.

  Rule 2 is computed in a cheap first pass over the text columns (no audio is read).
  Any remaining ``<USER>:``/``<ASSISTANT>:``-style markers (``<SYSTEM>``, ``<HUMAN>``,
  ``<GPT>``, ``<BOT>`` too) are stripped from the question and the answer.
* ``spoken_alpaca`` — GSQA/spoken-alpaca-gpt4 (``save_to_disk`` Arrow shards or parquet,
  train; ``instruction, input, output, speech_input, input_audio, output_audio, …``).
  The spoken query is ``input_audio``; its transcript ``speech_input`` is the question.
  When ``speech_input`` is missing or blank, the question falls back to
  ``instruction`` and ``input`` joined by a space (what the query was synthesised from).
  The answer is ``[output]``.
* ``llama_questions`` — fixie-ai/llama-questions (parquet, test; ``question, answer,
  audio``): ``question`` / ``[answer]`` / ``audio``.
* ``web_questions`` — fixie-ai/spoken-web-questions (parquet, train/test; ``url,
  question, answers, audio``): ``question`` / ``answers`` (all references kept, blank
  ones dropped) / ``audio``.

Common conventions:

* Source layout: ``src`` may be one ``.parquet``/``.arrow`` file, a folder of parquet
  shards (files named ``<split>-*.parquet`` or under a ``<split>/`` folder, as on the hub),
  a ``save_to_disk`` Dataset folder (``state.json`` + ``data-*.arrow``) or a
  ``save_to_disk`` DatasetDict folder (``dataset_dict.json`` + ``<split>/``).  Arrow
  shards are read with pyarrow's IPC reader over a memory map rather than
  ``datasets.load_from_disk``: decoding ``Audio`` features through ``datasets`` needs
  torchcodec, and the raw ``{bytes, path}`` struct is all we need.
* Rows are numbered globally over the split's shards in order (parquet shards sorted by
  path; Arrow shards in ``state.json`` order).  Utterance ids are
  ``<corpus>_<split>_<row index, zero-padded to 6+ digits>``; the speaker is ``<corpus>``
  because none of these corpora has speaker information (one TTS voice per corpus or
  none recorded), and every id starts with it as Kaldi sorting requires.
* Audio columns are Hugging Face ``Audio`` values: a ``{bytes, path}`` struct (bytes may
  hold WAV/FLAC/OGG/MP3; ``path`` may stand instead of bytes, relative to the shard's
  folder or ``src``), raw bytes, a path string, or the decoded ``{array,
  sampling_rate}`` form (1-D, or 2-D ``(channels, samples)`` / ``(samples, channels)`` with
  at most 8 channels).  Audio is mixed to mono, resampled to 16 kHz (soxr) and written
  with :func:`espnet_ext.data.audio.write_wav` (atomic).  ``wav.scp`` holds absolute paths.
* ``max_utts`` draws a seeded random subset (``random.Random(seed).sample``) of the kept
  rows before any audio is read; the same corpus, split, filter and seed always give the
  same ids.  Skipped rows of the subset are not replaced.
* Bad rows — missing, corrupt, empty or non-finite audio, a sampling rate outside
  1-768 kHz or not an integer, a decoded array of another shape, empty question (a
  VoiceAssistant question of markers alone is empty), empty answer (Web Questions: every
  reference blank) — raise :class:`DataError` naming the corpus, the shard file, the row
  and the utterance id, unless ``skip_bad_utts`` is set: then each is logged and counted
  by reason in the :class:`ConversionReport`.  Audio longer than ``max_seconds`` is never
  an error: it is always skipped and counted (``too_long``).  When no row is left, the
  conversion fails naming the corpus, split and source.
* Bad sources — a missing path or split, a malformed ``state.json`` /
  ``dataset_dict.json``, a listed shard or split folder that is missing, a parquet or
  Arrow shard that cannot be read — raise :class:`DataError` naming the file or folder.
* Streaming: rows are read one parquet row group / Arrow record batch at a time (64 rows
  of audio; 8192 rows of text for VoiceAssistant's first-turn pass, which keeps two
  integers and two flags per row and one key per dialogue, no text), and each utterance
  goes to the Kaldi files as soon as it is converted
  (:func:`~espnet_ext.data.kaldi_dir.open_kaldi_dir`); nothing holds the split's audio or
  texts.  Peak memory follows the largest row group's audio column (parquet decodes a row
  group's column chunk at once), not the number of rows.
* Atomic and idempotent: the Kaldi directory is written into a temporary directory that
  replaces ``out_dir`` when the conversion ends, so a failed conversion leaves no (or the
  previous, complete) directory.  WAVs are written atomically; those written before a
  failure may remain but are referenced by no Kaldi directory.  Re-running overwrites the
  same files.
"""

from __future__ import annotations

import bisect
import io
import json
import logging
import random
import re
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Literal, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from espnet_ext.data.audio import TARGET_SR, resample, write_wav
from espnet_ext.data.kaldi_dir import DataError, KaldiDirWriter, Utterance, open_kaldi_dir

logger = logging.getLogger(__name__)

CorpusName = Literal["voiceassistant", "spoken_alpaca", "llama_questions", "web_questions"]
CORPORA: Tuple[str, ...] = ("voiceassistant", "spoken_alpaca", "llama_questions", "web_questions")

#: reasons a row can be skipped (keys of :attr:`ConversionReport.skipped`)
SKIP_REASONS: Tuple[str, ...] = (
    "missing_audio",
    "corrupt_audio",
    "empty_audio",
    "empty_question",
    "empty_answer",
    "too_long",
)

_SPLIT_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_ID_DIGITS = 6
_META_BATCH = 8192
_AUDIO_BATCH = 64
#: sampling rates outside this range (Hz) are taken for a broken header or cell
_MIN_SR, _MAX_SR = 1_000, 768_000
#: a 2-D decoded array is (channels, samples) or (samples, channels) with at most this many
#: channels; anything else (e.g. a feature matrix) is not audio
_MAX_CHANNELS = 8

# ``<USER>:``-style dialogue markers (VoiceAssistant-400K writes history into the question)
_MARKER_RE = re.compile(r"<\s*/?\s*(user|assistant|system|human|gpt|bot)\s*>\s*:?", re.IGNORECASE)
_USER_MARKER_RE = re.compile(r"<\s*(user|human)\s*>", re.IGNORECASE)
_REPLY_MARKER_RE = re.compile(r"<\s*(assistant|gpt|bot)\s*>", re.IGNORECASE)
_LEADING_INT_RE = re.compile(r"^\s*(\d+)")


# --------------------------------------------------------------------------- report


@dataclass
class ConversionReport:
    """What a conversion read, kept and wrote.

    ``n_read`` rows were in the split's files; ``n_filtered`` of them were dropped by the
    corpus rule (VoiceAssistant: not first-turn); ``n_selected`` remained after the
    ``max_utts`` subset; ``n_written`` were written and ``n_skipped`` skipped, counted by
    reason in ``skipped``.
    """

    corpus: str
    split: str
    src: str
    out_dir: str
    n_read: int = 0
    n_filtered: int = 0
    n_selected: int = 0
    n_written: int = 0
    n_skipped: int = 0
    skipped: Dict[str, int] = field(default_factory=dict)

    def add_skip(self, reason: str) -> None:
        """Count one skipped row under ``reason``."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.n_skipped += 1

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable copy."""
        return asdict(self)

    def summary(self) -> str:
        """One line for the log."""
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"
        return (
            f"{self.corpus}/{self.split}: read {self.n_read} rows, filtered {self.n_filtered}, "
            f"selected {self.n_selected}, wrote {self.n_written} to {self.out_dir}, "
            f"skipped {self.n_skipped} ({reasons})"
        )


class _BadRow(Exception):
    """A row that cannot become an utterance; ``reason`` is one of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Shard:
    """One data file of a split: ``kind`` is ``parquet`` or ``arrow`` (IPC stream/file)."""

    path: Path
    kind: Literal["parquet", "arrow"]
    base_dirs: Tuple[Path, ...]  # where relative audio paths are looked up


def _read_json_object(path: Path, what: str) -> Dict[str, Any]:
    """The JSON object in ``path``; :class:`DataError` naming ``path`` when it is not one."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise DataError(f"{path}: not a datasets {what} (unreadable JSON: {e})") from e
    if not isinstance(value, dict):
        raise DataError(f"{path}: not a datasets {what} (a JSON {type(value).__name__}, "
                        "not an object)")
    return value


def _state_shard_names(state: Path) -> List[str]:
    """The shard file names a ``save_to_disk`` ``state.json`` lists under ``_data_files``."""
    what = "save_to_disk state file"
    files = _read_json_object(state, what).get("_data_files")
    if not isinstance(files, list):
        raise DataError(f"{state}: not a datasets {what} (_data_files is {files!r}, "
                        "not a list of {'filename': ...})")
    names = []
    for k, entry in enumerate(files):
        name = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise DataError(f"{state}: not a datasets {what} (_data_files[{k}] is {entry!r}, "
                            "not {'filename': <shard file name>})")
        names.append(name)
    return names


def _arrow_dataset_shards(folder: Path, root: Path) -> List[Shard]:
    """Shards of one ``save_to_disk`` Dataset folder, in ``state.json`` order."""
    names: List[str] = []
    state = folder / "state.json"
    if state.is_file():
        names = _state_shard_names(state)
    if not names:
        names = sorted(p.name for p in folder.glob("*.arrow"))
    if not names:
        raise DataError(f"{folder}: no .arrow shards found")
    shards = []
    for n in names:
        p = folder / n
        if not p.is_file():
            raise DataError(f"{state}: lists shard {n}, which does not exist")
        shards.append(Shard(p, "arrow", (folder, root)))
    return shards


def _single_file(src: Path) -> Shard:
    if src.suffix == ".parquet":
        return Shard(src, "parquet", (src.parent,))
    if src.suffix == ".arrow":
        return Shard(src, "arrow", (src.parent,))
    raise DataError(f"{src}: expected a .parquet or .arrow file, or a dataset folder")


def find_shards(src: str | Path, split: str) -> List[Shard]:
    """Locate the data files of ``split`` in a local copy of a Hugging Face dataset.

    Accepts one file, a ``save_to_disk`` DatasetDict/Dataset folder, or a folder of parquet
    shards (``<split>-*.parquet``, ``<split>_*.parquet``, ``<split>.parquet`` or any parquet
    under a ``<split>/`` folder; hidden folders such as ``.cache`` are ignored).
    Raises :class:`DataError` naming ``src`` when nothing matches.
    """
    src = Path(src)
    if not src.exists():
        raise DataError(f"corpus source {src} does not exist")
    if src.is_file():
        return [_single_file(src)]
    if (src / "dataset_dict.json").is_file():
        dd_json = src / "dataset_dict.json"
        splits = _read_json_object(dd_json, "DatasetDict file").get("splits")
        if not isinstance(splits, list) or not all(isinstance(x, str) for x in splits):
            raise DataError(f"{dd_json}: not a datasets DatasetDict file (splits is {splits!r}, "
                            "not a list of split names)")
        if split not in splits:
            raise DataError(f"{src}: no split {split!r} in this DatasetDict (splits: {splits})")
        if not (src / split).is_dir():
            raise DataError(f"{src / split}: split {split!r} is listed in {dd_json} but its "
                            "folder does not exist")
        return _arrow_dataset_shards(src / split, src)
    if (src / "state.json").is_file():
        saved = _read_json_object(src / "state.json", "save_to_disk state file").get("_split")
        if saved and saved != split:
            raise DataError(f"{src}: this saved Dataset is split {saved!r}, not {split!r}")
        return _arrow_dataset_shards(src, src)
    if (src / split / "state.json").is_file():
        return _arrow_dataset_shards(src / split, src)

    found = sorted(
        p
        for p in src.rglob("*.parquet")
        if not any(part.startswith(".") for part in p.relative_to(src).parts)
    )
    chosen = []
    for p in found:
        rel = p.relative_to(src)
        name = p.name
        if (
            split in rel.parts[:-1]
            or name.startswith((f"{split}-", f"{split}_"))
            or p.stem == split
        ):
            chosen.append(Shard(p, "parquet", (p.parent, src)))
    if not chosen:
        sample = [str(p.relative_to(src)) for p in found[:5]]
        raise DataError(
            f"{src}: no data files for split {split!r} (parquet files seen: {sample or 'none'}; "
            "expected <split>-*.parquet, a <split>/ folder, or a save_to_disk folder)"
        )
    return chosen


#: what pyarrow raises for a damaged file (ArrowInvalid, ArrowIOError = OSError, ...)
_READ_ERRORS = (pa.ArrowException, OSError)


def _unreadable(shard: Shard, e: BaseException) -> DataError:
    what = "parquet file" if shard.kind == "parquet" else "Arrow shard"
    return DataError(f"{shard.path}: cannot read this {what} ({type(e).__name__}: {e}); "
                     "is it damaged or incompletely copied?")


def _shard_schema(shard: Shard) -> pa.Schema:
    try:
        if shard.kind == "parquet":
            return pq.read_schema(shard.path)
        with pa.memory_map(str(shard.path), "r") as source:
            return _open_ipc(source)[0]
    except _READ_ERRORS as e:
        raise _unreadable(shard, e) from e


def _open_ipc(source: pa.NativeFile) -> Tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """Open an Arrow IPC stream (what ``save_to_disk`` writes) or IPC file."""
    try:
        reader = pa.ipc.open_stream(source)
        return reader.schema, iter(reader)
    except pa.ArrowInvalid:
        source.seek(0)
        freader = pa.ipc.open_file(source)
        return freader.schema, (freader.get_batch(i) for i in range(freader.num_record_batches))


def _iter_batches(
    shard: Shard, columns: Sequence[str], wanted: Optional[Sequence[int]], batch_size: int
) -> Iterator[Tuple[int, pa.RecordBatch]]:
    """Yield ``(first row offset in the shard, batch)`` restricted to ``columns``.

    With ``wanted`` (sorted local row indices), parquet row groups and Arrow batches that
    hold none of them are not decoded.
    """

    def has_wanted(start: int, stop: int) -> bool:
        if wanted is None:
            return True
        i = bisect.bisect_left(wanted, start)
        return i < len(wanted) and wanted[i] < stop

    try:
        yield from _iter_shard_batches(shard, columns, has_wanted, batch_size)
    except _READ_ERRORS as e:
        raise _unreadable(shard, e) from e


def _iter_shard_batches(
    shard: Shard, columns: Sequence[str], has_wanted: Callable[[int, int], bool], batch_size: int
) -> Iterator[Tuple[int, pa.RecordBatch]]:
    if shard.kind == "parquet":
        pf = pq.ParquetFile(shard.path)
        try:
            start = 0
            for rg in range(pf.num_row_groups):
                n = pf.metadata.row_group(rg).num_rows
                if n and has_wanted(start, start + n):
                    offset = start
                    for batch in pf.iter_batches(
                        batch_size=batch_size, row_groups=[rg], columns=list(columns)
                    ):
                        yield offset, batch
                        offset += batch.num_rows
                start += n
        finally:
            pf.close()
        return
    with pa.memory_map(str(shard.path), "r") as source:
        _, batches = _open_ipc(source)
        offset = 0
        for batch in batches:
            n = batch.num_rows
            if n and has_wanted(offset, offset + n):
                yield offset, batch.select(list(columns))
            offset += n


# --------------------------------------------------------------------------- text


def _as_text(value: Any) -> str:
    """A cell as one stripped string (``None`` → empty)."""
    if value is None:
        return ""
    return " ".join(str(value).split())


def strip_markers(text: str) -> str:
    """Remove ``<USER>:``/``<ASSISTANT>:``-style dialogue markers and squeeze whitespace."""
    return " ".join(_MARKER_RE.sub(" ", text).split())


def has_history(question: Optional[str]) -> bool:
    """Whether a VoiceAssistant question carries earlier dialogue turns.

    True when it holds an assistant-side marker (``<ASSISTANT>``, ``<GPT>``, ``<BOT>``) or
    more than one user-side marker (``<USER>``, ``<HUMAN>``), and some text besides the
    markers: a question made only of markers holds no turns at all (it is a bad row,
    ``empty_question``, not a later turn).
    """
    q = question if isinstance(question, str) else _as_text(question)
    if not strip_markers(q):
        return False
    return bool(_REPLY_MARKER_RE.search(q)) or len(_USER_MARKER_RE.findall(q)) > 1


def _round_number(value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    m = _LEADING_INT_RE.match(str(value))
    return int(m.group(1)) if m else None


def _answers(value: Any, where: str) -> List[str]:
    """References from a string or a list of strings; blank references are dropped."""
    if value is None:
        items: List[Any] = []
    elif isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
    else:
        items = [value]
    refs = [_as_text(v) for v in items]
    refs = [r for r in refs if r]
    if not refs:
        raise _BadRow("empty_answer", f"{where}: empty answer")
    return refs


def _question(text: str, where: str) -> str:
    if not text:
        raise _BadRow("empty_question", f"{where}: empty question")
    return text


# --------------------------------------------------------------------------- corpora


RowTexts = Callable[[Dict[str, Any], str], Tuple[str, List[str]]]


@dataclass(frozen=True)
class _CorpusSpec:
    """How one corpus maps its columns onto an utterance."""

    audio_column: str
    required: Tuple[str, ...]  # columns that must exist (besides audio)
    optional: Tuple[str, ...]  # read when present
    texts: RowTexts  # row → (question, answers); raises _BadRow


def _va_texts(row: Dict[str, Any], where: str) -> Tuple[str, List[str]]:
    question = _question(strip_markers(_as_text(row.get("question"))), where)
    answers = [strip_markers(a) for a in _answers(row.get("answer"), where)]
    answers = [a for a in answers if a]
    if not answers:
        raise _BadRow("empty_answer", f"{where}: empty answer")
    return question, answers


def _alpaca_texts(row: Dict[str, Any], where: str) -> Tuple[str, List[str]]:
    question = _as_text(row.get("speech_input"))
    if not question:
        parts = [_as_text(row.get("instruction")), _as_text(row.get("input"))]
        question = " ".join(p for p in parts if p)
    return _question(question, where), _answers(row.get("output"), where)


def _llama_q_texts(row: Dict[str, Any], where: str) -> Tuple[str, List[str]]:
    return _question(_as_text(row.get("question")), where), _answers(row.get("answer"), where)


def _web_q_texts(row: Dict[str, Any], where: str) -> Tuple[str, List[str]]:
    return _question(_as_text(row.get("question")), where), _answers(row.get("answers"), where)


_SPECS: Dict[str, _CorpusSpec] = {
    "voiceassistant": _CorpusSpec(
        "question_audio", ("question", "answer"), ("split_name", "index", "round"), _va_texts
    ),
    "spoken_alpaca": _CorpusSpec(
        "input_audio", ("output",), ("speech_input", "instruction", "input"), _alpaca_texts
    ),
    "llama_questions": _CorpusSpec("audio", ("question", "answer"), (), _llama_q_texts),
    "web_questions": _CorpusSpec("audio", ("question", "answers"), (), _web_q_texts),
}


# --------------------------------------------------------------------------- audio


def _read_audio_bytes(data: bytes, where: str) -> Tuple[np.ndarray, int]:
    try:
        wav, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile errors, unknown formats, truncated files
        raise _BadRow("corrupt_audio", f"{where}: cannot decode audio ({e})") from e
    return wav, sr


def _decode(value: Any, base_dirs: Sequence[Path], where: str) -> Tuple[np.ndarray, int]:
    """Decode one Hugging Face ``Audio`` cell into ``(mono float32 samples, sample rate)``.

    ``value`` may be ``{bytes, path}`` (bytes preferred; a relative ``path`` is looked up
    in ``base_dirs``), ``{array, sampling_rate}``, raw bytes or a path string.
    Raises :class:`_BadRow` (message prefixed by ``where``) if it is missing,
    undecodable, empty or non-finite.
    """
    data: Optional[bytes] = None
    path: Optional[str] = None
    array: Any = None
    sr: Any = None
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, str):
        path = value
    elif isinstance(value, dict):
        array, sr = value.get("array"), value.get("sampling_rate")
        data = value.get("bytes")
        path = value.get("path")
    elif value is not None:
        raise _BadRow("corrupt_audio", f"{where}: unsupported audio value {type(value).__name__}")

    if array is not None:
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # overflow → Inf, caught below
                wav = np.asarray(array, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise _BadRow("corrupt_audio", f"{where}: audio array is not numeric ({e})") from e
        wav = _samples_by_channels(wav, where)
    elif data is not None and len(data) > 0:
        wav, sr = _read_audio_bytes(data, where)
    elif path:
        p = Path(path)
        candidates = [p] if p.is_absolute() else [Path(b) / p for b in base_dirs]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            raise _BadRow(
                "missing_audio",
                f"{where}: audio has no bytes and its path {path!r} was not found "
                f"(looked in {[str(c) for c in candidates]})",
            )
        try:
            data = hit.read_bytes()
        except OSError as e:
            raise _BadRow("missing_audio", f"{where}: cannot read audio file {hit} ({e})") from e
        wav, sr = _read_audio_bytes(data, where)
    elif data is not None:
        raise _BadRow("empty_audio", f"{where}: audio bytes are empty")
    else:
        raise _BadRow("missing_audio", f"{where}: no audio")

    sr = _sampling_rate(sr, where)  # decoded files too: a header can hold any rate
    if wav.shape[0] == 0 or wav.size == 0:
        raise _BadRow("empty_audio", f"{where}: audio has no samples")
    if not np.isfinite(wav).all():  # before mixing, so that +Inf and -Inf cannot cancel
        raise _BadRow("corrupt_audio", f"{where}: audio contains NaN/Inf samples")
    mono = wav.mean(axis=1) if wav.ndim == 2 else wav
    return mono.astype(np.float32, copy=False), sr


def _sampling_rate(value: Any, where: str) -> int:
    """``value`` as a plausible sampling rate in Hz (an integer, or an integral float)."""
    sr: Optional[int] = None
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        sr = int(value)
    elif isinstance(value, (float, np.floating)) and np.isfinite(value) and float(value).is_integer():
        sr = int(value)
    if sr is None or not _MIN_SR <= sr <= _MAX_SR:
        raise _BadRow("corrupt_audio", f"{where}: invalid sampling rate {value!r} (expected an "
                                       f"integer number of Hz in [{_MIN_SR}, {_MAX_SR}])")
    return sr


def _samples_by_channels(wav: np.ndarray, where: str) -> np.ndarray:
    """A decoded array as ``(samples, channels)``.

    1-D is mono; 2-D is ``(channels, samples)`` (what ``datasets`` returns for
    multi-channel audio) or ``(samples, channels)``, with at most :data:`_MAX_CHANNELS`
    channels and more samples than channels.  Other shapes are a bad row.
    """
    if wav.ndim == 1:
        return wav[:, None]
    if wav.ndim == 2 and wav.size:
        rows, cols = wav.shape
        if rows <= _MAX_CHANNELS and rows < cols:
            return wav.T
        if cols <= _MAX_CHANNELS and cols < rows:
            return wav
    elif wav.ndim == 2:
        return wav.reshape(0, 1)  # no samples: reported as empty audio
    raise _BadRow("corrupt_audio", f"{where}: audio array has shape {wav.shape}; expected "
                                   f"(samples,) or (channels <= {_MAX_CHANNELS}, samples)")


# --------------------------------------------------------------------------- conversion


def _first_turn_rows(shards: Sequence[Shard], corpus: str) -> Tuple[int, List[int]]:
    """VoiceAssistant first pass (text columns only, one record batch at a time): total
    rows and first-turn row indices.

    Per row it keeps a dialogue number and a round (8 bytes each, in typed arrays) and two
    flag bytes; per dialogue its key and lowest round.  No text is kept.
    """
    dialogue_of: Dict[Tuple[str, str], int] = {}
    dialogues, rounds = array("q"), array("q")  # per row
    numbered = bytearray()  # per row: the round has a number (else rule 1 decides alone)
    history = bytearray()  # per row: the question carries earlier turns
    for shard in shards:
        names = set(_shard_schema(shard).names)
        cols = [c for c in ("split_name", "index", "round", "question") if c in names]
        for _, batch in _iter_batches(shard, cols, None, _META_BATCH):
            n = batch.num_rows
            get = {c: batch.column(c).to_pylist() for c in cols}
            sn = get.get("split_name", [None] * n)
            ix = get.get("index", [None] * n)
            rd = get.get("round", [None] * n)
            for i in range(n):
                dialogues.append(dialogue_of.setdefault((str(sn[i]), str(ix[i])), len(dialogue_of)))
                r = _round_number(rd[i])
                numbered.append(r is not None)
                rounds.append(r if r is not None else 0)
                history.append(has_history(get["question"][i]))
    min_round: Dict[int, int] = {}
    for d, r, has in zip(dialogues, rounds, numbered):
        if has and (d not in min_round or r < min_round[d]):
            min_round[d] = r
    kept = [i for i, (d, r, has, h) in enumerate(zip(dialogues, rounds, numbered, history))
            if not h and (not has or r == min_round[d])]
    logger.info("%s: %d of %d rows are first-turn dialogues", corpus, len(kept), len(rounds))
    return len(rounds), kept


def _count_rows(shards: Sequence[Shard]) -> List[int]:
    counts = []
    for shard in shards:
        try:
            if shard.kind == "parquet":
                with pq.ParquetFile(shard.path) as pf:
                    counts.append(pf.metadata.num_rows)
            else:
                with pa.memory_map(str(shard.path), "r") as source:
                    counts.append(sum(b.num_rows for b in _open_ipc(source)[1]))
        except _READ_ERRORS as e:
            raise _unreadable(shard, e) from e
    return counts


def _check_arguments(
    name: str, split: str, max_utts: Optional[int], max_seconds: Optional[float]
) -> None:
    """Raise :class:`ValueError` for an unknown corpus, an unsafe split name or a bad limit."""
    if name not in _SPECS:
        raise ValueError(f"unknown corpus {name!r}; choose one of {CORPORA}")
    if not _SPLIT_RE.match(split):
        raise ValueError(f"split {split!r}: only [A-Za-z0-9_.-] allowed (it goes into utt ids)")
    if max_utts is not None and max_utts <= 0:
        raise ValueError(f"max_utts must be positive, got {max_utts}")
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")


def _columns_to_read(shard: Shard, spec: _CorpusSpec, name: str) -> List[str]:
    """The columns of ``shard`` that the conversion reads, in the spec's order.

    Raises :class:`DataError` when a required column or the audio column is missing.
    """
    names = _shard_schema(shard).names
    missing = [c for c in (*spec.required, spec.audio_column) if c not in names]
    if missing:
        raise DataError(
            f"{name}: {shard.path} lacks column(s) {missing} (columns: {names}); "
            f"is this a local copy of the {name} corpus?"
        )
    wanted = (*spec.required, *spec.optional, spec.audio_column)
    return [c for c in wanted if c in names]


def _candidate_rows(shards: Sequence[Shard], name: str) -> Tuple[List[int], int, List[int]]:
    """Rows per shard, rows read in all, and the global indices the corpus rule keeps.

    VoiceAssistant keeps its first-turn rows (a first pass over the text columns); the
    other corpora keep every row.
    """
    if name == "voiceassistant":
        n_read, candidates = _first_turn_rows(shards, name)
        return _count_rows(shards), n_read, candidates
    shard_rows = _count_rows(shards)
    n_read = sum(shard_rows)
    return shard_rows, n_read, list(range(n_read))


def _select_rows(candidates: List[int], max_utts: Optional[int], seed: int) -> List[int]:
    """A seeded random subset of ``max_utts`` candidates in row order; all when fewer."""
    if max_utts is not None and max_utts < len(candidates):
        return sorted(random.Random(seed).sample(candidates, max_utts))
    return candidates


def _id_digits(n_read: int) -> int:
    """Zero-padding of the row index in utterance ids: six digits, more if rows need it."""
    return max(_ID_DIGITS, len(str(max(n_read - 1, 0))))


def _indices_in(sorted_indices: Sequence[int], start: int, stop: int) -> List[int]:
    """The indices in ``[start, stop)`` of a sorted list, made relative to ``start``."""
    lo = bisect.bisect_left(sorted_indices, start)
    hi = bisect.bisect_left(sorted_indices, stop)
    return [i - start for i in sorted_indices[lo:hi]]


class _SourceRow(NamedTuple):
    """One selected row: its shard, its index over the split and within the shard."""

    shard: Shard
    index: int
    local_index: int
    values: Dict[str, Any]


def _read_shard_rows(
    shard: Shard, columns: Sequence[str], local: Sequence[int]
) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """Yield ``(local row index, row)`` for the sorted local row indices ``local``.

    Only batches that hold a wanted row are decoded, and only the wanted rows of a batch
    become Python values; nothing is read when ``local`` is empty.
    """
    if not local:
        return
    for offset, batch in _iter_batches(shard, columns, local, _AUDIO_BATCH):
        in_batch = _indices_in(local, offset, offset + batch.num_rows)
        if not in_batch:
            continue
        rows = batch.take(pa.array(in_batch)).to_pylist()
        for i, row in zip(in_batch, rows):
            yield offset + i, row


def _selected_rows(
    shards: Sequence[Shard],
    shard_rows: Sequence[int],
    columns_of: Sequence[Sequence[str]],
    selected: Sequence[int],
) -> Iterator[_SourceRow]:
    """Yield the rows whose global index is in the sorted ``selected``, in row order."""
    shard_start = 0
    for shard, n_rows, columns in zip(shards, shard_rows, columns_of):
        local = _indices_in(selected, shard_start, shard_start + n_rows)
        for local_index, values in _read_shard_rows(shard, columns, local):
            yield _SourceRow(shard, shard_start + local_index, local_index, values)
        shard_start += n_rows


@dataclass(frozen=True)
class _RowConverter:
    """Turns the selected rows of one corpus split into utterances and WAVs."""

    name: str
    split: str
    spec: _CorpusSpec
    wav_root: Path  # absolute
    digits: int
    max_seconds: Optional[float]
    skip_bad_utts: bool

    def utt_id(self, index: int) -> str:
        """``<corpus>_<split>_<row index over the split, zero-padded>``."""
        return f"{self.name}_{self.split}_{index:0{self.digits}d}"

    def convert(self, row: _SourceRow, report: ConversionReport) -> Optional[Utterance]:
        """The utterance of ``row``, or ``None`` when it is skipped (counted in ``report``).

        A bad row raises :class:`DataError` unless ``skip_bad_utts``; audio longer than
        ``max_seconds`` is always skipped.
        """
        utt_id = self.utt_id(row.index)
        where = f"{self.name}: {row.shard.path} row {row.local_index} (utterance {utt_id})"
        try:
            return _convert_row(row.values, self.spec, row.shard, utt_id, self.name, where,
                                self.wav_root, self.max_seconds)
        except _BadRow as e:
            if e.reason != "too_long" and not self.skip_bad_utts:
                raise DataError(f"{e.detail} (pass --skip_bad_utts true to skip bad rows)") from e
            logger.warning("skipping %s [%s]", e.detail, e.reason)
            report.add_skip(e.reason)
            return None

    def convert_all(self, rows: Iterable[_SourceRow], report: ConversionReport, writer: KaldiDirWriter) -> None:
        """Convert ``rows`` in order, each utterance written to ``writer`` at once (its ids
        increase with the row index); logs progress every 1000 utterances."""
        for row in rows:
            utt = self.convert(row, report)
            if utt is None:
                continue
            writer.add(utt)
            if writer.count % 1000 == 0:
                logger.info("%s/%s: %d utterances written", self.name, self.split, writer.count)


def convert_corpus(
    name: CorpusName,
    src: str | Path,
    out_dir: str | Path,
    split: str,
    wav_dir: str | Path,
    max_utts: Optional[int] = None,
    seed: int = 0,
    skip_bad_utts: bool = False,
    max_seconds: Optional[float] = None,
) -> ConversionReport:
    """Convert ``split`` of corpus ``name`` at ``src`` into a Kaldi dir ``out_dir``.

    Writes ``<wav_dir>/<utt_id>.wav`` (16 kHz, 16-bit PCM) for each kept row, then the
    Kaldi directory in one atomic step.  ``max_utts`` keeps a seeded random subset of the
    rows that pass the corpus filter; ``max_seconds`` (``None``: no limit) skips and counts
    longer audio.  Bad rows raise :class:`DataError` naming the corpus file, row and
    utterance id, unless ``skip_bad_utts``.  See the module docstring for the per-corpus
    rules.  Returns a :class:`ConversionReport`.
    """
    _check_arguments(name, split, max_utts, max_seconds)
    spec = _SPECS[name]
    src, out_dir, wav_dir = Path(src), Path(out_dir), Path(wav_dir)
    report = ConversionReport(corpus=name, split=split, src=str(src), out_dir=str(out_dir))

    shards = find_shards(src, split)
    columns_of = [_columns_to_read(shard, spec, name) for shard in shards]
    shard_rows, n_read, candidates = _candidate_rows(shards, name)
    selected = _select_rows(candidates, max_utts, seed)
    report.n_read = n_read
    report.n_filtered = n_read - len(candidates)
    report.n_selected = len(selected)
    logger.info(
        "%s/%s: %d shard(s), %d rows, %d selected", name, split, len(shards), n_read, len(selected)
    )

    converter = _RowConverter(name, split, spec, wav_dir.resolve(), _id_digits(n_read),
                              max_seconds, skip_bad_utts)
    with open_kaldi_dir(out_dir) as writer:
        converter.convert_all(_selected_rows(shards, shard_rows, columns_of, selected), report, writer)
        if not writer.count:
            raise DataError(
                f"{name}: no usable utterances in split {split!r} of {src} for {out_dir} "
                f"({report.summary()})"
            )
    report.n_written = writer.count
    return report


def _convert_row(
    row: Dict[str, Any],
    spec: _CorpusSpec,
    shard: Shard,
    utt_id: str,
    spk: str,
    where: str,
    wav_root: Path,
    max_seconds: Optional[float],
) -> Utterance:
    """Check one row, write its 16 kHz WAV and return its :class:`Utterance`."""
    question, answers = spec.texts(row, where)
    wav, sr = _decode(row.get(spec.audio_column), shard.base_dirs, where)
    seconds = wav.shape[0] / sr
    if max_seconds is not None and seconds > max_seconds:
        raise _BadRow("too_long", f"{where}: audio is {seconds:.1f} s > {max_seconds:g} s")
    if sr != TARGET_SR:
        wav = resample(wav, sr, TARGET_SR)
    if wav.shape[0] == 0:
        raise _BadRow("empty_audio", f"{where}: audio is empty after resampling")
    path = wav_root / f"{utt_id}.wav"
    write_wav(path, np.clip(wav, -1.0, 1.0), TARGET_SR)
    return Utterance(utt_id=utt_id, spk=spk, wav=str(path), text=question, answers=answers)


__all__ = [
    "CORPORA",
    "CorpusName",
    "ConversionReport",
    "SKIP_REASONS",
    "Shard",
    "convert_corpus",
    "find_shards",
    "has_history",
    "strip_markers",
]
