"""Which parameters are scored, and how their names map to layers and module types.

The paper scores the LLM's transformer layers (parameter names containing ``layers.<i>.``);
embeddings and the LM head are excluded by default, the adaptor is optional.  Names are
the ESPnet model's (``llm.model.model.layers.3.self_attn.q_proj.weight``); a peft-wrapped
LLM adds ``base_model.model.`` and ``.base_layer`` — :func:`canonical_name` removes both
so reports of plain and LoRA models share keys.  :func:`effective_weights` gives the
weights the forward pass really uses (W + scaling · B @ A under LoRA), in fp32.

Other decoder families keep their layers and projections under other names; every
function here that reads names takes an optional ``layout``
(:class:`espnet_ext.importance.layout.DecoderLayout`, found from the model object) and
then asks it instead of the fixed Llama pattern.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Dict, Iterable, Iterator, Mapping, Optional, Tuple

import torch

if TYPE_CHECKING:
    from espnet_ext.importance.layout import DecoderLayout

PARAM_GROUPS = ("layers", "adaptor", "embeddings", "lm_head")
MODULE_TYPES = ("q", "k", "v", "o", "gate", "up", "down")
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_TYPE_RE = re.compile(r"\.(q|k|v|o|gate|up|down)_proj\.")


def canonical_name(name: str) -> str:
    """Strip peft wrappers: ``base_model.model.`` and ``.base_layer``."""
    return name.replace("base_model.model.", "").replace(".base_layer.", ".")


def layer_index(name: str, layout: Optional[DecoderLayout] = None) -> Optional[int]:
    """Transformer layer of a parameter name, or ``None``."""
    if layout is not None:
        return layout.layer_index(name)
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def module_type(name: str, layout: Optional[DecoderLayout] = None) -> Optional[str]:
    """``q k v o gate up down`` for the Llama projections (the layout's types with one),
    else ``None`` (norms, …)."""
    if layout is not None:
        return layout.module_type(name)
    m = _TYPE_RE.search(name)
    return m.group(1) if m else None


def param_group(name: str, layout: Optional[DecoderLayout] = None) -> Optional[str]:
    """The scoring group a (canonical) parameter name belongs to."""
    if name.startswith("adaptor."):
        return "adaptor"
    if not name.startswith("llm."):
        return None
    if layout is not None:
        return layout.param_group(name)
    if layer_index(name) is not None:
        return "layers"
    if "embed_tokens" in name:
        return "embeddings"
    if "lm_head" in name:
        return "lm_head"
    return None


def select_parameters(
    model: torch.nn.Module, groups: Iterable[str] = ("layers",), layout: Optional[DecoderLayout] = None,
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
    for name, p in unwrap_model(model).named_parameters(remove_duplicate=False):
        if "lora_" in name or id(p) in seen:
            continue
        canon = canonical_name(name)
        if param_group(canon, layout) in groups:
            out[canon] = p
            seen.add(id(p))
    if not out:
        raise ValueError(f"no parameters in groups {groups} (is this an ESPnetSpeechLLM?)")
    return out


def num_layers(names: Iterable[str], layout: Optional[DecoderLayout] = None) -> int:
    """Number of transformer layers referenced by ``names``."""
    idx = [layer_index(n, layout) for n in names]
    idx = [i for i in idx if i is not None]
    return max(idx) + 1 if idx else 0


def split_name(name: str, layout: Optional[DecoderLayout] = None) -> Tuple[Optional[int], Optional[str]]:
    """``(layer, module type)`` of a parameter name."""
    return layer_index(name, layout), module_type(name, layout)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper."""
    return model.module if isinstance(model, (torch.nn.parallel.DistributedDataParallel,
                                              torch.nn.DataParallel)) else model


def lora_layers(model: torch.nn.Module) -> Dict[str, torch.nn.Module]:
    """Canonical weight name → the peft LoRA layer that wraps it (empty without peft).

    Only layers whose LoRA term is live count: merged or disabled adapters add nothing.
    """
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft is optional for plain models
        return {}
    out = {}
    for name, module in unwrap_model(model).named_modules():
        if not isinstance(module, LoraLayer) or getattr(module, "merged", False):
            continue
        if getattr(module, "disable_adapters", False):
            continue
        live = [a for a in module.active_adapters if a in module.lora_A]
        if not live:
            continue
        bad = [a for a in live if getattr(module, "lora_variant", {}).get(a) is not None]
        if bad or not hasattr(module.lora_A[live[0]], "weight"):
            raise ValueError(f"{name}: importance of LoRA variants (DoRA etc.) or non-Linear LoRA layers "
                             "is not supported; use plain LoRA on Linear layers")
        out[canonical_name(f"{name}.base_layer.weight")] = module
    return out


def lora_delta(module: torch.nn.Module) -> torch.Tensor:
    """Σ over active adapters of scaling · B @ A, in fp32 (the weight a merge would add)."""
    delta = None
    for a in module.active_adapters:
        if a not in module.lora_A:
            continue
        d = module.lora_B[a].weight.detach().float() @ module.lora_A[a].weight.detach().float()
        if getattr(module, "fan_in_fan_out", False):
            d = d.T
        d = d * module.scaling[a]
        delta = d if delta is None else delta + d
    return delta


def effective_weight(param: torch.Tensor, lora_module: Optional[torch.nn.Module] = None) -> torch.Tensor:
    """The weight the forward pass uses, detached, in fp32: W (+ scaling · B @ A under LoRA)."""
    w = param.detach().float()
    return w if lora_module is None else w + lora_delta(lora_module).to(w.device)


def effective_weights(
    model: torch.nn.Module, groups: Iterable[str] = ("layers",), layout: Optional[DecoderLayout] = None,
) -> Dict[str, torch.Tensor]:
    """fp32 effective weights of the selected parameters (LoRA deltas merged in)."""
    lora = lora_layers(model)
    return {n: effective_weight(p, lora.get(n)) for n, p in select_parameters(model, groups, layout).items()}


class LazyEffectiveWeights(Mapping[str, torch.Tensor]):
    """:func:`effective_weights` computed one tensor at a time, on access (on the CPU):
    reading every matrix of a large model this way never holds a second copy of it."""

    def __init__(self, model: torch.nn.Module, groups: Iterable[str] = ("layers",),
                 layout: Optional[DecoderLayout] = None) -> None:
        self._params = select_parameters(model, groups, layout)
        self._lora = lora_layers(model)

    def __getitem__(self, name: str) -> torch.Tensor:
        return effective_weight(self._params[name], self._lora.get(name)).cpu()

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)
