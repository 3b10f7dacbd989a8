"""Recipe stage 2: check every utterance's audio and cache the frozen encoder's outputs.

LLaMA-Omni freezes the speech encoder in stage 1, so its outputs are a pure function of
the audio.  Computing them once (instead of once per epoch) is the biggest single saving
of the recipe on a CPU; at corpus scale the cache costs disk instead (about 0.26 MB per
audio second for whisper-large-v3), so the encoder's ``cache_features`` setting (the
model preset's ``encoder_conf.cache_features``) chooses.  For each data directory this
writes a dump directory::

    dump/<set>/text answer utt2spk spk2utt     # copies, restricted to the kept utterances
    dump/<set>/wav.scp                         # the audio; on the fly: 16 kHz mono, read as is (below)
    dump/<set>/enc_feats.ark enc_feats.scp     # cache_features: (Frames, D_enc) float32 per
                                               # utterance (kaldiio); none on the fly
    dump/<set>/wav/<utt>.wav                   # on the fly: 16 kHz mono float copies of the
                                               # audio that is not 16 kHz mono or was truncated
    dump/<set>/llm_len.speech llm_len.text     # LLM sequence length per modality (ESPnet shape files)
    dump/<set>/dump_report.json                # counts: kept, truncated, skipped (with reasons),
                                               # and the options the dump depends on

Both modes share one pass over the audio: each utterance is read (resampled to 16 kHz,
mixed to mono), checked, fitted to the encoder window, and its shape-file lengths are
computed from its sample count (:meth:`WhisperSpeechEncoder.num_frames`, no encoding).
On the fly, ``wav.scp`` then points at audio that ESPnet's ``sound`` loader reads as that
same array (the source file when it already is 16 kHz mono within the window, else the
copy), and training reads it as ``speech``.  With the cache, a second pass encodes the
kept utterances in batches of similar length and checks that every encoded length is
the one the shape files count.  Neither pass holds more than one batch of audio: the
data directory is read one utterance at a time (:func:`iter_kaldi_dir`) and only ids,
lengths and paths are kept per utterance.

The shape files let ESPnet's ``sorted``/``numel`` batch samplers bucket by the real LLM
sequence length.  Everything is written into a work directory (``dump/.<set>.partial``)
that replaces ``dump/<set>`` only when complete.  The archive there grows one encoder
batch at a time with an fsynced journal of the finished batches
(:class:`~espnet_ext.data.ark_journal.ResumableArk`), so a killed dump continues where
it stopped when rerun with the same inputs and options, and ends with the archive an
unbroken run writes.

With ``pad_to_30s`` (LLaMA-Omni's input path) every utterance is padded to the 30 s
window, so every utterance has the same encoder frame count (1500 for Whisper: 3000 mel
frames) and ``llm_len.speech`` counts ``1500 // k`` speech positions for each (300 at
k = 5).  The report records ``pad_to_30s``, ``downsample_rate`` and ``cache_features``, so
a dump made with other options is recognised (:func:`dump_options_mismatch`) and redone.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from espnet_ext.data.ark_journal import JOURNAL_NAME, LOCK_NAME, ResumableArk
from espnet_ext.data.audio import fit_to_window, is_mono_at, load_audio, write_wav
from espnet_ext.data.kaldi_dir import DataError, KaldiDirWriter, Utterance, iter_kaldi_dir
from espnet_ext.utils.atomic import DiskFullError, replace_dir

logger = logging.getLogger(__name__)


@dataclass
class DumpReport:
    """What :func:`dump_encoder_features` did with each utterance."""

    data_dir: str
    n_input: int = 0
    n_written: int = 0
    n_truncated: int = 0
    skipped: Dict[str, str] = field(default_factory=dict)  # utt id → reason
    pad_to_30s: bool = False       # every utterance padded to the 30 s encoder window
    downsample_rate: int = 0       # the adaptor's k behind llm_len.speech
    encoder_frames: Dict[str, int] = field(default_factory=dict)  # min and max frames (written or counted)
    cache_features: bool = True    # enc_feats written; false: on the fly (audio only)
    n_audio_copies: int = 0        # on the fly: 16 kHz mono copies written under wav/


def _checked_audio(u: Utterance, max_seconds: float, long_audio: str, downsample_rate: int) -> Tuple[np.ndarray, bool]:
    """The utterance's 16 kHz mono audio fitted to the encoder window, and whether it was
    cut; :class:`DataError` for unreadable audio or audio too short to encode."""
    wav = load_audio(u.wav, u.utt_id)
    wav, truncated = fit_to_window(wav, max_seconds, long_audio, u.utt_id)
    if wav.shape[0] < 400 * downsample_rate:  # < one adaptor step after the convs
        raise DataError(f"utterance {u.utt_id}: audio {u.wav} is too short to encode")
    return wav, truncated


def partial_dir(out_dir: str | Path) -> Path:
    """Where the dump of ``out_dir`` is built (and kept for a rerun when interrupted)."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f".{out_dir.name}.partial")


def encoder_fingerprint(encoder: torch.nn.Module) -> str:
    """A digest of the encoder's weights (name, shape, sum and absolute sum of every tensor):
    an interrupted dump is continued only with the encoder that started it."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in encoder.state_dict().items():
            t = t.detach().double()
            h.update(f"{name} {tuple(t.shape)} {float(t.sum())!r} {float(t.abs().sum())!r};".encode())
    return h.hexdigest()


def _plan_digest(batches: List[List[str]], samples: Dict[str, int]) -> str:
    """A digest of the batches (their utterances and sample counts, in order)."""
    plan = [[[u, int(samples[u])] for u in b] for b in batches]
    return hashlib.sha256(json.dumps(plan).encode()).hexdigest()


def dump_encoder_features(
    data_dir: str | Path,
    out_dir: str | Path,
    encoder,
    tokenizer,
    prompt_overhead: int,
    downsample_rate: int,
    long_audio: Literal["truncate", "reject"] = "truncate",
    skip_bad_utts: bool = False,
    batch_size: int = 16,
) -> DumpReport:
    """Check every utterance of ``data_dir`` and write its dump into ``out_dir``; with
    the ``encoder``'s ``cache_features`` (the default) also its encoder outputs.

    Args:
        encoder: a :class:`~espnet_ext.models.encoder.WhisperSpeechEncoder`.
        tokenizer: the LLM tokenizer (for the shape files).
        prompt_overhead: prompt tokens around the placeholder (prefix + suffix).
        downsample_rate: the adaptor's k, to turn encoder frames into LLM positions.
        long_audio: audio longer than the encoder window is truncated or rejected.
        skip_bad_utts: skip (and report) unreadable/invalid utterances instead of failing.
        batch_size: utterances per encoder batch (with the cache).
    """
    cache = bool(getattr(encoder, "cache_features", True))
    report = DumpReport(data_dir=str(data_dir), pad_to_30s=bool(getattr(encoder, "pad_to_30s", False)),
                        downsample_rate=downsample_rate, cache_features=cache)
    out_dir = Path(out_dir)
    final = out_dir.resolve()
    work = partial_dir(out_dir)
    if not cache:  # nothing to continue on the fly: an old work dir (of either mode) goes
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)

    def n_tokens(s: str) -> int:
        return len(tokenizer(s, add_special_tokens=False)["input_ids"])

    ark: Optional[ResumableArk] = None
    try:
        # pass 1 (both modes): audio checks, Kaldi copies, shape files; one utterance at a time
        samples: Dict[str, int] = {}   # with the cache: kept utterance → samples, in id order
        sources: Dict[str, str] = {}   # with the cache: its audio file
        frames: Dict[str, int] = {}    # encoder frames the shape file counts
        kaldi = KaldiDirWriter(work, str(out_dir))
        try:
            with open(work / "llm_len.speech", "w", encoding="utf-8") as len_speech, \
                    open(work / "llm_len.text", "w", encoding="utf-8") as len_text:
                for u in tqdm(iter_kaldi_dir(data_dir), desc=f"check {Path(data_dir).name}", unit="utt"):
                    report.n_input += 1
                    try:
                        wav, truncated = _checked_audio(u, encoder.max_seconds, long_audio, downsample_rate)
                    except DataError as e:
                        if not skip_bad_utts:
                            raise
                        logger.warning("skipping %s", e)
                        report.skipped[u.utt_id] = str(e)
                        continue
                    report.n_truncated += int(truncated)
                    if cache:
                        samples[u.utt_id], sources[u.utt_id] = wav.shape[0], u.wav
                    elif truncated or not is_mono_at(u.wav):
                        # what ESPnet's sound loader reads must be exactly what the encoder sees
                        write_wav(work / "wav" / f"{u.utt_id}.wav", wav, subtype="FLOAT")
                        u.wav = str(final / "wav" / f"{u.utt_id}.wav")
                        report.n_audio_copies += 1
                    n_frames = encoder.num_frames(wav.shape[0])
                    frames[u.utt_id] = n_frames
                    answer = n_tokens(u.answers[0]) + 1
                    len_speech.write(f"{u.utt_id} {n_frames // downsample_rate + prompt_overhead + answer}\n")
                    len_text.write(f"{u.utt_id} {n_tokens(u.text) + prompt_overhead + answer}\n")
                    kaldi.add(u)
        finally:
            kaldi.close()
        if report.n_truncated:
            logger.warning("%s: %d utterance(s) truncated to %.0f s", data_dir, report.n_truncated,
                           encoder.max_seconds)
        if not kaldi.count:
            raise DataError(f"{data_dir}: no usable utterance left ({len(report.skipped)} skipped)")
        kaldi.finish()
        if cache:  # pass 2: encode in batches of similar length (ties in id order), resumably
            order = sorted(samples, key=samples.get)
            batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
            header = {"format": 1, "data_dir": str(Path(data_dir).resolve()), "long_audio": long_audio,
                      "downsample_rate": downsample_rate, "pad_to_30s": report.pad_to_30s,
                      "max_seconds": float(encoder.max_seconds), "encoder": encoder_fingerprint(encoder),
                      "batches": _plan_digest(batches, samples)}
            ark = ResumableArk(work, header)
            _write_features(ark, work, final, data_dir, encoder, batches, sources, frames, long_audio,
                            downsample_rate)
        report.n_written = kaldi.count
        report.encoder_frames = {"min": min(frames.values()), "max": max(frames.values())}
        (work / "dump_report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
        if ark is not None:
            ark.close()
            ark = None
        replace_dir(work, out_dir)
    except DataError:  # bad input: a work dir that holds no encoded batches goes
        if ark is None and not (work / JOURNAL_NAME).exists():
            shutil.rmtree(work, ignore_errors=True)
        raise
    except OSError as e:  # what is encoded stays in the work dir for a rerun
        if e.errno != errno.ENOSPC or isinstance(e, DiskFullError):
            raise
        raise DiskFullError(errno.ENOSPC, f"no space left on the device while writing {out_dir}; its previous "
                            f"version (if any) is intact, and the encoded features are kept in {work} for a "
                            f"rerun of the same command (free space first, or delete {work})") from e
    finally:
        if ark is not None:
            ark.close()
    for name in (JOURNAL_NAME, LOCK_NAME):  # the work dir's bookkeeping, now inside out_dir
        (out_dir / name).unlink(missing_ok=True)
    logger.info(
        "%s → %s: %d written, %d truncated, %d skipped%s",
        data_dir, out_dir, report.n_written, report.n_truncated, len(report.skipped),
        "" if cache else f" (no features: on the fly; {report.n_audio_copies} audio copies)",
    )
    return report


def _write_features(ark: ResumableArk, work: Path, final: Path, data_dir, encoder, batches: List[List[str]],
                    sources: Dict[str, str], frames: Dict[str, int], long_audio: str,
                    downsample_rate: int) -> None:
    """Encode the batches that ``ark`` has not finished into it, reading one batch of audio
    at a time, then write ``work/enc_feats.scp`` pointing at ``final``'s archive."""
    if ark.done:
        logger.info("%s: continuing an interrupted dump: %d of %d batches already encoded (%s)",
                    final, len(ark.done), len(batches), work)
    todo = [i for i in range(len(batches)) if i not in ark.done]
    with torch.inference_mode():
        for index in tqdm(todo, desc=f"encode {Path(data_dir).name}", unit="batch"):
            ids = batches[index]
            wavs = [_checked_audio(Utterance(uid, "", sources[uid], ""), encoder.max_seconds, long_audio,
                                   downsample_rate)[0] for uid in ids]
            feats, lengths = encoder.encode_waveforms(wavs)
            for j, uid in enumerate(ids):
                if int(lengths[j]) != frames[uid]:  # the shape files count what is written
                    raise RuntimeError(f"utterance {uid}: encoded {int(lengths[j])} frames, the shape file "
                                       f"counts {frames[uid]} (encoder.num_frames disagrees with the encoder)")
            ark.add(index, [(uid, feats[j, : lengths[j]].float().cpu().numpy()) for j, uid in enumerate(ids)])
    offsets = ark.offsets()
    final_ark = final / "enc_feats.ark"
    (work / "enc_feats.scp").write_text("".join(f"{u} {final_ark}:{offsets[u]}\n" for u in sorted(offsets)))


def read_dump_report(out_dir: str | Path) -> Optional[dict]:
    """The ``dump_report.json`` of a finished dump, or ``None`` (also when it is damaged, with
    a warning: the dump is then redone)."""
    p = Path(out_dir) / "dump_report.json"
    if not p.exists():
        return None
    try:
        report = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        logger.warning("%s is damaged (%s); the dump counts as unfinished", p, e)
        return None
    return report if isinstance(report, dict) else None


def dump_options_mismatch(report: dict, pad_to_30s: bool, downsample_rate: int,
                          cache_features: bool = True) -> Optional[str]:
    """Why a finished dump's ``report`` was made with other options than asked, or ``None``.

    A report without ``pad_to_30s`` predates the record and was made without padding; one
    without ``downsample_rate`` is not checked for it; one without ``cache_features`` was
    made with the cache.
    """
    made_cache = bool(report.get("cache_features", True))
    if made_cache != bool(cache_features):
        return (f"it was made with cache_features {str(made_cache).lower()}, "
                f"now cache_features {str(bool(cache_features)).lower()} is asked for")
    made_pad = bool(report.get("pad_to_30s", False))
    if made_pad != bool(pad_to_30s):
        return (f"its features were dumped with pad_to_30s {str(made_pad).lower()}, "
                f"now pad_to_30s {str(bool(pad_to_30s)).lower()} is asked for")
    made_k = report.get("downsample_rate")
    if made_k and int(made_k) != int(downsample_rate):
        return f"its shape files count downsample_rate {made_k}, now downsample_rate {downsample_rate} is asked for"
    return None


def check_feature_archive(scp: str | Path) -> None:
    """Raise :class:`DataError` when the archive behind a feature ``scp`` is damaged.

    Cheap: the scp must end with a complete line and list every utterance of the
    ``text`` file beside it (a truncated scp fails there); per archive it checks that
    the file exists, that every offset lies inside it, and reads the matrix stored last
    (a truncated archive fails there).  The error names the file and the utterance, and
    says how to rebuild the dump.
    """
    import kaldiio

    scp = Path(scp)
    if not scp.is_file():
        raise DataError(f"missing file {scp} (run the feature dump, recipe stage 2)")
    redo = "the dump is damaged; rebuild it (recipe stage 2 redoes a damaged dump)"
    try:
        content = scp.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{scp}: not a text file ({e}); {redo}") from e
    if content and not content.endswith("\n"):
        raise DataError(f"{scp}: its last line is cut short (truncated); {redo}")
    last: Dict[str, Tuple[int, str]] = {}  # archive -> (largest offset, its utterance)
    ids = set()
    for lineno, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        uid, _, where = line.partition(" ")
        ark, sep, offset = where.strip().rpartition(":")
        if not sep or not offset.isdigit():
            raise DataError(f"{scp}:{lineno}: utterance {uid}: expected '<ark path>:<offset>', got {where!r}")
        ids.add(uid)
        if int(offset) >= last.get(ark, (-1, ""))[0]:
            last[ark] = (int(offset), uid)
    peer = scp.parent / "text"
    if peer.is_file():
        listed = {ln.split(maxsplit=1)[0] for ln in peer.read_text(encoding="utf-8", errors="replace").splitlines()
                  if ln.strip()}
        missing = sorted(listed - ids)
        if missing:
            raise DataError(f"{scp} lists {len(ids)} utterances, {peer} {len(listed)}: {missing[0]}"
                            f"{f' and {len(missing) - 1} more have' if len(missing) > 1 else ' has'} no features "
                            f"(truncated?); {redo}")
    for ark, (offset, uid) in last.items():
        if not Path(ark).is_file():
            raise DataError(f"{scp}: utterance {uid}: its archive {ark} is missing; {redo}")
        if offset >= Path(ark).stat().st_size:
            raise DataError(f"{ark}: utterance {uid} starts at byte {offset}, past the end of the file "
                            f"(truncated); {redo}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # kaldiio warns before raising
                kaldiio.load_mat(f"{ark}:{offset}")
        except Exception as e:  # kaldiio raises ValueError, EOFError, struct.error ...
            raise DataError(f"{ark}: the features of utterance {uid} cannot be read ({type(e).__name__}: {e}); "
                            f"{redo}") from e
