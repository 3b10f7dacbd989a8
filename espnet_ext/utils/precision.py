"""Mixed precision for the LLM computation (``model_conf.mixed_precision``).

LLaMA-Omni trains and decodes in bf16.  Here the weights and the optimizer state stay in
fp32 (master weights) and matrix products run in bf16 under ``torch.autocast``; the loss
is computed from fp32 logits.  ESPnet's own ``--use_amp`` is CUDA-only (``torch.cuda.amp``
with a GradScaler), so the model enters autocast itself, on any device.

Modes: ``none`` (fp32 throughout), ``bf16``, and ``auto`` = bf16 where the device has fast
bf16 arithmetic (CUDA with bf16 support; a CPU with AVX512-BF16/AMX, as reported by
oneDNN), otherwise none.  On the 2-core AVX512-BF16 dev CPU a bf16 matrix product is
2.2-2.5× faster than fp32 (benchmarks/bench_prefix_cache.py measures the model).

Training needs the fp32 master weights: an Adam step moves a weight by about lr (2e-5 in
LLaMA-Omni stage 1), below half a bf16 unit in the last place (3.1e-5) for every
|w| >= 2^-7 ≈ 0.008, so most bf16 weights would not move at all.  :func:`check_trainable_fp32`
refuses such a setup before the optimizer is built; decoding and importance scoring may
load bf16 weights (``llm_conf.torch_dtype``).
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Literal, Optional

import torch

#: dtypes whose rounding swallows small optimizer updates
LOW_PRECISION_DTYPES = (torch.bfloat16, torch.float16)

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


def check_trainable_fp32(model: torch.nn.Module) -> None:
    """Raise ``ValueError`` when a trainable parameter is stored in bf16/fp16.

    The error names ``llm_conf.torch_dtype`` (the LLM's load dtype) and ESPnet's
    ``--train_dtype`` (the dtype the whole model is cast to before training).
    """
    low = [(name, p.dtype) for name, p in model.named_parameters()
           if p.requires_grad and p.dtype in LOW_PRECISION_DTYPES]
    if low:
        names = ", ".join(f"{n} ({str(d).replace('torch.', '')})" for n, d in low[:3])
        raise ValueError(
            f"{len(low)} trainable parameter(s) are stored in low precision, e.g. {names}: the "
            "optimizer would round most updates away. Train with fp32 master weights: "
            "llm_conf.torch_dtype: float32 and --train_dtype float32, with "
            "model_conf.mixed_precision: bf16 (or auto) for bf16 compute")
