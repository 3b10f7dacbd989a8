#!/usr/bin/env python3
"""Importance after fine-tuning, its shift, rank clustering and parameter changes (stage 6).

Usage:
    python -m espnet_ext.bin.importance_analyze --config conf/importance.yaml --exp_dir exp \\
        --systems "full layerlr lora" --base_model_config exp/pretrained/model.yaml \\
        --data_dir dump/train --eval_dir dump/dev --checkpoint valid.loss.best.pth

Scores every system's textual importance on the base report's utterances
(``exp/importance/<tag>/``; the systems of ``analysis.speech_roles``, default Full-FT, also
their speech-input importance, ``exp/importance/<tag>/speech/``), then writes ``exp/results/figures/fig{1,2,4}_*.png``,
``exp/results/analysis.json`` and ``analysis_detail.json``.  Reports and the analysis are
redone only when their inputs changed (or with ``--overwrite true``).  With
``--sharding_conf`` (under torchrun) each system's report and Table 1 are computed on its
FSDP2 shards (``espnet_ext.importance.sharded``); the figures and the parameter-change
analysis still read whole weights on the CPU.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from espnet2.utils.nested_dict_action import NestedDictAction

from espnet_ext.utils.logs import setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="conf/importance.yaml (scoring, deactivation, analysis)")
    p.add_argument("--exp_dir", default="exp", help="experiment root (exp/importance/base must exist)")
    p.add_argument("--systems", default="", help="space-separated trained system tags (exp/<tag>)")
    p.add_argument("--base_model_config", required=True, help="the base model's YAML (exp/pretrained/model.yaml)")
    p.add_argument("--data_dir", required=True, help="dump dir of the base report's scoring subset")
    p.add_argument("--eval_dir", default=None, help="held-out dump dir: Table-1 check of every system")
    p.add_argument("--checkpoint", default="valid.loss.best.pth", help="checkpoint file name in exp/<tag>")
    p.add_argument("--out_dir", default=None, help="default: <exp_dir>/results")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--overwrite", choices=["true", "false"], default="false", help="redo up-to-date outputs")
    p.add_argument("--sharding_conf", action=NestedDictAction, default=None,
                   help="FSDP2-shard each system's model over the torchrun ranks for its importance "
                   "report and Table 1, e.g. engine=fsdp2; default: unsharded")
    return p


def main(cmd: Optional[Sequence[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    setup_logging()
    from espnet_ext.analysis.analyze import run_analysis
    from espnet_ext.analysis.score import sharding_config
    from espnet_ext.utils.devices import init_distributed, job_device

    device = job_device(args.device)
    init_distributed(device)  # under torchrun every rank scores a share of the batches
    run_analysis(args.exp_dir, args.systems.split(), args.config, args.base_model_config, args.data_dir,
                 args.eval_dir, args.checkpoint, args.out_dir, device, args.overwrite == "true",
                 sharding=sharding_config(args.sharding_conf))


if __name__ == "__main__":
    main()
