#!/usr/bin/env python3
"""Greedy T2T / S2T decoding of dump directories (recipe stage 5).

Usage:
    # a trained system (ESPnet exp dir)
    python -m espnet_ext.bin.speechllm_inference --config exp/train_full/config.yaml \\
        --model_file exp/train_full/valid.loss.best.pth --modality speech \\
        --data_dir dump/test_llamaq --output_dir exp/train_full/decode_test_llamaq_speech
    # the No-FT baseline: the pretrained LLM described by a training YAML, text only
    python -m espnet_ext.bin.speechllm_inference --config conf/train_full.yaml \\
        --modality text --data_dir dump/test_llamaq --output_dir exp/noft/decode_test_llamaq_text

Several ``--data_dir``/``--output_dir`` pairs may be given, with one ``--modality`` for
all of them or one per pair (T2T and S2T of a system in one call); the model is loaded once.
Works under ``torchrun`` (each rank decodes a share; rank 0 writes ``hyp``).  An output dir
is redone when the model, the options or its input (the dump's ``enc_feats.scp`` for speech, or
its ``wav.scp`` in a dump made for on-the-fly encoding; ``text`` for text; e.g. a dump redone with
``--pad_to_30s``) changed.  The model is loaded as
``espnet_ext.inference.speechllm.SpeechLLMInference`` loads it (LoRA merged), which decodes
every batch; call that class from Python to answer audio files or arrays directly.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

from espnet_ext.utils.logs import setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="exp dir config.yaml, or a training YAML for No-FT")
    p.add_argument("--model_file", default=None, help="checkpoint (.pth); omit for the No-FT baseline")
    p.add_argument("--modality", choices=["speech", "text", "chat"], action="append", required=True,
                   help="S2T (speech) or T2T input: text = the transcript in the speech LLM's prompt, "
                   "chat = the transcript in the LLM's own chat template; once for every --data_dir, "
                   "or once per --data_dir")
    p.add_argument("--data_dir", action="append", required=True, help="dump dir (repeatable)")
    p.add_argument("--output_dir", action="append", required=True, help="output dir per --data_dir")
    p.add_argument("--batch_size", type=int, default=16, help="utterances per generate() call")
    p.add_argument("--max_new_tokens", type=int, default=64,
                   help="cap on answer length (LLaMA-Omni: 256; short-answer QA needs far fewer)")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda (under torchrun: cuda:$LOCAL_RANK on every rank), cuda:N")
    p.add_argument("--overwrite", choices=["true", "false"], default="false",
                   help="redo output dirs whose hyp was decoded with the same model and options")
    return p


def main(cmd: Optional[Sequence[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    if len(args.data_dir) != len(args.output_dir):
        raise SystemExit("give one --output_dir per --data_dir")
    if len(args.modality) == 1:
        args.modality = args.modality * len(args.data_dir)
    elif len(args.modality) != len(args.data_dir):
        raise SystemExit(f"give one --modality for all, or one per --data_dir "
                         f"({len(args.modality)} --modality for {len(args.data_dir)} --data_dir)")
    setup_logging()
    import torch

    from espnet_ext.inference.decode import decode_dump_dir, is_decoded, model_stamp
    from espnet_ext.inference.speechllm import SpeechLLMInference
    from espnet_ext.train.batches import speech_source
    from espnet_ext.utils.devices import init_distributed, job_device
    from espnet_ext.utils.stamps import file_identity

    def stamp_of(data_dir: str, modality: str) -> dict:
        speech = "enc_feats.scp" if speech_source(data_dir) == "enc_feats" else "wav.scp"
        inputs = Path(data_dir) / (speech if modality == "speech" else "text")  # text, chat
        return {**model_stamp(args.config, args.model_file, modality, args.max_new_tokens),
                "input": file_identity(inputs, content=False) if inputs.is_file() else None}

    jobs = [(d, o, m, stamp_of(d, m)) for d, o, m in zip(args.data_dir, args.output_dir, args.modality)]
    todo = [j for j in jobs if args.overwrite == "true" or not is_decoded(j[1], j[3])]
    for j in jobs:
        if j not in todo:
            logging.info("%s already decoded with this model; skipping (--overwrite true to redo)", j[1])
    if not todo:
        return
    device = job_device(args.device)  # under torchrun each rank decodes its share of the batches
    init_distributed(device)
    model = SpeechLLMInference.from_config(args.config, args.model_file, device).model  # LoRA merged
    for data_dir, out_dir, modality, stamp in todo:
        r = decode_dump_dir(model, data_dir, out_dir, modality, args.batch_size,
                            args.max_new_tokens, stamp=stamp)
        logging.info("%s %s: %d utts in %.1f s (%.3f s/utt, %d new tokens)",
                     data_dir, modality, r.n_utts, r.seconds, r.seconds_per_utt, r.n_new_tokens)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
