"""``benchmarks/gpu_check.py`` with ``--tiny`` on the CPU, in-process (``main``): the whole
check runs (the code path of a GPU run, bf16 autocast included) and writes its figures; an injected
precision or update error makes it fail loudly; the peak table picks the right card."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
MODES = ("full", "layer_lr", "lora")


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.usefixtures("one_thread")
def test_tiny_check_on_cpu_writes_its_figures(tmp_path, capsys):
    out = tmp_path / "figures.json"
    status = _gpu_check().main(["--tiny", "--device", "cpu", "--steps", "3", "--importance_batches", "1",
                                "--out", str(out), "--work_dir", str(tmp_path)])
    stdout, stderr = capsys.readouterr()
    assert status == 0, stderr[-3000:]
    fig = json.loads(out.read_text())
    assert json.loads(stdout[stdout.index("\n{") + 1:]) == fig  # the figures are printed too
    assert "\nlora " in stdout and "\nOK\n" in stdout  # after the table
    assert fig["ok"] and fig["arch"] == "tiny" and fig["mixed_precision"] == "bf16" and "error" not in fig
    assert fig["bf16_peak_tflops"] is None  # a CPU has no entry: no MFU, no peak memory
    for mode in MODES:
        t = fig["train"][mode]
        assert t["steps"] == 3 and t["timed_steps"] == 1, mode
        assert t["tokens_per_s"] > 0 and t["tokens_per_step"] > 0 and t["flops_per_step"] > 0, mode
        assert math.isfinite(t["loss_first"]) and math.isfinite(t["loss_last"]), mode
        assert t["mfu"] is None and t["mfu_6nt"] is None and t["peak_mem_gib"] is None, mode
    train = fig["train"]
    assert train["layer_lr"]["optimizer_groups"] >= 2 + 2  # adaptor, embeddings, one per layer (2), ...
    assert train["lora"]["params_trainable"] < train["full"]["params_trainable"]
    assert train["lora"]["flops_per_step"] < train["full"]["flops_per_step"]  # no frozen weight grads
    assert fig["importance"]["batches"] == 1 and fig["importance"]["scored_params"] > 0
    assert fig["encoder"]["utts"] == 4 * 4 and fig["encoder"]["frames"] > 0  # (steps + 1) batches of 4
    for modality in ("speech", "text"):
        assert fig["decode"][modality]["utts"] == 4 and fig["decode"][modality]["new_tokens"] > 0
    assert "[gpu_check] lora:" in stdout
    assert not list(tmp_path.glob("gpu_check_*"))  # the random model folders are removed


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("fault", ["no_autocast", "no_update"])
def test_tiny_check_fails_loudly(tmp_path, monkeypatch, capsys, fault):
    """Autocast switched off in the model, or an optimizer that does not update: exit
    status 1, the reason on stderr and in the JSON."""
    gpu_check = _gpu_check()
    if fault == "no_autocast":
        import espnet_ext.models.speech_llm as speech_llm

        monkeypatch.setattr(speech_llm, "maybe_autocast", lambda dtype, device: contextlib.nullcontext())
        expected = "matmuls not in bf16 under autocast"
    else:
        monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, closure=None: None)
        expected = "trainable tensors unchanged by 2 steps"
    out = tmp_path / "figures.json"
    status = gpu_check.main(["--tiny", "--device", "cpu", "--steps", "2", "--importance_batches", "1",
                             "--out", str(out), "--work_dir", str(tmp_path)])
    assert status == 1
    fig = json.loads(out.read_text())
    assert not fig["ok"] and expected in fig["error"] and "CheckFailed" in fig["error"]
    err = capsys.readouterr().err
    assert "GPU CHECK FAILED: CheckFailed: full: " in err and expected in err


def test_bf16_peak_table(monkeypatch):
    gpu_check = _gpu_check()
    cuda = torch.device("cuda")
    for name, peak in [("NVIDIA H200", 989.0), ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
                       ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L40S", 362.0), ("NVIDIA L4", 121.0),
                       ("Tesla T4", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        assert gpu_check.peak_tflops(cuda) == peak, name
    assert gpu_check.peak_tflops(torch.device("cpu")) is None
