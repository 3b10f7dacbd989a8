"""The bad-input contract: every error names the utterance id, file or config key at fault.

Covers Kaldi data dirs, audio loading, the encoder-window policy, the stage-2 feature
dump (with tiny random models), config composition and the atomic writers.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from espnet_ext.data.audio import fit_to_window, load_audio, write_wav
from espnet_ext.data.kaldi_dir import DataError, read_kaldi_dir, read_table
from espnet_ext.tasks.compose import compose_train_config
from espnet_ext.utils.atomic import DiskFullError, atomic_dir, atomic_open, atomic_write_text

REPO = Path(__file__).resolve().parents[1]


def _rewrite_line(path: Path, uid: str, new_line: str | None) -> None:
    """Replace (or drop, with ``None``) the line of ``uid`` in a Kaldi table."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out = [(new_line if line.split(" ", 1)[0] == uid else line) for line in lines]
    path.write_text("".join(line + "\n" for line in out if line is not None), encoding="utf-8")


# --------------------------------------------------------------------------------------
# read_kaldi_dir
# --------------------------------------------------------------------------------------
def test_read_kaldi_dir_roundtrip(tiny_kaldi_dir):
    utts = read_kaldi_dir(tiny_kaldi_dir)
    assert [u.utt_id for u in utts] == ["spkA-q001", "spkA-q002", "spkB-q003"]
    assert utts[1].answers == ["seven", "7"] and utts[2].spk == "spkB"
    assert (tiny_kaldi_dir / "spk2utt").read_text().splitlines()[0] == "spkA spkA-q001 spkA-q002"


def test_read_kaldi_dir_ids_must_line_up(tiny_kaldi_dir):
    _rewrite_line(tiny_kaldi_dir / "answer", "spkA-q002", None)
    with pytest.raises(DataError) as e:
        read_kaldi_dir(tiny_kaldi_dir)
    assert "answer" in str(e.value) and "spkA-q002" in str(e.value)


def test_read_kaldi_dir_extra_id(tiny_kaldi_dir):
    with open(tiny_kaldi_dir / "utt2spk", "a") as f:
        f.write("spkZ-q999 spkZ\n")
    with pytest.raises(DataError) as e:
        read_kaldi_dir(tiny_kaldi_dir)
    assert "utt2spk" in str(e.value) and "spkZ-q999" in str(e.value)


def test_read_kaldi_dir_empty_question(tiny_kaldi_dir):
    _rewrite_line(tiny_kaldi_dir / "text", "spkB-q003", "spkB-q003   ")
    with pytest.raises(DataError) as e:
        read_kaldi_dir(tiny_kaldi_dir)
    assert "spkB-q003" in str(e.value) and "text" in str(e.value)


@pytest.mark.parametrize("value", ["[]", '[""]', '["ok", "  "]', '"Paris"', ""])
def test_read_kaldi_dir_empty_answer(tiny_kaldi_dir, value):
    _rewrite_line(tiny_kaldi_dir / "answer", "spkA-q001", f"spkA-q001 {value}")
    with pytest.raises(DataError) as e:
        read_kaldi_dir(tiny_kaldi_dir)
    assert "spkA-q001" in str(e.value) and "answer" in str(e.value)


def test_read_kaldi_dir_malformed_answer_json(tiny_kaldi_dir):
    _rewrite_line(tiny_kaldi_dir / "answer", "spkA-q002", 'spkA-q002 ["seven", 7')
    with pytest.raises(DataError) as e:
        read_kaldi_dir(tiny_kaldi_dir)
    assert "spkA-q002" in str(e.value) and "JSON" in str(e.value)


@pytest.mark.parametrize("name", ["utt2spk", "wav.scp", "answer"])
def test_read_kaldi_dir_missing_file(tiny_kaldi_dir, name):
    (tiny_kaldi_dir / name).unlink()
    with pytest.raises(DataError) as e:
        read_kaldi_dir(tiny_kaldi_dir)
    assert str(tiny_kaldi_dir / name) in str(e.value)


def test_read_table_duplicate_id(tmp_path):
    (tmp_path / "text").write_text("a x\nb y\na z\n")
    with pytest.raises(DataError, match=r"text:3: duplicate id a"):
        read_table(tmp_path / "text")


def test_iter_kaldi_dir_streams_the_dir_and_names_lines_out_of_step(tiny_kaldi_dir, tmp_path):
    from espnet_ext.data.kaldi_dir import iter_kaldi_dir, open_kaldi_dir

    assert list(iter_kaldi_dir(tiny_kaldi_dir)) == read_kaldi_dir(tiny_kaldi_dir)
    lines = (tiny_kaldi_dir / "answer").read_text().splitlines()
    (tiny_kaldi_dir / "answer").write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    with pytest.raises(DataError, match=r"answer:1: utterance ids do not line up .*found spkA-q002"):
        list(iter_kaldi_dir(tiny_kaldi_dir))
    for name in ("text", "utt2spk", "wav.scp"):  # now every file in the same, unsorted order
        lines = (tiny_kaldi_dir / name).read_text().splitlines()
        (tiny_kaldi_dir / name).write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    with pytest.raises(DataError, match=r"text:2: utterance spkA-q001 is out of order"):
        list(iter_kaldi_dir(tiny_kaldi_dir))
    utts = read_kaldi_dir(tiny_kaldi_dir)  # the dict-based reader does not need the order
    with pytest.raises(DataError, match="utterance id out of order: spkA-q002 .*after spkB-q003"):
        with open_kaldi_dir(tmp_path / "out") as writer:
            for u in reversed(utts):
                writer.add(u)
    assert not (tmp_path / "out").exists()  # nothing written


def test_indexed_text_returns_what_espnet_text_returns(tmp_path):
    import multiprocessing

    from espnet2.fileio.read_text import read_2columns_text
    from espnet2.train.dataset import ESPnetDataset

    import espnet_ext.tasks.speech_llm  # noqa: F401  (registers the indexed_text data type)
    from espnet_ext.data.indexed_text import IndexedTextReader

    path = tmp_path / "answer"
    path.write_text('u1 ["Paris"]\nu2   two  spaces\u3000and wide  \nu3\nu4 Zürich, 😀 ok\n', encoding="utf-8")
    reader = IndexedTextReader(path)
    assert dict(reader) == read_2columns_text(path) and len(reader) == 4
    assert reader["u2"] == "two  spaces\u3000and wide"
    ctx = multiprocessing.get_context("fork")  # a DataLoader worker: its own file position
    queue = ctx.Queue()
    child = ctx.Process(target=lambda: queue.put([reader[k] for k in ("u4", "u1")]))
    child.start()
    assert queue.get(timeout=60) == ["Zürich, 😀 ok", '["Paris"]']
    child.join()
    for_text = ESPnetDataset([(str(path), "answer", "text")])
    for_indexed = ESPnetDataset([(str(path), "answer", "indexed_text")])
    assert isinstance(for_indexed.loader_dict["answer"], IndexedTextReader)
    assert [for_indexed.loader_dict["answer"][k] for k in reader] == [for_text.loader_dict["answer"][k] for k in reader]
    (tmp_path / "dup").write_text("a x\nb y\na z\n")
    with pytest.raises(DataError, match=r"dup:3: duplicate id a"):
        IndexedTextReader(tmp_path / "dup")


# --------------------------------------------------------------------------------------
# bundled data files
# --------------------------------------------------------------------------------------
def test_bundled_yaml_keeps_every_value_a_string():
    from espnet_ext.data.bundled import load_yaml_resource

    doc = load_yaml_resource("demo_world", "everyday.yaml")
    opposites = {r.text("word"): r.texts("answers") for r in doc.records("opposites")}
    assert opposites["yes"] == ("no",) and opposites["true"] == ("false",)
    assert doc.records("units")[0].integer("count") == 7


def test_bundled_record_errors_name_file_and_key():
    from espnet_ext.data.bundled import Record, load_yaml_resource

    legs = load_yaml_resource("demo_world", "science.yaml").records("legs")[0]
    with pytest.raises(DataError, match=r"demo_world/science\.yaml\.legs\[0\]: missing key 'answers'"):
        legs.texts("answers")
    with pytest.raises(DataError, match=r"x\.yaml\.count: expected a whole number, got 'eight'"):
        Record({"count": "eight"}, "x.yaml").integer("count")
    with pytest.raises(DataError, match=r"x\.yaml\.answers: expected a list of strings"):
        Record({"answers": "Paris"}, "x.yaml").texts("answers")
    with pytest.raises(DataError, match=r"x\.yaml\.pairs: expected true or false, got 'yes'"):
        Record({"pairs": "yes"}, "x.yaml").flag("pairs")
    with pytest.raises(DataError, match="nowhere.yaml: cannot read the bundled data file"):
        load_yaml_resource("demo_world", "nowhere.yaml")


# --------------------------------------------------------------------------------------
# load_audio / fit_to_window
# --------------------------------------------------------------------------------------
def test_load_audio_missing(tmp_path):
    with pytest.raises(DataError) as e:
        load_audio(tmp_path / "nope.wav", "spkA-q001")
    assert "spkA-q001" in str(e.value) and "nope.wav" in str(e.value)


def test_load_audio_corrupt(tmp_path):
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(DataError) as e:
        load_audio(bad, "spkA-q002")
    assert "spkA-q002" in str(e.value) and "corrupt.wav" in str(e.value)


def test_load_audio_empty(tmp_path):
    empty = tmp_path / "empty.wav"
    write_wav(empty, np.zeros(0, np.float32))
    with pytest.raises(DataError) as e:
        load_audio(empty, "spkB-q003")
    assert "spkB-q003" in str(e.value) and "empty" in str(e.value)


@pytest.mark.parametrize("sr,n_in,n_out", [(8000, 8000, 16000), (44100, 22050, 8000), (16000, 1234, 1234)])
def test_load_audio_resamples(tmp_path, sr, n_in, n_out):
    t = np.arange(n_in) / sr
    path = tmp_path / f"tone{sr}.wav"
    write_wav(path, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr=sr)
    wav = load_audio(path)
    assert wav.dtype == np.float32 and wav.shape == (n_out,)
    # still a 440 Hz tone: the spectral peak lands on 440 Hz at 16 kHz
    peak = np.argmax(np.abs(np.fft.rfft(wav))) * 16000 / len(wav)
    assert abs(peak - 440) < 16000 / len(wav) + 1


def test_load_audio_stereo_is_mixed_down(tmp_path):
    import soundfile as sf

    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.stack([np.full(100, 0.5), np.full(100, -0.25)], 1), 16000)
    assert load_audio(path) == pytest.approx(np.full(100, 0.125), abs=1e-4)


def test_fit_to_window():
    wav = np.arange(16000 * 3, dtype=np.float32)
    same, flag = fit_to_window(wav, 5.0, "reject", "u1")
    assert same is wav and flag is False
    cut, flag = fit_to_window(wav, 2.0, "truncate", "u1")
    assert flag is True and cut.shape == (32000,) and cut[-1] == 31999
    with pytest.raises(DataError) as e:
        fit_to_window(wav, 2.0, "reject", "spkQ-long7")
    assert "spkQ-long7" in str(e.value) and "3.0 s" in str(e.value)
    with pytest.raises(ValueError, match="policy"):
        fit_to_window(wav, 2.0, "drop", "u1")


# --------------------------------------------------------------------------------------
# dump_encoder_features
# --------------------------------------------------------------------------------------
@pytest.fixture
def dump_parts(tiny_whisper_dir, tiny_llm_dir):
    from transformers import AutoTokenizer

    from espnet_ext.models.encoder import WhisperSpeechEncoder
    from espnet_ext.models.llm import ChatPrompt

    tok = AutoTokenizer.from_pretrained(str(tiny_llm_dir))
    prompt = ChatPrompt.from_tokenizer(tok)
    encoder = WhisperSpeechEncoder(str(tiny_whisper_dir))
    return dict(encoder=encoder, tokenizer=tok, prompt_overhead=len(prompt.prefix) + len(prompt.suffix),
                downsample_rate=5)


def _ids_of(path: Path):
    return [line.split(" ", 1)[0] for line in path.read_text().splitlines()]


def test_dump_writes_features_and_shape_files(tmp_path, tiny_kaldi_dir, dump_parts, make_speech_llm):
    import kaldiio

    from espnet_ext.data.dump import dump_encoder_features, read_dump_report
    from espnet_ext.train.collate import PadCollate
    from espnet_ext.train.preprocess import SpeechLLMPreprocessor

    out = tmp_path / "dump" / "test"
    report = dump_encoder_features(tiny_kaldi_dir, out, batch_size=2, **dump_parts)
    assert (report.n_input, report.n_written, report.n_truncated, report.skipped) == (3, 3, 0, {})
    assert read_dump_report(out)["n_written"] == 3
    ids = ["spkA-q001", "spkA-q002", "spkB-q003"]
    for name in ("wav.scp", "text", "answer", "utt2spk", "enc_feats.scp", "llm_len.speech", "llm_len.text"):
        assert _ids_of(out / name) == ids, name
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left

    feats = kaldiio.load_scp(str(out / "enc_feats.scp"))
    enc = dump_parts["encoder"]
    utts = {u.utt_id: u for u in read_kaldi_dir(tiny_kaldi_dir)}
    for uid in ids:
        wav = load_audio(utts[uid].wav)
        alone, n = enc.encode_waveforms([wav])
        assert feats[uid].shape == (int(n[0]), 32) and feats[uid].dtype == np.float32
        np.testing.assert_allclose(feats[uid], alone[0].numpy(), atol=1e-5)

    # the shape files hold exactly the LLM sequence length of each training sample
    model = make_speech_llm(encoder=False)
    pre = SpeechLLMPreprocessor(model.llm.tokenizer, model.llm.prompt.closing)
    texts, answers = read_table(out / "text"), read_table(out / "answer")
    for modality, key in (("speech", "enc_feats"), ("text", "text")):
        shape = {u: int(v) for u, v in read_table(out / f"llm_len.{modality}").items()}
        for uid in ids:
            data = pre(uid, {"text": texts[uid], "answer": answers[uid]})
            sample = {key: feats[uid] if key == "enc_feats" else data["text"]}
            _, batch = PadCollate()([(uid, sample)])
            middles = model.placeholder_embeddings(modality, **batch)
            _, mask, _ = model.build_inputs(middles, [torch.from_numpy(data["answer"])])
            assert shape[uid] == int(mask.sum()), (modality, uid)


def test_dump_corrupt_wav_fails_and_writes_nothing(tmp_path, make_tiny_kaldi_dir, dump_parts):
    from espnet_ext.data.dump import dump_encoder_features

    bad = tmp_path / "bad.wav"
    bad.write_bytes(np.random.default_rng(1).bytes(4096))
    data = make_tiny_kaldi_dir(wavs={"spkA-q002": bad})
    out = tmp_path / "dump" / "bad"
    with pytest.raises(DataError) as e:
        dump_encoder_features(data, out, **dump_parts)
    assert "spkA-q002" in str(e.value)
    assert not out.exists()
    assert not (tmp_path / "dump").exists() or not list((tmp_path / "dump").iterdir())


def test_dump_skip_bad_utts(tmp_path, make_tiny_kaldi_dir, dump_parts):
    import kaldiio

    from espnet_ext.data.dump import dump_encoder_features

    bad = tmp_path / "bad.wav"
    bad.write_bytes(np.random.default_rng(2).bytes(4096))
    data = make_tiny_kaldi_dir(wavs={"spkA-q002": bad})
    out = tmp_path / "dump" / "skip"
    report = dump_encoder_features(data, out, skip_bad_utts=True, **dump_parts)
    assert report.n_written == 2 and list(report.skipped) == ["spkA-q002"]
    saved = json.loads((out / "dump_report.json").read_text())
    assert list(saved["skipped"]) == ["spkA-q002"] and "bad.wav" in saved["skipped"]["spkA-q002"]
    assert saved["n_input"] == 3 and saved["n_written"] == 2
    kept = ["spkA-q001", "spkB-q003"]
    for name in ("wav.scp", "text", "answer", "utt2spk", "enc_feats.scp", "llm_len.speech", "llm_len.text"):
        assert _ids_of(out / name) == kept, name
    assert sorted(kaldiio.load_scp(str(out / "enc_feats.scp"))) == kept
    assert read_kaldi_dir(out)  # the copied Kaldi files still cross-check


@pytest.mark.parametrize("policy", ["truncate", "reject"])
def test_dump_long_audio_policy(tmp_path, make_tiny_kaldi_dir, dump_parts, policy):
    import kaldiio

    from espnet_ext.data.dump import dump_encoder_features

    utts = [("spkA-q001", "spkA", 1.0, "What is the capital of France?", ["Paris"]),
            ("spkC-long1", "spkC", 35.0, "What is a long question?", ["long"])]
    data = make_tiny_kaldi_dir(name="long", utts=utts)
    out = tmp_path / "dump" / "long"
    if policy == "reject":
        with pytest.raises(DataError) as e:
            dump_encoder_features(data, out, long_audio=policy, **dump_parts)
        assert "spkC-long1" in str(e.value)
        assert not out.exists()
        return
    report = dump_encoder_features(data, out, long_audio=policy, **dump_parts)
    assert report.n_truncated == 1 and report.n_written == 2
    assert json.loads((out / "dump_report.json").read_text())["n_truncated"] == 1
    feats = kaldiio.load_scp(str(out / "enc_feats.scp"))
    assert feats["spkC-long1"].shape == (1500, 32)  # 30 s → 3000 mel frames → 1500


# --------------------------------------------------------------------------------------
# compose_train_config
# --------------------------------------------------------------------------------------
PRESET = {
    "pretrained": {"llm": "tiny-random-llama", "whisper": "tiny-random-whisper"},
    "encoder": "whisper",
    "encoder_conf": {"model_name_or_path": "exp/pretrained/whisper", "pad_to_30s": False},
    "adaptor": "concat",
    "adaptor_conf": {"downsample_rate": 5, "hidden_size": 32},
    "llm": "hf",
    "llm_conf": {"model_name_or_path": "exp/pretrained/llm", "torch_dtype": "float32"},
    "batch_size": 2,
}
TRAIN = {
    "adaptor_conf": {"hidden_size": 64},
    "llm_conf": {"torch_dtype": "bfloat16"},
    "optim": "adamw",
    "optim_conf": {"lr": 2.0e-5},
    "batch_size": 8,
    "system": {"name": "Full-FT", "role": "full_ft"},
}


def _write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_compose_train_config_merges(tmp_path):
    preset = _write_yaml(tmp_path / "preset.yaml", PRESET)
    train = _write_yaml(tmp_path / "train.yaml", TRAIN)
    out = tmp_path / "exp" / "train.yaml"
    merged = compose_train_config(preset, train, out)
    assert "pretrained" not in merged  # preset-only key
    assert merged["adaptor_conf"] == {"downsample_rate": 5, "hidden_size": 64}
    assert merged["llm_conf"] == {"model_name_or_path": "exp/pretrained/llm", "torch_dtype": "bfloat16"}
    assert merged["encoder_conf"] == PRESET["encoder_conf"]
    assert merged["batch_size"] == 8 and merged["optim"] == "adamw"
    text = out.read_text()
    assert text.startswith("# composed from") and str(preset) in text.splitlines()[0]
    assert yaml.safe_load(text) == merged and "system" not in merged  # not an ESPnet option
    # the composed config and the system record, and no temporary file left behind
    assert sorted(p.name for p in out.parent.iterdir()) == ["system.json", "train.yaml"]


def test_compose_train_config_repo_files(tmp_path):
    merged = compose_train_config(REPO / "conf/model/tiny_random.yaml", REPO / "conf/train_full.yaml",
                                  tmp_path / "train.yaml")
    assert merged["scheduler"] == "warmupcosinelr" and merged["adaptor_conf"]["hidden_size"] == 32


@pytest.mark.parametrize("which", ["preset", "train"])
def test_compose_train_config_unknown_key(tmp_path, which):
    preset_data, train_data = dict(PRESET), dict(TRAIN)
    (preset_data if which == "preset" else train_data)["adaptor_confg"] = {"hidden_size": 3}
    preset = _write_yaml(tmp_path / "preset.yaml", preset_data)
    train = _write_yaml(tmp_path / "train.yaml", train_data)
    out = tmp_path / "out.yaml"
    with pytest.raises(ValueError) as e:
        compose_train_config(preset, train, out)
    bad = preset if which == "preset" else train
    assert str(bad) in str(e.value) and "adaptor_confg" in str(e.value)
    assert not out.exists()


def test_compose_train_config_missing_file(tmp_path):
    train = _write_yaml(tmp_path / "train.yaml", TRAIN)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        compose_train_config(tmp_path / "nope.yaml", train, tmp_path / "out.yaml")


# --------------------------------------------------------------------------------------
# atomic writers
# --------------------------------------------------------------------------------------
def test_atomic_open_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "hyp"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write("new, half written")
            raise RuntimeError("boom")
    assert target.read_text() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["hyp"]
    with atomic_open(target, "wb") as f:
        f.write(b"new\n")
    assert target.read_bytes() == b"new\n" and sorted(os.listdir(tmp_path)) == ["hyp"]


def test_disk_full_names_the_output_and_keeps_the_old_one(tmp_path):
    def no_space():
        return OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "hyp"
    atomic_write_text(target, "old\n")
    with pytest.raises(DiskFullError, match="no space left on the device while writing") as e:
        with atomic_open(target) as f:
            f.write("half")
            raise no_space()
    assert str(target) in str(e.value) and e.value.errno == errno.ENOSPC
    assert target.read_text() == "old\n" and sorted(os.listdir(tmp_path)) == ["hyp"]
    with atomic_dir(tmp_path / "dump") as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(DiskFullError, match=str(tmp_path / "dump")):
        with atomic_dir(tmp_path / "dump") as tmp:
            raise no_space()
    assert (tmp_path / "dump" / "a").read_text() == "1" and sorted(os.listdir(tmp_path)) == ["dump", "hyp"]


class _CountingEncoder:
    """The dump's encoder, counting the utterances it encodes; raises KeyboardInterrupt (once)
    on batch number ``fail_at`` (0-based) of this run, as a kill in the middle of a set."""

    def __init__(self, encoder, fail_at: int = -1):
        self.encoder, self.fail_at, self.calls, self.n_utts = encoder, fail_at, 0, 0

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def encode_waveforms(self, wavs):
        if self.calls == self.fail_at:
            self.calls += 1
            raise KeyboardInterrupt
        self.calls += 1
        self.n_utts += len(wavs)
        return self.encoder.encode_waveforms(wavs)


def _dump_files(out: Path) -> dict:
    """A dump dir's files, its own path in the scp replaced (dumps in two dirs compare equal)."""
    return {f.name: f.read_bytes().replace(str(out.resolve()).encode(), b"<dump>")
            for f in sorted(out.iterdir())}


def test_dump_disk_full_keeps_the_previous_dump_and_the_finished_batches(
        tmp_path, tiny_kaldi_dir, dump_parts, monkeypatch):
    from espnet_ext.data import ark_journal
    from espnet_ext.data.dump import dump_encoder_features, partial_dir

    out = tmp_path / "dump"
    dump_encoder_features(tiny_kaldi_dir, out, batch_size=1, **dump_parts)
    before = _dump_files(out)
    real_fsync, calls = os.fsync, []

    def fsync(fd):  # the disk fills up while the second batch is written
        calls.append(fd)
        if len(calls) == 4:  # 1: the journal's header (atomic), 2-3: batch 0's ark and line, 4: batch 1's ark
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(ark_journal.os, "fsync", fsync)
    work = partial_dir(out)
    with pytest.raises(DiskFullError, match="no space left on the device") as e:
        dump_encoder_features(tiny_kaldi_dir, out, batch_size=1, **dump_parts)  # a rewrite (always rewrites)
    assert str(work) in str(e.value) and "continues" in str(e.value)
    assert _dump_files(out) == before  # the previous dump is intact
    monkeypatch.undo()  # space freed: the rerun encodes only the two batches not finished
    counting = _CountingEncoder(dump_parts["encoder"])
    dump_encoder_features(tiny_kaldi_dir, out, batch_size=1, **{**dump_parts, "encoder": counting})
    assert counting.n_utts == 2 and _dump_files(out) == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no work dir left


def test_a_killed_dump_continues_from_its_finished_batches(tmp_path, tiny_kaldi_dir, dump_parts, caplog):
    """Stopped in the middle of a set, the rerun encodes only what is missing and writes the
    unbroken run's dump byte for byte (the scp names its own dir); bytes the kill left past
    the journal's last batch and a torn journal line are dropped; other options start over."""
    import logging

    from espnet_ext.data.ark_journal import JOURNAL_NAME
    from espnet_ext.data.dump import dump_encoder_features, partial_dir

    ref = tmp_path / "ref"
    dump_encoder_features(tiny_kaldi_dir, ref, batch_size=1, **dump_parts)
    out = tmp_path / "dump"
    work = partial_dir(out)
    enc = dump_parts["encoder"]
    killed = _CountingEncoder(enc, fail_at=2)
    with pytest.raises(KeyboardInterrupt):
        dump_encoder_features(tiny_kaldi_dir, out, batch_size=1, **{**dump_parts, "encoder": killed})
    assert not out.exists() and killed.n_utts == 2
    # a kill between the archive write and its journal line: bytes past the last line, a torn line
    with open(work / "enc_feats.ark", "ab") as f:
        f.write(b"spkB-q003 \0BFM half a matrix")
    with open(work / JOURNAL_NAME, "a") as f:
        f.write('{"batch": 2, "utts": [["spkB')
    rerun = _CountingEncoder(enc)
    with caplog.at_level(logging.INFO, logger="espnet_ext.data.dump"):
        dump_encoder_features(tiny_kaldi_dir, out, batch_size=1, **{**dump_parts, "encoder": rerun})
    assert rerun.n_utts == 1 and "2 of 3 batches already encoded" in caplog.text
    assert _dump_files(out) == _dump_files(ref) and not work.exists()
    # other options (batch size) than the interrupted run's: that work is not reused
    with pytest.raises(KeyboardInterrupt):
        dump_encoder_features(tiny_kaldi_dir, out, batch_size=1, **{**dump_parts, "encoder": _CountingEncoder(
            enc, fail_at=1)})
    other = _CountingEncoder(enc)
    dump_encoder_features(tiny_kaldi_dir, out, batch_size=2, **{**dump_parts, "encoder": other})
    assert other.n_utts == 3  # (a batch of 2 pads: features equal to float precision, not bytes)
    import kaldiio

    new, old = kaldiio.load_scp(str(out / "enc_feats.scp")), kaldiio.load_scp(str(ref / "enc_feats.scp"))
    assert sorted(new) == sorted(old) and all(np.allclose(new[u], old[u], atol=1e-5) for u in old)


def test_two_dumps_of_one_set_at_once_are_refused(tmp_path, tiny_kaldi_dir, dump_parts):
    from espnet_ext.data.ark_journal import ArkBusyError, ResumableArk
    from espnet_ext.data.dump import dump_encoder_features, partial_dir

    out = tmp_path / "dump"
    holder = ResumableArk(partial_dir(out), {"another": "process"})
    try:
        with pytest.raises(ArkBusyError, match=str(partial_dir(out))):
            dump_encoder_features(tiny_kaldi_dir, out, **dump_parts)
    finally:
        holder.close()
    dump_encoder_features(tiny_kaldi_dir, out, **dump_parts)  # its journal is another run's: starts over
    assert (out / "dump_report.json").is_file()


def test_temporaries_of_killed_writers_are_removed_by_the_next_writer(tmp_path):
    """SIGKILL leaves a writer's temporary behind (a multi-GB checkpoint at scale): the next
    write into that directory on this host removes the ones whose process is gone."""
    import subprocess
    import sys
    import time

    from espnet_ext.utils import atomic

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    out = tmp_path / "out"
    out.mkdir()
    host = atomic._HOST
    killed = out / f".checkpoint.pth.{host}.{dead}.abc123.tmp"
    killed.write_bytes(b"half a checkpoint")
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exited, not yet reaped: gone too
    while Path(f"/proc/{zombie.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
        time.sleep(0.01)
    (out / f".ark.{host}.{zombie.pid}.zz.tmp").write_text("x")
    (out / f".dump.{host}.{dead}.xyz.tmp").mkdir()  # an atomic_dir's
    kept = [out / f".hyp.{host}.{os.getpid()}.live1.tmp",  # a live writer's (this process)
            out / f".hyp.otherhost.{dead}.r4nd.tmp",  # another host's: its pid means nothing here
            out / ".hyp.old_style.tmp"]
    for k in kept:
        k.write_text("x")
    atomic_write_text(out / "hyp", "new\n")
    zombie.wait()
    assert sorted(p.name for p in out.iterdir()) == sorted(["hyp", *(k.name for k in kept)])


def test_atomic_dir_keeps_old_dir_on_error(tmp_path):
    target = tmp_path / "dump"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as tmp:
            (tmp / "a").write_text("2")
            (tmp / "b").write_text("2")
            raise KeyboardInterrupt
    assert sorted(os.listdir(target)) == ["a"] and (target / "a").read_text() == "1"
    assert sorted(os.listdir(tmp_path)) == ["dump"]
    with atomic_dir(target) as tmp:  # a successful rewrite replaces the whole dir
        (tmp / "c").write_text("3")
    assert sorted(os.listdir(target)) == ["c"] and sorted(os.listdir(tmp_path)) == ["dump"]


def test_a_damaged_feature_archive_is_named(tmp_path, tiny_kaldi_dir, dump_parts):
    from espnet_ext.data.dump import check_feature_archive, dump_encoder_features

    out = tmp_path / "dump"
    dump_encoder_features(tiny_kaldi_dir, out, **dump_parts)
    scp, ark = out / "enc_feats.scp", out / "enc_feats.ark"
    check_feature_archive(scp)  # intact
    ark.write_bytes(ark.read_bytes()[:-7])  # the last matrix cut short
    with pytest.raises(DataError, match="cannot be read") as e:
        check_feature_archive(scp)
    assert str(ark) in str(e.value) and "rebuild" in str(e.value)
    ark.write_bytes(ark.read_bytes()[:20])  # cut before the last offset
    with pytest.raises(DataError, match="past the end of the file"):
        check_feature_archive(scp)
    ark.unlink()
    with pytest.raises(DataError, match="is missing"):
        check_feature_archive(scp)
    scp.write_text("utt1 no-offset-here\n")
    with pytest.raises(DataError, match=r"enc_feats.scp:1: utterance utt1"):
        check_feature_archive(scp)


def test_a_truncated_scp_is_named_and_redone(tmp_path, tiny_kaldi_dir, tiny_whisper_dir, tiny_llm_dir):
    from espnet_ext.bin.dump_features import main
    from espnet_ext.data.dump import check_feature_archive

    out = tmp_path / "dump"
    args = ["--whisper", str(tiny_whisper_dir), "--llm", str(tiny_llm_dir), "--data_dir", str(tiny_kaldi_dir),
            "--out_dir", str(out)]
    main(args)
    scp = out / "enc_feats.scp"
    good = scp.read_text()
    scp.write_text(good[:-4])  # cut inside the last line: its offset is wrong, its newline gone
    with pytest.raises(DataError, match="last line is cut short") as e:
        check_feature_archive(scp)
    assert str(scp) in str(e.value) and "stage 2" in str(e.value)
    scp.write_text("".join(good.splitlines(keepends=True)[:1]))  # cut at a line end: utterances gone
    with pytest.raises(DataError, match=r"lists 1 utterances, .*text 3: spkA-q002 and 1 more have no features"):
        check_feature_archive(scp)
    main(args)  # the report says finished, the scp says otherwise: redone
    assert scp.read_text() == good


def test_dump_features_redoes_a_damaged_dump(tmp_path, tiny_kaldi_dir, tiny_whisper_dir, tiny_llm_dir):
    from espnet_ext.bin.dump_features import main
    from espnet_ext.data.dump import check_feature_archive

    out = tmp_path / "dump"
    args = ["--whisper", str(tiny_whisper_dir), "--llm", str(tiny_llm_dir), "--data_dir", str(tiny_kaldi_dir),
            "--out_dir", str(out)]
    main(args)
    good = (out / "enc_feats.ark").read_bytes()
    (out / "enc_feats.ark").write_bytes(good[: len(good) // 2])
    main(args)  # the report says finished, the archive says otherwise: redone
    check_feature_archive(out / "enc_feats.scp")
    assert (out / "enc_feats.ark").read_bytes() == good


def test_training_refuses_a_damaged_dump_before_espnet_starts(tmp_path, tiny_kaldi_dir, dump_parts):
    from espnet_ext.bin.speechllm_train import feature_scps, main
    from espnet_ext.data.dump import dump_encoder_features

    out = tmp_path / "dump"
    dump_encoder_features(tiny_kaldi_dir, out, **dump_parts)
    ark = out / "enc_feats.ark"
    ark.write_bytes(ark.read_bytes()[:-7])
    cmd = ["--train_data_path_and_name_and_type", f"{out}/enc_feats.scp,enc_feats,kaldi_ark",
           "--train_data_path_and_name_and_type", f"{out}/text,text,text"]
    assert feature_scps(cmd) == [f"{out}/enc_feats.scp"]
    with pytest.raises(DataError, match=str(ark)):
        main(cmd + ["--output_dir", str(tmp_path / "exp")])
    assert not (tmp_path / "exp").exists()
