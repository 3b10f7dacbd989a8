#!/usr/bin/env python3
"""Check the audio of Kaldi-style data dirs and cache frozen-encoder outputs (recipe stage 2).

Usage:
    python -m espnet_ext.bin.dump_features --whisper exp/pretrained/whisper \\
        --llm exp/pretrained/llm --data_dir data/train --out_dir dump/train \\
        [--long_audio truncate|reject] [--skip_bad_utts true] [--pad_to_30s false] [--device cuda] \\
        [--cache_features false]
    # several sets in one job (the encoder is loaded once)
    python -m espnet_ext.bin.dump_features ... --data_dir data/train --out_dir dump/train \
        --data_dir data/dev --out_dir dump/dev

Writes ``enc_feats.{ark,scp}``, ESPnet shape files and copies of the Kaldi files (see
``espnet_ext.data.dump``).  ``--cache_features false`` (the model preset's
``encoder_conf.cache_features``: on-the-fly encoding) writes no features: the audio is checked, made
16 kHz mono where it is not, and counted into the shape files.  A finished dump is not redone unless
``--overwrite true``, its archive is damaged, or it was made with another ``--pad_to_30s``,
``--downsample_rate`` or ``--cache_features`` (its ``dump_report.json`` records all three).  A killed
dump with the cache continues from the encoder batches it finished (kept in ``dump/.<set>.partial/``
with an fsynced journal) when rerun with the same inputs and options.

``--pad_to_30s true`` is LLaMA-Omni's input path: every utterance is padded to 30 s, i.e. 3000 mel
frames → 1500 encoder frames → ``1500 // k`` adaptor embeddings (300 at k = 5), and the shape
files count that many speech positions for every utterance.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from espnet2.utils.types import str2bool

from espnet_ext.utils.logs import setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--whisper", required=True, help="HF Whisper folder (exp/pretrained/whisper)")
    p.add_argument("--llm", required=True, help="HF causal-LM folder (for tokenizer and prompt)")
    p.add_argument("--data_dir", action="append", required=True,
                   help="Kaldi-style input dir (data/<set>; repeatable)")
    p.add_argument("--out_dir", action="append", required=True, help="output dump dir per --data_dir")
    p.add_argument("--downsample_rate", type=int, default=5, help="adaptor k (LLaMA-Omni: 5)")
    p.add_argument("--pad_to_30s", type=str2bool, default=False,
                   help="LLaMA-Omni's 30 s padding: 1500 encoder frames for every utterance (the model "
                        "preset's encoder_conf.pad_to_30s)")
    p.add_argument("--cache_features", type=str2bool, default=True,
                   help="write the encoder outputs (enc_feats.scp); false = the jobs encode the audio on the "
                        "fly (the model preset's encoder_conf.cache_features)")
    p.add_argument("--long_audio", choices=["truncate", "reject"], default="truncate",
                   help="audio longer than the encoder window (30 s)")
    p.add_argument("--skip_bad_utts", type=str2bool, default=False, help="skip and report bad utterances")
    p.add_argument("--batch_size", type=int, default=16, help="utterances per encoder batch")
    p.add_argument("--overwrite", type=str2bool, default=False, help="redo a finished dump")
    p.add_argument("--device", default="cpu", help="torch device of the encoder: cpu, cuda, cuda:N")
    return p


def main(cmd: Optional[Sequence[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    setup_logging()
    from transformers import AutoTokenizer

    from espnet_ext.data.dump import (
        check_feature_archive,
        dump_encoder_features,
        dump_options_mismatch,
        read_dump_report,
    )
    from espnet_ext.data.kaldi_dir import DataError
    from espnet_ext.models.encoder import WhisperSpeechEncoder
    from espnet_ext.models.llm import ChatPrompt
    from espnet_ext.utils.devices import job_device

    if len(args.data_dir) != len(args.out_dir):
        raise SystemExit("give one --out_dir per --data_dir")
    device = job_device(args.device)  # a bad --device fails before any work
    todo = []
    for data_dir, out_dir in zip(args.data_dir, args.out_dir):
        report = read_dump_report(out_dir)
        if report is not None and not args.overwrite:
            other = dump_options_mismatch(report, args.pad_to_30s, args.downsample_rate, args.cache_features)
            if other:  # e.g. a real-length dump where the model preset asks for 30 s padding
                logging.warning("%s: %s; redoing it", out_dir, other)
                todo.append((data_dir, out_dir))
                continue
            try:
                if args.cache_features:
                    check_feature_archive(f"{out_dir}/enc_feats.scp")
            except DataError as e:  # finished once, damaged since (a truncated ark): redo it
                logging.warning("%s; redoing it", e)
                todo.append((data_dir, out_dir))
                continue
            logging.info("%s already dumped; skipping (--overwrite true to redo)", out_dir)
        else:
            todo.append((data_dir, out_dir))
    if not todo:
        return
    tokenizer = AutoTokenizer.from_pretrained(args.llm)
    prompt = ChatPrompt.from_tokenizer(tokenizer)
    encoder = WhisperSpeechEncoder(args.whisper, pad_to_30s=args.pad_to_30s, cache_features=args.cache_features)
    if args.cache_features:  # on the fly the dump only counts frames: the encoder never runs here
        encoder.to(device)
    for data_dir, out_dir in todo:
        try:
            dump_encoder_features(
                data_dir, out_dir, encoder, tokenizer,
                prompt_overhead=len(prompt.prefix) + len(prompt.suffix),
                downsample_rate=args.downsample_rate, long_audio=args.long_audio,
                skip_bad_utts=args.skip_bad_utts, batch_size=args.batch_size,
            )
        except DataError as e:
            logging.error("%s (use --skip_bad_utts true to skip such utterances)", e)
            sys.exit(1)


if __name__ == "__main__":
    main()
