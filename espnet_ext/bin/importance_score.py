#!/usr/bin/env python3
"""Parameter importance (eq. 2) of a model + deactivation check (Table 1); stages 3 and 6.

Usage:
    # the base LLM (stage 3)
    python -m espnet_ext.bin.importance_score --config conf/importance.yaml \\
        --model_config exp/pretrained/model.yaml --data_dir dump/train --eval_dir dump/dev \\
        --output_dir exp/importance/base
    # a trained system (stage 6)
    python -m espnet_ext.bin.importance_score --config conf/importance.yaml \\
        --model_config exp/full/config.yaml --model_file exp/full/valid.loss.best.pth \\
        --data_dir dump/train --output_dir exp/importance/full

Writes ``scores.safetensors``, ``summary.json`` and, with ``--eval_dir``, ``table1.{json,md}``;
when Table 1 has a speech row (a trained model), also the speech-input report on the same
utterances in ``<output_dir>/speech/``, whose masks the speech row uses.
A finished report of the same model files and options is not redone unless ``--overwrite true``.
Under ``torchrun`` every
rank scores a share of the batches and the gradient sums are all-reduced.

    # the model FSDP2-sharded over the ranks (an addition, for models no rank holds whole;
    # the same value syntax as training's --sharding_conf)
    torchrun --nproc_per_node 8 -m espnet_ext.bin.importance_score ... --device cuda \
        --sharding_conf "engine=fsdp2,param_dtype=float32"
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Optional, Sequence

from espnet2.utils.nested_dict_action import NestedDictAction

from espnet_ext.utils.logs import setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="conf/importance.yaml")
    p.add_argument("--model_config", required=True, help="model YAML (exp/pretrained/model.yaml or exp config.yaml)")
    p.add_argument("--model_file", default=None, help="checkpoint; omit for the pretrained base model")
    p.add_argument("--data_dir", required=True, help="dump dir the scoring subset is drawn from")
    p.add_argument("--eval_dir", default=None, help="held-out dump dir for the Table-1 perplexities")
    p.add_argument("--output_dir", required=True, help="report dir")
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda (under torchrun: cuda:$LOCAL_RANK on every rank), cuda:N")
    p.add_argument("--overwrite", choices=["true", "false"], default="false", help="redo a finished report")
    p.add_argument("--sharding_conf", action=NestedDictAction, default=None,
                   help="FSDP2-shard the model over the torchrun ranks (scores, thresholds and Table 1 on "
                   "the shards), e.g. engine=fsdp2 or {engine: fsdp2, param_dtype: float32}; default: unsharded")
    return p


def main(cmd: Optional[Sequence[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    setup_logging()

    from espnet_ext.analysis.score import is_scored, report_stamp, run_importance, sharding_config
    from espnet_ext.analysis.settings import load_importance_config
    from espnet_ext.inference.speechllm import load_model
    from espnet_ext.utils.devices import init_distributed, job_device

    settings = load_importance_config(args.config)
    scoring, deactivation = settings.scoring, settings.deactivation
    if args.model_file is None and "speech" in deactivation.modalities:
        # the pretrained base has an untrained (random) adaptor: no speech perplexity row
        logging.info("no --model_file (pretrained base, random adaptor): Table-1 rows for text only")
        deactivation = dataclasses.replace(
            deactivation, modalities=tuple(m for m in deactivation.modalities if m != "speech"))
    stamp = report_stamp(args.model_config, args.model_file, scoring, args.data_dir, deactivation, args.eval_dir)
    if args.overwrite == "false" and is_scored(args.output_dir, stamp):
        logging.info("%s already scored from the same model and options; skipping (--overwrite true "
                     "to redo)", args.output_dir)
        return
    device = job_device(args.device)
    init_distributed(device)
    sharding = sharding_config(args.sharding_conf)
    # sharded: load on the CPU; sharding moves one layer at a time onto the device
    model = load_model(args.model_config, args.model_file, "cpu" if sharding else device)
    run_importance(
        model, args.data_dir, args.output_dir, scoring, deactivation if args.eval_dir else None,
        args.eval_dir, provenance={"model_config": args.model_config, "model_file": args.model_file,
                                   "stamp": stamp},
        sharding=sharding, device=device,
    )


if __name__ == "__main__":
    main()
