"""Shared fixtures: tiny random pretrained folders, a model builder, tiny data dirs and
stage-2 dumps.  Plain helper functions are in ``helpers.py``.

Everything here is built locally in seconds (nothing is downloaded): the tiny LLM and
Whisper folders go through the same ``from_pretrained`` code as the real presets.
"""

from __future__ import annotations

import os
import sys
import zlib
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import pytest

# Under pytest-xdist (``make test`` runs two workers on a 2-core machine) every worker and
# every job it starts gets one OpenMP thread: two workers of two threads each would
# oversubscribe the cores, and OpenMP spin-waits then slow a step many times over.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# test modules import ``helpers`` by name, whatever pytest's import mode
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from helpers import build_tiny_dumps, speech_llm_argv, write_noise_kaldi_dir  # noqa: E402


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
        argv = speech_llm_argv(tiny_llm_dir, tiny_whisper_dir if encoder else None)
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
    def make(name: str = "data", utts: Sequence[tuple] = TINY_QA,
             wavs: Optional[Dict[str, object]] = None) -> Path:
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        return write_noise_kaldi_dir(tmp_path / name, tmp_path / f"{name}_wav", utts, rng, 0.1, wavs)

    return make


@pytest.fixture
def tiny_kaldi_dir(make_tiny_kaldi_dir) -> Path:
    """Three utterances (two speakers) of 0.7-1.3 s random noise with questions/answers."""
    return make_tiny_kaldi_dir()


@pytest.fixture(scope="module")
def tiny_dumps(tmp_path_factory: pytest.TempPathFactory, tiny_llm_dir: Path, tiny_whisper_dir: Path) -> Path:
    """``dump/{train,dev}`` (12 + 4 utterances) built with the real stage-2 code from noise
    audio (``helpers.build_tiny_dumps``); the root also holds ``data/`` and ``wav/``."""
    return build_tiny_dumps(tmp_path_factory.mktemp("train"), tiny_llm_dir, tiny_whisper_dir)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-model tests: a fixed reduction order, and no
    OpenMP spin-waits on a shared 2-core machine (use with ``pytest.mark.usefixtures``)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
