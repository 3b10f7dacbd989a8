"""ESPnet training of the speech LLM on tiny random models: a real Trainer run,
resume after an interruption equal to an unbroken run, and 2-process torchrun (gloo).
The dumps (``tiny_dumps``) come from conftest.py, the run helpers from helpers.py."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import load_state, run_train, train_cmd, train_config

from espnet_ext.inference.decode import decode_dump_dir, load_model


def test_train_then_decode(tiny_dumps, tiny_llm_dir, tiny_whisper_dir, tmp_path):
    conf = train_config(tmp_path, tiny_llm_dir, tiny_whisper_dir)
    out = tmp_path / "exp"
    run_train(train_cmd(tiny_dumps, conf, out))
    for f in ("config.yaml", "checkpoint.pth", "valid.loss.best.pth", "2epoch.pth"):
        assert (out / f).exists(), f
    assert list((out / "tensorboard").rglob("events.*"))
    # frozen encoder unchanged, adaptor and LLM trained
    state = load_state(out / "valid.loss.best.pth")
    model = load_model(conf)
    init = model.state_dict()
    assert torch.equal(state["encoder.encoder.conv1.weight"], init["encoder.encoder.conv1.weight"])
    assert not torch.equal(state["adaptor.linear1.weight"], init["adaptor.linear1.weight"])
    assert not torch.equal(state["llm.model.model.layers.0.mlp.up_proj.weight"],
                           init["llm.model.model.layers.0.mlp.up_proj.weight"])
    trained = load_model(out / "config.yaml", out / "valid.loss.best.pth")
    report = decode_dump_dir(trained, tiny_dumps / "dump" / "dev", tmp_path / "dec", "speech", 2, 4)
    hyp = (tmp_path / "dec" / "hyp").read_text().splitlines()
    assert report.n_utts == 4 and len(hyp) == 4


def test_resume_after_interruption_equals_unbroken_run(tiny_dumps, tiny_llm_dir, tiny_whisper_dir, tmp_path):
    """Stopped after epoch 2 of 3, resumed: equal to the unbroken run.  The same stop
    with a truncated checkpoint.pth (a kill during ESPnet's write) falls back to the kept
    checkpoint.prev.pth, trains epoch 2 again, and ends equal too."""
    conf = train_config(tmp_path, tiny_llm_dir, tiny_whisper_dir, max_epoch=3,
                        scheduler_conf={"total_steps": 9, "warmup_ratio": 0.2})
    unbroken, resumed = tmp_path / "unbroken", tmp_path / "resumed"
    run_train(train_cmd(tiny_dumps, conf, unbroken))
    # "interrupted" after epoch 2: the same run stopped at max_epoch 2 ...
    run_train(train_cmd(tiny_dumps, conf, resumed, "--max_epoch", "2"))
    assert not (resumed / "3epoch.pth").exists()
    prev = load_state(resumed / "checkpoint.prev.pth")  # the epoch-1 state, kept
    assert prev["reporter"]["epoch"] == 1 and load_state(resumed / "checkpoint.pth")["reporter"]["epoch"] == 2
    assert not list(resumed.glob(".*.tmp"))  # no temporary file left behind
    truncated = tmp_path / "truncated"
    shutil.copytree(resumed, truncated, symlinks=True)
    ckpt = truncated / "checkpoint.pth"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    # ... then restarted with --resume true continues from checkpoint.pth
    p = run_train(train_cmd(tiny_dumps, conf, resumed, "--resume", "true"))
    assert "3/3epoch started" in p.stderr and "2/3epoch started" not in p.stderr
    q = run_train(train_cmd(tiny_dumps, conf, truncated, "--resume", "true"))
    assert "skipping a damaged checkpoint" in q.stderr and str(ckpt) in q.stderr
    assert "2/3epoch started" in q.stderr and "1/3epoch started" not in q.stderr
    a = load_state(unbroken / "3epoch.pth")
    for other in (resumed, truncated):
        b = load_state(other / "3epoch.pth")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), (other.name, k)


def test_resume_refuses_when_no_checkpoint_loads(tiny_dumps, tiny_llm_dir, tiny_whisper_dir, tmp_path):
    conf = train_config(tmp_path, tiny_llm_dir, tiny_whisper_dir, max_epoch=1)
    out = tmp_path / "exp"
    out.mkdir()
    (out / "checkpoint.pth").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(AssertionError) as e:
        run_train(train_cmd(tiny_dumps, conf, out, "--resume", "true"))
    assert "CheckpointError" in str(e.value) and "no loadable checkpoint" in str(e.value)
    assert (out / "checkpoint.pth").read_bytes() == b"PK\x03\x04 truncated"  # left for the user


def test_torchrun_two_gloo_processes(tiny_dumps, tiny_llm_dir, tiny_whisper_dir, tmp_path):
    conf = train_config(tmp_path, tiny_llm_dir, tiny_whisper_dir, max_epoch=1)
    out = tmp_path / "ddp"
    p = run_train(train_cmd(tiny_dumps, conf, out), nproc=2)
    assert (out / "1epoch.pth").exists()
    assert ":0/2]" in p.stderr  # ESPnet's log prefix host:rank/world_size
    assert "distributed: true" in (out / "config.yaml").read_text()
