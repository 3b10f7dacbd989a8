#!/usr/bin/env python3
"""Mix a synthetic transcription task into the stage-1 training dump (recipe stage 2,
``run.sh --transcription_mix N``; an ADDITION to the paper's recipe).

Usage:
    python -m espnet_ext.bin.mix_transcription --config conf/warmup.yaml \\
        --model_config exp/pretrained/model.yaml --num_utts 2000 \\
        --train_dump dump/train --align_dump dump/align_mix --out_dir dump/train_mix

Builds (or reuses) ``--num_utts`` broad-vocabulary espeak-ng utterances with the frozen
encoder (``alignment_conf`` of ``--config`` for everything but their number; see
``espnet_ext/data/alignment.py``) and writes ``--out_dir`` (``espnet_ext/data/mix.py``):
the QA utterances plus the synthetic ones, answered with their own transcript under the
instruction ``llm_conf.task_prompts.transcribe``.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Optional, Sequence

from espnet_ext.utils.logs import setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML with alignment_conf (conf/warmup.yaml)")
    p.add_argument("--model_config", required=True, help="exp/pretrained/model.yaml (encoder, LLM, prompts)")
    p.add_argument("--num_utts", type=int, required=True, help="synthetic utterances (incl. alignment_conf.num_valid)")
    p.add_argument("--train_dump", required=True, help="the QA training dump (dump/train)")
    p.add_argument("--align_dump", required=True, help="where the synthetic set is built (dump/align_mix)")
    p.add_argument("--out_dir", required=True, help="the mixed dump to write (dump/train_mix)")
    p.add_argument("--device", default="cpu", help="torch device for the encoder")
    return p


def main(cmd: Optional[Sequence[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    setup_logging()
    from transformers import AutoTokenizer

    from espnet_ext.data.alignment import build_alignment_dump
    from espnet_ext.data.mix import write_transcription_mix
    from espnet_ext.models.encoder import WhisperSpeechEncoder
    from espnet_ext.models.llm import task_prompts_from_conf
    from espnet_ext.utils.conf import load_yaml
    from espnet_ext.utils.devices import job_device
    from espnet_ext.warmup.ctc import load_warmup_settings

    _, align_conf = load_warmup_settings(args.config)
    align_conf = dataclasses.replace(align_conf, num_utts=args.num_utts,
                                     num_valid=min(align_conf.num_valid, max(args.num_utts - 1, 0)))
    model = load_yaml(args.model_config)
    llm_conf, enc_conf = model["llm_conf"], dict(model.get("encoder_conf") or {})
    tokenizer = AutoTokenizer.from_pretrained(llm_conf["model_name_or_path"])
    prompts = task_prompts_from_conf(tokenizer, llm_conf)
    if "transcribe" not in prompts:
        raise SystemExit(f"{args.model_config}: llm_conf.task_prompts has no 'transcribe' prompt")
    encoder = WhisperSpeechEncoder(enc_conf["model_name_or_path"], pad_to_30s=enc_conf.get("pad_to_30s", False))
    build_alignment_dump(args.align_dump, tokenizer, encoder.to(job_device(args.device)), align_conf)
    overhead = {name: len(p.prefix) + len(p.suffix) for name, p in prompts.items()}
    k = int(model["adaptor_conf"]["downsample_rate"])
    write_transcription_mix(args.train_dump, f"{args.align_dump}/train", args.out_dir, tokenizer, overhead, k)


if __name__ == "__main__":
    main()
