"""Mixed precision for the LLM computation (``model_conf.mixed_precision``).

LLaMA-Omni trains and decodes in bf16.  Here the weights and the optimizer state stay in
fp32 (master weights) and matrix products run in bf16 under ``torch.autocast``; the loss
is computed from fp32 logits.  ESPnet's own ``--use_amp`` is CUDA-only (``torch.cuda.amp``
with a GradScaler), so the model enters autocast itself, on any device.

Modes: ``none`` (fp32 throughout), ``bf16``, and ``auto`` = bf16 where the device has fast
bf16 arithmetic (CUDA with bf16 support; a CPU with AVX512-BF16/AMX, as reported by
oneDNN), otherwise none.  On the 2-core AVX512-BF16 dev CPU a bf16 matrix product is
2.2-2.5× faster than fp32 (benchmarks/bench_prefix_cache.py measures the model).
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Literal, Optional

import torch

MixedPrecision = Literal["none", "bf16", "auto"]
MIXED_PRECISION_MODES = ("none", "bf16", "auto")


def fast_bf16(device: torch.device) -> bool:
    """True when ``device`` multiplies bf16 matrices natively."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def autocast_dtype(mode: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype a mode gives on ``device`` (``None`` = no autocast)."""
    if mode not in MIXED_PRECISION_MODES:
        raise ValueError(f"model_conf.mixed_precision must be one of {MIXED_PRECISION_MODES}, got {mode!r}")
    if mode == "bf16" or (mode == "auto" and fast_bf16(device)):
        return torch.bfloat16
    return None


def maybe_autocast(dtype: Optional[torch.dtype], device: torch.device) -> ContextManager:
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op context."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
