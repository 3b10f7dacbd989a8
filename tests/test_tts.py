"""Tests of espnet_ext.data.tts (espeak-ng through the espeakng-loader wheel)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading

import numpy as np
import pytest

from espnet_ext.data.tts import DEMO_VOICES, EspeakTTS, Voice, synthesize_16k

SENTENCE = "What is the capital of France?"


@pytest.fixture(scope="module")
def tts() -> EspeakTTS:
    return EspeakTTS()


@pytest.fixture(scope="module")
def demo_audio(tts: EspeakTTS) -> dict:
    return {v: tts.synthesize(SENTENCE, v) for v in DEMO_VOICES}


def test_voice_tag_and_validation() -> None:
    assert Voice("en-us").tag == "enus175p50"
    assert Voice("en-gb-x-rp", 150, 60).tag == "engbxrp150p60"
    with pytest.raises(ValueError, match="rate"):
        Voice("en", rate=20)
    with pytest.raises(ValueError, match="pitch"):
        Voice("en", pitch=101)
    with pytest.raises(ValueError, match="voice name"):
        Voice("en us")


def test_demo_voices_are_distinct() -> None:
    assert len(DEMO_VOICES) >= 6
    assert len(set(DEMO_VOICES)) == len(DEMO_VOICES)
    assert len({v.tag for v in DEMO_VOICES}) == len(DEMO_VOICES)


def test_each_demo_voice_speaks(tts: EspeakTTS, demo_audio: dict) -> None:
    assert tts.sample_rate == 22050
    for voice, wav in demo_audio.items():
        seconds = wav.shape[0] / tts.sample_rate
        assert wav.dtype == np.float32 and wav.ndim == 1, voice
        assert 0.8 < seconds < 4.0, (voice, seconds)
        assert np.isfinite(wav).all() and np.abs(wav).max() <= 1.0, voice
        assert np.abs(wav).max() > 0.1 and np.sqrt(np.mean(wav**2)) > 0.01, voice


def test_voices_differ(demo_audio: dict) -> None:
    for (va, a), (vb, b) in itertools.combinations(demo_audio.items(), 2):
        same = a.shape == b.shape and np.allclose(a, b, atol=1e-3)
        assert not same, (va, vb)


def test_shared_engine_is_thread_safe(tts: EspeakTTS, demo_audio: dict) -> None:
    assert EspeakTTS().sample_rate == tts.sample_rate
    results: dict = {}

    def worker(i: int) -> None:
        results[i] = tts.synthesize(SENTENCE, DEMO_VOICES[i % 2])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6
    for i, wav in results.items():  # pitch flutter shifts lengths by a few samples only
        ref = demo_audio[DEMO_VOICES[i % 2]]
        assert abs(wav.shape[0] - ref.shape[0]) < 0.01 * ref.shape[0], i


_REPRO = """
import hashlib
from espnet_ext.data.tts import DEMO_VOICES, EspeakTTS
tts = EspeakTTS()
h = hashlib.sha256()
for v in DEMO_VOICES[:3]:
    h.update(tts.synthesize("Hello there, how are you?", v).tobytes())
print(h.hexdigest())
"""


def test_fixed_call_sequence_is_reproducible() -> None:
    runs = [subprocess.run([sys.executable, "-c", _REPRO], check=True, capture_output=True, text=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0].strip()) == 64


def test_errors(tts: EspeakTTS) -> None:
    for text in ("", "   \n"):
        with pytest.raises(ValueError, match="empty"):
            tts.synthesize(text, DEMO_VOICES[0])
    with pytest.raises(ValueError, match="no-such-voice"):
        tts.synthesize("hello", Voice("no-such-voice"))
    assert tts.synthesize("hello", DEMO_VOICES[0]).size > 0  # still usable afterwards


def test_synthesize_16k(tts: EspeakTTS, demo_audio: dict) -> None:
    voice = DEMO_VOICES[0]
    wav16 = synthesize_16k(tts, SENTENCE, voice)
    expected = demo_audio[voice].shape[0] * 16000 / tts.sample_rate
    assert wav16.dtype == np.float32 and abs(wav16.shape[0] - expected) <= 2


# ------------------------------------------------------------------ voice families, flite


def test_voice_families_load_and_unseen_speakers_are_disjoint() -> None:
    from espnet_ext.data.tts import FAMILIES, voices

    for family in FAMILIES:
        train, unseen = voices(family, "train"), voices(family, "unseen")
        assert len(train) >= 3 and len(unseen) >= 1
        assert all(v.engine == family for v in train + unseen)
        # speaker-disjoint: no unseen voice name (speaker) is a train voice name
        assert not {v.name for v in train} & {v.name for v in unseen}
        assert len({v.tag for v in train + unseen}) == len(train + unseen)
    assert voices("espeak", "train") == DEMO_VOICES
    with pytest.raises(ValueError, match="family"):
        voices("mbrola")
    with pytest.raises(ValueError, match="f0 is a flite setting"):
        Voice("en-us", f0=120)
    assert Voice("slt", 150, engine="flite", f0=190).tag == "flslt150f190"


def test_pick_family_falls_back_to_espeak_with_a_warning(monkeypatch, caplog) -> None:
    from espnet_ext.data import tts as tts_module

    monkeypatch.setattr(tts_module.shutil, "which", lambda name: None)
    with caplog.at_level("WARNING"):
        assert tts_module.pick_family("auto") == "espeak"
    assert "flite is not installed" in caplog.text
    with pytest.raises(RuntimeError, match="apt-get install flite"):
        tts_module.pick_family("flite")
    monkeypatch.setattr(tts_module.shutil, "which", lambda name: "/usr/bin/flite")
    assert tts_module.pick_family("auto") == "flite"


def test_flite_voices_speak_deterministically() -> None:
    from espnet_ext.data.tts import FliteTTS, Synthesizer, flite_available, voices

    if not flite_available():
        pytest.skip("flite is not installed (apt-get install flite)")
    flite = FliteTTS()
    out = {}
    for v in voices("flite", "train") + voices("flite", "unseen"):
        wav = flite.synthesize(SENTENCE, v)
        assert wav.dtype == np.float32 and 0.5 < wav.size / 16000 < 8.0, v
        assert np.abs(wav).max() > 0.05
        out[v] = wav
    slow, normal = voices("flite", "train")[1], voices("flite", "train")[0]
    assert slow.rate < normal.rate and out[slow].size > out[normal].size  # rate works
    again = flite.synthesize(SENTENCE, normal)
    np.testing.assert_array_equal(again, out[normal])
    # the dispatcher picks the engine per voice
    mixed = Synthesizer()
    np.testing.assert_array_equal(mixed.synthesize(SENTENCE, normal), out[normal])
    assert mixed.synthesize(SENTENCE, DEMO_VOICES[0]).size > 0
    with pytest.raises(ValueError, match="no voice named"):
        flite.synthesize(SENTENCE, DEMO_VOICES[0])
    with pytest.raises(ValueError, match="empty"):
        flite.synthesize("  ", normal)
