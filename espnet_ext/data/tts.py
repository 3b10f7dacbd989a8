"""espeak-ng speech synthesis for the offline demo (pip-only, through ctypes).

The ``espeakng-loader`` wheel bundles ``libespeak-ng`` and its voice data; this module
drives the C API directly:

* ``espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, ...)`` once per process,
* ``espeak_SetSynthCallback`` to collect the 16-bit PCM chunks,
* ``espeak_SetVoiceByName`` / ``espeak_SetParameter`` (rate, pitch) per call,
* ``espeak_Synth`` which, in synchronous mode, returns when the text is spoken.

The library keeps global state, so every :class:`EspeakTTS` shares one initialisation
and one lock; synthesis calls are serialised. Typical cost: a few ms per sentence.

Reproducibility: espeak-ng adds a pitch "flutter" whose phase is a static counter in
the library (``AdvanceParameters`` in ``wavegen.c``) that no API call resets, so the
same text and voice can come out a few samples different depending on what the process
synthesised before. A fixed sequence of calls in a fresh process is reproducible
bit for bit; generate corpora in a fixed order.

Example::

    tts = EspeakTTS()
    wav = synthesize_16k(tts, "What is the capital of France?", DEMO_VOICES[0])
"""

from __future__ import annotations

import ctypes
import os
import re
import threading
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from espnet_ext.data.audio import TARGET_SR, resample

# espeak_AUDIO_OUTPUT
_AUDIO_OUTPUT_SYNCHRONOUS = 2
# espeak_PARAMETER
_ESPEAK_RATE = 1
_ESPEAK_VOLUME = 2
_ESPEAK_PITCH = 3
# espeak_POSITION_TYPE
_POS_CHARACTER = 1
# synth flags
_ESPEAK_CHARS_UTF8 = 1
# initialisation options: do not call exit() on a fatal error
_ESPEAK_INITIALIZE_DONT_EXIT = 0x8000
_EE_OK = 0

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class Voice:
    """An espeak-ng speaking style.

    Attributes:
        name: espeak voice name, optionally with a variant (``"en-us"``, ``"en-gb-x-rp"``,
            ``"en-us+f3"``).
        rate: speaking rate in words per minute (espeak accepts 80..450).
        pitch: base pitch, 0..100 (espeak's default is 50).
    """

    name: str
    rate: int = 175
    pitch: int = 50

    def __post_init__(self) -> None:
        if not self.name or not re.fullmatch(r"[A-Za-z0-9_\-+]+", self.name):
            raise ValueError(f"invalid espeak voice name {self.name!r}")
        if not 80 <= self.rate <= 450:
            raise ValueError(f"voice {self.name}: rate {self.rate} outside espeak's 80..450 words per minute")
        if not 0 <= self.pitch <= 100:
            raise ValueError(f"voice {self.name}: pitch {self.pitch} outside 0..100")

    @property
    def tag(self) -> str:
        """Short id for utterance/speaker ids: alphanumerics of the name, rate, ``p``, pitch.

        ``Voice("en-us", 175, 50).tag == "enus175p50"``.
        """
        return re.sub(r"[^a-z0-9]", "", self.name.lower()) + f"{self.rate}p{self.pitch}"


#: English voices that the bundled espeak-ng data provides, with varied rate and pitch
DEMO_VOICES: tuple[Voice, ...] = (
    Voice("en-us", 175, 50),
    Voice("en", 160, 40),
    Voice("en-gb-x-rp", 150, 60),
    Voice("en-gb-scotland", 170, 45),
    Voice("en-us+f3", 165, 65),
    Voice("en-029", 155, 35),
    Voice("en-gb-x-gbclan", 185, 55),
    Voice("en-us+m3", 140, 30),
)


class _Engine:
    """The process-wide espeak-ng library handle (initialised at most once)."""

    lock = threading.Lock()
    lib: Optional[ctypes.CDLL] = None
    sample_rate: int = 0
    pid: int = -1
    chunks: List[np.ndarray] = []
    callback = None  # keeps the ctypes callback alive

    @classmethod
    def ensure(cls) -> None:
        """Load and initialise the library (call with ``lock`` held)."""
        if cls.lib is not None and cls.pid == os.getpid():
            return
        try:
            import espeakng_loader
        except ImportError as e:
            raise RuntimeError(
                "espeak-ng synthesis needs the espeakng-loader wheel: pip install 'espeakng-loader>=0.2.4'"
            ) from e
        lib_path = espeakng_loader.get_library_path()
        data_path = espeakng_loader.get_data_path()
        try:
            lib = ctypes.CDLL(lib_path)
        except OSError as e:
            raise RuntimeError(f"cannot load libespeak-ng from {lib_path}: {e}") from e
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        sr = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path).encode(), _ESPEAK_INITIALIZE_DONT_EXIT
        )
        if sr <= 0:
            raise RuntimeError(f"espeak_Initialize failed (returned {sr}) with data path {data_path}")

        def _on_audio(wav, n, _events) -> int:
            if wav and n > 0:
                cls.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0  # continue synthesis

        cls.callback = _SYNTH_CALLBACK(_on_audio)
        lib.espeak_SetSynthCallback(cls.callback)
        cls.lib, cls.sample_rate, cls.pid = lib, sr, os.getpid()


class EspeakTTS:
    """Thread-safe front end to the process-global espeak-ng engine.

    All instances share one library initialisation; :meth:`synthesize` calls are
    serialised by a lock because espeak-ng keeps the current voice and the output
    callback in global state.
    """

    sample_rate: int

    def __init__(self) -> None:
        with _Engine.lock:
            _Engine.ensure()
            self.sample_rate = _Engine.sample_rate

    def synthesize(self, text: str, voice: Voice) -> np.ndarray:
        """Speak ``text`` with ``voice``; returns mono float32 in [-1, 1] at ``sample_rate``.

        Raises:
            ValueError: ``text`` is empty/blank or espeak does not know ``voice.name``.
            RuntimeError: espeak fails or produces no audio.
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"cannot synthesise empty text {text!r}")
        data = text.encode("utf-8") + b"\0"
        with _Engine.lock:
            _Engine.ensure()
            lib = _Engine.lib
            if lib.espeak_SetVoiceByName(voice.name.encode()) != _EE_OK:
                raise ValueError(f"espeak-ng has no voice named {voice.name!r}")
            for param, value in ((_ESPEAK_RATE, voice.rate), (_ESPEAK_PITCH, voice.pitch), (_ESPEAK_VOLUME, 100)):
                if lib.espeak_SetParameter(param, value, 0) != _EE_OK:
                    raise RuntimeError(f"espeak_SetParameter({param}, {value}) failed for voice {voice.name}")
            _Engine.chunks = []
            err = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None)
            chunks, _Engine.chunks = _Engine.chunks, []
        if err != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed (error {err}) for voice {voice.name} and text {text!r}")
        if not chunks:
            raise RuntimeError(f"espeak-ng produced no audio for voice {voice.name} and text {text!r}")
        pcm = np.concatenate(chunks)
        return (pcm.astype(np.float32) / 32768.0).clip(-1.0, 1.0)


def synthesize_16k(tts: EspeakTTS, text: str, voice: Voice) -> np.ndarray:
    """Synthesise ``text`` and resample it to 16 kHz (the encoders' rate), float32 mono."""
    return resample(tts.synthesize(text, voice), tts.sample_rate, TARGET_SR)


__all__ = ["Voice", "DEMO_VOICES", "EspeakTTS", "synthesize_16k"]
