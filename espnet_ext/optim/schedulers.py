"""Learning-rate schedules that scale every parameter group by the same factor.

LLaMA-Omni stage 1 trains with a cosine schedule and 3 % linear warm-up.  ESPnet's
``CosineAnnealingWarmupRestarts`` writes one absolute ``max_lr`` into every group, which
would erase per-group (layer-wise, eq. 3) learning rates, so :class:`WarmupCosineLR`
multiplies each group's own initial lr by a shared factor instead.  It is registered in
ESPnet's scheduler table as ``warmupcosinelr`` when ``espnet_ext.tasks`` is imported.

:data:`PER_GROUP_SCHEDULERS` lists the schedulers of that table that keep the ratios
between groups; ``SpeechLLMTask.build_optimizers`` refuses the others when the groups'
learning rates differ.

``total_steps: auto`` (the default) is the run's optimizer-step count, known only once
ESPnet has built the training iterator (after the scheduler):
``SpeechLLMTrainer.run`` calls :meth:`WarmupCosineLR.set_total_steps` with
:func:`optimizer_steps` before the first step.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from espnet2.schedulers.abs_scheduler import AbsBatchStepScheduler

AUTO = "auto"

#: ESPnet scheduler names (lower case) whose lr is each group's own initial lr times a
#: shared factor (``CosineAnnealingLR`` / ``…WarmRestarts`` only with ``eta_min`` 0)
PER_GROUP_SCHEDULERS = ("warmupcosinelr", "warmuplr", "noamlr", "steplr", "multisteplr", "exponentiallr",
                        "reducelronplateau", "lambdalr", "warmupsteplr", "tristagelr")
ETA_MIN_SCHEDULERS = ("cosineannealinglr", "cosineannealingwarmrestarts")


def keeps_group_ratios(name: Optional[str], conf: Optional[dict]) -> bool:
    """True when scheduler ``name`` with ``conf`` scales every group's own lr alike."""
    if name is None or name.lower() in PER_GROUP_SCHEDULERS:
        return True
    return name.lower() in ETA_MIN_SCHEDULERS and not (conf or {}).get("eta_min", 0)


def optimizer_steps(max_epoch: int, iters_per_epoch: int, accum_grad: int = 1) -> int:
    """Optimizer (and scheduler) steps of a run: ESPnet's trainer steps after every
    ``accum_grad``-th iteration of an epoch, i.e. ``iters_per_epoch // accum_grad`` times."""
    return max_epoch * (iters_per_epoch // max(accum_grad, 1))


def warmup_cosine_factor(step: int, total_steps: int, warmup_ratio: float, min_lr_ratio: float) -> float:
    """Factor at ``step`` (0-based): linear 0→1 over warm-up, then cosine 1→``min_lr_ratio``."""
    warmup = max(int(round(warmup_ratio * total_steps)), 0)
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineLR(torch.optim.lr_scheduler.LRScheduler, AbsBatchStepScheduler):
    """Per-iteration warm-up + cosine decay applied to every group's own lr.

    A batch-step scheduler only: it derives from ``LRScheduler``, not ``LambdaLR``, because
    ESPnet registers ``LambdaLR`` as an epoch-step scheduler, and its trainer would then
    step a ``LambdaLR`` subclass once more at the end of every epoch (one cosine step per
    epoch too many).

    Args:
        optimizer: the optimizer (any number of parameter groups).
        total_steps: optimizer steps of the whole run; ``auto`` = max_epoch × optimizer
            steps per epoch, set by the trainer from the training iterator (module docstring).
        warmup_ratio: share of ``total_steps`` spent in linear warm-up (LLaMA-Omni: 0.03).
        min_lr_ratio: final lr as a fraction of each group's initial lr.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, total_steps: Union[int, str] = AUTO, warmup_ratio: float = 0.03,
        min_lr_ratio: float = 0.0, last_epoch: int = -1,
    ) -> None:
        if total_steps == AUTO:
            total_steps = None
        elif isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps <= 0:
            raise ValueError(f"scheduler_conf.total_steps must be 'auto' or an integer > 0, got {total_steps!r}")
        self.total_steps, self.warmup_ratio, self.min_lr_ratio = total_steps, warmup_ratio, min_lr_ratio
        super().__init__(optimizer, last_epoch=last_epoch)

    def get_lr(self) -> list:
        return [base * self._factor(self.last_epoch) for base in self.base_lrs]

    def _factor(self, step: int) -> float:
        if self.total_steps is None:  # until the trainer knows the run's length (see step)
            return 1.0
        return warmup_cosine_factor(step, self.total_steps, self.warmup_ratio, self.min_lr_ratio)

    @property
    def is_auto(self) -> bool:
        return self.total_steps is None

    def set_total_steps(self, total_steps: int) -> None:
        """Fix ``total_steps`` (``auto``) and re-apply the factor of the current step."""
        if total_steps <= 0:
            raise ValueError(f"scheduler_conf.total_steps: auto gives {total_steps} optimizer steps "
                             "(max_epoch × iterations per epoch // accum_grad); the run has none")
        self.total_steps = int(total_steps)
        lrs = [base * self._factor(max(self.last_epoch, 0)) for base in self.base_lrs]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = lrs

    def step(self, epoch: Optional[int] = None) -> None:
        if self.total_steps is None and self.last_epoch >= 0:
            raise RuntimeError("scheduler_conf.total_steps is 'auto' but nothing set the run's length: "
                               "train with SpeechLLMTrainer (it counts the training iterator) or give "
                               "an integer")
        super().step(epoch)
