"""Importance-weighted anchoring ("ImpAnchor", our strategy, not from the paper).

The paper's diagnosis (§2.3.2) is that speech fine-tuning moves the parameters that carry
textual competence.  Layer-LR (eq. 3) protects whole layers; LoRA restricts the update's
rank.  ImpAnchor protects individual weights in proportion to their textual importance on
the *pre-trained* model, with an EWC-like quadratic penalty (Kirkpatrick et al., 2017)
whose per-weight stiffness is the Taylor importance of eq. (2) instead of the Fisher::

    loss = CE + μ/2 · Σ_i ŵ_i (θ_i − θ_i^base)²,        ŵ_i = I_i / mean_j(I_j)

* **Why the mean, not the max.**  With ŵ = I / mean(I) the weights average to 1, so
  ŵ ≡ 1 is exactly L2-SP (Li et al., 2018) with coefficient μ, and μ does not depend on
  the report's scale (number of batches summed, loss scale, model size).  Importance is
  heavy-tailed (the top 3 % carry most of it, Table 1): dividing by the max would leave
  almost every weight with ~0 stiffness and tie μ to one outlier.
* **Why a soft penalty, not a frozen top-p % mask.**  A mask needs a threshold and is
  blind to everything below it; the penalty uses the whole score distribution and still
  lets an important weight move when the speech loss pulls hard enough.
* **Memory.**  A copy of the base value and a stiffness per scored parameter: 2 × the
  scored tensors (the LLM's layers by default), e.g. ~+30 GB for Llama-3.1-8B in bf16.
  The penalty is a custom autograd function, so no intermediate is kept for backward.

The penalty is added by ``ESPnetSpeechLLM.forward`` in training mode only and reported
as the stat ``anchor`` (``loss`` stays the cross-entropy, comparable across systems);
evaluation, decoding and importance scoring never see it.  The base copy is taken when
the task builds the model, i.e. from the pretrained weights.

**Under FSDP2 sharding** (:meth:`ImportanceAnchor.from_report_sharded`, built after the
model is sharded, from the same pretrained weights): each rank keeps the base values and
stiffness of its own rows only, as DTensors laid out like the parameter's shard (read from
the report's rows, never the whole file), and the penalty is computed on the local shards
and all-reduced.  Its gradient goes straight into the sharded parameter, not through
FSDP2's averaging reduce-scatter, so the rank's term is scaled by ``W / (w_r · world)``
(``w_r`` this rank's loss tokens, ``W`` all ranks'): ESPnet's distributed loop multiplies
each rank's loss by ``w_r · world / W``, and the two cancel, leaving exactly the gradient
μ ŵ (θ − θ_base) of one process (divided by ``accum_grad`` as the cross-entropy is).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch

from espnet_ext.importance.params import canonical_name, param_group
from espnet_ext.importance.report import load_scores

logger = logging.getLogger(__name__)


@dataclass
class AnchorConfig:
    """``--anchor_conf`` options."""

    importance_report: str  # report dir of the base model (stage 3: exp/importance/base)
    mu: float = 1.0  # penalty strength μ (μ/2 · Σ ŵ Δθ²); a first guess, tune per model

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mu) and self.mu >= 0):
            raise ValueError(f"anchor_conf.mu must be a finite number >= 0, got {self.mu}")


class _WeightedSquaredDistance(torch.autograd.Function):
    """Σ w (p − b)² accumulated in ≥ fp32; backward 2 w (p − b) without saving intermediates."""

    @staticmethod
    def forward(ctx, param: torch.Tensor, base: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(param, base, weight)
        acc = torch.promote_types(param.dtype, torch.float32)  # fp32 (fp64 for fp64 params)
        return (weight * (param - base).square()).sum(dtype=acc)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        param, base, weight = ctx.saved_tensors
        return (grad * 2 * weight * (param - base)).to(param.dtype), None, None


def _weight_dtype(dtype: torch.dtype) -> torch.dtype:
    # ŵ can exceed fp16's range (max/mean of a heavy-tailed score); bf16 has fp32's range
    return torch.bfloat16 if dtype == torch.float16 else dtype


class ImportanceAnchor(torch.nn.Module):
    """μ/2 · Σ ŵ (θ − θ_base)² over named parameters of the model passed to ``forward``.

    Args:
        base: parameter name (as in ``model.named_parameters()``) → base value.
        weights: parameter name → stiffness ŵ (same shape).
        mu: penalty strength μ.

    The tensors are plain attributes, not buffers: they stay out of checkpoints and out of
    DDP's buffer broadcast, and follow their parameter's device/dtype on first use.
    """

    def __init__(self, base: Dict[str, torch.Tensor], weights: Dict[str, torch.Tensor], mu: float) -> None:
        super().__init__()
        if set(base) != set(weights):
            raise ValueError("anchor: base values and weights name different parameters")
        for n in base:
            if base[n].shape != weights[n].shape:
                raise ValueError(f"anchor: {n} has base shape {tuple(base[n].shape)}, "
                                 f"weight shape {tuple(weights[n].shape)}")
        self.mu = float(mu)
        self.names = list(base)
        self._base = [base[n].detach() for n in self.names]
        self._weights = [weights[n].detach() for n in self.names]
        self._shards: Optional[List[torch.Tensor]] = None  # the sharded parameters (sharded anchor)

    @classmethod
    def from_report(cls, model: torch.nn.Module, config: AnchorConfig) -> ImportanceAnchor:
        """Anchor every trainable parameter scored in ``config.importance_report`` to its
        current value (call on the freshly built, pretrained model)."""
        params = {canonical_name(n): (n, p) for n, p in model.named_parameters() if "lora_" not in n}
        scores = load_scores(config.importance_report, {n: p.shape for n, (_, p) in params.items()},
                             conf_key="anchor_conf.importance_report", subset=True)
        adaptor = [n for n in scores if param_group(n) == "adaptor"]
        if adaptor:
            raise ValueError(
                f"importance report {config.importance_report} scores the adaptor ({adaptor[0]}); "
                "it starts random, so anchoring it to its initial weights is meaningless"
            )
        scored = {n: s for n, s in scores.items() if params[n][1].requires_grad}
        if not scored:
            raise ValueError("anchor: no scored parameter is trainable (LoRA freezes the base weights)")
        total = sum(float(s.double().sum()) for s in scored.values())
        count = sum(s.numel() for s in scored.values())
        mean = total / count
        if not (math.isfinite(mean) and mean > 0):
            raise ValueError(f"degenerate importance report {config.importance_report}: "
                             f"mean score {mean} (need > 0)")
        base, weights = {}, {}
        for n, s in scored.items():
            name, p = params[n]
            base[name] = p.detach().clone()
            weights[name] = (s.to(p.device) / mean).to(_weight_dtype(p.dtype))
        logger.info("importance anchor: mu=%g over %d tensors (%d parameters); mean score %.4g",
                    config.mu, len(base), count, mean)
        return cls(base, weights, config.mu)

    @classmethod
    def from_report_sharded(cls, model: torch.nn.Module, config: AnchorConfig) -> ImportanceAnchor:
        """:meth:`from_report` for an FSDP2-sharded ``model`` (call right after sharding the
        freshly built, pretrained model); collective.

        Each rank reads only its rows of every scored tensor from the report
        (``safe_open(...).get_slice``), the mean score comes from all-reduced sums, and the
        base values are this rank's shards of the current weights.
        """
        import torch.distributed as dist
        from safetensors import safe_open

        from espnet_ext.importance.report import SCORES_FILE, STAGE3_HINT, check_shapes
        from espnet_ext.importance.sharded import is_dtensor, like, local, shard_rows

        params = {canonical_name(n): (n, p) for n, p in model.named_parameters() if "lora_" not in n}
        path = Path(config.importance_report) / SCORES_FILE
        if not path.is_file():
            raise FileNotFoundError(f"anchor_conf.importance_report: no importance scores at {path}; {STAGE3_HINT}")
        with safe_open(str(path), framework="pt") as f:
            shapes = {n: f.get_slice(n).get_shape() for n in f.keys()}
            check_shapes(config.importance_report, shapes, {n: p.shape for n, (_, p) in params.items()},
                         subset=True)
            adaptor = [n for n in shapes if param_group(n) == "adaptor"]
            if adaptor:
                raise ValueError(
                    f"importance report {config.importance_report} scores the adaptor ({adaptor[0]}); "
                    "it starts random, so anchoring it to its initial weights is meaningless"
                )
            scored = [n for n in shapes if params[n][1].requires_grad]
            if not scored:
                raise ValueError("anchor: no scored parameter is trainable (LoRA freezes the base weights)")
            plain = [params[n][0] for n in scored if not is_dtensor(params[n][1])]
            if plain:
                raise ValueError(f"anchor: {plain[0]} is not sharded (build the sharded anchor after fully_shard)")
            rows = {}
            for n in scored:
                start, stop = shard_rows(params[n][1])
                rows[n] = f.get_slice(n)[start:stop].float()
        device = local(params[scored[0]][1]).device
        sums = torch.tensor([sum(float(s.double().sum()) for s in rows.values())], dtype=torch.float64,
                            device=device)
        dist.all_reduce(sums)
        count = sum(math.prod(shapes[n]) for n in scored)
        mean = float(sums[0]) / count
        if not (math.isfinite(mean) and mean > 0):
            raise ValueError(f"degenerate importance report {config.importance_report}: "
                             f"mean score {mean} (need > 0)")
        base, weights, shards = {}, {}, []
        for n in scored:
            name, p = params[n]
            base[name] = like(local(p).detach().clone(), p)
            weights[name] = like((rows.pop(n).to(device) / mean).to(_weight_dtype(p.dtype)), p)
            shards.append(p)
        logger.info("importance anchor (sharded over %d ranks): mu=%g over %d tensors (%d parameters); "
                    "mean score %.4g", dist.get_world_size(), config.mu, len(base), count, mean)
        anchor = cls(base, weights, config.mu)
        anchor._shards = shards
        return anchor

    def forward(self, model: torch.nn.Module, n_tokens: Optional[int] = None) -> torch.Tensor:
        """The penalty (fp32 scalar) for the current parameters of ``model``.

        Sharded (:meth:`from_report_sharded`): the value is the whole penalty on every rank,
        and ``n_tokens`` (this rank's loss tokens, required) scales its gradient as the
        module docstring says."""
        if self._shards is not None:
            return self._forward_sharded(n_tokens)
        total = None
        for i, name in enumerate(self.names):
            p = model.get_parameter(name)
            if self._base[i].device != p.device or self._base[i].dtype != p.dtype:
                self._base[i] = self._base[i].to(device=p.device, dtype=p.dtype)
                self._weights[i] = self._weights[i].to(device=p.device, dtype=_weight_dtype(p.dtype))
            term = _WeightedSquaredDistance.apply(p, self._base[i], self._weights[i])
            total = term if total is None else total + term
        return 0.5 * self.mu * total

    def _forward_sharded(self, n_tokens: Optional[int]) -> torch.Tensor:
        import torch.distributed as dist

        if n_tokens is None or n_tokens <= 0:
            raise ValueError("a sharded anchor needs this rank's number of loss tokens (n_tokens > 0)")
        part = None
        for p, b, w in zip(self._shards, self._base, self._weights):
            term = _WeightedSquaredDistance.apply(p.to_local(), b.to_local(), w.to_local())
            part = term if part is None else part + term
        part = 0.5 * self.mu * part  # this rank's rows
        sums = torch.stack([part.detach().double(), torch.tensor(float(n_tokens), dtype=torch.float64,
                                                                  device=part.device)])
        dist.all_reduce(sums)  # [whole penalty, W]
        scale = float(sums[1]) / (n_tokens * dist.get_world_size())
        scaled = part * scale
        return scaled + (sums[0].to(part.dtype) - scaled).detach()  # value: the whole penalty

    def extra_repr(self) -> str:
        return f"mu={self.mu}, tensors={len(self.names)}" + (", sharded" if self._shards is not None else "")
