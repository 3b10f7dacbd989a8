#!/usr/bin/env python3
"""Cost of importance scoring and of the exact threshold search.

    tools/venv/bin/python benchmarks/bench_importance.py [--hidden 256 --layers 8 --batches 4]
        [--n_values 100000000] [--skip_sort]

Prints ratios measured in one process (best of ``--repeats`` interleaved runs):

1. eq. (2) scoring (``score_importance``) against a plain forward + ``loss.backward()``
   over the same batches (target ≤ 1.05×), fp32 and bf16;
2. peak memory of scoring against plain forward+backward, each in a fresh child process
   (RSS sampled every 2 ms; target: no more than the model's gradients + one fp32
   accumulator of the scored parameters);
3. the global top-3 % threshold over ``--n_values`` random values against one full read
   (``sum``), ``torch.kthvalue`` and ``torch.sort`` (target ≤ 3× one full read).

Measured on the 2-core x86-64 dev machine (shared with a training job; ``--threads 1``),
torch 2.13 CPU, random Llama hidden 256 / 8 layers (4.8 M parameters, 4.7 M scored),
4 batches of 4 QA pairs, two runs:

    scoring / plain fwd+bwd   fp32 0.999-1.014×, bf16 1.003-1.015×           (target ≤ 1.05)
    peak RSS increase         scoring / (plain fwd+bwd + fp32 accumulator):
                              fp32 0.68-0.80, bf16 0.78-1.01                  (target ≤ 1)
                              RSS sampling is noisy (±15 MiB on ~70 MiB): "within noise of
                              the target", not better than it, is the honest reading for bf16
    top-3 % of 100 M values   one read (sum) 0.017 s; sample+filter 0.14 s = 8.7× one read
                              (target ≤ 3: not met); two-pass histogram 0.64 s = 39×;
                              torch.kthvalue 1.45 s (10× slower than sample+filter);
                              torch.sort 13 s (91× slower)
    (the original histogram, converting every value to int64: 4.8 s)

The ≤ 3× one-read target is not met: on this CPU every elementwise pass that writes an
output costs several reads (numpy's compare + compress, the fastest filter found, is
~4-5× a ``sum`` on its own; torch's ``x[x >= t]`` is ~15×), and a histogram needs
scattered increments.  The sample+filter path is one such pass plus small selections.
On the real SmolLM2 report (270 tensors, 106 M scores) the global top-3 % takes
0.33-0.65 s (histogram 2.2 s, concatenate + kthvalue 3.2 s), all three bit-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import torch


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples the resident set size in a thread; ``peak - start`` is the increase."""

    def __enter__(self):
        self.start = self.peak = _rss()
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, _rss())

    @property
    def increase(self) -> int:
        return self.peak - self.start


def _build(llm_dir: Path, dtype: str):
    from espnet_ext.tasks.speech_llm import SpeechLLMTask

    args = SpeechLLMTask.get_parser().parse_args(
        ["--llm_conf", f"model_name_or_path={llm_dir}", "--llm_conf", f"torch_dtype={dtype}",
         "--adaptor_conf", "hidden_size=32", "--encoder", "none", "--adaptor_conf", "input_size=32"])
    return SpeechLLMTask.build_model(args).eval()


def _batches(model, n: int, bs: int):
    from espnet_ext.train.batches import preprocessor_for
    from espnet_ext.train.collate import PadCollate

    pre = preprocessor_for(model)
    qa = [("What is the capital of France? Please answer in one sentence.", "The capital of France is Paris."),
          ("How many days are in a week, and what are they called?", "There are seven days in a week."),
          ("What is two plus three? Explain briefly.", "Two plus three is 5, because 2 + 3 = 5."),
          ("Which planet is known as the red planet?", "Mars is known as the red planet.")]
    out = []
    for b in range(n):
        s = [(f"u{b}{i}", pre(f"u{b}{i}", {"text": qa[(b + i) % 4][0], "answer": json.dumps([qa[(b + i) % 4][1]])}))
             for i in range(bs)]
        out.append(PadCollate(0.0, -1)(s)[1])
    return out


def _plain(model, batches):
    for b in batches:
        loss, _, _ = model(**b, modality="text")
        loss.backward()
    for p in model.parameters():
        p.grad = None


def _score(model, batches):
    from espnet_ext.importance.scoring import ImportanceConfig, score_importance

    return score_importance(model, batches, ImportanceConfig())


def _memory_child(llm_dir: str, dtype: str, which: str, n: int, bs: int, threads: int, q) -> None:
    torch.set_num_threads(threads)
    model = _build(Path(llm_dir), dtype)
    batches = _batches(model, n, bs)
    _plain(model, batches[:1])  # warm-up: lazy inits, allocator pools
    with PeakRSS() as m:
        (_plain if which == "plain" else _score)(model, batches)
    q.put(m.increase)


def bench_scoring(args) -> None:
    import multiprocessing as mp

    from espnet_ext.convert.tiny import build_tiny_llm
    from espnet_ext.importance.params import select_parameters

    llm_dir = Path(tempfile.mkdtemp(prefix="bench_llm_")) / "llm"
    build_tiny_llm(llm_dir, hidden_size=args.hidden, num_layers=args.layers)
    for dtype in ("float32", "bfloat16"):
        model = _build(llm_dir, dtype)
        batches = _batches(model, args.batches, args.batch_size)
        _plain(model, batches)
        _score(model, batches)  # warm-up
        t_plain = t_score = float("inf")
        for _ in range(args.repeats):  # interleaved: background load hits both alike
            t_plain = min(t_plain, _best(lambda m=model, b=batches: _plain(m, b), 1))
            t_score = min(t_score, _best(lambda m=model, b=batches: _score(m, b), 1))
        scored = select_parameters(model)
        n_scored = sum(p.numel() for p in scored.values())
        n_model = sum(p.numel() for p in model.parameters())
        elt = torch.finfo(getattr(torch, dtype)).bits // 8
        print(f"[scoring {dtype}] {n_model / 1e6:.1f} M params ({n_scored / 1e6:.1f} M scored), "
              f"{args.batches} batches × {args.batch_size}: plain fwd+bwd {t_plain:.3f} s, "
              f"scoring {t_score:.3f} s -> ratio {t_score / t_plain:.3f} (target <= 1.05)")
        ctx = mp.get_context("spawn")
        inc = {}
        for which in ("plain", "score"):
            q = ctx.Queue()
            p = ctx.Process(target=_memory_child,
                            args=(str(llm_dir), dtype, which, args.batches, args.batch_size, args.threads, q))
            p.start()
            inc[which] = q.get()
            p.join()
        grads, acc = n_model * elt, n_scored * 4
        print(f"[memory  {dtype}] peak RSS increase: plain fwd+bwd {inc['plain'] / 2**20:.1f} MiB "
              f"(its grads alone {grads / 2**20:.1f} MiB), scoring {inc['score'] / 2**20:.1f} MiB; "
              f"fp32 accumulator {acc / 2**20:.1f} MiB -> scoring / (plain + accumulator) = "
              f"{inc['score'] / (inc['plain'] + acc):.2f} (target <= 1)")


def bench_threshold(args) -> None:
    from espnet_ext.importance.threshold import threshold_for_fraction

    n = args.n_values
    x = torch.rand(n, generator=torch.Generator().manual_seed(0))
    k = int(round(0.03 * n))
    t_read = _best(lambda: x.sum(), args.repeats)
    t_auto = _best(lambda: threshold_for_fraction([x], 0.03, "top"), args.repeats)
    t_hist = _best(lambda: threshold_for_fraction([x], 0.03, "top", method="histogram"), args.repeats)
    t_kth = _best(lambda: torch.kthvalue(x, n - k + 1), 1)
    v = threshold_for_fraction([x], 0.03, "top")
    assert v == float(torch.kthvalue(x, n - k + 1).values)
    line = (f"[threshold] top-3 % of {n / 1e6:.0f} M values: one read (sum) {t_read:.4f} s; "
            f"sample+filter {t_auto:.3f} s = {t_auto / t_read:.1f}× one read (target <= 3); "
            f"histogram {t_hist:.3f} s = {t_hist / t_read:.1f}×; kthvalue {t_kth:.2f} s "
            f"(sample+filter is {t_kth / t_auto:.1f}× faster)")
    if not args.skip_sort:
        t_sort = _best(lambda: torch.sort(x), 1)
        line += f"; sort {t_sort:.2f} s ({t_sort / t_auto:.1f}× slower)"
    print(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256, help="hidden size of the random Llama")
    p.add_argument("--layers", type=int, default=8, help="its number of layers")
    p.add_argument("--batches", type=int, default=4, help="batches per measurement")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    p.add_argument("--n_values", type=int, default=100_000_000, help="threshold benchmark size")
    p.add_argument("--skip_sort", action="store_true", help="skip the (slow) full sort")
    p.add_argument("--only", choices=["scoring", "threshold"], default=None)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared CPU)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.only != "threshold":
        bench_scoring(args)
    if args.only != "scoring":
        bench_threshold(args)


if __name__ == "__main__":
    main()
