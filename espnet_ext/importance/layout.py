"""Where a Hugging Face decoder keeps its transformer layers, and what each weight is.

The recipe's speech LLM is a Llama, whose parameter names :mod:`espnet_ext.importance.params`
parses with a fixed pattern (``layers.<i>.`` and the ``q k v o gate up down`` projections).
Other decoder families name things differently: GPT-NeoX keeps its layers in
``gpt_neox.layers`` with a fused ``attention.query_key_value``, Phi-3 fuses ``qkv_proj`` and
``gate_up_proj``, GPT-2 calls its layer list ``transformer.h``.  A :class:`DecoderLayout`
is found from the model object itself (:func:`discover_layout`):

* the layer list is the ``ModuleList`` whose length is the config's ``num_hidden_layers``
  (the one holding the most parameters when several qualify);
* module types come from :data:`FAMILY_MODULE_TYPES`, a per-family table (config
  ``model_type`` → module path inside a layer → type), checked against the first layer;
  an unlisted family whose layers have the Llama projections uses the Llama row, any other
  gets one type per weight matrix (its path inside the layer);
* the input embedding and the LM head are the modules ``get_input_embeddings()`` and
  ``get_output_embeddings()`` return.

A layout maps canonical parameter names (peft's wrappers stripped, with the prefix the
scored model puts in front of the Hugging Face names, ``llm.model.`` in this project) to
layers, module types and scoring groups; the importance functions take it wherever they
take names.  Without a layout they keep the fixed Llama pattern.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Dict, Mapping, Optional, Tuple

import torch

from espnet_ext.importance.params import canonical_name

logger = logging.getLogger(__name__)

_LLAMA = {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.o_proj": "o",
          "mlp.gate_proj": "gate", "mlp.up_proj": "up", "mlp.down_proj": "down"}
#: config ``model_type`` → {module path inside a decoder layer: module type}; the order of
#: each row is the column order of Fig. 1 / Fig. 4 and of the per-type summaries
FAMILY_MODULE_TYPES: Dict[str, Dict[str, str]] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": _LLAMA,
    "phi3": {"self_attn.qkv_proj": "qkv", "self_attn.o_proj": "o", "mlp.gate_up_proj": "gate_up",
             "mlp.down_proj": "down"},
    "gpt_neox": {"attention.query_key_value": "qkv", "attention.dense": "o", "mlp.dense_h_to_4h": "up",
                 "mlp.dense_4h_to_h": "down"},
    "gpt2": {"attn.c_attn": "qkv", "attn.c_proj": "o", "mlp.c_fc": "up", "mlp.c_proj": "down"},
}


@dataclasses.dataclass(frozen=True)
class DecoderLayout:
    """Names → layers, module types and scoring groups for one decoder (module docstring)."""

    family: str  # config model_type
    layers_path: str  # canonical name of the layer list, e.g. "llm.model.gpt_neox.layers"
    n_layers: int
    type_of: Mapping[str, str]  # module path inside a layer → module type
    embeddings: Tuple[str, ...] = ()  # canonical names of the input embedding's parameters
    lm_head: Tuple[str, ...] = ()  # canonical names of the LM head's parameters (none when tied)
    table: str = ""  # which row of FAMILY_MODULE_TYPES was used ("per-matrix" for none)

    @property
    def module_types(self) -> Tuple[str, ...]:
        """The family's module types in table order (Fig. 1 / Fig. 4 columns)."""
        return tuple(dict.fromkeys(self.type_of.values()))

    def _inside(self, name: str) -> Optional[Tuple[int, str]]:
        prefix = self.layers_path + "."
        if not name.startswith(prefix):
            return None
        index, _, rest = name[len(prefix):].partition(".")
        return (int(index), rest) if index.isdigit() else None

    def layer_index(self, name: str) -> Optional[int]:
        """Decoder layer of a canonical parameter name, or ``None``."""
        inside = self._inside(name)
        return inside[0] if inside else None

    def module_type(self, name: str) -> Optional[str]:
        """Module type of a canonical parameter name (``None``: norms, biases of untyped modules, …)."""
        inside = self._inside(name)
        return self.type_of.get(inside[1].rpartition(".")[0]) if inside else None

    def param_group(self, name: str) -> Optional[str]:
        """``layers``, ``embeddings``, ``lm_head`` or ``None`` (final norm, …)."""
        if self._inside(name):
            return "layers"
        if name in self.embeddings:
            return "embeddings"
        if name in self.lm_head:
            return "lm_head"
        return None

    def to_json(self) -> dict:
        """A JSON-able description (stored in the reports' summaries)."""
        return {"family": self.family, "layers_path": self.layers_path, "n_layers": self.n_layers,
                "module_types": list(self.module_types), "type_of": dict(self.type_of), "table": self.table}


def _unwrap_peft(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a ``PeftModel`` (LoRA layers included), else ``model``."""
    try:
        from peft import PeftModel
    except ImportError:  # peft is optional for plain models
        return model
    return model.get_base_model() if isinstance(model, PeftModel) else model


def _param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def discover_layout(model: torch.nn.Module, prefix: str = "llm.model.") -> DecoderLayout:
    """The :class:`DecoderLayout` of a transformers causal LM (or a ``PeftModel`` around one).

    ``prefix`` is what the scored model puts in front of the Hugging Face parameter names.
    Raises ``ValueError`` when no layer list is found or a listed family's module is missing
    from its first layer (the message names the family and the module).
    """
    hf = _unwrap_peft(model)
    config = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
    family = str(getattr(config, "model_type", type(hf).__name__))
    n = getattr(config, "num_hidden_layers", None)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"{family}: the config has no num_hidden_layers, so the decoder layer list "
                         "cannot be identified")
    lists = [(name, m) for name, m in hf.named_modules()
             if isinstance(m, torch.nn.ModuleList) and len(m) == n and name]
    if not lists:
        raise ValueError(f"{family}: no ModuleList of config.num_hidden_layers = {n} modules in "
                         f"{type(hf).__name__}; cannot find the decoder layers")
    path, layers = max(lists, key=lambda item: _param_count(item[1]))
    first = dict(layers[0].named_modules())

    def typed(table: Mapping[str, str]) -> bool:
        return all(hasattr(first.get(p), "weight") for p in table)

    if family in FAMILY_MODULE_TYPES:
        table, row = FAMILY_MODULE_TYPES[family], family
        missing = [p for p in table if not hasattr(first.get(p), "weight")]
        if missing:
            raise ValueError(f"{family}: the module-type table names {missing[0]!r}, which layer 0 of "
                             f"{path} does not have (modules: {sorted(k for k in first if k)[:12]})")
    elif typed(_LLAMA):
        table, row = _LLAMA, "llama"
    else:  # one type per weight matrix
        table = {p: p for p, m in first.items() if p and isinstance(getattr(m, "weight", None), torch.Tensor)
                 and m.weight.dim() == 2}
        row = "per-matrix"
        logger.info("%s is not in the module-type table; every weight matrix of a layer is its own type: %s",
                    family, ", ".join(table))

    def names_of(module: Optional[torch.nn.Module]) -> Tuple[str, ...]:
        if module is None:
            return ()
        ids = {id(p) for p in module.parameters()}
        return tuple(prefix + canonical_name(k) for k, p in model.named_parameters() if id(p) in ids)

    layers_path = prefix + canonical_name(_qualified(model, layers) or path)
    embeddings = names_of(hf.get_input_embeddings())
    lm_head = tuple(n for n in names_of(hf.get_output_embeddings()) if n not in embeddings)
    return DecoderLayout(family, layers_path, n, dict(table), embeddings, lm_head, row)


def _qualified(root: torch.nn.Module, module: torch.nn.Module) -> Optional[str]:
    """``module``'s qualified name inside ``root`` (``None`` when absent)."""
    return next((name for name, m in root.named_modules() if m is module), None)

