"""Tests of the real-corpus converters on tiny fixtures written in the hub schemas."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from helpers import (
    CORPUS_SCHEMA,
    audio_bytes,
    corpus_rows,
    decoded_audio,
    hf_audio,
    llama_rows,
    make_alpaca,
    make_va,
    tone,
    wav_bytes,
    write_corpus,
    write_parquet,
)

from espnet_ext.bin.prepare_corpus import main as prepare_main
from espnet_ext.data.corpora import CORPORA, convert_corpus, find_shards, has_history, strip_markers
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


def test_marker_only_question_is_not_history() -> None:
    """Markers alone hold no turn: such a row is kept as first-turn, then is a bad row."""
    for q in ("<USER>:", "<USER>: <USER>:", " <user> : <ASSISTANT>: ", "", None):
        assert not has_history(q), q
    assert has_history("<USER>: <USER>: and K2?")


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


# --------------------------------------------------------------------------- bad input, all corpora
#
# Every converter gets the same treatment: a three-row local copy in the corpus's hub schema
# and layout (helpers.write_corpus: one parquet shard in row groups of 2; spoken-alpaca two
# save_to_disk Arrow shards, rows [0, 2) and [2, 3)), with row 2 made bad.  The error must name
# the shard file, the row within it and the utterance id; under skip_bad_utts the row is
# skipped and counted under its reason.

BAD_ROW = 2


def bad_row_where(corpus: str) -> str:
    """How the error of row :data:`BAD_ROW` names its place in the fixture of ``corpus``."""
    split = CORPUS_SCHEMA[corpus][0]
    utt = f"{corpus}_{split}_{BAD_ROW:06d}"
    if corpus == "spoken_alpaca":
        return f"data-00001-of-00002.arrow row 0 (utterance {utt})"
    return f"{split}-00000-of-00001.parquet row {BAD_ROW} (utterance {utt})"


def _with(samples: np.ndarray, index: int, value: float) -> np.ndarray:
    out = samples.copy()
    out[index] = value
    return out


TONE = tone(16000)
#: audio cell of the bad row → (skip reason, words the message must hold)
AUDIO_CASES: Dict[str, Tuple[Any, str, str]] = {
    "nan_array": (decoded_audio(_with(TONE, 100, np.nan), 16000), "corrupt_audio", "NaN/Inf"),
    "inf_array": (decoded_audio(_with(TONE, 7, -np.inf), 16000), "corrupt_audio", "NaN/Inf"),
    "nan_wav": (hf_audio(wav_bytes(_with(TONE, 100, np.nan), 16000)), "corrupt_audio", "NaN/Inf"),
    "inf_wav_stereo": (hf_audio(wav_bytes(np.stack([TONE, _with(TONE, 3, np.inf)], 1), 16000)),
                       "corrupt_audio", "NaN/Inf"),
    "rate_zero": (decoded_audio(TONE, 0), "corrupt_audio", "sampling rate 0 "),
    "rate_negative": (decoded_audio(TONE, -16000), "corrupt_audio", "sampling rate -16000 "),
    "rate_absurd": (decoded_audio(TONE, 10**9), "corrupt_audio", "sampling rate 1000000000 "),
    "rate_fractional": (decoded_audio(TONE, 16000.5), "corrupt_audio", "sampling rate 16000.5 "),
    "rate_missing": (decoded_audio(TONE, None), "corrupt_audio", "sampling rate None "),
    "rate_absurd_wav": (hf_audio(wav_bytes(TONE, 16000, "PCM_16", header_rate=1)),
                        "corrupt_audio", "sampling rate 1 "),
    "rate_zero_wav": (hf_audio(wav_bytes(TONE, 16000, "PCM_16", header_rate=0)),
                      "corrupt_audio", "cannot decode audio"),
    "array_2d": (decoded_audio(np.zeros((40, 400)), 16000), "corrupt_audio", "shape (40, 400)"),
    "array_3d": (decoded_audio(np.zeros((2, 2, 100)), 16000), "corrupt_audio", "shape (2, 2, 100)"),
    "array_empty": (decoded_audio([], 16000), "empty_audio", "no samples"),
    "array_not_numeric": (decoded_audio(["a", "b"], 16000), "corrupt_audio", "not numeric"),
}


def _text_cases(corpus: str) -> Dict[str, Tuple[Dict[str, Any], str, str]]:
    """Text changes of the bad row → (skip reason, words the message must hold)."""
    _, _, question_cols, answer_col = CORPUS_SCHEMA[corpus]
    cases = {
        "empty_question": ({c: "  " for c in question_cols}, "empty_question", "empty question"),
        "empty_answer": ({answer_col: [" "] if corpus == "web_questions" else "\n"},
                         "empty_answer", "empty answer"),
    }
    if corpus == "voiceassistant":  # markers alone are no question / no answer
        cases["marker_only_question"] = ({"question": "<USER>:"}, "empty_question", "empty question")
        cases["marker_only_question_twice"] = (
            {"question": "<USER>: \n <user>:"}, "empty_question", "empty question")
        cases["marker_only_question_and_reply"] = (
            {"question": "<USER>: <ASSISTANT>:"}, "empty_question", "empty question")
        cases["marker_only_answer"] = ({"answer": "<ASSISTANT>: "}, "empty_answer", "empty answer")
    if corpus == "web_questions":  # every reference blank: no reference at all
        for name, value in (("all_blank", ["", "  ", "\t"]), ("empty_list", []), ("null", None),
                            ("null_items", [None, None])):
            cases[f"answers_{name}"] = ({"answers": value}, "empty_answer", "empty answer")
    if corpus == "spoken_alpaca":  # blank transcript falls back to instruction + input
        cases["no_transcript_no_instruction"] = (
            {"speech_input": None, "instruction": "", "input": " "}, "empty_question", "empty question")
    return cases


BAD_ROW_CASES = [
    pytest.param(corpus, {CORPUS_SCHEMA[corpus][1]: value}, reason, words, id=f"{corpus}-{case}")
    for corpus in CORPORA
    for case, (value, reason, words) in AUDIO_CASES.items()
] + [
    pytest.param(corpus, changes, reason, words, id=f"{corpus}-{case}")
    for corpus in CORPORA
    for case, (changes, reason, words) in _text_cases(corpus).items()
]


@pytest.mark.parametrize(("corpus", "changes", "reason", "words"), BAD_ROW_CASES)
def test_bad_row_every_corpus(tmp_path: Path, corpus: str, changes: Dict[str, Any], reason: str,
                              words: str) -> None:
    rows = corpus_rows(corpus)
    for col, value in changes.items():
        rows[col][BAD_ROW] = value
    src = write_corpus(tmp_path / corpus, corpus, rows)
    split = CORPUS_SCHEMA[corpus][0]
    out = tmp_path / "out"
    with pytest.raises(DataError, match=re.escape(bad_row_where(corpus))) as err:
        convert_corpus(corpus, src, out, split, tmp_path / "wav")
    assert words in str(err.value) and str(err.value).startswith(f"{corpus}: {src}")
    assert not out.exists()

    rep = convert_corpus(corpus, src, out, split, tmp_path / "wav", skip_bad_utts=True)
    assert (rep.n_read, rep.n_filtered, rep.n_written, rep.n_skipped) == (3, 0, 2, 1)
    assert rep.skipped == {reason: 1}
    assert sorted(kaldi(out)) == [f"{corpus}_{split}_{i:06d}" for i in (0, 1)]


@pytest.mark.parametrize("corpus", CORPORA)
def test_all_rows_bad_under_skip(tmp_path: Path, corpus: str) -> None:
    split, audio_col, _, _ = CORPUS_SCHEMA[corpus]
    rows = corpus_rows(corpus)
    rows[audio_col] = [hf_audio(b"not audio"), decoded_audio(_with(TONE, 0, np.nan), 16000),
                       decoded_audio(TONE, 0)]
    src = write_corpus(tmp_path / corpus, corpus, rows)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="no usable utterances") as err:
        convert_corpus(corpus, src, out, split, tmp_path / "wav", skip_bad_utts=True)
    msg = str(err.value)
    assert str(src) in msg and f"split {split!r}" in msg and "corrupt_audio=3" in msg
    assert not out.exists()
    with pytest.raises(DataError, match=re.escape(f"row 0 (utterance {corpus}_{split}_000000)")):
        convert_corpus(corpus, src, out, split, tmp_path / "wav")


@pytest.mark.parametrize("corpus", CORPORA)
def test_some_rows_bad_under_skip_are_counted(tmp_path: Path, corpus: str) -> None:
    split, audio_col, _, answer_col = CORPUS_SCHEMA[corpus]
    rows = corpus_rows(corpus, 6)
    rows[audio_col][1] = decoded_audio(_with(TONE, 5, np.inf), 16000)
    rows[audio_col][2] = hf_audio(None, "missing.wav")
    rows[answer_col][4] = [] if corpus == "web_questions" else ""
    src = write_corpus(tmp_path / corpus, corpus, rows)
    out, wavs = tmp_path / "out", tmp_path / "wav"
    rep = convert_corpus(corpus, src, out, split, wavs, skip_bad_utts=True)
    assert (rep.n_read, rep.n_written, rep.n_skipped) == (6, 3, 3)
    assert rep.skipped == {"corrupt_audio": 1, "missing_audio": 1, "empty_answer": 1}
    kept = [f"{corpus}_{split}_{i:06d}" for i in (0, 3, 5)]
    assert sorted(kaldi(out)) == kept
    assert sorted(p.stem for p in wavs.iterdir()) == kept  # no WAV for a skipped row
    assert "skipped 3 (corrupt_audio=1, empty_answer=1, missing_audio=1)" in rep.summary()


@pytest.mark.parametrize("corpus", CORPORA)
def test_decoded_multichannel_and_float_rate(tmp_path: Path, corpus: str) -> None:
    """``(channels, samples)`` and ``(samples, channels)`` arrays are mixed to mono; an
    integral float sampling rate is a rate."""
    split, audio_col, _, _ = CORPUS_SCHEMA[corpus]
    rows = corpus_rows(corpus)
    t24 = tone(24000)
    rows[audio_col][0] = decoded_audio(np.stack([t24, t24]), 24000.0)
    rows[audio_col][1] = decoded_audio(np.stack([t24, -t24, t24], axis=1), 24000)
    src = write_corpus(tmp_path / corpus, corpus, rows)
    rep = convert_corpus(corpus, src, tmp_path / "out", split, tmp_path / "wav")
    assert rep.n_written == 3
    for i, peak in ((0, 0.3), (1, 0.1)):
        wav, sr = sf.read(tmp_path / "wav" / f"{corpus}_{split}_{i:06d}.wav")
        assert sr == 16000 and abs(len(wav) - 4000) <= 2 and abs(np.abs(wav).max() - peak) < 0.02


# --------------------------------------------------------------------------- bad sources, all corpora


@pytest.mark.parametrize("corpus", CORPORA)
def test_missing_source(tmp_path: Path, corpus: str) -> None:
    src = tmp_path / "no" / "such" / "copy"
    with pytest.raises(DataError, match=re.escape(f"corpus source {src} does not exist")):
        convert_corpus(corpus, src, tmp_path / "out", "train", tmp_path / "wav")
    assert not (tmp_path / "out").exists()


MISSING_SPLIT = {  # layout → what the error says
    "hub": "no data files for split 'validation'",  # parquet shards named by split
    "dataset": "is split {split!r}, not 'validation'",  # save_to_disk Dataset with its _split
    "dataset_dict": "no split 'validation' in this DatasetDict (splits: [{split!r}])",
}


# spoken-alpaca has no "hub" case: its save_to_disk Dataset, saved without a split name,
# is taken as any split
@pytest.mark.parametrize("corpus, layout", [(c, lay) for c in CORPORA for lay in sorted(MISSING_SPLIT)
                                            if not (c == "spoken_alpaca" and lay == "hub")])
def test_missing_split(tmp_path: Path, corpus: str, layout: str) -> None:
    split = CORPUS_SCHEMA[corpus][0]
    src = write_corpus(tmp_path / corpus, corpus, corpus_rows(corpus), layout)
    with pytest.raises(DataError, match=re.escape(f"{src}: ")) as err:
        convert_corpus(corpus, src, tmp_path / "out", "validation", tmp_path / "wav")
    assert MISSING_SPLIT[layout].format(split=split) in str(err.value)


@pytest.mark.parametrize("layout", ["dataset", "dataset_dict"])
@pytest.mark.parametrize("corpus", CORPORA)
def test_arrow_layouts_convert(tmp_path: Path, corpus: str, layout: str) -> None:
    """The save_to_disk layouts of the fixtures below are good as written."""
    split = CORPUS_SCHEMA[corpus][0]
    src = write_corpus(tmp_path / corpus, corpus, corpus_rows(corpus), layout)
    assert len(find_shards(src, split)) == 2
    rep = convert_corpus(corpus, src, tmp_path / "out", split, tmp_path / "wav")
    assert rep.n_written == 3 and sorted(kaldi(tmp_path / "out"))[-1].endswith("_000002")


BAD_STATE_JSON = {
    "not_json": "{\"_data_files\": [",
    "not_an_object": "[]",
    "files_not_a_list": "{\"_data_files\": \"data-00000-of-00002.arrow\"}",
    "entry_without_filename": "{\"_data_files\": [{\"name\": \"data-00000-of-00002.arrow\"}]}",
    "filename_not_a_string": "{\"_data_files\": [{\"filename\": 3}]}",
    "not_utf8": b"\xff\xfe{}",
}


@pytest.mark.parametrize("case", sorted(BAD_STATE_JSON))
@pytest.mark.parametrize("layout", ["dataset", "dataset_dict"])
@pytest.mark.parametrize("corpus", CORPORA)
def test_malformed_state_json(tmp_path: Path, corpus: str, layout: str, case: str) -> None:
    split = CORPUS_SCHEMA[corpus][0]
    src = write_corpus(tmp_path / corpus, corpus, corpus_rows(corpus), layout)
    state = (src / split if layout == "dataset_dict" else src) / "state.json"
    content = BAD_STATE_JSON[case]
    state.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=re.escape(f"{state}: not a datasets save_to_disk state")):
        convert_corpus(corpus, src, tmp_path / "out", split, tmp_path / "wav")
    assert not (tmp_path / "out").exists()


BAD_DATASET_DICT_JSON = {
    "not_json": "{\"splits\": [",
    "not_an_object": "[\"train\", \"test\"]",
    "no_splits": "{}",
    "splits_not_a_list": "{\"splits\": \"train\"}",
    "split_not_a_string": "{\"splits\": [1]}",
}


@pytest.mark.parametrize("case", sorted(BAD_DATASET_DICT_JSON))
@pytest.mark.parametrize("corpus", CORPORA)
def test_malformed_dataset_dict_json(tmp_path: Path, corpus: str, case: str) -> None:
    split = CORPUS_SCHEMA[corpus][0]
    src = write_corpus(tmp_path / corpus, corpus, corpus_rows(corpus), "dataset_dict")
    (src / "dataset_dict.json").write_text(BAD_DATASET_DICT_JSON[case])
    with pytest.raises(DataError, match=re.escape(f"{src / 'dataset_dict.json'}: not a datasets")):
        convert_corpus(corpus, src, tmp_path / "out", split, tmp_path / "wav")


@pytest.mark.parametrize("corpus", CORPORA)
def test_dataset_dict_split_folder_missing(tmp_path: Path, corpus: str) -> None:
    split = CORPUS_SCHEMA[corpus][0]
    src = write_corpus(tmp_path / corpus, corpus, corpus_rows(corpus), "dataset_dict")
    for p in (src / split).iterdir():
        p.unlink()
    (src / split).rmdir()
    with pytest.raises(DataError, match=re.escape(f"{src / split}: split {split!r} is listed in ")):
        convert_corpus(corpus, src, tmp_path / "out", split, tmp_path / "wav")


# the parquet copies ("hub" layout, every corpus but spoken-alpaca) have no shard list
@pytest.mark.parametrize("corpus, layout", [(c, lay) for c in CORPORA for lay in ("hub", "dataset", "dataset_dict")
                                            if not (lay == "hub" and c != "spoken_alpaca")])
def test_listed_arrow_shard_missing(tmp_path: Path, corpus: str, layout: str) -> None:
    split = CORPUS_SCHEMA[corpus][0]
    src = write_corpus(tmp_path / corpus, corpus, corpus_rows(corpus), layout)
    folder = src / split if layout == "dataset_dict" else src
    (folder / "data-00001-of-00002.arrow").unlink()
    with pytest.raises(DataError, match=re.escape(
            f"{folder / 'state.json'}: lists shard data-00001-of-00002.arrow, which does not exist")):
        convert_corpus(corpus, src, tmp_path / "out", split, tmp_path / "wav")


def _garbage(data: bytes) -> bytes:
    return b"this is not a data file\n" * 4


SHARD_DAMAGE: Dict[str, Callable[[bytes], bytes]] = {
    "garbage": _garbage,
    "empty": lambda data: b"",
    "truncated": lambda data: data[: len(data) * 2 // 3],
}


@pytest.mark.parametrize("corpus", ["voiceassistant", "llama_questions", "web_questions"])
def test_damaged_parquet_page_found_while_reading_rows(tmp_path: Path, corpus: str) -> None:
    """Footer and text columns intact, the audio page of row group 1 (rows 2-3) broken: the
    error comes from reading the selected rows, not from opening the file."""
    split, audio_col, _, _ = CORPUS_SCHEMA[corpus]
    src = write_corpus(tmp_path / corpus, corpus, corpus_rows(corpus, 4))
    shard = src / "data" / f"{split}-00000-of-00001.parquet"
    meta = pq.ParquetFile(shard).metadata
    col = meta.schema.to_arrow_schema().get_field_index(audio_col)
    offset = meta.row_group(1).column(col).data_page_offset
    data = bytearray(shard.read_bytes())
    data[offset: offset + 16] = b"\xff" * 16  # the page header: thrift cannot decode it
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=re.escape(f"{shard}: cannot read this parquet file")):
        convert_corpus(corpus, src, tmp_path / "out", split, tmp_path / "wav", skip_bad_utts=True)
    assert (tmp_path / "wav" / f"{corpus}_{split}_000001.wav").is_file()  # row group 0 was fine
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", sorted(SHARD_DAMAGE))
@pytest.mark.parametrize("layout", ["hub", "dataset"])
@pytest.mark.parametrize("corpus", CORPORA)
def test_damaged_shard(tmp_path: Path, corpus: str, layout: str, damage: str) -> None:
    """A parquet or Arrow shard that cannot be read is named, whatever breaks in it."""
    split = CORPUS_SCHEMA[corpus][0]
    src = write_corpus(tmp_path / corpus, corpus, corpus_rows(corpus), layout)
    if layout == "hub" and corpus != "spoken_alpaca":
        shard = src / "data" / f"{split}-00000-of-00001.parquet"
    else:
        shard = src / "data-00001-of-00002.arrow"
    shard.write_bytes(SHARD_DAMAGE[damage](shard.read_bytes()))
    with pytest.raises(DataError, match=re.escape(f"{shard}: cannot read this")):
        convert_corpus(corpus, src, tmp_path / "out", split, tmp_path / "wav",
                       skip_bad_utts=True)
    assert not (tmp_path / "out").exists()
