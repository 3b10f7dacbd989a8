"""ESPnet training of the speech LLM on tiny random models: a real Trainer run,
resume after an interruption equal to an unbroken run, and 2-process torchrun (gloo).
The dumps (``tiny_dumps``) come from conftest.py, the run helpers from helpers.py."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import load_state, run_train, train_cmd, train_config

from espnet_ext.inference.decode import decode_dump_dir
from espnet_ext.inference.speechllm import load_model


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


def test_torchrun_two_gloo_processes_equal_one_process(tiny_dumps, tiny_llm_dir, tiny_whisper_dir, tmp_path):
    """2-process torchrun (gloo) ends with the weights of a 1-process run of the same
    config, to float rounding.

    The global batch is the same by construction: ESPnet's ``batch_size`` is global (the
    batch sampler builds the same sorted batches of 4 whatever the world size, then
    ``build_sequence_iter_factory`` gives rank r the samples ``batch[r::world_size]``),
    and ESPnet turns the per-rank mean losses back into the token-weighted mean over the
    whole batch (``loss * weight``, all-reduced weight, ``* world_size`` against DDP's
    gradient averaging), the model's ``weight`` being its number of loss tokens.

    Tolerance 1e-4 absolute on every tensor: the runs differ only in the order of float
    sums (each rank reduces half the batch, gloo adds the halves; measured max 8e-6 after
    3 steps).  Adam's step is ~lr = 1e-3 per weight, so a different global batch, an
    unweighted mean of unequal halves or an unsynchronised rank moves weights by a large
    fraction of 1e-3 (a 1-process run at batch_size 2, the per-rank batch, ends up to
    1.6e-2 away, 43 of the 80 tensors beyond 1e-4); the weights must also have moved by
    more than 1e-3, so the comparison cannot pass vacuously.
    """
    conf = train_config(tmp_path, tiny_llm_dir, tiny_whisper_dir, max_epoch=1)
    one, two = tmp_path / "one", tmp_path / "ddp"
    p1 = run_train(train_cmd(tiny_dumps, conf, one))
    p2 = run_train(train_cmd(tiny_dumps, conf, two), nproc=2)
    assert ":0/2]" in p2.stderr  # ESPnet's log prefix host:rank/world_size
    assert "distributed: true" in (two / "config.yaml").read_text()
    # the same global batches: 3 sorted batches of 4 before sharding, in both runs
    summary = "[train] mini-batch sizes summary: N-batch=3, mean=4.0, min=4, max=4"
    assert summary in p1.stderr and summary in p2.stderr
    a, b = load_state(one / "1epoch.pth"), load_state(two / "1epoch.pth")
    init = load_model(conf).state_dict()
    assert a.keys() == b.keys() == init.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-4, msg=k)
    moved = {k: float((a[k] - init[k]).abs().max()) for k in a}
    assert moved["adaptor.linear1.weight"] > 1e-3 and moved["llm.model.model.layers.0.mlp.up_proj.weight"] > 1e-3
    assert moved["encoder.encoder.conv1.weight"] == 0.0  # frozen in both
