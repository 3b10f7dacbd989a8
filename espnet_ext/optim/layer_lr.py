"""Importance-driven layer-wise learning rates, paper eq. (3) (§3.1.1).

Layers that matter most for text (importance measured on the *pre-trained* model, recipe
stage 3) are updated more gently::

    lr(i) = lr · (1 − λ · (I_layer(i) − min_j I_layer(j)) / (max_j I_layer(j) − min_j I_layer(j)))   (3)

``I_layer(i)`` is the summed importance of every parameter of transformer layer ``i``
(``layer_sums`` of the report's ``summary.json``); λ = 0.4 in the paper.  The least
important layer keeps ``lr``, the most important one gets ``(1 − λ) · lr``.

Parameters outside the transformer layers keep the base rate unless their group's rate is
set: the adaptor keeps ``--adaptor_lr``, and ``embeddings_lr`` / ``lm_head_lr`` /
``other_lr`` (final norm, anything else in the LLM) override theirs.  Every trainable
parameter lands in exactly one named group (one per layer), so ESPnet's reporter line
``optim0_lr<j>`` is group ``j`` of :func:`layer_lr_groups` (the start of training logs
the mapping).  ESPnet's schedulers scale each group's own lr (``warmupcosinelr``,
``warmuplr``), so the ratios of eq. (3) hold throughout training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from espnet_ext.importance.params import canonical_name, layer_index, num_layers, param_group
from espnet_ext.importance.report import check_shapes, load_summary
from espnet_ext.optim.groups import ParamGroup


@dataclass
class LayerLRConfig:
    """``--layer_lr_conf`` options (eq. 3)."""

    importance_report: str  # report dir of the base model (stage 3: exp/importance/base)
    lambda_: float = 0.4  # λ of eq. (3); 0 = full fine-tuning, 1 = most important layer frozen
    embeddings_lr: Optional[float] = None  # input embeddings (tied LM head included); None = lr
    lm_head_lr: Optional[float] = None  # untied LM head; None = lr
    other_lr: Optional[float] = None  # final norm and other LLM parameters; None = lr

    def __post_init__(self) -> None:
        if not 0.0 <= self.lambda_ <= 1.0:
            raise ValueError(f"layer_lr_conf.lambda_ must be in [0, 1] (eq. 3), got {self.lambda_}")
        for key in ("embeddings_lr", "lm_head_lr", "other_lr"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ValueError(f"layer_lr_conf.{key} must be >= 0, got {value}")


def layer_lr_scales(layer_sums: Sequence[float], lambda_: float) -> List[float]:
    """The factor of eq. (3) for every layer (1 for the least important layer)."""
    values = [float(v) for v in layer_sums]
    if not values:
        raise ValueError("the importance report has no layer sums")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"the importance report has non-finite layer sums: {values}")
    lo, hi = min(values), max(values)
    if hi == lo:
        raise ValueError(
            f"degenerate importance report: every layer sums to {hi} (max = min), so eq. (3) "
            "is undefined; was the report scored on an empty or constant-loss subset?"
        )
    return [1.0 - lambda_ * (v - lo) / (hi - lo) for v in values]


def _model_layer_shapes(model: torch.nn.Module) -> Dict[str, List[int]]:
    """Canonical names and shapes of the LLM's transformer-layer weights (no LoRA factors)."""
    return {
        canonical_name(n): list(p.shape) for n, p in model.named_parameters()
        if "lora_" not in n and param_group(canonical_name(n)) == "layers"
    }


def load_layer_importance(report_dir: str | Path, model: torch.nn.Module) -> List[float]:
    """``I_layer`` from ``report_dir/summary.json``, checked against ``model``.

    The report must have one sum per transformer layer of the model and, where it lists
    the scored shapes, score exactly the model's layer parameters.
    """
    summary = load_summary(report_dir, conf_key="layer_lr_conf.importance_report")
    sums = summary.get("layer_sums")
    if not isinstance(sums, list):
        raise ValueError(f"importance report {report_dir}: summary.json has no layer_sums list")
    shapes = _model_layer_shapes(model)
    n_model = num_layers(shapes)
    if len(sums) != n_model:
        raise ValueError(
            f"importance report {report_dir} has {len(sums)} layer sums but the model has "
            f"{n_model} transformer layers (a report of another LLM?)"
        )
    reported = {n: s for n, s in summary.get("shapes", {}).items() if layer_index(n) is not None}
    if reported:
        check_shapes(report_dir, reported, shapes, what="the model's layer parameters")
    return [float(v) for v in sums]


def layer_lr_groups(
    model: torch.nn.Module, lr: float, adaptor_lr: Optional[float], config: LayerLRConfig,
    layer_sums: Optional[Sequence[float]] = None,
) -> List[ParamGroup]:
    """Named groups: ``adaptor``, ``llm.embeddings``, ``llm.layers.<i>`` (eq. 3),
    ``llm.other``, ``llm.lm_head`` and ``rest`` (trainable parameters outside adaptor and
    LLM, e.g. an unfrozen encoder); frozen parameters are left out, empty groups dropped.

    ``layer_sums`` defaults to the report's (:func:`load_layer_importance`).
    """
    if layer_sums is None:
        layer_sums = load_layer_importance(config.importance_report, model)
    scales = layer_lr_scales(layer_sums, config.lambda_)
    base = {
        "adaptor": adaptor_lr if adaptor_lr is not None else lr,
        "llm.embeddings": config.embeddings_lr if config.embeddings_lr is not None else lr,
        "llm.other": config.other_lr if config.other_lr is not None else lr,
        "llm.lm_head": config.lm_head_lr if config.lm_head_lr is not None else lr,
        "rest": lr,
    }
    width = len(str(len(scales) - 1))
    layer_names = [f"llm.layers.{i:0{width}d}" for i in range(len(scales))]
    order = ["adaptor", "llm.embeddings", *layer_names, "llm.other", "llm.lm_head", "rest"]
    rates = {**base, **{name: lr * s for name, s in zip(layer_names, scales)}}
    members: Dict[str, List[torch.nn.Parameter]] = {name: [] for name in order}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        canon = canonical_name(name)
        kind = param_group(canon)
        if kind == "layers":
            i = layer_index(canon)
            if i >= len(scales):
                raise ValueError(f"{name}: layer {i} has no importance sum ({len(scales)} layers)")
            members[layer_names[i]].append(p)
        elif kind == "adaptor":
            members["adaptor"].append(p)
        elif kind in ("embeddings", "lm_head"):
            members[f"llm.{kind}"].append(p)
        elif canon.startswith("llm."):
            members["llm.other"].append(p)
        else:
            members["rest"].append(p)
    return [ParamGroup(name, members[name], rates[name]) for name in order if members[name]]
