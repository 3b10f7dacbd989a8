"""Gradient-based parameter importance, paper eq. (2).

    I_i(θ) ≈ | ∂L/∂θ_i · θ_i |                                                   (eq. 2)

the first-order Taylor estimate of eq. (1), |L(D, θ) − L(D, θ with θ_i = 0)|.  L is the
training loss (response tokens only) over a data subset D (§2.2: 1/30 of the training
set).  As in Zhang et al. (2024, "Unveiling linguistic regions"), backward runs on every
batch of the subset without an optimizer step, so the gradients accumulate into the
signed sum Σ_b ∂L_b/∂θ, and only then I = |θ ⊙ Σ_b g_b| (``accumulate="signed_sum"``,
the default).  Molchanov et al. (2019) instead sum per-batch scores Σ_b |θ ⊙ g_b|;
that is offered as ``accumulate="abs_per_batch"``.

Works on plain and peft-LoRA models (the effective weight W + BA is scored; its gradient
equals the base weight's gradient because the LoRA term is additive), under
``torch.distributed`` (gradient sums are all-reduced) and on bf16 models (accumulation
in fp32).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, Iterable, Literal, Optional, Tuple

import torch
from tqdm import tqdm

from espnet_ext.importance.params import select_parameters

logger = logging.getLogger(__name__)

Accumulate = Literal["signed_sum", "abs_per_batch"]


@dataclass
class ImportanceConfig:
    """Options of an importance run (defaults follow the paper)."""

    modality: Literal["text", "speech"] = "text"  # §2.3.2 studies *textual* importance
    accumulate: Accumulate = "signed_sum"  # eq. 2 with summed gradients (Zhang et al.)
    groups: Tuple[str, ...] = ("layers",)  # the LLM's transformer layers (paper)
    subset_fraction: float = 1.0 / 30.0  # §2.2: a 1/30 subset of the training data
    num_utts: Optional[int] = None  # overrides subset_fraction when set
    batch_size: int = 8
    seed: int = 0
    score_dtype: Literal["float32", "float16"] = "float32"  # dtype of the saved scores

    def __post_init__(self) -> None:
        if self.modality not in ("text", "speech"):
            raise ValueError(f"importance modality must be text or speech, got {self.modality!r}")
        if self.accumulate not in ("signed_sum", "abs_per_batch"):
            raise ValueError(f"accumulate must be signed_sum or abs_per_batch, got {self.accumulate!r}")
        if not 0 < self.subset_fraction <= 1:
            raise ValueError(f"subset_fraction must be in (0, 1], got {self.subset_fraction}")
        self.groups = tuple(self.groups)




@dataclass
class ImportanceResult:
    """Scores keyed by canonical parameter name plus run statistics."""

    scores: Dict[str, torch.Tensor]
    n_batches: int
    n_utts: int
    mean_loss: float
    meta: Dict[str, object] = field(default_factory=dict)


def _all_reduce_(t: torch.Tensor) -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)


def score_importance(
    model: torch.nn.Module,
    batches: Iterable[Dict[str, torch.Tensor]],
    config: ImportanceConfig,
    effective_weights: Optional[Dict[str, torch.Tensor]] = None,
) -> ImportanceResult:
    """Eq. (2) over ``batches`` (dicts of model inputs); no optimizer step is taken.

    ``effective_weights`` maps canonical names to the weights to multiply with the
    accumulated gradient when they differ from the parameters (merged LoRA weights).
    Gradients of the selected parameters are accumulated in fp32 whatever the model dtype;
    the model's ``.grad`` fields are left as they were found (``None``).
    """
    params = select_parameters(model, config.groups)
    was_training = model.training
    model.eval()  # no dropout: the estimate is of the deterministic loss
    requires = {n: p.requires_grad for n, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)
    acc = {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in params.items()}
    n_batches = n_utts = 0
    loss_sum = 0.0
    try:
        for batch in tqdm(batches, desc=f"importance ({config.modality})", unit="batch"):
            for p in params.values():
                p.grad = None
            loss, _, _ = model(**batch, modality=config.modality)
            loss.sum().backward()
            for n, p in params.items():
                if p.grad is None:
                    continue
                g = p.grad.float()
                if config.accumulate == "signed_sum":
                    acc[n] += g
                else:  # Molchanov: sum of per-batch |θ ⊙ g_b|; all-reduce per batch
                    _all_reduce_(g)
                    w = (effective_weights or {}).get(n, p).detach().float()
                    acc[n] += (w * g).abs()
            n_batches += 1
            n_utts += len(next(iter(batch.values())))
            loss_sum += float(loss.detach().sum())
    finally:
        for n, p in params.items():
            p.grad = None
            p.requires_grad_(requires[n])
        model.train(was_training)
    if n_batches == 0:
        raise ValueError("importance scoring got no batches")
    scores: Dict[str, torch.Tensor] = {}
    for n, p in params.items():
        if config.accumulate == "signed_sum":
            _all_reduce_(acc[n])  # Σ over ranks of Σ over batches
            w = (effective_weights or {}).get(n, p).detach().float()
            acc[n] = (w * acc[n]).abs()
        scores[n] = acc[n].cpu()
    stats = torch.tensor([n_batches, n_utts, loss_sum], dtype=torch.float64)
    _all_reduce_(stats)
    n_batches, n_utts, loss_sum = int(stats[0]), int(stats[1]), float(stats[2])
    return ImportanceResult(scores, n_batches, n_utts, loss_sum / n_batches)
