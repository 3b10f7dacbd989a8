"""Audio loading for the recipe: mono float32 at the encoder's sample rate.

Errors name the file and utterance id; a wrong sample rate is resampled (soxr),
and audio longer than the encoder window is truncated or rejected per config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Tuple

import numpy as np
import soundfile as sf

from espnet_ext.data.kaldi_dir import DataError

TARGET_SR = 16000


def load_audio(path: str | Path, utt_id: str = "", target_sr: int = TARGET_SR) -> np.ndarray:
    """Read ``path`` as mono float32 in [-1, 1] at ``target_sr`` Hz.

    Raises :class:`DataError` for a missing, unreadable or empty file.
    """
    who = f"utterance {utt_id}: " if utt_id else ""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{who}audio file {path} does not exist")
    try:
        wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError subclasses
        raise DataError(f"{who}cannot read audio file {path}: {e}") from e
    if wav.shape[0] == 0:
        raise DataError(f"{who}audio file {path} is empty")
    wav = wav.mean(axis=1)
    if sr != target_sr:
        wav = resample(wav, sr, target_sr)
    if not np.isfinite(wav).all():
        raise DataError(f"{who}audio file {path} contains NaN/Inf samples")
    return wav.astype(np.float32, copy=False)


def resample(wav: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """High-quality resampling with soxr (the library librosa uses)."""
    import soxr

    return soxr.resample(wav, sr_in, sr_out).astype(np.float32, copy=False)


def fit_to_window(
    wav: np.ndarray,
    max_seconds: float,
    policy: Literal["truncate", "reject"],
    utt_id: str = "",
    sr: int = TARGET_SR,
) -> Tuple[np.ndarray, bool]:
    """Apply the encoder-window policy; returns ``(audio, was_too_long)``.

    ``truncate`` keeps the first ``max_seconds``; ``reject`` raises :class:`DataError`.
    """
    limit = int(round(max_seconds * sr))
    if wav.shape[0] <= limit:
        return wav, False
    if policy == "truncate":
        return wav[:limit], True
    if policy == "reject":
        raise DataError(
            f"utterance {utt_id}: audio is {wav.shape[0] / sr:.1f} s, longer than the "
            f"encoder window of {max_seconds:.1f} s (set --long_audio truncate to keep it)"
        )
    raise ValueError(f"unknown long-audio policy {policy!r}; choose 'truncate' or 'reject'")


def write_wav(path: str | Path, wav: np.ndarray, sr: int = TARGET_SR) -> None:
    """Write 16-bit PCM WAV atomically."""
    from espnet_ext.utils.atomic import atomic_open

    with atomic_open(path, "wb") as f:
        sf.write(f, wav, sr, format="WAV", subtype="PCM_16")


__all__ = ["TARGET_SR", "load_audio", "resample", "fit_to_window", "write_wav"]
