"""Device selection of every job: under torchrun a bare ``cuda`` is this rank's GPU."""

from __future__ import annotations

import pytest
import torch

from espnet_ext.utils.devices import backend_for, job_device


@pytest.fixture
def four_gpus(monkeypatch):
    """A machine with four CUDA devices, as far as device selection can tell."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(d))
    return chosen


def test_cpu_stays_cpu_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert job_device("cpu") == torch.device("cpu")
    assert backend_for(job_device("cpu")) == "gloo"


@pytest.mark.parametrize("rank", [0, 1, 3])
def test_bare_cuda_is_the_local_rank_gpu(monkeypatch, four_gpus, rank):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    device = job_device("cuda")
    assert device == torch.device("cuda", rank)
    assert four_gpus == [device]  # made current, so library calls that say "cuda" agree
    assert backend_for(device) == "nccl"


def test_alone_cuda_is_gpu0_and_an_index_is_kept(monkeypatch, four_gpus):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert job_device("cuda") == torch.device("cuda", 0)
    assert job_device("cuda:2") == torch.device("cuda", 2)


def test_explicit_index_under_torchrun_is_refused(monkeypatch, four_gpus):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ValueError, match="--device 'cuda:1' under torchrun"):
        job_device("cuda:1")


def test_missing_gpu_and_bad_strings_name_the_option(monkeypatch, four_gpus):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="no cuda:7"):
        job_device("cuda:7")
    with pytest.raises(ValueError, match="--device 'gpu'"):
        job_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        job_device("cuda")
