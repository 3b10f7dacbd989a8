"""ESPnet training of the speech LLM on tiny random models: a real Trainer run,
resume after an interruption equal to an unbroken run, and 2-process torchrun (gloo).
The dumps (``tiny_dumps``) come from conftest.py, the run helpers from helpers.py."""

from __future__ import annotations

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
    conf = train_config(tmp_path, tiny_llm_dir, tiny_whisper_dir)
    unbroken, resumed = tmp_path / "unbroken", tmp_path / "resumed"
    run_train(train_cmd(tiny_dumps, conf, unbroken))
    # "interrupted" after epoch 1: the same run stopped at max_epoch 1 ...
    run_train(train_cmd(tiny_dumps, conf, resumed, "--max_epoch", "1"))
    assert not (resumed / "2epoch.pth").exists()
    # ... then restarted with --resume true continues from checkpoint.pth
    p = run_train(train_cmd(tiny_dumps, conf, resumed, "--resume", "true"))
    assert "2/2epoch started" in p.stderr and "1/2epoch started" not in p.stderr
    a, b = load_state(unbroken / "2epoch.pth"), load_state(resumed / "2epoch.pth")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k


def test_torchrun_two_gloo_processes(tiny_dumps, tiny_llm_dir, tiny_whisper_dir, tmp_path):
    conf = train_config(tmp_path, tiny_llm_dir, tiny_whisper_dir, max_epoch=1)
    out = tmp_path / "ddp"
    p = run_train(train_cmd(tiny_dumps, conf, out), nproc=2)
    assert (out / "1epoch.pth").exists()
    assert ":0/2]" in p.stderr  # ESPnet's log prefix host:rank/world_size
    assert "distributed: true" in (out / "config.yaml").read_text()
