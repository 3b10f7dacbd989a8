"""Learning-rate schedules that scale every parameter group by the same factor.

LLaMA-Omni stage 1 trains with a cosine schedule and 3 % linear warm-up.  ESPnet's
``CosineAnnealingWarmupRestarts`` writes one absolute ``max_lr`` into every group, which
would erase per-group (layer-wise, eq. 3) learning rates, so :class:`WarmupCosineLR`
multiplies each group's own initial lr by a shared factor instead.  It is registered in
ESPnet's scheduler table as ``warmupcosinelr`` when ``espnet_ext.tasks`` is imported.
"""

from __future__ import annotations

import math

import torch
from espnet2.schedulers.abs_scheduler import AbsBatchStepScheduler


def warmup_cosine_factor(step: int, total_steps: int, warmup_ratio: float, min_lr_ratio: float) -> float:
    """Factor at ``step`` (0-based): linear 0→1 over warm-up, then cosine 1→``min_lr_ratio``."""
    warmup = max(int(round(warmup_ratio * total_steps)), 0)
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineLR(torch.optim.lr_scheduler.LambdaLR, AbsBatchStepScheduler):
    """Per-iteration warm-up + cosine decay applied to every group's own lr.

    Args:
        optimizer: the optimizer (any number of parameter groups).
        total_steps: optimizer steps of the whole run (epochs × iterations per epoch).
        warmup_ratio: share of ``total_steps`` spent in linear warm-up (LLaMA-Omni: 0.03).
        min_lr_ratio: final lr as a fraction of each group's initial lr.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.03,
        min_lr_ratio: float = 0.0, last_epoch: int = -1,
    ) -> None:
        if total_steps <= 0:
            raise ValueError(f"scheduler_conf.total_steps must be > 0, got {total_steps}")
        self.total_steps, self.warmup_ratio, self.min_lr_ratio = total_steps, warmup_ratio, min_lr_ratio
        super().__init__(
            optimizer,
            lambda step: warmup_cosine_factor(step, total_steps, warmup_ratio, min_lr_ratio),
            last_epoch=last_epoch,
        )
