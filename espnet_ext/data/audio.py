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


def waveform_at(array: np.ndarray, sr: int, where: str = "", target_sr: int = TARGET_SR) -> np.ndarray:
    """An in-memory waveform as mono float32 at ``target_sr`` Hz, as :func:`load_audio`
    makes a file: 1-D is mono; 2-D is ``(samples, channels)`` (soundfile's layout) or
    ``(channels, samples)`` (torchaudio's, librosa's), the shorter axis holding at most 8
    channels, averaged.  Raises :class:`DataError` (prefixed by ``where``) for another
    shape, no samples, a non-positive rate or NaN/Inf samples."""
    who = f"{where}: " if where else ""
    wav = np.asarray(array, dtype=np.float32)
    if wav.ndim == 2 and min(wav.shape) <= 8 and wav.shape[0] != wav.shape[1]:
        wav = wav.mean(axis=0 if wav.shape[0] < wav.shape[1] else 1)
    if wav.ndim != 1:
        raise DataError(f"{who}audio array of shape {wav.shape}; expected (samples,) or (samples, channels <= 8)")
    if wav.shape[0] == 0:
        raise DataError(f"{who}audio array has no samples")
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or sr <= 0:
        raise DataError(f"{who}sampling rate must be a positive integer number of Hz, got {sr!r}")
    if not np.isfinite(wav).all():
        raise DataError(f"{who}audio array contains NaN/Inf samples")
    return resample(wav, int(sr), target_sr) if sr != target_sr else wav


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


def is_mono_at(path: str | Path, sr: int = TARGET_SR) -> bool:
    """Whether the audio file at ``path`` is mono at ``sr`` Hz (read from its header).

    Such a file reads the same through :func:`load_audio` and through a loader that
    neither resamples nor mixes channels (ESPnet's ``sound`` data type).
    """
    info = sf.info(str(path))
    return info.samplerate == sr and info.channels == 1


def write_wav(path: str | Path, wav: np.ndarray, sr: int = TARGET_SR, subtype: str = "PCM_16") -> None:
    """Write a WAV file atomically: 16-bit PCM, or ``subtype="FLOAT"`` (32-bit float,
    which stores float32 samples exactly)."""
    from espnet_ext.utils.atomic import atomic_open

    with atomic_open(path, "wb") as f:
        sf.write(f, wav, sr, format="WAV", subtype=subtype)


__all__ = ["TARGET_SR", "load_audio", "waveform_at", "resample", "fit_to_window", "is_mono_at", "write_wav"]
