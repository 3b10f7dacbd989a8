"""Decoding a dump dir: a killed decode resumes from its per-batch journal and ends with
the same hypotheses as an unbroken one (espnet_ext/inference/decode.py)."""

from __future__ import annotations

import json

import pytest
from helpers import train_config

from espnet_ext.inference.decode import decode_dump_dir, load_model


class Killed(Exception):
    pass


def test_killed_decode_resumes_from_its_journal(tiny_dumps, tiny_llm_dir, tiny_whisper_dir, tmp_path, monkeypatch):
    model = load_model(train_config(tmp_path, tiny_llm_dir, tiny_whisper_dir))
    dev = tiny_dumps / "dump" / "dev"
    stamp = {"model": "tiny"}
    unbroken = decode_dump_dir(model, dev, tmp_path / "a", "speech", 1, 4, stamp=stamp)
    assert unbroken.n_resumed_batches == 0 and not list((tmp_path / "a").glob(".hyp.partial*"))

    real, state = model.generate, {"calls": 0, "die_at": 3}

    def flaky(*a, **k):
        state["calls"] += 1
        if state["calls"] == state["die_at"]:
            raise Killed
        return real(*a, **k)

    monkeypatch.setattr(model, "generate", flaky)
    out = tmp_path / "b"
    with pytest.raises(Killed):
        decode_dump_dir(model, dev, out, "speech", 1, 4, stamp=stamp)
    journal = out / ".hyp.partial.rank0.jsonl"
    assert not (out / "hyp").exists() and len(journal.read_text().splitlines()) == 3  # header + 2 batches
    with open(journal, "a") as f:
        f.write('{"batch": 3, "hy')  # torn by the kill: ignored
    state.update(calls=0, die_at=None)
    resumed = decode_dump_dir(model, dev, out, "speech", 1, 4, stamp=stamp)
    assert resumed.n_resumed_batches == 2 and state["calls"] == 2  # only the 2 missing batches
    assert (out / "hyp").read_text() == (tmp_path / "a" / "hyp").read_text()
    assert resumed.n_new_tokens == unbroken.n_new_tokens and not journal.exists()
    assert json.loads((out / "decode_report.json").read_text())["n_resumed_batches"] == 2


def test_a_journal_of_other_options_is_not_reused(tiny_dumps, tiny_llm_dir, tiny_whisper_dir, tmp_path):
    model = load_model(train_config(tmp_path, tiny_llm_dir, tiny_whisper_dir))
    dev = tiny_dumps / "dump" / "dev"
    out = tmp_path / "c"
    out.mkdir()
    header = {"stamp": {"model": "another"}, "data_dir": str(dev), "modality": "speech", "batch_size": 1,
              "max_new_tokens": 4, "world_size": 1, "n_batches": 4}
    fake = {"batch": 0, "hyps": {"x": "stale"}, "n_tokens": 1}
    (out / ".hyp.partial.rank0.jsonl").write_text(json.dumps(header) + "\n" + json.dumps(fake) + "\n")
    report = decode_dump_dir(model, dev, out, "speech", 1, 4, stamp={"model": "tiny"})
    assert report.n_resumed_batches == 0 and "stale" not in (out / "hyp").read_text()
