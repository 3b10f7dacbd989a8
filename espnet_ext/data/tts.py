"""Speech synthesis for the offline demo: CMU Flite (subprocess) and espeak-ng (ctypes).

Two voice families, listed in ``espnet_ext/data/resources/voices.yaml`` (:func:`voices`):

* ``flite``: the ``flite`` program of the Debian/Ubuntu package (``apt-get install
  flite``), run once per utterance (~30 ms) by :class:`FliteTTS`.  Its voices are far
  nearer natural speech for Whisper than espeak-ng's (Whisper tiny.en's word error rate
  on the demo's test_llamaq questions: 5-10 % against 27 %);
* ``espeak``: pip only.  The ``espeakng-loader`` wheel bundles ``libespeak-ng`` and its
  voice data; :class:`EspeakTTS` drives the C API directly:

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

    tts = Synthesizer()
    family = pick_family("auto")          # flite when installed, else espeak (a warning)
    wav = tts.synthesize("What is the capital of France?", voices(family, "train")[0])
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from espnet_ext.data.audio import TARGET_SR, resample
from espnet_ext.data.bundled import load_yaml_resource

logger = logging.getLogger(__name__)

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


#: the voice families of ``voices.yaml``, most natural first
FAMILIES: Tuple[str, ...] = ("flite", "espeak")
#: what a family's voices speak: ``train`` (train, dev, in-voice tests) or ``unseen``
ROLES: Tuple[str, ...] = ("train", "unseen")


@dataclass(frozen=True)
class Voice:
    """A synthetic speaking style of one engine.

    Attributes:
        name: the engine's voice name; espeak-ng optionally with a variant (``"en-us"``,
            ``"en-gb-x-rp"``, ``"en-us+f3"``), flite one of ``flite -lv`` (``"slt"``).
        rate: speaking rate in words per minute, 175 = the engine's normal speed (espeak
            accepts 80..450; flite maps it to ``duration_stretch = 175 / rate``).
        pitch: espeak only: base pitch, 0..100 (espeak's default is 50).
        engine: ``"espeak"`` or ``"flite"``.
        f0: flite only: mean F0 in Hz (``int_f0_target_mean``), 0 = the voice's own.
    """

    name: str
    rate: int = 175
    pitch: int = 50
    engine: str = "espeak"
    f0: int = 0

    def __post_init__(self) -> None:
        if self.engine not in FAMILIES:
            raise ValueError(f"voice {self.name}: engine {self.engine!r} is not one of {FAMILIES}")
        if not self.name or not re.fullmatch(r"[A-Za-z0-9_\-+]+", self.name):
            raise ValueError(f"invalid {self.engine} voice name {self.name!r}")
        if not 80 <= self.rate <= 450:
            raise ValueError(f"voice {self.name}: rate {self.rate} outside 80..450 words per minute")
        if not 0 <= self.pitch <= 100:
            raise ValueError(f"voice {self.name}: pitch {self.pitch} outside 0..100")
        if self.engine == "espeak" and self.f0:
            raise ValueError(f"voice {self.name}: f0 is a flite setting (espeak uses pitch)")
        if self.engine == "flite" and (self.pitch != 50 or not (self.f0 == 0 or 50 <= self.f0 <= 400)):
            raise ValueError(f"flite voice {self.name}: set f0 (0 or 50..400 Hz), not pitch")

    @property
    def tag(self) -> str:
        """Short id for utterance/speaker ids.

        espeak: alphanumerics of the name, rate, ``p``, pitch (``Voice("en-us", 175,
        50).tag == "enus175p50"``); flite: ``fl``, name, rate, ``f``, f0
        (``"flslt150f190"``).
        """
        if self.engine == "flite":
            return "fl" + re.sub(r"[^a-z0-9]", "", self.name.lower()) + f"{self.rate}f{self.f0}"
        return re.sub(r"[^a-z0-9]", "", self.name.lower()) + f"{self.rate}p{self.pitch}"


def voices(family: str, role: str = "train") -> Tuple[Voice, ...]:
    """The voices of ``family`` (:data:`FAMILIES`) for ``role`` (:data:`ROLES`), from
    ``resources/voices.yaml``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown voice family {family!r}; choose from {', '.join(FAMILIES)}")
    if role not in ROLES:
        raise ValueError(f"unknown voice role {role!r}; choose from {', '.join(ROLES)}")
    doc = load_yaml_resource("voices.yaml").record(family)
    out = []
    for row in doc.records(role):
        out.append(Voice(
            name=row.text("name"), rate=row.integer("rate"),
            pitch=row.integer("pitch") if row.has("pitch") else 50,
            engine=family, f0=row.integer("f0") if row.has("f0") else 0,
        ))
    return tuple(out)


def flite_available() -> bool:
    """Whether the ``flite`` program is on ``PATH``."""
    return shutil.which("flite") is not None


def pick_family(request: str) -> str:
    """The voice family to use for ``request`` (``auto``, ``flite`` or ``espeak``).

    ``auto`` is ``flite`` when the program is installed, else ``espeak`` with a warning
    (the espeak-ng voices are far from natural speech: a speech LLM trained on them
    transfers badly to real recordings).  ``flite`` without the program is an error.
    """
    if request == "auto":
        if flite_available():
            return "flite"
        logger.warning("flite is not installed (apt-get install flite): the demo falls back to "
                       "espeak-ng voices, which are far from natural speech")
        return "espeak"
    if request == "flite" and not flite_available():
        raise RuntimeError("--demo_voices flite: the flite program is not on PATH (apt-get install flite)")
    if request not in FAMILIES:
        raise ValueError(f"unknown voice family {request!r}; choose from auto, {', '.join(FAMILIES)}")
    return request


#: the espeak-ng voices of the demo's training sets (``voices("espeak", "train")``)
DEMO_VOICES: Tuple[Voice, ...] = voices("espeak", "train")


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
        if voice.engine != "espeak":
            raise ValueError(f"voice {voice.name!r} is a {voice.engine} voice, not an espeak-ng one")
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


class FliteTTS:
    """CMU Flite through its command-line program, one subprocess per utterance.

    Flite is deterministic: the same text and voice give the same samples.  Voices
    outside 16 kHz (``kal``) are resampled to 16 kHz.
    """

    sample_rate: int = TARGET_SR

    def __init__(self, program: Optional[str] = None) -> None:
        self.program = program or shutil.which("flite")
        if self.program is None:
            raise RuntimeError("flite is not on PATH (apt-get install flite)")
        listing = subprocess.run([self.program, "-lv"], capture_output=True, text=True, check=True).stdout
        self.known = set(listing.split(":", 1)[-1].split())

    def synthesize(self, text: str, voice: Voice) -> np.ndarray:
        """Speak ``text`` with ``voice``; mono float32 in [-1, 1] at 16 kHz.

        Raises:
            ValueError: blank text, a non-flite voice or one flite does not know.
            RuntimeError: flite fails or writes no audio.
        """
        import soundfile

        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"cannot synthesise empty text {text!r}")
        if voice.engine != "flite" or voice.name not in self.known:
            raise ValueError(f"flite has no voice named {voice.name!r} (it has {sorted(self.known)})")
        cmd = [self.program, "-voice", voice.name, "--setf", f"duration_stretch={175 / voice.rate:.4f}"]
        if voice.f0:
            cmd += ["--setf", f"int_f0_target_mean={voice.f0}"]
        with tempfile.TemporaryDirectory(prefix="flite-") as tmp:
            out = Path(tmp) / "utt.wav"
            run = subprocess.run(cmd + ["-t", text, "-o", str(out)], capture_output=True, text=True)
            if run.returncode != 0 or not out.is_file():
                raise RuntimeError(f"flite failed (exit {run.returncode}) for voice {voice.name} and text "
                                   f"{text!r}: {run.stderr.strip()[-300:]}")
            wav, sr = soundfile.read(str(out), dtype="float32")
        if wav.ndim > 1:
            wav = wav.mean(axis=1)
        if wav.size == 0:
            raise RuntimeError(f"flite produced no audio for voice {voice.name} and text {text!r}")
        return resample(wav, sr, TARGET_SR).astype(np.float32)


class Synthesizer:
    """Speaks with the engine each voice names; the engines start on first use."""

    sample_rate: int = TARGET_SR

    def __init__(self) -> None:
        self._engines: Dict[str, object] = {}

    def synthesize(self, text: str, voice: Voice) -> np.ndarray:
        """``text`` spoken by ``voice``, mono float32 at 16 kHz."""
        engine = self._engines.get(voice.engine)
        if engine is None:
            engine = self._engines[voice.engine] = FliteTTS() if voice.engine == "flite" else EspeakTTS()
        return synthesize_16k(engine, text, voice)


def synthesize_16k(tts, text: str, voice: Voice) -> np.ndarray:
    """Synthesise ``text`` with engine ``tts`` and resample it to 16 kHz (the encoders'
    rate), float32 mono."""
    return resample(tts.synthesize(text, voice), tts.sample_rate, TARGET_SR)


__all__ = [
    "DEMO_VOICES", "EspeakTTS", "FAMILIES", "FliteTTS", "ROLES", "Synthesizer", "Voice",
    "flite_available", "pick_family", "synthesize_16k", "voices",
]
