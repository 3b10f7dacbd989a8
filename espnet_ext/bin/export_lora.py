#!/usr/bin/env python3
"""Export a LoRA-trained system: peft adapter, speech adaptor and merged HF model.

Usage:
    python -m espnet_ext.bin.export_lora --config exp/lora/config.yaml \\
        --model_file exp/lora/valid.loss.best.pth --out_dir exp/lora/export

Writes ``<out_dir>/adapter/`` (``PeftModel.from_pretrained(base_llm, adapter_dir)``),
``<out_dir>/adaptor.safetensors`` and ``<out_dir>/merged/`` (a plain HF folder for
``AutoModelForCausalLM.from_pretrained``, tokenizer included).
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from espnet_ext.utils.logs import setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the exp dir's config.yaml (with lora_conf)")
    p.add_argument("--model_file", required=True, help="checkpoint, e.g. exp/lora/valid.loss.best.pth")
    p.add_argument("--out_dir", required=True, help="export dir")
    return p


def main(cmd: Optional[Sequence[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    setup_logging()
    from espnet_ext.models.lora import export_lora
    from espnet_ext.tasks.speech_llm import SpeechLLMTask

    model, train_args = SpeechLLMTask.build_model_from_file(args.config, args.model_file)
    export_lora(model, args.out_dir, adaptor_conf=getattr(train_args, "adaptor_conf", None))


if __name__ == "__main__":
    main()
