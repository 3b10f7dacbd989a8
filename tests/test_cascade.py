"""The cascade baseline (espnet_ext/inference/cascade.py, bin/cascade_decode.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from espnet_ext.data.kaldi_dir import DataError, read_table
from espnet_ext.inference.cascade import AsrReport, normalize_words, word_errors, write_asr_dump
from espnet_ext.tasks.systems import CASCADE, read_system


def test_word_errors_by_hand():
    assert normalize_words("Who wrote 'A Christmas Carol'?") == ["who", "wrote", "a", "christmas", "carol"]
    assert normalize_words("It’s the cat's") == ["it's", "the", "cat's"]
    assert word_errors("What is the capital of France?", "what is the capital of france") == (0, 6)
    assert word_errors("Who wrote A Christmas Carol?", "Ura Takuis Miskarul") == (5, 5)  # 3 subs + 2 dels
    assert word_errors("one two three", "one three") == (1, 3)  # a deletion
    assert word_errors("one two", "one two two") == (1, 2)  # an insertion
    assert word_errors("", "hello") == (1, 0)
    assert AsrReport("d", 2, 8, 2, 1, 0.1).wer == 25.0


def test_write_asr_dump_schema_and_errors(tmp_path: Path):
    src = tmp_path / "dump"
    src.mkdir()
    (src / "answer").write_text('u1 ["Paris"]\nu2 ["7", "seven"]\n')
    (src / "llm_len.text").write_text("u1 40\nu2 41\n")
    out = tmp_path / "asr"
    write_asr_dump(src, {"u1": "capital of france", "u2": "days in a week"}, out,
                   AsrReport(str(src), 2, 9, 3, 1, 0.5), stamp={"k": 1})
    assert sorted(p.name for p in out.iterdir()) == ["answer", "asr_report.json", "llm_len.text", "text"]
    assert read_table(out / "text") == {"u1": "capital of france", "u2": "days in a week"}
    assert read_table(out / "answer") == read_table(src / "answer")
    rep = json.loads((out / "asr_report.json").read_text())
    assert rep["wer"] == 33.33 and rep["stamp"] == {"k": 1} and rep["n_utts_with_error"] == 1
    with pytest.raises(DataError, match="no transcript for utterance u2"):
        write_asr_dump(src, {"u1": "x"}, tmp_path / "asr2", AsrReport("d", 1, 1, 0, 0, 0.0))
    assert not (tmp_path / "asr2").exists()


def test_cascade_decode_end_to_end_on_tiny_models(tiny_dumps: Path, tiny_llm_dir: Path,
                                                  tiny_whisper_dir: Path, tmp_path: Path):
    """Whisper transcribes every utterance, the No-FT LLM answers; a rerun skips both steps."""
    from espnet_ext.bin import cascade_decode

    model_yaml = tmp_path / "model.yaml"
    model_yaml.write_text(yaml.safe_dump({
        "encoder": "whisper", "encoder_conf": {"model_name_or_path": str(tiny_whisper_dir)},
        "adaptor": "concat", "adaptor_conf": {"downsample_rate": 5, "hidden_size": 32},
        "llm": "hf", "llm_conf": {"model_name_or_path": str(tiny_llm_dir)}}))
    out = tmp_path / "exp" / "cascade"
    argv = ["--whisper_dir", str(tiny_whisper_dir), "--config", str(model_yaml), "--output_dir", str(out),
            "--data_dir", str(tiny_dumps / "data" / "dev"), "--dump_dir", str(tiny_dumps / "dump" / "dev"),
            "--max_new_tokens", "4", "--batch_size", "3", "--asr_batch_size", "3"]
    cascade_decode.main(argv)
    ids = set(read_table(tiny_dumps / "dump" / "dev" / "text"))
    assert set(read_table(out / "asr_dev" / "text", allow_empty_value=True)) == ids
    hyp = out / "decode_dev_speech" / "hyp"
    assert set(read_table(hyp, allow_empty_value=True)) == ids
    report = json.loads((out / "asr_dev" / "asr_report.json").read_text())
    assert report["n_utts"] == len(ids) and report["n_ref_words"] > 0
    before = (hyp.stat().st_mtime_ns, (out / "asr_dev" / "text").stat().st_mtime_ns)
    cascade_decode.main(argv)  # stamped: nothing is redone
    assert (hyp.stat().st_mtime_ns, (out / "asr_dev" / "text").stat().st_mtime_ns) == before
    assert read_system(tmp_path / "exp", "cascade") == CASCADE
