#!/usr/bin/env python3
"""The cascade baseline (an addition to the paper's systems, recipe stage 5): Whisper's own
decoder transcribes each test question, then the No-FT LLM answers the transcript.

Usage:
    python -m espnet_ext.bin.cascade_decode --whisper_dir exp/pretrained/whisper \\
        --config exp/pretrained/model.yaml --output_dir exp/cascade \\
        --data_dir data/test_llamaq --dump_dir dump/test_llamaq \\
        --data_dir data/test_webq --dump_dir dump/test_webq

Writes ``<output_dir>/asr_<set>/`` (the transcripts as a text dump, ``asr_report.json``
with the WER) and ``<output_dir>/decode_<set>_speech/hyp``.  Both steps are stamped and
skipped when their inputs are unchanged.  Works under ``torchrun`` (``--device cuda``: each
rank on cuda:$LOCAL_RANK): each rank transcribes and answers a share of the batches, rank 0
writes the outputs, which equal a one-process run's.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

from espnet_ext.utils.logs import setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--whisper_dir", required=True, help="HF Whisper folder with its decoder (stage 2)")
    p.add_argument("--config", required=True, help="the No-FT model's YAML (exp/pretrained/model.yaml)")
    p.add_argument("--data_dir", action="append", required=True, help="Kaldi data dir with wav.scp (repeatable)")
    p.add_argument("--dump_dir", action="append", required=True, help="its dump dir, per --data_dir")
    p.add_argument("--output_dir", required=True, help="the cascade's exp dir (exp/cascade)")
    p.add_argument("--asr_batch_size", type=int, default=16, help="utterances per Whisper generate() call")
    p.add_argument("--batch_size", type=int, default=16, help="utterances per LLM generate() call")
    p.add_argument("--max_new_tokens", type=int, default=64, help="cap on the LLM's answer length")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda (under torchrun: cuda:$LOCAL_RANK on every rank), cuda:N")
    return p


def main(cmd: Optional[Sequence[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    if len(args.data_dir) != len(args.dump_dir):
        raise SystemExit("give one --dump_dir per --data_dir")
    setup_logging()
    import torch

    from espnet_ext.inference.cascade import ASR_REPORT, load_asr, transcribe_set
    from espnet_ext.inference.decode import decode_dump_dir, is_decoded, model_stamp
    from espnet_ext.inference.speechllm import load_model
    from espnet_ext.utils.devices import init_distributed, job_device
    from espnet_ext.utils.stamps import canonical, file_identity, has_stamp

    device = job_device(args.device)
    init_distributed(device)  # under torchrun each rank transcribes and decodes its share
    out = Path(args.output_dir)
    whisper = file_identity(Path(args.whisper_dir) / "model.safetensors", content=False)
    sets = []
    for data_dir, dump_dir in zip(args.data_dir, args.dump_dir):
        name = Path(dump_dir).name
        asr_stamp = canonical({"whisper": whisper, "wav.scp": file_identity(Path(data_dir) / "wav.scp", True),
                               "text": file_identity(Path(dump_dir) / "text", True)})
        sets.append((data_dir, dump_dir, out / f"asr_{name}", out / f"decode_{name}_speech", asr_stamp))

    todo = [s for s in sets if not has_stamp(s[2] / ASR_REPORT, s[4])]
    if todo:
        model, processor = load_asr(args.whisper_dir, device)
        for data_dir, dump_dir, asr_dir, _, asr_stamp in todo:
            transcribe_set(model, processor, data_dir, dump_dir, asr_dir, args.asr_batch_size, asr_stamp)
        del model
    jobs = []
    for _, _, asr_dir, dec_dir, _ in sets:
        stamp = {**model_stamp(args.config, None, "text", args.max_new_tokens),
                 "transcripts": file_identity(asr_dir / "text", content=True)}
        if is_decoded(dec_dir, stamp):
            logging.info("%s already decoded from the same transcripts; skipping", dec_dir)
        else:
            jobs.append((asr_dir, dec_dir, stamp))
    if jobs:
        llm = load_model(args.config, None, device)
        for asr_dir, dec_dir, stamp in jobs:
            r = decode_dump_dir(llm, asr_dir, dec_dir, "text", args.batch_size, args.max_new_tokens, stamp=stamp)
            logging.info("%s: %d utts in %.1f s (%.3f s/utt)", dec_dir, r.n_utts, r.seconds, r.seconds_per_utt)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
