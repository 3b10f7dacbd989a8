"""Frozen speech encoders.

LLaMA-Omni (Fang et al., ICLR 2025, §2.1) uses the Whisper-large-v3 encoder, frozen,
on 128-bin log-mel features of audio padded to 30 s (3000 frames → 1500 encoder frames).
:class:`WhisperSpeechEncoder` wraps a transformers Whisper checkpoint of any size and
offers two input paths:

* ``pad_to_30s=True`` — the faithful LLaMA-Omni path: every utterance is padded to
  30 s and run through the stock encoder.
* ``pad_to_30s=False`` (our default) — the variable-length path: the encoder's own
  submodules (conv1, conv2, the first T rows of ``embed_positions``, layers,
  ``layer_norm``) run on the utterance's real length; in a batch, padded key frames
  are masked out of self-attention so each utterance's output is the same as when it
  is encoded alone.  transformers' ``WhisperEncoder.forward`` rejects anything but
  3000 frames, which is why this path drives the submodules itself.

Where the outputs come from is the encoder's ``cache_features`` setting (the model
preset's ``encoder_conf.cache_features``): ``True`` — recipe stage 2 runs the frozen
encoder once per utterance and caches its outputs (``dump/<set>/enc_feats.scp``), which
training, decoding and the analysis read; ``False`` — on the fly, as LLaMA-Omni trains:
stage 2 writes no features, and every job reads the 16 kHz audio (``wav.scp``) and runs
the frozen encoder on each batch (under ``no_grad``, in its own precision).  Both give
the same outputs; the cache trades disk (about 0.26 MB per audio second for
whisper-large-v3) for the encoder's compute in every epoch.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import List, Sequence, Tuple

import numpy as np
import torch

logger = logging.getLogger(__name__)


class AbsSpeechEncoder(torch.nn.Module, ABC):
    """A speech encoder: waveforms → (Batch, Frames, Dim) features."""

    @abstractmethod
    def output_size(self) -> int:
        """Feature dimension of the encoder output."""

    @abstractmethod
    def forward(
        self, speech: torch.Tensor, speech_lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Encode 16 kHz waveforms ``(Batch, Samples)`` into ``(Batch, Frames, Dim)``."""


def load_whisper_encoder(model_name_or_path: str) -> torch.nn.Module:
    """Load only the encoder of a Whisper checkpoint.

    A local folder's safetensors shards are read for the ``model.encoder.*`` tensors only
    (whisper-large-v3's decoder is never materialised); a hub id loads the full model and
    keeps its encoder.  Every encoder tensor must be present.
    """
    from pathlib import Path

    from transformers import WhisperConfig, WhisperForConditionalGeneration
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    folder = Path(model_name_or_path)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        if folder.is_dir() or folder.suffix:
            raise FileNotFoundError(f"no *.safetensors weights in Whisper folder {folder}")
        return WhisperForConditionalGeneration.from_pretrained(model_name_or_path).get_encoder()
    from safetensors import safe_open

    encoder = WhisperEncoder(WhisperConfig.from_pretrained(folder))
    prefix = "model.encoder."
    state = {}
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            for key in sf.keys():
                if key.startswith(prefix):
                    state[key[len(prefix):]] = sf.get_tensor(key)
    result = encoder.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{folder}: Whisper encoder weights do not match its config (missing "
            f"{result.missing_keys[:4]}, unexpected {result.unexpected_keys[:4]})"
        )
    return encoder


class WhisperSpeechEncoder(AbsSpeechEncoder):
    """The encoder half of a transformers Whisper model, frozen by default.

    Args:
        model_name_or_path: HF hub id or local folder of a Whisper model
            (e.g. ``openai/whisper-large-v3`` or ``exp/pretrained/whisper``).
        pad_to_30s: pad every utterance to 30 s as LLaMA-Omni does (faithful, slow).
        freeze: keep the encoder frozen (LLaMA-Omni stage 1 freezes it).
        max_seconds: the encoder window (30 s for Whisper).
        cache_features: the recipe caches this encoder's outputs in stage 2 (``True``), or
            every job encodes the audio on the fly (``False``); see the module docstring.
            It changes where the outputs come from, never their values.
    """

    def __init__(
        self,
        model_name_or_path: str,
        pad_to_30s: bool = False,
        freeze: bool = True,
        max_seconds: float = 30.0,
        cache_features: bool = True,
    ) -> None:
        super().__init__()
        from transformers import WhisperFeatureExtractor

        self.encoder = load_whisper_encoder(model_name_or_path)
        self.feature_extractor = WhisperFeatureExtractor.from_pretrained(model_name_or_path)
        self.pad_to_30s = pad_to_30s
        self.max_seconds = max_seconds
        self.freeze = freeze
        self.cache_features = bool(cache_features)
        if freeze:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> WhisperSpeechEncoder:
        super().train(mode)
        if self.freeze:
            self.encoder.eval()  # no dropout in a frozen encoder
        return self

    def output_size(self) -> int:
        return int(self.encoder.config.d_model)

    @property
    def num_mel_bins(self) -> int:
        return int(self.encoder.config.num_mel_bins)

    def log_mel(self, waveform: np.ndarray) -> np.ndarray:
        """Whisper log-mel ``(n_mels, frames)`` of one 16 kHz waveform, unpadded.

        Features are computed per utterance so a batch never changes them.
        """
        max_samples = int(self.max_seconds * self.feature_extractor.sampling_rate)
        waveform = np.asarray(waveform, dtype=np.float32)[:max_samples]
        out = self.feature_extractor(
            waveform,
            sampling_rate=self.feature_extractor.sampling_rate,
            padding="max_length" if self.pad_to_30s else "longest",
            return_tensors="np",
        )
        return out["input_features"][0]

    def num_frames(self, num_samples: int) -> int:
        """Encoder output frames of a 16 kHz waveform of ``num_samples`` samples, without
        encoding it (what the shape files count): ``samples // hop`` log-mel frames (the
        feature extractor drops the last STFT frame), cut at the 30 s window or padded to
        it with ``pad_to_30s``, halved by the stride-2 convolution."""
        max_mel = self.encoder.config.max_source_positions * 2
        if self.pad_to_30s:
            mel = max_mel
        else:
            max_samples = int(self.max_seconds * self.feature_extractor.sampling_rate)
            mel = min(min(int(num_samples), max_samples) // self.feature_extractor.hop_length, max_mel)
        return (mel + 1) // 2

    def forward_mel(
        self, mels: Sequence[torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Encode log-mels ``[(n_mels, T_i)]`` → ``(Batch, ceil(T_max/2), Dim)``, lengths."""
        enc = self.encoder
        device = enc.conv1.weight.device
        dtype = enc.conv1.weight.dtype
        max_frames = enc.config.max_source_positions * 2
        lengths = torch.tensor([min(m.shape[-1], max_frames) for m in mels], device=device)
        if self.pad_to_30s:
            lengths = torch.full_like(lengths, max_frames)
        t_max = int(lengths.max())
        x = torch.zeros(len(mels), self.num_mel_bins, t_max, device=device, dtype=dtype)
        for i, m in enumerate(mels):
            x[i, :, : lengths[i]] = torch.as_tensor(m, device=device, dtype=dtype)[:, : lengths[i]]
        # (Batch, n_mels, T) → (Batch, Dim, ceil(T/2)) by the two convolutions
        h = torch.nn.functional.gelu(enc.conv1(x))
        # conv1 outputs past an utterance's end are gelu(bias + ...) ≠ 0; zero them so
        # conv2 (stride 2) sees the same zero padding as when the utterance is alone
        # (otherwise the last frame of an odd-length utterance depends on the batch)
        frame_ok = torch.arange(t_max, device=device)[None, :] < lengths[:, None]
        h = h * frame_ok[:, None, :].to(h.dtype)
        h = torch.nn.functional.gelu(enc.conv2(h)).transpose(1, 2)  # (Batch, T', Dim)
        out_lengths = (lengths + 1) // 2
        t_out = h.shape[1]
        h = h + enc.embed_positions.weight[:t_out].to(h.dtype)
        mask = None
        if bool((out_lengths != t_out).any()):
            # additive key mask (Batch, 1, T', T'): padded frames are never attended to
            key_pad = torch.arange(t_out, device=device)[None, :] >= out_lengths[:, None]
            mask = torch.zeros(len(mels), 1, t_out, t_out, device=device, dtype=h.dtype)
            mask = mask.masked_fill(key_pad[:, None, None, :], torch.finfo(h.dtype).min)
        for layer in enc.layers:
            h = layer(h, mask)
            h = h[0] if isinstance(h, tuple) else h
        h = enc.layer_norm(h)
        return h, out_lengths

    def forward(
        self, speech: torch.Tensor, speech_lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Encode padded waveforms ``(Batch, Samples)`` with their lengths."""
        wavs = [speech[i, : speech_lengths[i]].float().cpu().numpy() for i in range(len(speech))]
        return self.encode_waveforms(wavs)

    def encode_waveforms(self, wavs: List[np.ndarray]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Encode a list of 16 kHz waveforms; gradients only if the encoder is trainable."""
        mels = [torch.from_numpy(self.log_mel(w)) for w in wavs]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            return self.forward_mel(mels)
