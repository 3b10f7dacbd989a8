#!/usr/bin/env python3
"""Peak GPU memory per device for stage-1 training at the paper's sizes, before renting GPUs.

    tools/venv/bin/python benchmarks/memory_plan.py [--global_batch 32] [--seq_len 420]
        [--response_tokens 60] [--gpus 1,4,8] [--gpu_gb 80] [--out plan.json]

For Llama-3.2-1B and Llama-3.1-8B (each with the whisper-large-v3 encoder and the
LLaMA-Omni adaptor), Full-FT and LoRA, on 1, 4 and 8 GPUs, it prints the peak memory of
one GPU and whether it fits ``--gpu_gb``.  How each term is obtained:

* **Parameter counts** are exact: the models are built on PyTorch's ``meta`` device from
  their published configurations (no weights, no download) and counted.
* **Static memory** follows from the precision recipe the project trains with: fp32
  master weights, fp32 gradients and AdamW's two fp32 moments (16 bytes per trainable
  parameter), bf16 compute.  Frozen weights (the LoRA base, the encoder) cost their storage
  dtype.  Under DDP every GPU holds all of it plus autocast's bf16 copy of every weight
  (2 bytes per LLM parameter); under FSDP2 / ZeRO-3 sharding the fp32 state is divided by
  the number of GPUs, and a bf16 copy of only the layers being computed (two decoder
  layers: the current one and the prefetched one) is gathered at a time.
* **Activation memory per token and per decoder layer** is *measured* here, on the CPU:
  small Llama decoders (bf16 autocast, SDPA attention, as the project trains) run forward,
  and a ``saved_tensors_hooks`` pack hook counts the bytes autograd keeps for backward.  The
  slope over two sequence lengths and two depths removes everything that does not grow with
  tokens; a least-squares fit ``bytes = a * hidden + b * intermediate`` over several widths
  extrapolates to 2048/8192 (1B) and 4096/14336 (8B).  The fit's worst relative residual
  on the measured widths is printed.  With activation checkpointing (the default for the
  paper sizes) a layer keeps only its bf16 input (2 * hidden bytes per token) and one
  layer's full activations live at a time during recomputation.
* **The LM head** runs only on the response positions (the loss covers only those):
  ``response_tokens * vocab`` logits in bf16, their fp32 copy and its gradient
  (10 bytes per logit).
* The micro-batch per GPU is ``global_batch / gpus`` (rounded up); gradient accumulation
  with ``--micro_batch`` lowers it.  Not included: the CUDA context and allocator
  fragmentation (add about 1-3 GB per GPU), NCCL buffers, the encoder's own activations
  (the recipe's default caches encoder outputs, so it does not run during training).

The sequence length default is LLaMA-Omni's: 300 speech embeddings (30 s padding, k = 5)
plus the chat template and a short spoken-instruction response (about 120 tokens).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

GB = 1e9
# published configurations (Hugging Face config.json of the three checkpoints)
LLAMA_ARCHS: Dict[str, Dict[str, object]] = {
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         tie_word_embeddings=True),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         tie_word_embeddings=False),
}
WHISPER_LARGE_V3 = dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                        decoder_layers=1, decoder_attention_heads=20, decoder_ffn_dim=5120,
                        num_mel_bins=128, max_source_positions=1500, vocab_size=51866)
LORA_RANK = {"llama-3.2-1b": 8, "llama-3.1-8b": 16}  # the paper, section 3.2: r 8 (1B), r 16 (8B)
ADAPTOR_K, ADAPTOR_HIDDEN, ENCODER_DIM = 5, 2048, 1280  # LLaMA-Omni's adaptor


@dataclass
class ModelCounts:
    """Exact parameter counts of one LLM (and what the paper's LoRA adds to it)."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    vocab: int
    llm_params: int
    largest_layer_params: int
    lora_params: int
    adaptor_params: int
    encoder_params: int


def llama_counts(name: str) -> ModelCounts:
    """Counts from a ``meta``-device LlamaForCausalLM of the published configuration."""
    from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig, WhisperModel

    arch = LLAMA_ARCHS[name]
    with torch.device("meta"):
        llm = LlamaForCausalLM(LlamaConfig(**arch))
        encoder = WhisperModel(WhisperConfig(**WHISPER_LARGE_V3)).get_encoder()
    llm_params = sum(p.numel() for p in llm.parameters())  # tied embeddings counted once
    layer = llm.model.layers[0]
    r = LORA_RANK[name]
    lora = 0
    for module in layer.modules():  # all attention and MLP projections (the paper's LoRA targets)
        if isinstance(module, torch.nn.Linear):
            lora += r * (module.in_features + module.out_features)
    hidden = int(arch["hidden_size"])
    adaptor = ENCODER_DIM * ADAPTOR_K * ADAPTOR_HIDDEN + ADAPTOR_HIDDEN + ADAPTOR_HIDDEN * hidden + hidden
    return ModelCounts(
        name=name, hidden=hidden, intermediate=int(arch["intermediate_size"]),
        layers=int(arch["num_hidden_layers"]), vocab=int(arch["vocab_size"]), llm_params=llm_params,
        largest_layer_params=sum(p.numel() for p in layer.parameters()),
        lora_params=lora * int(arch["num_hidden_layers"]), adaptor_params=adaptor,
        encoder_params=sum(p.numel() for p in encoder.parameters()),
    )


def saved_bytes_per_token(hidden: int, intermediate: int, heads: int = 4, kv_heads: int = 2,
                          lengths: Tuple[int, int] = (64, 128)) -> float:
    """Bytes autograd keeps per token and per decoder layer (bf16 autocast, SDPA), measured.

    Forward passes of 1- and 2-layer Llama decoders at two sequence lengths; the bytes of
    the distinct storages saved for backward give, by differences, the per-token, per-layer
    cost (weights and other constants cancel).
    """
    from transformers import LlamaConfig, LlamaModel

    def saved(layers: int, length: int) -> int:
        torch.manual_seed(0)
        cfg = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                          num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=64,
                          attn_implementation="sdpa")
        model = LlamaModel(cfg)
        x = torch.randn(1, length, hidden, requires_grad=True)
        seen: Dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                model(inputs_embeds=x).last_hidden_state.float().sum()
        return sum(seen.values())

    (t0, t1) = lengths
    per_layer = [(saved(2, t) - saved(1, t)) for t in (t0, t1)]
    return (per_layer[1] - per_layer[0]) / (t1 - t0)


def fit_activation_model(widths: Sequence[Tuple[int, int]]) -> Tuple[float, float, float]:
    """Least-squares ``bytes/token/layer = a * hidden + b * intermediate``; returns a, b and
    the worst relative residual over the measured widths."""
    rows = [(h, i, saved_bytes_per_token(h, i)) for h, i in widths]
    a_mat = torch.tensor([[float(h), float(i)] for h, i, _ in rows], dtype=torch.float64)
    y = torch.tensor([b for _, _, b in rows], dtype=torch.float64)
    coef = torch.linalg.lstsq(a_mat, y.unsqueeze(1)).solution.squeeze(1)
    worst = float(((a_mat @ coef - y).abs() / y).max())
    return float(coef[0]), float(coef[1]), worst


@dataclass
class PlanRow:
    """Peak memory of one GPU for one configuration (GB = 1e9 bytes)."""

    model: str
    strategy: str
    engine: str
    gpus: int
    micro_batch: int
    checkpointing: bool
    weights_and_optimizer_gb: float
    compute_copies_gb: float
    activations_gb: float
    logits_gb: float
    total_gb: float
    fits: bool


def plan_row(counts: ModelCounts, strategy: str, engine: str, gpus: int, micro_batch: int,
             seq_len: int, response_tokens: int, act_coef: Tuple[float, float], checkpointing: bool,
             gpu_gb: float, encoder_resident: bool = False) -> PlanRow:
    """The memory terms of one configuration (the module docstring says how each is made)."""
    shard = gpus if engine == "fsdp2" else 1
    if strategy == "full":
        trainable, frozen_llm = counts.llm_params + counts.adaptor_params, 0
    elif strategy == "lora":
        trainable, frozen_llm = counts.lora_params + counts.adaptor_params, counts.llm_params
    else:
        raise ValueError(f"strategy must be full or lora, got {strategy!r}")
    # fp32 master weights + fp32 grads + AdamW m and v; the frozen LLM in fp32 (the presets load fp32)
    state = 16 * trainable + 4 * frozen_llm
    if encoder_resident:
        state += 2 * counts.encoder_params * shard  # bf16, replicated (frozen)
    weights_and_optimizer = state / shard
    if engine == "fsdp2":
        compute_copies = 2 * 2 * counts.largest_layer_params  # bf16 all-gather: current + prefetched layer
    else:
        compute_copies = 2 * counts.llm_params  # autocast keeps a bf16 copy of every weight it used
    tokens = micro_batch * seq_len
    a, b = act_coef
    per_token_layer = a * counts.hidden + b * counts.intermediate
    if checkpointing:
        activations = tokens * (counts.layers * 2 * counts.hidden + per_token_layer)
    else:
        activations = tokens * counts.layers * per_token_layer
    logits = micro_batch * response_tokens * counts.vocab * 10
    total = weights_and_optimizer + compute_copies + activations + logits
    return PlanRow(counts.name, strategy, engine, gpus, micro_batch, checkpointing,
                   round(weights_and_optimizer / GB, 2), round(compute_copies / GB, 2),
                   round(activations / GB, 2), round(logits / GB, 2), round(total / GB, 1),
                   total / GB <= gpu_gb)


def build_plan(args: argparse.Namespace, act_coef: Tuple[float, float]) -> List[PlanRow]:
    rows = []
    for name in LLAMA_ARCHS:
        counts = llama_counts(name)
        for strategy in ("full", "lora"):
            for gpus in args.gpus:
                micro = args.micro_batch or math.ceil(args.global_batch / gpus)
                engines = ("ddp",) if gpus == 1 else ("ddp", "fsdp2")
                for engine in engines:
                    for ckpt in (False, True):
                        rows.append(plan_row(counts, strategy, engine, gpus, micro, args.seq_len,
                                             args.response_tokens, act_coef, ckpt, args.gpu_gb))
    return rows


def render(rows: List[PlanRow], counts: List[ModelCounts], fit: Tuple[float, float, float],
           args: argparse.Namespace) -> str:
    a, b, worst = fit
    lines = [f"activation model (measured, bf16 autocast, SDPA): {a:.1f} * hidden + {b:.1f} * intermediate "
             f"bytes per token per layer (worst fit residual {worst:.1%})"]
    for c in counts:
        lines.append(f"{c.name}: {c.llm_params / 1e9:.3f} B LLM parameters, LoRA r {LORA_RANK[c.name]} "
                     f"{c.lora_params / 1e6:.1f} M, adaptor {c.adaptor_params / 1e6:.1f} M, "
                     f"whisper-large-v3 encoder {c.encoder_params / 1e6:.0f} M (frozen, cached)")
    lines.append(f"global batch {args.global_batch}, {args.seq_len} tokens per sample, "
                 f"{args.response_tokens} response tokens, budget {args.gpu_gb:g} GB per GPU")
    lines.append("")
    lines.append("| model | strategy | engine | GPUs | micro-batch | act. ckpt | weights+optim | bf16 copies "
                 "| activations | logits | peak GB/GPU | fits |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        lines.append(f"| {r.model} | {r.strategy} | {r.engine} | {r.gpus} | {r.micro_batch} | "
                     f"{'yes' if r.checkpointing else 'no'} | {r.weights_and_optimizer_gb} | "
                     f"{r.compute_copies_gb} | {r.activations_gb} | {r.logits_gb} | {r.total_gb} | "
                     f"{'yes' if r.fits else 'NO'} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--global_batch", type=int, default=32, help="LLaMA-Omni stage 1: 32")
    p.add_argument("--micro_batch", type=int, default=0, help="per-GPU batch (0: global_batch / gpus)")
    p.add_argument("--seq_len", type=int, default=420, help="tokens per sample (300 speech + text)")
    p.add_argument("--response_tokens", type=int, default=60, help="response tokens per sample")
    p.add_argument("--gpus", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8])
    p.add_argument("--gpu_gb", type=float, default=80.0, help="memory of one GPU")
    p.add_argument("--widths", default="64x256,128x256,128x512,256x704",
                   help="hidden x intermediate of the measured decoders")
    p.add_argument("--out", default=None, help="also write the plan as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    widths = [tuple(int(v) for v in w.split("x")) for w in args.widths.split(",")]
    fit = fit_activation_model(widths)
    counts = [llama_counts(n) for n in LLAMA_ARCHS]
    rows = build_plan(args, fit[:2])
    print(render(rows, counts, fit, args))
    if args.out:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from espnet_ext.utils.atomic import atomic_write_text

        atomic_write_text(args.out, json.dumps(
            {"activation_fit": {"a_hidden": fit[0], "b_intermediate": fit[1], "worst_residual": fit[2]},
             "models": [asdict(c) for c in counts], "rows": [asdict(r) for r in rows],
             "options": {k: v for k, v in vars(args).items() if k != "out"}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
