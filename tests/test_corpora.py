"""Tests of the real-corpus converters on tiny fixtures written in the hub schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from helpers import audio_bytes, hf_audio, llama_rows, make_alpaca, make_va, tone, write_parquet

from espnet_ext.bin.prepare_corpus import main as prepare_main
from espnet_ext.data.corpora import convert_corpus, find_shards, has_history, strip_markers
from espnet_ext.data.kaldi_dir import DataError, read_kaldi_dir


def kaldi(out: Path) -> Dict[str, Any]:
    """Read a written dir as ``{utt_id: Utterance}``."""
    return {u.utt_id: u for u in read_kaldi_dir(out)}


# --------------------------------------------------------------------------- tests


def test_voiceassistant_first_turn_and_markers(tmp_path: Path) -> None:
    src = make_va(tmp_path / "VoiceAssistant-400K")
    out, wavs = tmp_path / "data" / "train_va", tmp_path / "wav"
    rep = convert_corpus("voiceassistant", src, out, "train", wavs)
    utts = kaldi(out)
    assert sorted(utts) == [f"voiceassistant_train_00000{i}" for i in (0, 1, 4, 5)]
    assert (rep.n_read, rep.n_filtered, rep.n_written, rep.n_skipped) == (6, 2, 4, 0)
    u = utts["voiceassistant_train_000001"]
    assert u.text == "How tall is Mount Everest?"
    assert u.answers == ["About 8849 m."]
    assert u.spk == "voiceassistant"
    info = sf.info(u.wav)
    assert (info.samplerate, info.subtype) == (16000, "PCM_16")
    assert abs(info.frames - 0.3 * 16000) <= 2  # resampled from 24 kHz
    assert "<" not in (out / "text").read_text()


def test_history_rules() -> None:
    assert not has_history("<USER>: hi")
    assert has_history("<USER>: hi <ASSISTANT>: hello <USER>: bye")
    assert has_history("<user>: a\n<user>: b")
    assert strip_markers("<USER>:  What?\n<ASSISTANT>: X") == "What? X"


def test_spoken_alpaca_arrow_shards_and_fallback(tmp_path: Path) -> None:
    src = make_alpaca(tmp_path / "alpaca")
    assert len(find_shards(src, "train")) == 2
    out = tmp_path / "train_alpaca"
    rep = convert_corpus("spoken_alpaca", src, out, "train", tmp_path / "wav")
    utts = kaldi(out)
    assert rep.n_written == 3
    assert utts["spoken_alpaca_train_000000"].text == "Give three tips for staying healthy."
    assert utts["spoken_alpaca_train_000001"].text == "Translate to French. Good morning"
    assert utts["spoken_alpaca_train_000001"].answers == ["Bonjour"]
    for u in utts.values():
        info = sf.info(u.wav)
        assert info.samplerate == 16000 and abs(info.frames - 4800) <= 2  # from 22.05 kHz


def test_spoken_alpaca_datasetdict(tmp_path: Path) -> None:
    src = make_alpaca(tmp_path / "alpaca_dd", as_dict=True)
    rep = convert_corpus("spoken_alpaca", src, tmp_path / "out", "train", tmp_path / "wav")
    assert rep.n_written == 3
    with pytest.raises(DataError, match="no split 'test'"):
        convert_corpus("spoken_alpaca", src, tmp_path / "out2", "test", tmp_path / "wav")


def test_web_questions_multi_reference_and_splits(tmp_path: Path) -> None:
    src = tmp_path / "spoken-web-questions"
    for split, n in (("train", 3), ("test", 2)):
        write_parquet(src / "data" / f"{split}-00000-of-00001.parquet", {
            "url": [f"http://www.freebase.com/view/en/x{i}" for i in range(n)],
            "question": [f"{split} question {i}?" for i in range(n)],
            "answers": [["Jamaican English", "Jamaican Creole English Language", ""]] * n,
            "audio": [hf_audio(audio_bytes(16000)) for _ in range(n)],
        }, "audio")
    out = tmp_path / "test_webq"
    rep = convert_corpus("web_questions", src, out, "test", tmp_path / "wav")
    assert rep.n_written == 2
    line = (out / "answer").read_text().splitlines()[0]
    utt, refs = line.split(" ", 1)
    assert utt == "web_questions_test_000000"
    assert json.loads(refs) == ["Jamaican English", "Jamaican Creole English Language"]
    assert kaldi(out)[utt].text == "test question 0?"


def test_llama_questions_audio_forms(tmp_path: Path) -> None:
    src = tmp_path / "llama-questions"
    (src / "data").mkdir(parents=True)
    sf.write(src / "data" / "q2.wav", tone(22050), 22050)
    write_parquet(src / "data" / "test-00000-of-00001.parquet", {
        "question": ["Who wrote Hamlet?", "What is H2O?", "Capital of Peru?"],
        "answer": ["Shakespeare", "water", "Lima"],
        "audio": [hf_audio(audio_bytes(16000, fmt="FLAC")), hf_audio(audio_bytes(24000)),
                  hf_audio(None, "q2.wav")],  # path relative to the shard's folder
    }, "audio")
    out = tmp_path / "test_llama"
    rep = convert_corpus("llama_questions", src, out, "test", tmp_path / "wav")
    assert rep.n_written == 3
    for u in kaldi(out).values():
        wav, sr = sf.read(u.wav)
        assert sr == 16000 and abs(len(wav) - 4000) <= 2 and np.abs(wav).max() > 0.1


def test_decoded_array_form(tmp_path: Path) -> None:
    src = tmp_path / "decoded" / "test.parquet"
    src.parent.mkdir()
    audio_type = pa.struct([("array", pa.list_(pa.float32())), ("sampling_rate", pa.int64())])
    table = pa.table({
        "question": ["Q?"], "answer": ["A"],
        "audio": pa.array([{"array": tone(24000).tolist(), "sampling_rate": 24000}], audio_type),
    })
    pq.write_table(table, src)
    rep = convert_corpus("llama_questions", src, tmp_path / "out", "test", tmp_path / "wav")
    assert rep.n_written == 1
    assert sf.info(str(tmp_path / "wav" / "llama_questions_test_000000.wav")).frames == 4000


def test_subset_is_deterministic(tmp_path: Path) -> None:
    src = tmp_path / "llama"
    write_parquet(src / "test-00000-of-00001.parquet", llama_rows(10), "audio", row_group_size=3)

    def ids(seed: int, tag: str) -> List[str]:
        rep = convert_corpus("llama_questions", src, tmp_path / tag, "test", tmp_path / "wav",
                             max_utts=4, seed=seed)
        assert (rep.n_read, rep.n_selected, rep.n_written) == (10, 4, 4)
        return sorted(kaldi(tmp_path / tag))

    a, b, c = ids(3, "a"), ids(3, "b"), ids(4, "c")
    assert a == b and len(set(a)) == 4
    assert a != c  # a different seed gives another subset (fixed seeds: checked)
    assert (tmp_path / "a" / "text").read_text() == (tmp_path / "b" / "text").read_text()


BAD_CASES = {
    "missing_audio": ("audio", None),
    "missing_path": ("audio", hf_audio(None, "no/such/file.wav")),
    "corrupt_audio": ("audio", hf_audio(b"RIFF-this-is-not-audio")),
    "empty_audio": ("audio", hf_audio(audio_bytes(16000, 0.0))),
    "empty_question": ("question", "   "),
    "empty_answer": ("answer", ""),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_rows_error_or_skip(tmp_path: Path, case: str) -> None:
    col, value = BAD_CASES[case]
    rows = llama_rows(3)
    rows[col][1] = value
    src = tmp_path / "llama"
    write_parquet(src / "test.parquet", rows, "audio")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="llama_questions_test_000001") as err:
        convert_corpus("llama_questions", src, out, "test", tmp_path / "wav")
    assert "test.parquet" in str(err.value)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp dir left

    rep = convert_corpus("llama_questions", src, out, "test", tmp_path / "wav", skip_bad_utts=True)
    reason = "missing_audio" if case == "missing_path" else case
    assert (rep.n_written, rep.n_skipped, rep.skipped) == (2, 1, {reason: 1})
    assert sorted(kaldi(out)) == ["llama_questions_test_000000", "llama_questions_test_000002"]


def test_too_long_is_counted_not_fatal(tmp_path: Path) -> None:
    rows = llama_rows(3)
    rows["audio"][2] = hf_audio(audio_bytes(16000, 1.0))
    write_parquet(tmp_path / "llama" / "test.parquet", rows, "audio")
    rep = convert_corpus("llama_questions", tmp_path / "llama", tmp_path / "out", "test",
                         tmp_path / "wav", max_seconds=0.5)
    assert (rep.n_written, rep.skipped) == (2, {"too_long": 1})


def test_failure_keeps_previous_dir(tmp_path: Path) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    write_parquet(good / "test.parquet", llama_rows(2), "audio")
    rows = llama_rows(2)
    rows["audio"][1] = hf_audio(b"garbage")
    write_parquet(bad / "test.parquet", rows, "audio")
    out = tmp_path / "out"
    convert_corpus("llama_questions", good, out, "test", tmp_path / "wav")
    before = {p.name: p.read_text() for p in out.iterdir()}
    with pytest.raises(DataError):
        convert_corpus("llama_questions", bad, out, "test", tmp_path / "wav")
    assert {p.name: p.read_text() for p in out.iterdir()} == before
    # idempotent: the same conversion again gives the same directory
    convert_corpus("llama_questions", good, out, "test", tmp_path / "wav")
    assert {p.name: p.read_text() for p in out.iterdir()} == before


def test_schema_and_split_errors(tmp_path: Path) -> None:
    write_parquet(tmp_path / "llama" / "test.parquet", llama_rows(1), "audio")
    with pytest.raises(DataError, match="lacks column"):
        convert_corpus("web_questions", tmp_path / "llama", tmp_path / "o", "test", tmp_path / "w")
    with pytest.raises(DataError, match="no data files for split 'train'"):
        convert_corpus("llama_questions", tmp_path / "llama", tmp_path / "o", "train",
                       tmp_path / "w")
    assert not (tmp_path / "o").exists()


def test_cli(tmp_path: Path) -> None:
    write_parquet(tmp_path / "llama" / "test.parquet", llama_rows(3), "audio")
    rep = prepare_main([
        "--corpus", "llama_questions", "--src", str(tmp_path / "llama"), "--split", "test",
        "--out_dir", str(tmp_path / "data" / "test_llama"), "--wav_dir", str(tmp_path / "wav"),
        "--max_utts", "2", "--skip_bad_utts", "true",
    ])
    assert rep.n_written == 2 and len(kaldi(tmp_path / "data" / "test_llama")) == 2
    with pytest.raises(SystemExit):
        prepare_main(["--corpus", "nope", "--src", "x", "--split", "t", "--out_dir", "o",
                      "--wav_dir", "w"])
