"""ESPnet training of the speech LLM on tiny random models: a real Trainer run,
resume after an interruption equal to an unbroken run, and 2-process torchrun (gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from espnet_ext.data.audio import write_wav
from espnet_ext.data.dump import dump_encoder_features
from espnet_ext.data.kaldi_dir import Utterance, write_kaldi_dir
from espnet_ext.models.encoder import WhisperSpeechEncoder
from espnet_ext.models.llm import ChatPrompt
from espnet_ext.inference.decode import decode_dump_dir, load_model

REPO = Path(__file__).resolve().parents[1]
QA = [("What is the capital of France?", "The capital of France is Paris."),
      ("How many days are in a week?", "There are seven days in a week."),
      ("What is two plus three?", "Two plus three is 5."),
      ("Which planet is red?", "Mars is the red planet.")]


@pytest.fixture(scope="module")
def tiny_dumps(tmp_path_factory, tiny_llm_dir, tiny_whisper_dir):
    """dump/{train,dev} built with the real stage-2 code from noise audio."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    tok = AutoTokenizer.from_pretrained(tiny_llm_dir)
    prompt = ChatPrompt.from_tokenizer(tok)
    enc = WhisperSpeechEncoder(str(tiny_whisper_dir))
    for name, n in (("train", 12), ("dev", 4)):
        utts = []
        for i in range(n):
            q, a = QA[i % len(QA)]
            wav = root / "wav" / f"{name}{i}.wav"
            write_wav(wav, (0.05 * rng.standard_normal(8000 + 1600 * i)).astype(np.float32))
            utts.append(Utterance(f"spk-{name}{i:02d}", "spk", str(wav), q, [a]))
        write_kaldi_dir(root / "data" / name, utts)
        dump_encoder_features(root / "data" / name, root / "dump" / name, enc, tok,
                              len(prompt.prefix) + len(prompt.suffix), 5)
    return root


def _config(root: Path, llm: Path, whisper: Path, **over) -> Path:
    conf = {
        "encoder": "whisper", "encoder_conf": {"model_name_or_path": str(whisper)},
        "adaptor": "concat", "adaptor_conf": {"downsample_rate": 5, "hidden_size": 32},
        "llm": "hf", "llm_conf": {"model_name_or_path": str(llm)},
        "model_conf": {"modality": "speech"}, "optim": "adamw", "optim_conf": {"lr": 1e-3},
        "adaptor_lr": 3e-3, "scheduler": "warmupcosinelr",
        "scheduler_conf": {"total_steps": 6, "warmup_ratio": 0.2},
        "max_epoch": 2, "num_iters_per_epoch": 3, "batch_type": "sorted", "batch_size": 4,
        "num_workers": 0, "num_att_plot": 0, "seed": 0, "keep_nbest_models": 1,
        "best_model_criterion": [["valid", "loss", "min"]],
        **over,
    }
    path = root / f"conf_{len(list(root.glob('conf_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def _train_cmd(root: Path, config: Path, out: Path, *extra: str) -> list:
    data = []
    for part in ("enc_feats.scp,enc_feats,kaldi_ark", "text,text,text", "answer,answer,text"):
        data += ["--train_data_path_and_name_and_type", f"{root}/dump/train/{part}",
                 "--valid_data_path_and_name_and_type", f"{root}/dump/dev/{part}"]
    return ["--config", str(config), "--output_dir", str(out), *data,
            "--train_shape_file", f"{root}/dump/train/llm_len.speech",
            "--valid_shape_file", f"{root}/dump/dev/llm_len.speech", *extra]


def _run_train(args: list, nproc: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "espnet_ext.bin.speechllm_train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "espnet_ext.bin.speechllm_train", "--multiprocessing_distributed", "false",
               "--dist_backend", "gloo", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def test_train_then_decode(tiny_dumps, tiny_llm_dir, tiny_whisper_dir, tmp_path):
    conf = _config(tmp_path, tiny_llm_dir, tiny_whisper_dir)
    out = tmp_path / "exp"
    _run_train(_train_cmd(tiny_dumps, conf, out))
    for f in ("config.yaml", "checkpoint.pth", "valid.loss.best.pth", "2epoch.pth"):
        assert (out / f).exists(), f
    assert list((out / "tensorboard").rglob("events.*"))
    # frozen encoder unchanged, adaptor and LLM trained
    state = _weights(out / "valid.loss.best.pth")
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
    conf = _config(tmp_path, tiny_llm_dir, tiny_whisper_dir)
    unbroken, resumed = tmp_path / "unbroken", tmp_path / "resumed"
    _run_train(_train_cmd(tiny_dumps, conf, unbroken))
    # "interrupted" after epoch 1: the same run stopped at max_epoch 1 ...
    _run_train(_train_cmd(tiny_dumps, conf, resumed, "--max_epoch", "1"))
    assert not (resumed / "2epoch.pth").exists()
    # ... then restarted with --resume true continues from checkpoint.pth
    p = _run_train(_train_cmd(tiny_dumps, conf, resumed, "--resume", "true"))
    assert "2/2epoch started" in p.stderr and "1/2epoch started" not in p.stderr
    a, b = _weights(unbroken / "2epoch.pth"), _weights(resumed / "2epoch.pth")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k


def test_torchrun_two_gloo_processes(tiny_dumps, tiny_llm_dir, tiny_whisper_dir, tmp_path):
    conf = _config(tmp_path, tiny_llm_dir, tiny_whisper_dir, max_epoch=1)
    out = tmp_path / "ddp"
    p = _run_train(_train_cmd(tiny_dumps, conf, out), nproc=2)
    assert (out / "1epoch.pth").exists()
    assert ":0/2]" in p.stderr  # ESPnet's log prefix host:rank/world_size
    assert "distributed: true" in (out / "config.yaml").read_text()
