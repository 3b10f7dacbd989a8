"""A trained speech LLM as a Python object: audio or questions in, answers out.

:class:`SpeechLLMInference` plays the part of ESPnet's ``Speech2Text``
(``espnet2/bin/asr_inference.py``) for this task, e.g. in a notebook::

    from espnet_ext.inference.speechllm import SpeechLLMInference

    infer = SpeechLLMInference.from_exp_dir("exp/full")    # config.yaml + valid.loss.best.pth
    infer(["q1.wav", "q2.flac"])                            # S2T: one answer per file
    infer([wave], sampling_rate=44100)                      # numpy arrays at any rate
    infer.answer_text(["What is the capital of France?"])   # T2T

It is built as stage 5 builds a system: the exp dir's ``config.yaml`` and checkpoint
(``valid.loss.best.pth``, decoding's default), loaded strictly, LoRA merged into the base
weights in fp32 (:func:`~espnet_ext.models.lora.merge_lora_for_inference`).  Audio is read
as mono float32 and resampled to 16 kHz (soxr), the frozen encoder runs on it, and the
answers come from greedy decoding that stops at the end-of-turn token
(:meth:`ESPnetSpeechLLM.generate`).  Inputs are grouped by length into batches of
``batch_size``; answers come back in input order.

The recipe's decoding (:func:`espnet_ext.inference.decode.decode_dump_dir`) runs every
batch of a dump dir through the same object (:meth:`SpeechLLMInference.generate`), with the
cached encoder outputs or, on the fly, the dump's 16 kHz audio.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Dict, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import yaml

from espnet_ext.data.audio import load_audio, waveform_at
from espnet_ext.models.lora import merge_lora_for_inference
from espnet_ext.models.speech_llm import ESPnetSpeechLLM
from espnet_ext.tasks.speech_llm import SpeechLLMTask
from espnet_ext.train.batches import preprocessor_for
from espnet_ext.train.collate import PadCollate

logger = logging.getLogger(__name__)

#: a spoken question: an audio file, a waveform (at ``sampling_rate``), or ``(waveform, rate)``
AudioInput = Union[str, Path, np.ndarray, Tuple[np.ndarray, int]]
#: the decoding checkpoint of an exp dir (``conf/decode.yaml``'s ``inference_model``)
DEFAULT_CHECKPOINT = "valid.loss.best.pth"


def load_model(
    config: str | Path, model_file: Optional[str | Path] = None, device: str | torch.device = "cpu"
) -> ESPnetSpeechLLM:
    """An exp dir's model (``config.yaml`` + checkpoint) or, without a checkpoint, the
    model a training YAML describes (pretrained LLM, untrained adaptor: the No-FT baseline).

    The untrained adaptor is drawn from the config's ``seed`` (0 by default), the global RNG
    left untouched: every ``torchrun`` rank and every rerun builds the same No-FT model."""
    if model_file is not None:
        model, _ = SpeechLLMTask.build_model_from_file(config, model_file, device)
    else:
        defaults = SpeechLLMTask.default_args()
        with open(config, encoding="utf-8") as f:
            conf = yaml.safe_load(f) or {}
        unknown = sorted(set(conf) - set(defaults))
        if unknown:
            raise ValueError(f"{config}: unknown config key(s) {unknown}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(conf.get("seed", defaults.get("seed", 0)) or 0))
            model = SpeechLLMTask.build_model(argparse.Namespace(**{**defaults, **conf}))
        model.to(device)
    model.eval()
    return model


class SpeechLLMInference:
    """Batched greedy answers of a speech LLM to spoken (S2T) or written (T2T) questions.

    Args:
        model: an :class:`ESPnetSpeechLLM` (put in eval mode here).
        batch_size: questions per ``generate`` call.
        max_new_tokens: cap on each answer's length (LLaMA-Omni decodes up to 256).
    """

    def __init__(self, model: ESPnetSpeechLLM, batch_size: int = 16, max_new_tokens: int = 256) -> None:
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size}, {max_new_tokens}")
        self.model = model.eval()
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.preprocessor = preprocessor_for(model)
        self.device = next(model.parameters()).device

    @classmethod
    def from_config(cls, config: str | Path, model_file: Optional[str | Path] = None,
                    device: str | torch.device = "cpu", merge_lora: bool = True, **kwargs) -> SpeechLLMInference:
        """From a ``config.yaml`` and a checkpoint, or a training YAML alone (the No-FT
        model, :func:`load_model`); LoRA merged unless ``merge_lora=False``."""
        model = load_model(config, model_file, device)
        if merge_lora:
            n = merge_lora_for_inference(model)
            if n:
                logger.info("merged %d LoRA layers into their base weights for decoding", n)
        return cls(model, **kwargs)

    @classmethod
    def from_exp_dir(cls, exp_dir: str | Path, model_file: str | Path = DEFAULT_CHECKPOINT,
                     device: str | torch.device = "cpu", **kwargs) -> SpeechLLMInference:
        """From a stage-4 exp dir: its ``config.yaml`` and ``model_file`` (relative to the
        dir unless absolute; decoding's ``valid.loss.best.pth`` by default)."""
        exp_dir = Path(exp_dir)
        config, checkpoint = exp_dir / "config.yaml", exp_dir / model_file
        for f in (config, checkpoint):
            if not f.is_file():
                raise FileNotFoundError(f"{f} does not exist: {exp_dir} is not a finished training run "
                                        "(recipe stage 4 writes config.yaml and the checkpoints)")
        return cls.from_config(config, checkpoint, device, **kwargs)

    # ---- the batch step shared with the recipe's decoding ----------------------------------
    def generate(self, batch: Dict[str, torch.Tensor], modality: Literal["speech", "text", "chat"]) -> List[List[int]]:
        """Answer token ids (end-of-turn excluded) of one collated batch: ``text`` (T2T), or
        ``speech`` (16 kHz audio, encoded here) or ``enc_feats`` (cached encoder outputs) for S2T."""
        return self.model.generate(modality, max_new_tokens=self.max_new_tokens, **batch)

    def detokenize(self, ids: Sequence[int]) -> str:
        """An answer's text, whitespace squeezed to single spaces."""
        return " ".join(self.model.llm.tokenizer.decode(list(ids), skip_special_tokens=True).split())

    # ---- user-facing calls --------------------------------------------------------------------
    def __call__(self, speech: Sequence[AudioInput], sampling_rate: Optional[int] = None) -> List[str]:
        """S2T: one answer per spoken question.  Items are audio file paths (any format
        soundfile reads), numpy waveforms at ``sampling_rate`` Hz, or ``(waveform, rate)``
        pairs; everything is mixed to mono and resampled to 16 kHz."""
        _check_sequence(speech, "speech")
        encoder = self.model.encoder
        if encoder is None:
            raise ValueError("this model has no speech encoder (encoder: none); it reads cached encoder "
                             "features only")
        min_samples = 400 * self.model.adaptor.downsample_rate  # one adaptor step after the convolutions
        wavs = []
        for i, item in enumerate(speech):
            wav, where = self._waveform(item, sampling_rate, i)
            if wav.shape[0] < min_samples:
                raise ValueError(f"{where}: {wav.shape[0] / 16000:.3f} s of audio is too short to encode "
                                 f"(at least {min_samples / 16000:.3f} s)")
            if wav.shape[0] > encoder.max_seconds * 16000:
                logger.warning("%s: %.1f s of audio; the encoder reads its first %.0f s", where,
                               wav.shape[0] / 16000, encoder.max_seconds)
            wavs.append(wav)
        return self._answer([{"speech": w} for w in wavs], [w.shape[0] for w in wavs], "speech")

    def answer_text(self, questions: Sequence[str]) -> List[str]:
        """T2T: one answer per written question (the transcript in the speech prompt)."""
        _check_sequence(questions, "questions")
        for i, q in enumerate(questions):
            if not isinstance(q, str) or not q.strip():
                raise ValueError(f"question {i}: expected a non-empty string, got {q!r}")
        return self._answer([{"text": q} for q in questions], [len(q) for q in questions], "text")

    def _waveform(self, item: AudioInput, sampling_rate: Optional[int], index: int) -> Tuple[np.ndarray, str]:
        if isinstance(item, (str, Path)):
            return load_audio(item), str(item)
        where = f"input {index}"
        array, rate = item if isinstance(item, tuple) else (item, sampling_rate)
        if rate is None:
            raise ValueError(f"{where}: a waveform needs its sampling rate: call with sampling_rate=... or "
                             "pass (waveform, rate)")
        return waveform_at(array, rate, where), where

    def _answer(self, raws: List[Dict[str, object]], lengths: List[int], modality: str) -> List[str]:
        """Answers of preprocessed-to-be inputs, batched by length, in input order."""
        order = sorted(range(len(raws)), key=lambda i: (lengths[i], i))
        answers: List[str] = [""] * len(raws)
        collate = PadCollate()
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            _, batch = collate([(f"input{i}", self.preprocessor(f"input{i}", raws[i])) for i in idx])
            outs = self.generate({k: v.to(self.device) for k, v in batch.items()}, modality)
            for i, ids in zip(idx, outs):
                answers[i] = self.detokenize(ids)
        return answers


def _check_sequence(items, name: str) -> None:
    """A list of inputs, not one input (a lone path or waveform would be iterated piecewise)."""
    pair = isinstance(items, tuple) and len(items) == 2 and isinstance(items[0], np.ndarray)
    if pair or isinstance(items, (str, Path, np.ndarray)) or not isinstance(items, Sequence):
        raise TypeError(f"{name}: give a list of inputs (one answer each), got {type(items).__name__}")
