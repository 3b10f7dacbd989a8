#!/usr/bin/env python3
"""Consolidate the sharded (FSDP2, DCP) checkpoint of a ``--sharding_conf`` run.

Usage:
    python -m espnet_ext.bin.consolidate_sharded --exp_dir exp/full [--out_dir exp/full/consolidated]

Reads ``<exp_dir>/config.yaml`` and ``<exp_dir>/checkpoint.dcp/`` in one process (no
process group) and writes ``<out_dir>/model.pth`` (the ESPnet state dict) plus
``llm/`` (HF folder) and ``adaptor.safetensors``; for LoRA ``adapter/`` (peft),
``adaptor.safetensors`` and ``merged/`` instead.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from espnet_ext.utils.logs import setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp_dir", required=True, help="the sharded run's output dir (config.yaml, checkpoint.dcp/)")
    p.add_argument("--out_dir", default=None, help="where to write; default: <exp_dir>/consolidated")
    return p


def main(cmd: Optional[Sequence[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    setup_logging()
    from pathlib import Path

    from espnet_ext.tasks.speech_llm import SpeechLLMTask
    from espnet_ext.train.sharding import consolidate

    model, conf = SpeechLLMTask.build_model_from_file(config_file=Path(args.exp_dir) / "config.yaml")
    paths = consolidate(model, args.exp_dir, args.out_dir, lora=getattr(conf, "lora_conf", None) is not None,
                        adaptor_conf=dict(getattr(conf, "adaptor_conf", None) or {}))
    for name, path in paths.items():
        print(f"{name}\t{path}")


if __name__ == "__main__":
    main()
