"""Which parameters are scored, and how their names map to layers and module types.

The paper scores the LLM's transformer layers (parameter names containing ``layers.<i>.``);
embeddings and the LM head are excluded by default, the adaptor is optional.  Names are
the ESPnet model's (``llm.model.model.layers.3.self_attn.q_proj.weight``); a peft-wrapped
LLM adds ``base_model.model.`` and ``.base_layer`` — :func:`canonical_name` removes both
so reports of plain and LoRA models share keys.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, Optional, Tuple

import torch

PARAM_GROUPS = ("layers", "adaptor", "embeddings", "lm_head")
MODULE_TYPES = ("q", "k", "v", "o", "gate", "up", "down")
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_TYPE_RE = re.compile(r"\.(q|k|v|o|gate|up|down)_proj\.")


def canonical_name(name: str) -> str:
    """Strip peft wrappers: ``base_model.model.`` and ``.base_layer``."""
    return name.replace("base_model.model.", "").replace(".base_layer.", ".")


def layer_index(name: str) -> Optional[int]:
    """Transformer layer of a parameter name, or ``None``."""
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def module_type(name: str) -> Optional[str]:
    """``q k v o gate up down`` for the Llama projections, else ``None`` (norms, …)."""
    m = _TYPE_RE.search(name)
    return m.group(1) if m else None


def param_group(name: str) -> Optional[str]:
    """The scoring group a (canonical) parameter name belongs to."""
    if name.startswith("adaptor."):
        return "adaptor"
    if not name.startswith("llm."):
        return None
    if layer_index(name) is not None:
        return "layers"
    if "embed_tokens" in name:
        return "embeddings"
    if "lm_head" in name:
        return "lm_head"
    return None


def select_parameters(
    model: torch.nn.Module, groups: Iterable[str] = ("layers",)
) -> Dict[str, torch.nn.Parameter]:
    """Parameters of ``model`` in ``groups``, keyed by canonical name (LoRA factors excluded).

    Tied weights (embeddings = LM head) are returned once.
    """
    groups = tuple(groups)
    bad = [g for g in groups if g not in PARAM_GROUPS]
    if bad:
        raise ValueError(f"unknown parameter group(s) {bad}; choose from {PARAM_GROUPS}")
    out: Dict[str, torch.nn.Parameter] = {}
    seen = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if "lora_" in name or id(p) in seen:
            continue
        canon = canonical_name(name)
        if param_group(canon) in groups:
            out[canon] = p
            seen.add(id(p))
    if not out:
        raise ValueError(f"no parameters in groups {groups} (is this an ESPnetSpeechLLM?)")
    return out


def num_layers(names: Iterable[str]) -> int:
    """Number of transformer layers referenced by ``names``."""
    idx = [layer_index(n) for n in names]
    idx = [i for i in idx if i is not None]
    return max(idx) + 1 if idx else 0


def split_name(name: str) -> Tuple[Optional[int], Optional[str]]:
    """``(layer, module type)`` of a parameter name."""
    return layer_index(name), module_type(name)
