#!/usr/bin/env python3
"""Adaptor warm-up by CTC onto the LLM embedding table — an addition to the paper's recipe.

Usage (from egs2/speechimp, after stage 2):
    python -m espnet_ext.bin.adaptor_warmup --config conf/warmup.yaml \\
        --model_config exp/pretrained/model.yaml --train_dump dump/train \\
        --valid_dump dump/dev [--align_dump dump/align] --output_dir exp/warmup

Writes ``exp/warmup/adaptor.pth`` (the adaptor's state dict), ``checkpoint.pth`` (resume
is automatic), ``history.tsv`` and ``warmup_summary.json``.  Stage-1 training then starts
from it with ``init_param: [exp/warmup/adaptor.pth::adaptor]``; leave that out to run the
paper's recipe unchanged.  See ``espnet_ext.warmup.ctc``.
"""

from __future__ import annotations

import argparse
import logging
from typing import Optional, Sequence

from espnet_ext.utils.logs import setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML with warmup_conf and alignment_conf (conf/warmup.yaml)")
    p.add_argument("--model_config", required=True, help="model preset YAML (exp/pretrained/model.yaml)")
    p.add_argument("--train_dump", required=True, help="dump dir of the task's training set (dump/train)")
    p.add_argument("--valid_dump", default=None, help="dump dir for token error rate (dump/dev)")
    p.add_argument("--align_dump", default=None, help="where the alignment set is built/read (dump/align)")
    p.add_argument("--output_dir", required=True, help="output dir (exp/warmup)")
    p.add_argument("--device", default="cpu", help="torch device")
    return p


def main(cmd: Optional[Sequence[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    setup_logging()
    from espnet_ext.utils.devices import job_device
    from espnet_ext.warmup.ctc import load_warmup_settings, run_warmup_job

    device = job_device(args.device)
    warmup_conf, alignment_conf = load_warmup_settings(args.config)
    summary = run_warmup_job(args.model_config, args.train_dump, args.valid_dump, args.output_dir,
                             warmup_conf, alignment_conf, args.align_dump, device)
    logging.info("warm-up done: %s", summary)


if __name__ == "__main__":
    main()
