"""Recipe stage 2: run the frozen encoder once per utterance and cache its outputs.

LLaMA-Omni freezes the speech encoder in stage 1, so its outputs are a pure function of
the audio.  Computing them once (instead of once per epoch) is the biggest single saving
of the recipe.  For each data directory this writes a dump directory::

    dump/<set>/text answer utt2spk wav.scp   # copies, restricted to the kept utterances
    dump/<set>/enc_feats.ark enc_feats.scp   # (Frames, D_enc) float32 per utterance (kaldiio)
    dump/<set>/llm_len.speech llm_len.text   # LLM sequence length per modality (ESPnet shape files)
    dump/<set>/dump_report.json              # counts: kept, truncated, skipped (with reasons),
                                             # and the options the features depend on

The shape files let ESPnet's ``sorted``/``numel`` batch samplers bucket by the real LLM
sequence length.  Everything is written into a temporary directory that replaces
``dump/<set>`` only when complete.

With ``pad_to_30s`` (LLaMA-Omni's input path) every utterance is padded to the 30 s
window, so every utterance has the same encoder frame count (1500 for Whisper: 3000 mel
frames) and ``llm_len.speech`` counts ``1500 // k`` speech positions for each (300 at
k = 5).  The report records ``pad_to_30s`` and ``downsample_rate``, so a dump made with
other options is recognised (:func:`dump_options_mismatch`) and redone.
"""

from __future__ import annotations

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

from espnet_ext.data.audio import fit_to_window, load_audio
from espnet_ext.data.kaldi_dir import DataError, Utterance, read_kaldi_dir, write_kaldi_dir
from espnet_ext.utils.atomic import atomic_dir

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
    encoder_frames: Dict[str, int] = field(default_factory=dict)  # min and max frames written


def _shape_lines(ids: List[str], values: Dict[str, int]) -> str:
    return "".join(f"{u} {values[u]}\n" for u in ids)


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
    """Encode every utterance of ``data_dir`` with the frozen ``encoder`` into ``out_dir``.

    Args:
        encoder: a :class:`~espnet_ext.models.encoder.WhisperSpeechEncoder`.
        tokenizer: the LLM tokenizer (for the text-modality shape file).
        prompt_overhead: prompt tokens around the placeholder (prefix + suffix).
        downsample_rate: the adaptor's k, to turn encoder frames into LLM positions.
        long_audio: audio longer than the encoder window is truncated or rejected.
        skip_bad_utts: skip (and report) unreadable/invalid utterances instead of failing.
    """
    import kaldiio

    utts = read_kaldi_dir(data_dir)
    report = DumpReport(data_dir=str(data_dir), n_input=len(utts),
                        pad_to_30s=bool(getattr(encoder, "pad_to_30s", False)), downsample_rate=downsample_rate)
    wavs: Dict[str, np.ndarray] = {}
    for u in utts:
        try:
            wav = load_audio(u.wav, u.utt_id)
            wav, truncated = fit_to_window(wav, encoder.max_seconds, long_audio, u.utt_id)
            report.n_truncated += int(truncated)
            if wav.shape[0] < 400 * downsample_rate:  # < one adaptor step after the convs
                raise DataError(f"utterance {u.utt_id}: audio {u.wav} is too short to encode")
        except DataError as e:
            if not skip_bad_utts:
                raise
            logger.warning("skipping %s", e)
            report.skipped[u.utt_id] = str(e)
            continue
        wavs[u.utt_id] = wav
    if report.n_truncated:
        logger.warning("%s: %d utterance(s) truncated to %.0f s", data_dir, report.n_truncated, encoder.max_seconds)
    kept: List[Utterance] = [u for u in utts if u.utt_id in wavs]
    if not kept:
        raise DataError(f"{data_dir}: no usable utterance left ({len(report.skipped)} skipped)")

    order = sorted(wavs, key=lambda k: wavs[k].shape[0])  # length bucketing
    llm_len_speech: Dict[str, int] = {}
    llm_len_text: Dict[str, int] = {}
    enc_frames: Dict[str, int] = {}
    answer_len = {u.utt_id: len(tokenizer(u.answers[0], add_special_tokens=False)["input_ids"]) + 1 for u in kept}
    with atomic_dir(out_dir) as tmp:
        ark, scp = tmp / "enc_feats.ark", tmp / "enc_feats.scp"
        with kaldiio.WriteHelper(f"ark,scp:{ark},{scp}") as writer, torch.inference_mode():
            for start in tqdm(range(0, len(order), batch_size), desc=f"encode {Path(data_dir).name}", unit="batch"):
                ids = order[start : start + batch_size]
                feats, lengths = encoder.encode_waveforms([wavs[i] for i in ids])
                for j, uid in enumerate(ids):
                    writer[uid] = feats[j, : lengths[j]].float().cpu().numpy()
                    enc_frames[uid] = int(lengths[j])
                    llm_len_speech[uid] = int(lengths[j]) // downsample_rate + prompt_overhead + answer_len[uid]
        # scp lines point at the temporary ark path: rewrite them to the final location
        final_ark = Path(out_dir).resolve() / "enc_feats.ark"
        lines = scp.read_text().splitlines()
        scp.write_text("".join(line.replace(str(ark), str(final_ark)) + "\n" for line in sorted(lines)))
        for u in kept:
            q = len(tokenizer(u.text, add_special_tokens=False)["input_ids"])
            llm_len_text[u.utt_id] = q + prompt_overhead + answer_len[u.utt_id]
        ids = sorted(wavs)
        kaldi_tmp = tmp / "kaldi"
        write_kaldi_dir(kaldi_tmp, kept)
        for name in ("wav.scp", "text", "answer", "utt2spk", "spk2utt"):
            shutil.move(str(kaldi_tmp / name), tmp / name)
        kaldi_tmp.rmdir()
        (tmp / "llm_len.speech").write_text(_shape_lines(ids, llm_len_speech))
        (tmp / "llm_len.text").write_text(_shape_lines(ids, llm_len_text))
        report.n_written = len(kept)
        report.encoder_frames = {"min": min(enc_frames.values()), "max": max(enc_frames.values())}
        (tmp / "dump_report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    logger.info(
        "%s → %s: %d written, %d truncated, %d skipped",
        data_dir, out_dir, report.n_written, report.n_truncated, len(report.skipped),
    )
    return report


def read_dump_report(out_dir: str | Path) -> Optional[dict]:
    """The ``dump_report.json`` of a finished dump, or ``None``."""
    p = Path(out_dir) / "dump_report.json"
    return json.loads(p.read_text()) if p.exists() else None


def dump_options_mismatch(report: dict, pad_to_30s: bool, downsample_rate: int) -> Optional[str]:
    """Why a finished dump's ``report`` was made with other options than asked, or ``None``.

    A report without ``pad_to_30s`` predates the record and was made without padding; one
    without ``downsample_rate`` is not checked for it.
    """
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

    Cheap: per archive it checks that the file exists, that every offset lies inside
    it, and reads the matrix stored last (a truncated archive fails there).  The error
    names the archive and the utterance, and says how to rebuild the dump.
    """
    import kaldiio

    scp = Path(scp)
    if not scp.is_file():
        raise DataError(f"missing file {scp} (run the feature dump, recipe stage 2)")
    last: Dict[str, Tuple[int, str]] = {}  # archive -> (largest offset, its utterance)
    for lineno, line in enumerate(scp.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        uid, _, where = line.partition(" ")
        ark, sep, offset = where.strip().rpartition(":")
        if not sep or not offset.isdigit():
            raise DataError(f"{scp}:{lineno}: utterance {uid}: expected '<ark path>:<offset>', got {where!r}")
        if int(offset) >= last.get(ark, (-1, ""))[0]:
            last[ark] = (int(offset), uid)
    redo = "the dump is damaged; rebuild it (recipe stage 2 redoes a damaged dump)"
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
