#!/usr/bin/env python3
"""Bring your own checkpoints: stage 6's importance analysis on any Hugging Face causal LMs.

Usage:
    # a base LLM against fine-tuned folders and a peft adapter, on prompt/response pairs
    python -m espnet_ext.bin.compare_checkpoints --base Llama-3.2-1B-Instruct \\
        --tuned omni=llama-omni-llm --tuned mylora=runs/lora/adapter \\
        --data qa.jsonl --eval_data qa_dev.jsonl --out_dir compare/omni
    # the recipe's systems (exported with espnet_ext.bin.export_llm), the recipe's prompt and
    # the utterances of stage 3's base report: the same numbers as stage 6 (run in egs2/speechimp)
    python -m espnet_ext.bin.compare_checkpoints --config conf/importance.yaml \\
        --base exp/pretrained/llm --tuned full=exp/full/hf --tuned lora=exp/lora/export/adapter \\
        --data dump/train --prompt recipe --reuse_subset_from exp/importance/base \\
        --mixed_precision auto --out_dir exp/compare
    # add speech-input importance of a speech LLM of this recipe (Fig. 1 rows)
    ... --speech_exp_dir exp/full --speech_data_dir dump/train --speech_name full

Data (``--data``, ``--eval_data``): a Kaldi-style dir (``text`` = question, ``answer`` =
JSON list, the first is the response), a ``.jsonl`` of ``{"prompt", "response"}`` objects,
or a plain-text file (one sample per line, language-model loss).  ``--tuned NAME=PATH``
takes a model folder or a peft adapter folder (applied on ``--base``); every one must share
the base's architecture and tensor names, or the job stops naming the first mismatching
tensor.  Writes ``<out_dir>/RESULTS.md`` (Table 1 per model with ``--eval_data``, the
layer-wise shift, rank clustering and parameter changes, Fig. 1-4), ``compare.json``,
``analysis.json``, ``figures/``, ``importance/<name>/`` and ``utt_list``.  Under
``torchrun`` every rank scores a share of the batches; one model is on the device at a time.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Optional, Sequence

from espnet_ext.utils.logs import setup_logging


def _named(value: str) -> tuple:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {value!r}")
    return name, path


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="base causal-LM folder (config.json + weights + tokenizer)")
    p.add_argument("--tuned", type=_named, action="append", default=[], required=True,
                   help="NAME=PATH of a fine-tuned folder or a peft adapter on the base (repeatable)")
    p.add_argument("--data", required=True, help="Kaldi-style dir, .jsonl of prompt/response, or plain text")
    p.add_argument("--data_format", choices=["auto", "kaldi", "jsonl", "text"], default="auto",
                   help="format of --data and --eval_data (auto: dir = kaldi, .jsonl = jsonl, else text)")
    p.add_argument("--eval_data", default=None, help="held-out data of the same format: Table 1 of every model")
    p.add_argument("--out_dir", required=True, help="output dir")
    p.add_argument("--config", default=None,
                   help="importance YAML (conf/importance.yaml: scoring, deactivation, analysis); default: defaults")
    p.add_argument("--prompt", choices=["own", "recipe"], default="own",
                   help="own: the model's chat template around the prompt alone; recipe: the speech LLM's "
                        "LLaMA-Omni system and user prompt with the question in place of <speech>")
    subset = p.add_mutually_exclusive_group()
    subset.add_argument("--utt_list", default=None, help="score these utterance ids (one per line)")
    subset.add_argument("--reuse_subset_from", default=None,
                        help="score the utterances of an importance report (e.g. exp/importance/base)")
    p.add_argument("--speech_exp_dir", default=None, help="speech LLM exp dir of this recipe (config.yaml)")
    p.add_argument("--speech_checkpoint", default="valid.loss.best.pth", help="checkpoint in --speech_exp_dir")
    p.add_argument("--speech_data_dir", default=None, help="dump dir with the utterances' encoder features")
    p.add_argument("--speech_name", default=None, help="its name in the report (default: the exp dir's name)")
    p.add_argument("--torch_dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="dtype the models are loaded in")
    p.add_argument("--mixed_precision", choices=["none", "bf16", "auto"], default="none",
                   help="bf16 autocast (as the model preset's model_conf.mixed_precision; the demo's is auto)")
    p.add_argument("--attn_implementation", default=None, help="transformers attention backend (default: its own)")
    p.add_argument("--check_dtype", choices=["true", "false"], default="true",
                   help="a tensor stored in another dtype than the base's is a mismatch")
    p.add_argument("--share_prompt_prefix", choices=["auto", "true", "false"], default="auto",
                   help="compute as the speech LLM does (the prompt prefix once per batch, the LM head alone); "
                        "auto: with --prompt recipe, where it reproduces stage 6's numbers in any precision")
    p.add_argument("--device", default="cpu", help="cpu, cuda (under torchrun: cuda:$LOCAL_RANK), cuda:N")
    p.add_argument("--overwrite", choices=["true", "false"], default="false", help="rescore up-to-date reports")
    return p


def main(cmd: Optional[Sequence[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    setup_logging()
    from pathlib import Path

    from espnet_ext.analysis.compare import CompareOptions, SpeechExp, run_compare
    from espnet_ext.eval.results import render_compare_md
    from espnet_ext.utils.atomic import atomic_write_text
    from espnet_ext.utils.devices import init_distributed, job_device

    tuned = dict(args.tuned)
    if len(tuned) != len(args.tuned):
        raise SystemExit("--tuned: every NAME must be different")
    speech = None
    if args.speech_exp_dir:
        exp = Path(args.speech_exp_dir)
        speech = SpeechExp(str(exp / "config.yaml"), str(exp / args.speech_checkpoint),
                           args.speech_data_dir or args.data, args.speech_name or exp.name)
    options = CompareOptions(args.prompt, args.data_format, args.torch_dtype, args.mixed_precision,
                             args.attn_implementation, args.check_dtype == "true", args.share_prompt_prefix)
    device = job_device(args.device)
    init_distributed(device)
    command = shlex.join(["python", "-m", "espnet_ext.bin.compare_checkpoints",
                          *(sys.argv[1:] if cmd is None else cmd)])
    summary = run_compare(args.base, tuned, args.data, args.out_dir, args.config, options, args.eval_data,
                          args.utt_list, args.reuse_subset_from, speech, device, args.overwrite == "true", command)
    if summary:  # rank 0
        atomic_write_text(Path(args.out_dir) / "RESULTS.md", render_compare_md(summary))


if __name__ == "__main__":
    main()
