"""Optimizer parameter groups built from ``named_parameters`` (nanoGPT style).

Every trainable parameter lands in exactly one group; frozen parameters in none.  The
base builder separates the adaptor (randomly initialised, often given a larger lr) from
the LLM; the layer-wise builder of eq. (3) (``layer_lr.py``) refines the LLM group per layer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

logger = logging.getLogger(__name__)


@dataclass
class ParamGroup:
    """A named optimizer group."""

    name: str
    params: List[torch.nn.Parameter]
    lr: float

    def as_dict(self) -> Dict[str, object]:
        return {"params": self.params, "lr": self.lr, "name": self.name}


def adaptor_llm_groups(
    model: torch.nn.Module, lr: float, adaptor_lr: Optional[float] = None
) -> List[ParamGroup]:
    """Two groups: ``adaptor.*`` at ``adaptor_lr`` (default ``lr``), everything else at ``lr``."""
    adaptor, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (adaptor if name.startswith("adaptor.") else rest).append(p)
    groups = [ParamGroup("adaptor", adaptor, adaptor_lr if adaptor_lr is not None else lr),
              ParamGroup("llm", rest, lr)]
    return [g for g in groups if g.params]


def log_groups(groups: List[ParamGroup], optim_index: int = 0) -> None:
    """Log size and learning rate of every group, under the key ESPnet's reporter gives
    its lr (``optim<k>_lr<j>`` in the training log and tensorboard)."""
    for j, g in enumerate(groups):
        n = sum(p.numel() for p in g.params)
        logger.info("optimizer group optim%d_lr%-3d %-16s %4d tensors %12d params  lr=%.4g",
                    optim_index, j, g.name, len(g.params), n, g.lr)
