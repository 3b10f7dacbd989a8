"""LoRA on the LLM through peft (paper §3.1.2), and its export.

The paper applies LoRA (Hu et al., 2022) to all self-attention and MLP projections, with
r = 8 for the 1B model, r = 16 for the 8B model and alpha = 2r.  :func:`apply_lora` wraps
the LLM of an :class:`HFCausalLM` with ``peft.get_peft_model``: every base weight of the
LLM is frozen, the LoRA factors are the LLM's only trainable tensors.  Only the LLM is
wrapped: the encoder stays frozen and the adaptor (outside the LLM) stays fully
trainable without peft's ``modules_to_save``, and the ESPnet model keeps its structure,
so ESPnet checkpoints hold base weights + LoRA factors + adaptor and reload strictly
through ``SpeechLLMTask.build_model_from_file``.

:func:`export_lora` writes what other tools load::

    <out_dir>/adapter/             peft format (PeftModel.from_pretrained(base, adapter/))
    <out_dir>/adaptor.safetensors  the speech adaptor's weights (adaptor_conf in metadata)
    <out_dir>/merged/              plain HF folder with W + (alpha/r)·BA merged, + tokenizer

Merging (:func:`merge_lora_for_inference`) forms ``W + (alpha/r)·BA`` in fp32 and rounds
once to the stored dtype.  :func:`export_llm` writes any trained system's LLM (Full-FT,
Layer-LR, LoRA merged) as a plain HF folder, for tools that compare checkpoints.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch

from espnet_ext.utils.atomic import atomic_dir, atomic_open

logger = logging.getLogger(__name__)

#: the Llama attention and MLP projections ("q k v o gate up down")
LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraAdapterConfig:
    """``--lora_conf`` options (peft ``LoraConfig`` fields under their paper names)."""

    r: int = 8  # LoRA rank; paper: 8 for 1B, 16 for 8B (Table 3 ablates 8/16/24)
    alpha: Optional[float] = None  # scaling numerator; None = 2r (paper)
    dropout: float = 0.05  # dropout on the LoRA input (paper: not reported; a common choice)
    target_modules: List[str] = field(default_factory=lambda: list(LLAMA_PROJECTIONS))

    def __post_init__(self) -> None:
        if int(self.r) != self.r or self.r <= 0:
            raise ValueError(f"lora_conf.r must be a positive integer, got {self.r}")
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"lora_conf.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora_conf.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("lora_conf.target_modules must name at least one module")
        self.r = int(self.r)
        self.target_modules = list(self.target_modules)

    def peft_config(self):
        """The equivalent ``peft.LoraConfig``."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.r, lora_alpha=self.alpha if self.alpha is not None else 2 * self.r,
            lora_dropout=self.dropout, target_modules=self.target_modules, bias="none",
            task_type="CAUSAL_LM",
        )


def apply_lora(llm: torch.nn.Module, options: LoraAdapterConfig) -> None:
    """Wrap ``llm.model`` (an ``HFCausalLM``'s transformers model) with peft LoRA in place.

    ``HFCausalLM.embed/hidden_states/logits`` and ``generate`` keep working: the peft
    model forwards ``get_input_embeddings``, ``get_decoder`` and ``get_output_embeddings``
    to the wrapped model, whose projections now carry the LoRA factors.
    """
    from peft import get_peft_model

    model = llm.model
    names = [name for name, _ in model.named_modules()]
    unknown = [t for t in options.target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if unknown:
        raise ValueError(f"lora_conf.target_modules {unknown} are not modules of {llm.model_name_or_path}")
    llm.model = get_peft_model(model, options.peft_config())
    trainable = sum(p.numel() for p in llm.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in llm.model.parameters())
    logger.info("LoRA r=%d alpha=%g on %s: %d of %d LLM parameters trainable (%.3f %%)",
                options.r, llm.model.peft_config["default"].lora_alpha, ",".join(options.target_modules),
                trainable, total, 100.0 * trainable / total)


def merge_lora_for_inference(model: torch.nn.Module, dtype: Optional[torch.dtype] = None) -> int:
    """Fold every LoRA update into its base weight in place (``W + scaling · B A``).

    The sum is formed in fp32 (the base weight cast to fp32 plus ``B A · scaling``
    computed in fp32) and stored in ``dtype``: ``None`` = the base weight's own dtype
    (rounded once, where peft's merge of a bf16 model rounds ``B A`` to bf16 and then the
    sum again, losing updates below half a bf16 unit of ``W``); ``torch.float32`` keeps
    the merged weight exact.  Decoding then runs plain Linear layers: the same function
    (LoRA dropout is off in eval mode) without the two extra low-rank products per
    projection (the demo's LoRA system decoded at 0.12-0.19 s/question unmerged, like
    Full-FT's 0.08-0.13 merged).  Returns the number of merged layers.  Not for training
    or importance scoring, which need the factors.
    """
    from peft.tuners.lora import LoraLayer

    n = 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and not module.merged:
            merge_layer_fp32(module, dtype)
            n += 1
    return n


def merge_layer_fp32(module, dtype: Optional[torch.dtype] = None) -> None:
    """Merge the active adapters of one peft ``LoraLayer`` in fp32 (see above); a layer
    peft merges another way (DoRA and other variants, non-Linear layers) uses peft's merge."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.tuners_utils import check_adapters_to_merge
    from peft.utils.other import transpose

    for adapter in check_adapters_to_merge(module, None):
        if adapter not in module.lora_A:
            continue
        if not isinstance(module, LoraLinear) or adapter in getattr(module, "lora_variant", {}):
            module.merge(adapter_names=[adapter])
            continue
        base = module.get_base_layer()
        out_dtype = dtype if dtype is not None else base.weight.dtype
        a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
        delta = transpose(b.float() @ a.float(), module.fan_in_fan_out) * module.scaling[adapter]
        base.weight.data = (base.weight.data.float() + delta).to(out_dtype)
        if module.lora_bias.get(adapter, False):
            if getattr(base, "bias", None) is None:
                raise RuntimeError("cannot merge LoRA with lora_bias: the base layer has no bias")
            lora_bias = module.lora_B[adapter].bias.float() * module.scaling[adapter]
            base.bias.data = (base.bias.data.float() + lora_bias).to(out_dtype)
        elif getattr(base, "bias", None) is not None:
            base.bias.data = base.bias.data.to(out_dtype)
        module.merged_adapters.append(adapter)


def export_lora(model: torch.nn.Module, out_dir: str | Path, adaptor_conf: Optional[dict] = None) -> Dict[str, Path]:
    """Write the adapter (peft format), the adaptor and the merged HF model (module docstring).

    The merge happens last and in place (:func:`merge_lora_for_inference`, then peft's
    ``unload``): afterwards ``model.llm``
    holds the plain merged model, so call this on a model built for the export.
    """
    from peft import PeftModel
    from safetensors.torch import save

    peft_model = model.llm.model
    if not isinstance(peft_model, PeftModel):
        raise ValueError("the model has no LoRA adapter (its config has lora_conf: null)")
    out = Path(out_dir)
    paths = {"adapter": out / "adapter", "adaptor": out / "adaptor.safetensors", "merged": out / "merged"}
    with atomic_dir(paths["adapter"]) as tmp:
        peft_model.save_pretrained(tmp)
    state = {k: v.detach().cpu().contiguous() for k, v in model.adaptor.state_dict().items()}
    meta = {"adaptor_class": type(model.adaptor).__name__, "adaptor_conf": json.dumps(adaptor_conf or {})}
    with atomic_open(paths["adaptor"], "wb") as f:
        f.write(save(state, metadata=meta))
    merge_lora_for_inference(peft_model)  # in fp32, stored in the base weights' dtype
    merged = peft_model.unload()
    model.llm.model = merged
    with atomic_dir(paths["merged"]) as tmp:
        merged.save_pretrained(tmp)
        model.llm.tokenizer.save_pretrained(tmp)
    logger.info("exported LoRA adapter, adaptor and merged model to %s", out)
    return paths


def export_llm(model: torch.nn.Module, out_dir: str | Path) -> Path:
    """Write the speech LLM's LLM as a plain HF folder (weights, config, tokenizer).

    A LoRA model is merged first (in place, :func:`merge_lora_for_inference`, then peft's
    ``unload``), so call this on a model built for the export; any other model is saved as
    it is.  Returns ``out_dir``.
    """
    from peft import PeftModel

    llm = model.llm.model
    if isinstance(llm, PeftModel):
        merge_lora_for_inference(llm)  # in fp32, stored in the base weights' dtype
        llm = llm.unload()
        model.llm.model = llm
    with atomic_dir(out_dir) as tmp:
        llm.save_pretrained(tmp)
        model.llm.tokenizer.save_pretrained(tmp)
    logger.info("exported the LLM to %s", out_dir)
    return Path(out_dir)
