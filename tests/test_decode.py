"""Decoding a dump dir: a killed decode resumes from its per-batch journal and ends with
the same hypotheses as an unbroken one (espnet_ext/inference/decode.py)."""

from __future__ import annotations

import json

import pytest
from helpers import train_config

from espnet_ext.inference.decode import decode_dump_dir
from espnet_ext.inference.speechllm import load_model


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



# a torchrun worker: speechllm_inference on the argv before "--", then cascade_decode on the rest,
# in one process group (a group destroyed and created again in one torchrun process may not
# connect), each rank recording how many utterances every generate() call (LLM, Whisper) was given
_RECORDING_WORKER = """
import json, os, sys
import torch.distributed
from transformers import WhisperForConditionalGeneration
from espnet_ext.models.speech_llm import ESPnetSpeechLLM

log = os.path.join(sys.argv[1], "rank" + os.environ["RANK"] + ".jsonl")


def recording(name, real):
    def generate(self, *a, **kw):
        outs = real(self, *a, **kw)
        with open(log, "a") as f:
            f.write(json.dumps([name, len(outs)]) + "\\n")
        return outs
    return generate


ESPnetSpeechLLM.generate = recording("llm", ESPnetSpeechLLM.generate)
WhisperForConditionalGeneration.generate = recording("asr", WhisperForConditionalGeneration.generate)
from espnet_ext.bin import cascade_decode, speechllm_inference

destroy = torch.distributed.destroy_process_group
torch.distributed.destroy_process_group = lambda *a, **k: None
cut = sys.argv.index("--")
speechllm_inference.main(sys.argv[2:cut])
cascade_decode.main(sys.argv[cut + 1:])
destroy()
"""


def test_two_process_gloo_decode_and_cascade_shard_the_batches_and_equal_one_process(
        tiny_dumps, tiny_llm_dir, tiny_whisper_dir, tmp_path):
    """speechllm_inference and cascade_decode under torchrun (2 gloo ranks): each rank decodes
    every other batch, rank 0 writes the outputs once, and they equal a one-process run's."""
    import os
    import subprocess
    import sys

    from helpers import REPO

    from espnet_ext.bin import cascade_decode, speechllm_inference

    conf = train_config(tmp_path, tiny_llm_dir, tiny_whisper_dir)  # No-FT: its adaptor drawn from seed 0
    dev = tiny_dumps / "dump" / "dev"
    decode = ["--config", str(conf), "--modality", "speech", "--data_dir", str(dev), "--batch_size", "1",
              "--max_new_tokens", "4", "--device", "cpu"]
    cascade = ["--whisper_dir", str(tiny_whisper_dir), "--config", str(conf), "--data_dir",
               str(tiny_dumps / "data" / "dev"), "--dump_dir", str(dev), "--max_new_tokens", "4",
               "--batch_size", "1", "--asr_batch_size", "1", "--device", "cpu"]
    one, two = tmp_path / "one", tmp_path / "two"
    speechllm_inference.main(decode + ["--output_dir", str(one)])
    cascade_decode.main(cascade + ["--output_dir", str(one / "cascade")])
    worker, logs = tmp_path / "worker.py", tmp_path / "logs"
    worker.write_text(_RECORDING_WORKER)
    logs.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(worker), str(logs), *decode, "--output_dir", str(two), "--",
                        *cascade, "--output_dir", str(two / "cascade")],
                       capture_output=True, text=True, env=env, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    for f in ("hyp", "cascade/asr_dev/text", "cascade/decode_dev_speech/hyp"):
        assert (two / f).read_text() == (one / f).read_text(), f
    for d in (two, two / "cascade" / "decode_dev_speech"):
        assert json.loads((d / "decode_report.json").read_text())["world_size"] == 2
        assert not list(d.glob(".hyp.partial*"))
    # 4 utterances, batch size 1: every rank ran 2 of the 4 batches of each of the three steps
    for r in (0, 1):
        calls = [json.loads(line) for line in (logs / f"rank{r}.jsonl").read_text().splitlines()]
        assert calls == [["llm", 1]] * 2 + [["asr", 1]] * 2 + [["llm", 1]] * 2, (r, calls)


def test_no_ft_model_is_the_same_in_every_process(tiny_llm_dir, tiny_whisper_dir, tmp_path):
    """The No-FT model's untrained adaptor comes from the config's seed, so torchrun ranks (and
    reruns resuming a journal) decode with one model; the caller's RNG is left alone."""
    import torch

    conf = train_config(tmp_path, tiny_llm_dir, tiny_whisper_dir)
    state = torch.random.get_rng_state()
    first, second = (load_model(conf).adaptor.state_dict() for _ in range(2))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_a_decode_is_redone_when_its_dump_is_redone(tiny_dumps, tiny_llm_dir, tiny_whisper_dir, tmp_path):
    """e.g. the dump redone with 30 s padding: the hyp of the old features is not kept."""
    import os
    import shutil

    from espnet_ext.bin import speechllm_inference

    dump = tmp_path / "dump"
    shutil.copytree(tiny_dumps / "dump" / "dev", dump)
    out = tmp_path / "out"
    argv = ["--config", str(train_config(tmp_path, tiny_llm_dir, tiny_whisper_dir)), "--modality", "speech",
            "--data_dir", str(dump), "--output_dir", str(out), "--batch_size", "4", "--max_new_tokens", "2"]
    speechllm_inference.main(argv)
    first = (out / "hyp").stat().st_mtime_ns
    speechllm_inference.main(argv)  # same model, options and features: skipped
    assert (out / "hyp").stat().st_mtime_ns == first
    scp = dump / "enc_feats.scp"
    os.utime(scp, ns=(first + 10**9, first + 10**9))  # the dump rewritten
    speechllm_inference.main(argv)
    assert (out / "hyp").stat().st_mtime_ns != first
