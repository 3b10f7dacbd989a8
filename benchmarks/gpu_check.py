#!/usr/bin/env python3
"""GPU check at the paper's 1B scale, random weights, nothing downloaded.

    tools/venv/bin/python benchmarks/gpu_check.py --out gpu_check.json              # one GPU, < 8 min
    tools/venv/bin/python benchmarks/gpu_check.py --tiny --device cpu --out x.json  # CPU smoke, < 1 min

Builds the paper's architectures with random weights and saves them as local Hugging Face
folders, so they load through the project's real code (``SpeechLLMTask.build_model``):

* LLM: Llama-3.2-1B (``LlamaConfig``: hidden 2048, 16 layers, 32 heads / 8 KV heads,
  intermediate 8192, vocab 128256, rope theta 500000, tied embeddings), saved in bf16 like
  the published checkpoint and loaded as fp32 master weights;
* encoder: whisper-large-v3's (d_model 1280, 32 layers, 20 heads, 128 mel bins), frozen,
  ``pad_to_30s`` as in ``conf/model/llama32_1b_whisper_large_v3.yaml``;
* tokenizer: a byte-level BPE trained offline on a built-in corpus, with Llama-3's special
  tokens and chat template (the prompt pieces split as for the real model).

Then, on the device, with ``model_conf.mixed_precision: bf16`` (bf16 autocast, fp32
weights, gradients and AdamW state):

1. stage 2's encoding: the frozen encoder (fp32, outside the model's autocast, as
   ``dump_encoder_features`` runs it) turns 16 kHz noise into the cached features that
   training reads, ``--steps`` + 1 batches;
2. importance scoring (eq. 2, ``importance/scoring.py``) of the base model on a few T2T
   batches; its report feeds the Layer-LR run;
3. ``--steps`` training steps each of Full-FT, Layer-LR (eq. 3, per-layer AdamW groups of
   ``SpeechLLMTask.build_optimizers``) and LoRA (peft, r 8, alpha 16, all attention and
   MLP projections), S2T from the cached features, fused AdamW, ``warmupcosinelr``, grad
   clip 1.0, as ``conf/train_*.yaml`` train (random answer tokens of 32-127 + 1 tokens);
4. batched greedy decoding (``inference/decode.py``, ``decode_dump_dir``) of a stage-2 dump
   written by ``dump_encoder_features``, S2T and T2T, after the Full-FT steps.

Figures, per phase: tokens/s (LLM sequence tokens, padding excluded, the shared prompt
prefix counted per sample), peak memory (``torch.cuda.max_memory_allocated``) and MFU
against the card's bf16 dense peak (table :data:`BF16_PEAK_TFLOPS`; null on unknown
cards and on CPUs).  ``mfu`` divides the FLOPs ``torch.utils.flop_counter`` counts on one
extra step (matmuls, convolutions and attention, forward and backward, what actually
runs: the prefix once per batch, the LM head on answer rows only, no weight gradients for
frozen weights) by the mean time of the timed steps (all but the first two); ``mfu_6nt``
is the usual estimate 6 · N · tokens (N: the LLM's parameters, the tied embedding once;
tokens: LLM sequence tokens), which overstates LoRA's work.

Fails loudly (traceback and ``GPU CHECK FAILED: <why>`` on stderr, exit status 1,
``"ok": false`` and ``"error"`` in the JSON) on any device or precision error: a parameter
or buffer off the device; a trainable parameter, its gradient or its AdamW state not fp32;
a Linear of the adaptor or LLM whose output under autocast is not bf16 (the adaptor, the
attention projections and the LM head must have run); encoder features not fp32 or not
finite; a non-finite loss or gradient norm; a training step that leaves a trainable
tensor unchanged or changes a frozen one; Layer-LR groups without one lr per layer;
importance scores that are not finite or all zero; a decode that emits nothing.

The figures go to ``--out`` as JSON (written atomically).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: bf16 dense tensor-core peak (TFLOP/s, no sparsity) by a substring of the device name,
#: most specific first (vendor data sheets)
BF16_PEAK_TFLOPS = [
    ("GH200", 989.0), ("H200", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0),
    ("H800", 989.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
    ("L40", 181.0), ("A6000", 155.0), ("A10G", 70.0), ("A10", 125.0), ("L4", 121.0),
]

#: Llama-3's chat template without the date lines of 3.1+ (the prompt is split the same way)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eot_id|>"]

#: the architectures: the paper's (Llama-3.2-1B + whisper-large-v3) and a tiny one for CPUs
ARCHS = {
    "paper": {
        "llm": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                    intermediate_size=8192, vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=True,
                    max_position_embeddings=131072, rms_norm_eps=1e-5, head_dim=64),
        "whisper": dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                        num_mel_bins=128, max_source_positions=1500),
        "adaptor_hidden": 2048, "pad_to_30s": True, "batch_size": 8, "seconds": (4.0, 14.0),
        "answer_tokens": (32, 128), "question_tokens": (8, 32), "max_new_tokens": 64, "decode_utts": 16,
    },
    "tiny": {
        "llm": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=128, vocab_size=512, rope_theta=500000.0, tie_word_embeddings=True,
                    max_position_embeddings=2048, rms_norm_eps=1e-5),
        "whisper": dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                        num_mel_bins=128, max_source_positions=1500),
        "adaptor_hidden": 32, "pad_to_30s": False, "batch_size": 4, "seconds": (0.5, 1.5),
        "answer_tokens": (4, 12), "question_tokens": (4, 10), "max_new_tokens": 8, "decode_utts": 4,
    },
}

MODES = ("full", "layer_lr", "lora")


class CheckFailed(AssertionError):
    """A device or precision error found by the check."""


def check(ok: bool, message: str) -> None:
    if not ok:
        raise CheckFailed(message)


# ---- models and data on disk --------------------------------------------------------------
def build_tokenizer():
    """Byte-level BPE with Llama-3's special tokens and chat template (offline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from espnet_ext.convert.tiny import _CORPUS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=LLAMA3_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   additional_special_tokens=LLAMA3_SPECIALS)
    fast.chat_template = LLAMA3_TEMPLATE
    return fast


def save_models(arch: dict, root: Path, device: torch.device) -> Dict[str, Path]:
    """Random LLM (+ tokenizer) and Whisper-encoder folders under ``root``, built on ``device``."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    tok = build_tokenizer()
    check(len(tok) <= arch["llm"]["vocab_size"], "tokenizer larger than the LLM vocabulary")
    llm_dir, whisper_dir = root / "llm", root / "whisper"
    config = LlamaConfig(**arch["llm"], bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        llm = LlamaForCausalLM(config)
    llm.to(torch.bfloat16).save_pretrained(llm_dir)  # bf16 on disk, as published
    tok.save_pretrained(llm_dir)
    del llm
    wconfig = WhisperConfig(**arch["whisper"], decoder_layers=1, decoder_attention_heads=arch["whisper"][
        "encoder_attention_heads"], decoder_ffn_dim=arch["whisper"]["encoder_ffn_dim"])
    with torch.device(device):
        enc = WhisperEncoder(wconfig)
    whisper_dir.mkdir(parents=True)
    wconfig.save_pretrained(whisper_dir)
    WhisperFeatureExtractor(feature_size=wconfig.num_mel_bins).save_pretrained(whisper_dir)
    # only the encoder's tensors, under the full model's names (load_whisper_encoder reads those)
    save_file({f"model.encoder.{k}": v.to(torch.bfloat16).contiguous().cpu() for k, v in enc.state_dict().items()},
              str(whisper_dir / "model.safetensors"))
    del enc
    free(device)
    return {"llm": llm_dir, "whisper": whisper_dir}


def task_args(paths: Dict[str, Path], arch: dict, mode: str, report: Optional[Path] = None):
    """``SpeechLLMTask`` arguments of the paper preset in bf16 autocast, one mitigation."""
    from espnet_ext.tasks.speech_llm import SpeechLLMTask

    argv = ["--llm_conf", f"model_name_or_path={paths['llm']}", "--llm_conf", "torch_dtype=float32",
            "--encoder_conf", f"model_name_or_path={paths['whisper']}",
            "--encoder_conf", f"pad_to_30s={str(arch['pad_to_30s']).lower()}",
            "--adaptor_conf", "downsample_rate=5", "--adaptor_conf", f"hidden_size={arch['adaptor_hidden']}",
            "--model_conf", "modality=speech", "--model_conf", "mixed_precision=bf16",
            "--optim", "adamw", "--optim_conf", "lr=2.0e-5", "--optim_conf", "weight_decay=0.0",
            "--optim_conf", "fused=true", "--adaptor_lr", "1.0e-3"]
    if mode == "layer_lr":
        argv += ["--layer_lr_conf", f"{{importance_report: {report}, lambda_: 0.4}}"]
    elif mode == "lora":
        argv += ["--lora_conf", "{r: 8, alpha: 16, dropout: 0.05, target_modules: "
                 "[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}", "--optim_conf", "lr=2.0e-4"]
    return SpeechLLMTask.get_parser().parse_args(argv)


def make_samples(model, arch: dict, n: int, seed: int, speech: bool = True, text: bool = False):
    """``n`` (uid, sample) pairs as the preprocessor gives them: noise audio (16 kHz), random
    question and answer tokens (+ the closing end-of-turn)."""
    rng = np.random.default_rng(seed)
    tok = model.llm.tokenizer
    low = max(tok.all_special_ids) + 1  # ordinary tokens only
    closing = np.asarray(model.llm.prompt.closing, dtype=np.int64)
    out = []
    for i in range(n):
        s: Dict[str, np.ndarray] = {}
        if speech:
            seconds = rng.uniform(*arch["seconds"])
            s["speech"] = (0.05 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
        if text:
            s["text"] = rng.integers(low, len(tok), int(rng.integers(*arch["question_tokens"]))).astype(np.int64)
        answer = rng.integers(low, len(tok), int(rng.integers(*arch["answer_tokens"]))).astype(np.int64)
        s["answer"] = np.concatenate([answer, closing])
        out.append((f"spk-u{seed}-{i:03d}", s))  # Kaldi ids start with the speaker id
    return out


def collate(samples, device: Optional[torch.device] = None) -> Dict[str, torch.Tensor]:
    from espnet_ext.train.collate import PadCollate

    _, batch = PadCollate(0.0, -1)(samples)
    return {k: v.to(device) for k, v in batch.items()} if device is not None else batch


def encode_batches(model, arch: dict, n: int, device: torch.device):
    """``n`` training batches of cached encoder features, as stage 2 caches them (the frozen
    encoder in fp32, outside the model's autocast) and the trainer reads them (on the CPU,
    moved per step); returns ``(batches, encoder figures)``."""
    batches, seconds, audio, frames, flops = [], 0.0, 0.0, 0, 0
    reset_peak(device)
    for b in range(n):
        samples = make_samples(model, arch, arch["batch_size"], seed=b)
        wavs = [s.pop("speech") for _, s in samples]
        audio += sum(len(w) for w in wavs) / 16000

        def encode(wavs=wavs):
            with torch.no_grad():
                return model.encoder.encode_waveforms(wavs)

        if b == 0:
            flops = flop_count(encode)
        sync(device)
        start = time.perf_counter()
        feats, lengths = encode()
        sync(device)
        seconds += time.perf_counter() - start
        check(feats.device.type == device.type and feats.dtype == torch.float32,
              f"encoder output {feats.dtype} on {feats.device}")
        check(bool(torch.isfinite(feats).all()), "encoder output not finite")
        frames += int(lengths.sum())
        for i, (_, s) in enumerate(samples):
            s["enc_feats"] = feats[i, : lengths[i]].cpu().numpy()
        batches.append(collate(samples))
    peak_flops = peak_tflops(device)
    figures = {"utts": n * arch["batch_size"], "audio_seconds": round(audio, 1), "frames": frames,
               "seconds": round(seconds, 3), "audio_seconds_per_s": round(audio / seconds, 1),
               "flops_per_batch": flops, "peak_mem_gib": peak_gib(device),
               "mfu_fp32_vs_bf16_peak": round(flops * n / seconds / (peak_flops * 1e12), 4) if peak_flops else None}
    return batches, figures


def write_dump(model, arch: dict, root: Path, n: int, tok) -> Path:
    """A stage-2 dump (Kaldi dir of noise wavs → ``dump_encoder_features``) of ``n`` utterances."""
    from espnet_ext.data.audio import write_wav
    from espnet_ext.data.dump import dump_encoder_features
    from espnet_ext.data.kaldi_dir import Utterance, write_kaldi_dir

    utts = []
    for uid, s in make_samples(model, arch, n, seed=99):
        path = root / "wav" / f"{uid}.wav"
        write_wav(path, s["speech"])
        question = tok.decode(s["answer"][:8].tolist(), skip_special_tokens=True).strip() or "what"
        utts.append(Utterance(uid, "spk", str(path), question, ["an answer"]))
    write_kaldi_dir(root / "data", utts)
    prompt = model.llm.prompt
    dump_encoder_features(root / "data", root / "dump", model.encoder, tok,
                          len(prompt.prefix) + len(prompt.suffix), model.adaptor.downsample_rate)
    return root / "dump"


# ---- measurement helpers ------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> Optional[float]:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None


def peak_tflops(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for key, v in BF16_PEAK_TFLOPS if key in name), None)


class TokenCounter:
    """LLM sequence tokens per step: the decoder's attention mask (shared-prefix positions
    included once per sample; the prefix pass itself has no mask and is not counted)."""

    def __init__(self, model) -> None:
        self.tokens = 0
        self.handle = model.llm.model.get_decoder().register_forward_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs, output) -> None:
        mask = kwargs.get("attention_mask")
        if mask is not None:
            self.tokens += int(mask.sum())

    def remove(self) -> None:
        self.handle.remove()


@contextlib.contextmanager
def bf16_matmul_probe(model, where: str):
    """Record the output dtype of every Linear / Conv1d of encoder, adaptor and LLM; on
    exit, fail unless each ran (at least once) and every output was bf16."""
    seen: Dict[str, set] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d)) and "lora_dropout" not in name:
            def hook(mod, inputs, output, name=name):
                seen.setdefault(name, set()).add(output.dtype)
            handles.append(module.register_forward_hook(hook))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()
    check("adaptor.linear1" in seen and any(n.endswith("q_proj") or ".q_proj." in n for n in seen)
          and any(n.endswith("lm_head") for n in seen), f"{where}: adaptor, attention or LM head did not run")
    bad = {n: sorted(map(str, d)) for n, d in seen.items() if d != {torch.bfloat16}}
    check(not bad, f"{where}: matmuls not in bf16 under autocast: {dict(list(bad.items())[:5])}")


def check_params(model, device: torch.device, where: str) -> Dict[str, int]:
    """Every parameter and buffer on ``device``; every trainable parameter fp32."""
    off = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type != device.type]
    check(not off, f"{where}: tensors not on {device}: {off[:5]}")
    bad = [f"{n} ({p.dtype})" for n, p in model.named_parameters() if p.requires_grad and p.dtype != torch.float32]
    check(not bad, f"{where}: trainable parameters not fp32 (no fp32 master weights): {bad[:5]}")
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    check(n_train > 0, f"{where}: nothing is trainable")
    return {"trainable": n_train, "total": sum(p.numel() for p in model.parameters())}


def sample_of(p: torch.Tensor) -> torch.Tensor:
    """≤ 4096 evenly strided entries of a tensor (a cheap fingerprint of its values)."""
    flat = p.detach().reshape(-1)
    return flat[:: max(1, flat.numel() // 4096)].clone()


def flop_count(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def llm_params(model) -> int:
    """Parameters of the LLM (the tied embedding once; LoRA factors included)."""
    return sum(p.numel() for p in model.llm.parameters())


# ---- phases ---------------------------------------------------------------------------------
def run_importance(model, arch: dict, device: torch.device, out_dir: Path, n_batches: int) -> dict:
    from espnet_ext.importance.report import write_report
    from espnet_ext.importance.scoring import ImportanceConfig, score_importance

    batches = [collate(make_samples(model, arch, arch["batch_size"], seed=1000 + b, speech=False, text=True), device)
               for b in range(n_batches)]
    config = ImportanceConfig(modality="text", batch_size=arch["batch_size"])
    reset_peak(device)
    sync(device)
    start = time.perf_counter()
    result = score_importance(model, batches, config)
    sync(device)
    seconds = time.perf_counter() - start
    check(math.isfinite(result.mean_loss), f"importance: loss {result.mean_loss}")
    bad = [n for n, s in result.scores.items() if not bool(torch.isfinite(s).all())]
    check(not bad, f"importance: non-finite scores in {bad[:5]}")
    total = sum(float(s.double().sum()) for s in result.scores.values())
    check(total > 0, "importance: every score is zero")
    n_layers = arch["llm"]["num_hidden_layers"]
    summary = write_report(out_dir, result.scores, {"gpu_check": True})
    check(len(summary["layer_sums"]) == n_layers, f"importance: {len(summary['layer_sums'])} layer sums")
    check(not any(p.grad is not None for p in model.parameters()), "importance left gradients behind")
    return {"batches": result.n_batches, "utts": result.n_utts, "seconds": round(seconds, 3),
            "seconds_per_batch": round(seconds / n_batches, 4), "mean_loss": round(result.mean_loss, 4),
            "scored_params": int(sum(s.numel() for s in result.scores.values())), "peak_mem_gib": peak_gib(device)}


def train(model, args, arch: dict, device: torch.device, batches, mode: str) -> dict:
    """AdamW steps on ``batches`` (the last one only under the FLOP counter) as ESPnet's
    trainer takes them, with the checks of the module docstring."""
    from espnet_ext.optim.schedulers import WarmupCosineLR
    from espnet_ext.tasks.speech_llm import SpeechLLMTask

    sizes = check_params(model, device, mode)
    optimizer = SpeechLLMTask.build_optimizers(args, model)[0]
    scheduler = WarmupCosineLR(optimizer, total_steps=len(batches), warmup_ratio=0.03)  # the counted step too
    groups = [(g.get("name"), g["lr"]) for g in optimizer.param_groups]
    if mode == "layer_lr":
        layers = [lr for name, lr in groups if name and name.startswith("llm.layers.")]
        check(len(layers) == arch["llm"]["num_hidden_layers"], f"layer_lr: {len(layers)} layer groups")
        check(max(layers) > min(layers), "layer_lr: every layer has the same lr")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    if mode == "lora":
        check(all("lora_" in n or n.startswith("adaptor.") for n in params), "lora: base weights trainable")
    before = {n: sample_of(p) for n, p in params.items()}
    frozen_before = {n: sample_of(p) for n, p in list(frozen.items())[:: max(1, len(frozen) // 64)]}
    batches, extra = batches[:-1], batches[-1]
    steps = len(batches)
    model.train()
    counter = TokenCounter(model)
    losses, times, tokens = [], [], []

    def step(batch, probe: bool = False) -> float:
        with bf16_matmul_probe(model, mode) if probe else contextlib.nullcontext():
            loss, stats, weight = model(**batch)
        check(loss.device.type == device.type, f"{mode}: loss on {loss.device}")
        check(loss.dtype == torch.float32, f"{mode}: loss in {loss.dtype}")
        loss.backward()
        if probe:
            bad = [n for n, p in params.items() if p.grad is None or p.grad.dtype != torch.float32
                   or p.grad.device.type != device.type]
            check(not bad, f"{mode}: gradients missing or not fp32 on {device}: {bad[:5]}")
        norm = torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        check(bool(torch.isfinite(norm)), f"{mode}: gradient norm {float(norm)}")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        check(math.isfinite(value), f"{mode}: loss {value}")
        return value

    reset_peak(device)
    try:
        for i, batch in enumerate(batches):
            counter.tokens = 0
            sync(device)
            start = time.perf_counter()
            losses.append(step({k: v.to(device) for k, v in batch.items()}, probe=i == 0))
            sync(device)
            times.append(time.perf_counter() - start)
            tokens.append(counter.tokens)
    finally:
        counter.remove()
    peak = peak_gib(device)
    bad_state = [n for n, p in params.items() for k, v in optimizer.state[p].items()
                 if torch.is_tensor(v) and v.numel() > 1 and (v.dtype != torch.float32 or v.device.type != device.type)]
    check(not bad_state, f"{mode}: AdamW state not fp32 on {device}: {bad_state[:5]}")
    unchanged = [n for n, p in params.items() if torch.equal(sample_of(p), before[n])]
    check(not unchanged, f"{mode}: {len(unchanged)} trainable tensors unchanged by {steps} steps: {unchanged[:5]}")
    moved = [n for n, s in frozen_before.items() if not torch.equal(sample_of(frozen[n]), s)]
    check(not moved, f"{mode}: frozen tensors changed: {moved[:5]}")
    # one more step under the FLOP counter (not timed): what a step executes
    flops = flop_count(lambda: step({k: v.to(device) for k, v in extra.items()}))
    timed = slice(min(2, len(times) - 1), None)  # the first steps warm up kernels and allocator
    secs, toks = sum(times[timed]), sum(tokens[timed])
    peak_flops = peak_tflops(device)
    step_time = secs / len(times[timed])
    out = {"steps": steps, "timed_steps": len(times[timed]), "step_seconds": round(step_time, 4),
           "tokens_per_step": round(toks / len(times[timed]), 1), "tokens_per_s": round(toks / secs, 1),
           "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4), "peak_mem_gib": peak,
           "flops_per_step": flops, "achieved_tflops": float(f"{flops / step_time / 1e12:.4g}"),
           "mfu": round(flops / step_time / (peak_flops * 1e12), 4) if peak_flops else None,
           "mfu_6nt": round(6 * llm_params(model) * toks / secs / (peak_flops * 1e12), 4) if peak_flops else None,
           "optimizer_groups": len(groups), **{f"params_{k}": v for k, v in sizes.items()}}
    return out


def decode(model, dump: Path, out_dir: Path, arch: dict, device: torch.device) -> dict:
    from espnet_ext.inference.decode import decode_dump_dir

    model.eval()
    out = {}
    for modality in ("speech", "text"):
        reset_peak(device)
        report = decode_dump_dir(model, dump, out_dir / modality, modality, arch["batch_size"],
                                 arch["max_new_tokens"])
        check(report.n_utts == arch["decode_utts"], f"decode {modality}: {report.n_utts} utterances")
        check(report.n_new_tokens > 0, f"decode {modality}: no token generated")
        out[modality] = {"utts": report.n_utts, "new_tokens": report.n_new_tokens,
                         "seconds": round(report.seconds, 3),
                         "new_tokens_per_s": round(report.n_new_tokens / report.seconds, 1),
                         "peak_mem_gib": peak_gib(device)}
    return out


# ---- main -------------------------------------------------------------------------------------
def run(args, figures: dict) -> None:
    from espnet_ext.tasks.speech_llm import SpeechLLMTask

    device = torch.device(args.device)
    arch = ARCHS["tiny" if args.tiny else "paper"]
    if device.type == "cuda":
        check(torch.cuda.is_available(), "--device cuda but CUDA is not available")
        check(torch.cuda.is_bf16_supported(), f"{torch.cuda.get_device_name(device)} has no bf16 support")
        figures["device_name"] = torch.cuda.get_device_name(device)
    figures["bf16_peak_tflops"] = peak_tflops(device)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_", dir=args.work_dir))
    try:
        t = time.perf_counter()
        paths = save_models(arch, work, device)
        figures["build_seconds"] = round(time.perf_counter() - t, 2)
        report_dir = work / "importance"
        for mode in MODES:
            t = time.perf_counter()
            task_args_ = task_args(paths, arch, mode, report_dir)
            model = SpeechLLMTask.build_model(task_args_).to(device)
            figures.setdefault("load_seconds", {})[mode] = round(time.perf_counter() - t, 2)
            check(model.mixed_precision == "bf16", "model_conf.mixed_precision is not bf16")
            check(model.llm.model.dtype == torch.float32, f"LLM loaded in {model.llm.model.dtype}")
            if mode == "full":
                figures["llm_params"] = llm_params(model)
                figures["encoder_params"] = sum(p.numel() for p in model.encoder.parameters())
                batches, figures["encoder"] = encode_batches(model, arch, args.steps + 1, device)
                figures["importance"] = run_importance(model, arch, device, report_dir, args.importance_batches)
            figures.setdefault("train", {})[mode] = train(model, task_args_, arch, device, batches, mode)
            if mode == "full":
                dump = write_dump(model, arch, work / "decode", arch["decode_utts"], model.llm.tokenizer)
                figures["decode"] = decode(model, dump, work / "decode" / "out", arch, device)
            del model
            free(device)
            print(f"[gpu_check] {mode}: {json.dumps(figures['train'][mode])}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file for the figures (written atomically)")
    parser.add_argument("--tiny", action="store_true", help="a tiny architecture (CPU smoke test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda when available)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per mode")
    parser.add_argument("--importance_batches", type=int, default=3, help="T2T batches scored")
    parser.add_argument("--work_dir", default=None, help="where the random model folders go (a temp dir)")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be >= 2")
    from espnet_ext.utils.atomic import atomic_write_text

    figures = {"ok": False, "arch": "tiny" if args.tiny else "paper", "device": args.device, "steps": args.steps,
               "torch": torch.__version__, "mixed_precision": "bf16"}
    start = time.perf_counter()
    status = 0
    try:
        run(args, figures)
        figures["ok"] = True
    except Exception as e:  # noqa: BLE001  (every failure must reach the JSON and the exit status)
        status = 1
        figures["error"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
        print(f"GPU CHECK FAILED: {figures['error']}", file=sys.stderr, flush=True)
    figures["seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_text(args.out, json.dumps(figures, indent=1) + "\n")
    print_table(figures)
    print(json.dumps(figures, indent=1))
    return status


def print_table(figures: dict) -> None:
    """The training figures as a small table (the JSON follows it)."""
    print(f"{'mode':<9} {'step s':>8} {'tokens/s':>10} {'peak GiB':>9} {'TFLOP/s':>9} {'MFU':>7} {'MFU 6NT':>8}")
    for mode, t in figures.get("train", {}).items():
        cells = [t["step_seconds"], t["tokens_per_s"], t["peak_mem_gib"], t["achieved_tflops"], t["mfu"], t["mfu_6nt"]]
        print(f"{mode:<9} " + " ".join(f"{'-' if c is None else c:>{w}}" for c, w in zip(cells, (8, 10, 9, 9, 7, 8))))
    for modality, d in figures.get("decode", {}).items():
        peak = "-" if d["peak_mem_gib"] is None else f"{d['peak_mem_gib']} GiB"
        print(f"decode {modality}: {d['new_tokens_per_s']} new tokens/s, peak memory {peak}")
    print("OK" if figures["ok"] else f"FAILED: {figures.get('error')}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
