#!/usr/bin/env python3
"""Shared prompt-prefix cache and bf16 autocast: training step and decoding time.

    tools/venv/bin/python benchmarks/bench_prefix_cache.py \
        --model_config egs2/speechimp/exp/pretrained/model.yaml \
        --train_dump egs2/speechimp/dump/train --test_dump egs2/speechimp/dump/test_llamaq

Needs a recipe run up to stage 2 (the demo's pretrained models and dumps).  Runs, in one
process and interleaved (best of ``--repeats``):

1. a training step (forward + backward, ``--train_batch`` utterances of S2T, the sorted
   batches the trainer uses) in three settings: the baseline (fp32, prefix recomputed
   per sample), ``share_prompt_prefix`` (fp32), and shared prefix + ``mixed_precision:
   bf16``; reports the loss and the largest relative gradient difference to the baseline;
2. greedy decoding of ``--n_decode`` test questions (T2T and S2T, ``--decode_batch``,
   ``--max_new_tokens``) in the same settings; reports how many hypotheses are identical
   to the baseline's.

Prints each setting's time and its speed-up over the baseline.

Measured on the 2-core AVX512-BF16 dev CPU (torch 2.13, SmolLM2-135M + Whisper tiny.en,
no other load, defaults above):

    training step, batch 8 (S2T)   baseline 3.34 s | shared 2.50 s (1.34x) | shared bf16 1.90 s (1.75x)
                                   loss 5.036685 = 5.036685 (shared); bf16 5.0221, max rel. grad diff 8e-2
    decoding T2T, 32 questions     0.311 | 0.283 (1.10x) | 0.156 s/question (2.00x); identical 32/32, 24/32
    decoding S2T, 32 questions     0.337 | 0.295 (1.14x) | 0.121 s/question (2.79x); identical 32/32, 15/32
                                   (S2T here: the untrained adaptor, so its tokens are noise)

Sharing is exact (identical hypotheses, gradients within 5e-6 relative); bf16 changes
greedy hypotheses as any precision change does.  Measured numbers are quoted in the README.
"""

from __future__ import annotations

import argparse
import time

import torch

from espnet_ext.inference.speechllm import load_model
from espnet_ext.train.batches import dump_batches, preprocessor_for


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


SETTINGS = {"baseline fp32": (False, "none"), "shared fp32": (True, "none"), "shared bf16": (True, "bf16")}


def _set(model, name: str) -> None:
    model.share_prompt_prefix, model.mixed_precision = SETTINGS[name]


def _run_settings(model, fn, repeats: int):
    """Best time and last result of ``fn`` per setting, settings interleaved."""
    times = {k: float("inf") for k in SETTINGS}
    results = {}
    for _ in range(repeats):
        for name in SETTINGS:
            _set(model, name)
            t, results[name] = _timed(fn)
            times[name] = min(times[name], t)
    return times, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_config", required=True)
    ap.add_argument("--train_dump", required=True)
    ap.add_argument("--test_dump", required=True)
    ap.add_argument("--train_batch", type=int, default=8)
    ap.add_argument("--decode_batch", type=int, default=16)
    ap.add_argument("--n_decode", type=int, default=32)
    ap.add_argument("--max_new_tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    torch.manual_seed(0)
    model = load_model(args.model_config)
    prep = preprocessor_for(model)
    base = "baseline fp32"

    # ---- training step -------------------------------------------------------------
    model.train()
    _, batch = next(iter(dump_batches(args.train_dump, prep, "speech", args.train_batch, with_answer=True)))
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        model.zero_grad(set_to_none=True)
        loss, _, _ = model(**batch, modality="speech")
        loss.backward()
        return loss.item(), [p.grad.clone() for p in params]

    step()  # warm-up
    times, results = _run_settings(model, step, args.repeats)
    print(f"training step, batch {args.train_batch} (S2T):")
    ref_loss, ref_grads = results[base]
    for name in SETTINGS:
        loss, grads = results[name]
        rel = max(((a - b).norm() / b.norm().clamp(min=1e-12)).item() for a, b in zip(grads, ref_grads))
        print(f"  {name:14s} {times[name]:6.2f} s  speed-up {times[base] / times[name]:.2f}x  "
              f"loss {loss:.6f} (baseline {ref_loss:.6f})  max rel. grad diff {rel:.1e}")

    # ---- decoding --------------------------------------------------------------------
    model.eval()
    for modality in ("text", "speech"):
        chosen, n = [], 0
        for ids, tensors in dump_batches(args.test_dump, prep, modality, args.decode_batch, with_answer=False):
            chosen.append(tensors)
            n += len(ids)
            if n >= args.n_decode:
                break

        def decode(chosen=chosen, modality=modality):
            return [h for t in chosen for h in model.generate(modality, max_new_tokens=args.max_new_tokens, **t)]

        times, outs = _run_settings(model, decode, args.repeats)
        print(f"decoding {modality}, {n} questions, batch {args.decode_batch}, max_new_tokens {args.max_new_tokens}:")
        for name in SETTINGS:
            same = sum(a == b for a, b in zip(outs[name], outs[base]))
            print(f"  {name:14s} {times[name] / n:.3f} s/question  speed-up {times[base] / times[name]:.2f}x  "
                  f"hypotheses identical to the baseline {same}/{n}")


if __name__ == "__main__":
    main()
