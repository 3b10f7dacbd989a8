"""Which device and process-group backend a job uses, under ``torchrun`` or alone.

Every job (importance scoring, Table 1, decoding, the cascade, the analysis, the warm-up)
takes ``--device cpu|cuda|cuda:N``.  Under ``torchrun`` a bare ``cuda`` means *this rank's*
GPU, ``cuda:$LOCAL_RANK``: without that every rank would pick GPU 0.  The backend follows
the device: NCCL for CUDA tensors, gloo for CPU tensors (NCCL cannot reduce CPU tensors).
"""

from __future__ import annotations

import os

import torch


def local_rank() -> int:
    """``$LOCAL_RANK`` set by ``torchrun`` (0 when the job runs alone)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    """``$WORLD_SIZE`` set by ``torchrun`` (1 when the job runs alone)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def job_device(requested: str) -> torch.device:
    """The device this process computes on.

    Args:
        requested: ``cpu``, ``cuda`` (this rank's GPU: ``cuda:$LOCAL_RANK``) or ``cuda:N``
            (that GPU, for a job that runs alone; under torchrun with more than one process an
            explicit index is refused, since every rank would share it).

    Raises:
        ValueError: an unknown device string, an explicit GPU index under torchrun, or a CUDA
            device on a machine without one (the message names ``--device``).
    """
    try:
        device = torch.device(requested)
    except RuntimeError as e:
        raise ValueError(f"--device {requested!r}: not a torch device ({e})") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ValueError(f"--device {requested!r}: expected cpu, cuda or cuda:N")
    if world_size() > 1:
        if device.index is not None:
            raise ValueError(
                f"--device {requested!r} under torchrun ({world_size()} processes): give --device cuda, "
                "and each rank takes cuda:$LOCAL_RANK")
        device = torch.device("cuda", local_rank())
    elif device.index is None:
        device = torch.device("cuda", 0)
    if not torch.cuda.is_available():
        raise ValueError(f"--device {requested!r}: CUDA is not available on this machine")
    if device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {requested!r}: this machine has {torch.cuda.device_count()} GPU(s), "
                         f"no cuda:{device.index}")
    torch.cuda.set_device(device)
    return device


def backend_for(device: torch.device) -> str:
    """The ``torch.distributed`` backend for collectives on ``device``'s tensors."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(device: torch.device) -> bool:
    """Join the ``torchrun`` process group with the device's backend; ``False`` when alone.

    Idempotent: an already initialised group is kept.
    """
    if world_size() <= 1:
        return False
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend_for(device))
    return True
