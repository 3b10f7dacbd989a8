"""Gradient-based parameter importance, paper eq. (2).

    I_i(θ) ≈ | ∂L/∂θ_i · θ_i |                                                   (eq. 2)

the first-order Taylor estimate of eq. (1), |L(D, θ) − L(D, θ with θ_i = 0)|.  L is the
training loss (response tokens only) over a data subset D (§2.2: 1/30 of the training
set).  As in Zhang et al. (2024, "Unveiling linguistic regions"), backward runs on every
batch of the subset without an optimizer step, so the gradients accumulate into the
signed sum Σ_b ∂L_b/∂θ, and only then I = |θ ⊙ Σ_b g_b| (``accumulate="signed_sum"``,
the default).  Molchanov et al. (2019) instead sum per-batch scores Σ_b |θ ⊙ g_b|;
that is offered as ``accumulate="abs_per_batch"``.

Works on plain and peft-LoRA models (the effective weight W + scaling·BA is scored; its
gradient equals the base weight's gradient because the LoRA term is additive), under
``torch.distributed`` (each rank scores its share of the batches; the sums are
all-reduced, so the scores equal a single process's on the same batches; every tensor a
collective sees lives on the scored parameters' device, as NCCL requires) and on bf16
models (accumulation in fp32).  Cost: one forward + backward per batch (the backward
stops at the scored parameters); no optimizer state.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, Literal, Optional, Tuple

import torch
from tqdm import tqdm

from espnet_ext.importance.layout import DecoderLayout
from espnet_ext.importance.params import effective_weight, lora_layers, select_parameters, unwrap_model

logger = logging.getLogger(__name__)

Accumulate = Literal["signed_sum", "abs_per_batch"]
# dtypes a report may store its scores in.  float16 is refused: its smallest subnormal is
# 6e-8, and eq. 2 scores of a large model lie far below it (the tiny test model's median is
# ~6e-5, its bottom 3 % < 1e-6), so the bottom-p % set of Table 1 would be flushed to ties
# at zero.  bfloat16 has float32's range at float16's size (8 significant bits).
SCORE_DTYPES = ("float32", "bfloat16")


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
    score_dtype: Literal["float32", "bfloat16"] = "float32"  # dtype of the saved scores

    def __post_init__(self) -> None:
        if self.modality not in ("text", "speech"):
            raise ValueError(f"importance modality must be text or speech, got {self.modality!r}")
        if self.accumulate not in ("signed_sum", "abs_per_batch"):
            raise ValueError(f"accumulate must be signed_sum or abs_per_batch, got {self.accumulate!r}")
        if not 0 < self.subset_fraction <= 1:
            raise ValueError(f"subset_fraction must be in (0, 1], got {self.subset_fraction}")
        if self.num_utts is not None and self.num_utts < 1:
            raise ValueError(f"num_utts must be >= 1 or null, got {self.num_utts}")
        check_score_dtype(self.score_dtype)
        self.groups = tuple(self.groups)


def check_score_dtype(dtype: str) -> None:
    """Raise ``ValueError`` unless ``dtype`` is one of :data:`SCORE_DTYPES` (the message names
    the ``score_dtype`` option; float16 gets the reason it is refused)."""
    if dtype == "float16":
        raise ValueError("score_dtype: float16 flushes importance scores below 6e-8 to zero (its "
                         "smallest subnormal), which ties the bottom-p % set of Table 1 at zero; use "
                         "bfloat16 (same size, float32's range) or float32")
    if dtype not in SCORE_DTYPES:
        raise ValueError(f"score_dtype must be one of {list(SCORE_DTYPES)}, got {dtype!r}")


@dataclass
class ImportanceResult:
    """Scores keyed by canonical parameter name plus run statistics."""

    scores: Dict[str, torch.Tensor]
    n_batches: int
    n_utts: int
    mean_loss: float
    meta: Dict[str, object] = field(default_factory=dict)


def _all_reduce_(t: torch.Tensor) -> None:
    """Sum ``t`` over the ranks in place (no-op outside ``torch.distributed``).  The caller
    puts ``t`` on the scored parameters' device: NCCL reduces device tensors only."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)


@contextlib.contextmanager
def training_modes_kept(model: torch.nn.Module) -> Iterator[None]:
    """Restore every submodule's own ``training`` flag on exit (a frozen encoder may sit
    in eval mode inside a training model)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def score_importance(
    model: torch.nn.Module,
    batches: Iterable[Dict[str, torch.Tensor]],
    config: ImportanceConfig,
    effective_weights: Optional[Dict[str, torch.Tensor]] = None,
    layout: Optional[DecoderLayout] = None,
) -> ImportanceResult:
    """Eq. (2) over ``batches`` (dicts of model inputs); no optimizer step is taken.

    ``effective_weights`` maps canonical names to the weights to multiply with the
    accumulated gradient when they differ from the parameters; by default peft LoRA
    layers are detected and W + scaling · B @ A is used (the base weight's gradient is
    the effective weight's gradient: the LoRA term is additive).  ``layout`` (a
    :class:`~espnet_ext.importance.layout.DecoderLayout`) tells which parameters form the
    groups of a decoder whose names are not the Llama pattern.

    Side-effect free, so it can run in the middle of training (the trainer's importance
    probe): ``backward(inputs=...)`` touches only the scored parameters, whose existing
    ``.grad`` tensors are set aside (no copy) and put back afterwards; each batch's
    gradient is added to an fp32 accumulator by a post-accumulate hook and freed at once.
    Besides the forward/backward activations, peak memory is therefore the model, one fp32
    accumulator of the scored parameters and one layer's transient gradients, whatever the
    model dtype (bf16 models accumulate in fp32).  Every
    submodule's train/eval flag and ``requires_grad`` are restored; the model runs in
    eval mode (no dropout) while scoring.
    """
    model = unwrap_model(model)
    params = select_parameters(model, config.groups, layout)
    lora = {} if effective_weights is not None else lora_layers(model)

    def weight(n: str) -> torch.Tensor:
        """θ of eq. (2): the effective weight (fp32 under LoRA), else the parameter itself."""
        if effective_weights is not None and n in effective_weights:
            return effective_weights[n].detach().to(params[n].device)
        return effective_weight(params[n], lora[n]) if n in lora else params[n].detach()

    acc = {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in params.items()}
    signed = config.accumulate == "signed_sum"

    def hook_for(n: str):
        def hook(p: torch.Tensor) -> None:
            g, p.grad = p.grad, None
            if signed:
                acc[n].add_(g)  # fp32 += (b)f16/fp32 gradient
            else:  # Molchanov: Σ_b |θ ⊙ g_b|
                acc[n].add_((weight(n).float() * g.float()).abs_())
        return hook

    requires = {n: p.requires_grad for n, p in params.items()}
    stashed = {n: p.grad for n, p in params.items()}
    handles = []
    n_batches = n_utts = 0
    loss_sum = 0.0
    with training_modes_kept(model):
        model.eval()  # no dropout: the estimate is of the deterministic loss
        try:
            for n, p in params.items():
                p.grad = None
                p.requires_grad_(True)
                handles.append(p.register_post_accumulate_grad_hook(hook_for(n)))
            with torch.enable_grad():
                for batch in tqdm(batches, desc=f"importance ({config.modality})", unit="batch",
                                  disable=not logger.isEnabledFor(logging.INFO)):
                    loss, _, _ = model(**batch, modality=config.modality)
                    loss.sum().backward(inputs=list(params.values()))
                    n_batches += 1
                    n_utts += len(next(iter(batch.values())))
                    loss_sum += float(loss.detach().sum())
        finally:
            for h in handles:
                h.remove()
            for n, p in params.items():
                p.requires_grad_(requires[n])
                p.grad = stashed[n]
    # on the parameters' device (NCCL cannot reduce a CPU tensor; float64 is fine on CUDA)
    device = next(iter(params.values())).device if params else torch.device("cpu")
    stats = torch.tensor([n_batches, n_utts, loss_sum], dtype=torch.float64, device=device)
    _all_reduce_(stats)
    n_batches, n_utts, loss_sum = int(stats[0]), int(stats[1]), float(stats[2])
    if n_batches == 0:
        raise ValueError("importance scoring got no batches")
    scores: Dict[str, torch.Tensor] = {}
    for n in params:
        _all_reduce_(acc[n])  # Σ over ranks (of Σ_b g_b, or of Σ_b |θ ⊙ g_b|)
        if signed:
            acc[n].mul_(weight(n)).abs_()  # in place, in fp32 (a bf16 θ is promoted on the fly)
        scores[n] = acc.pop(n).cpu()
    return ImportanceResult(scores, n_batches, n_utts, loss_sum / n_batches)
