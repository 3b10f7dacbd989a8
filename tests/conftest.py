"""Shared fixtures: tiny random pretrained folders, a model builder and tiny data dirs.

Everything here is built locally in seconds (nothing is downloaded): the tiny LLM and
Whisper folders go through the same ``from_pretrained`` code as the real presets.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 4-layer Llama (hidden 64) + ChatML tokenizer saved with ``save_pretrained``."""
    from espnet_ext.convert.tiny import build_tiny_llm

    return build_tiny_llm(tmp_path_factory.mktemp("tiny_llm") / "llm")


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Whisper (d_model 32, 80 mel bins, 2 encoder layers) + feature extractor."""
    from espnet_ext.convert.tiny import build_tiny_whisper

    return build_tiny_whisper(tmp_path_factory.mktemp("tiny_whisper") / "whisper")


@pytest.fixture(scope="session")
def speech_llm_args(tiny_llm_dir: Path, tiny_whisper_dir: Path) -> Callable[..., object]:
    """``f(*extra_cli_args, encoder=True)`` → ``argparse.Namespace`` of ``SpeechLLMTask``.

    Parsed by the task's own parser, exactly as ``speechllm_train`` would parse the
    command line; ``extra`` arguments come last and therefore win.
    """
    from espnet_ext.tasks.speech_llm import SpeechLLMTask

    def make(*extra: str, encoder: bool = True):
        argv = [
            "--llm_conf", f"model_name_or_path={tiny_llm_dir}",
            "--adaptor_conf", "hidden_size=32",
        ]
        if encoder:
            argv += ["--encoder_conf", f"model_name_or_path={tiny_whisper_dir}"]
        else:
            argv += ["--encoder", "none", "--adaptor_conf", "input_size=32"]
        return SpeechLLMTask.get_parser().parse_args(argv + list(extra))

    return make


@pytest.fixture(scope="session")
def make_speech_llm(speech_llm_args) -> Callable[..., object]:
    """``f(*extra_cli_args, encoder=True)`` → a fresh fp32 ``ESPnetSpeechLLM`` in eval mode."""
    from espnet_ext.tasks.speech_llm import SpeechLLMTask

    def make(*extra: str, encoder: bool = True):
        return SpeechLLMTask.build_model(speech_llm_args(*extra, encoder=encoder)).eval()

    return make


TINY_QA = [
    # (utt id, speaker, seconds, question, answers)
    ("spkA-q001", "spkA", 1.00, "What is the capital of France?", ["Paris"]),
    ("spkA-q002", "spkA", 0.73, "How many days are in a week?", ["seven", "7"]),
    ("spkB-q003", "spkB", 1.31, "Which planet is known as the red planet?", ["Mars"]),
]


@pytest.fixture
def make_tiny_kaldi_dir(tmp_path: Path) -> Callable[..., Path]:
    """``f(name="data", utts=TINY_QA, wavs=None)`` → a Kaldi dir of random-noise 16 kHz wavs.

    ``wavs`` may map an utt id to a ready-made waveform (``np.ndarray``) or to the path
    of an existing file (e.g. a corrupt one) that ``wav.scp`` should point at.
    """
    from espnet_ext.data.audio import write_wav
    from espnet_ext.data.kaldi_dir import Utterance, write_kaldi_dir

    def make(name: str = "data", utts: Sequence[tuple] = TINY_QA,
             wavs: Optional[Dict[str, object]] = None) -> Path:
        wavs = dict(wavs or {})
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        out: List[Utterance] = []
        for uid, spk, seconds, question, answers in utts:
            given = wavs.get(uid)
            if isinstance(given, (str, Path)):
                path = Path(given)
            else:
                audio = given if given is not None else 0.1 * rng.standard_normal(int(seconds * 16000))
                path = tmp_path / f"{name}_wav" / f"{uid}.wav"
                write_wav(path, np.asarray(audio, dtype=np.float32))
            out.append(Utterance(uid, spk, str(path), question, list(answers)))
        d = tmp_path / name
        write_kaldi_dir(d, out)
        return d

    return make


@pytest.fixture
def tiny_kaldi_dir(make_tiny_kaldi_dir) -> Path:
    """Three utterances (two speakers) of 0.7-1.3 s random noise with questions/answers."""
    return make_tiny_kaldi_dir()
