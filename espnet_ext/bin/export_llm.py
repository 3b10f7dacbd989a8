#!/usr/bin/env python3
"""Export a trained system's LLM as a plain Hugging Face folder (LoRA merged).

Usage:
    python -m espnet_ext.bin.export_llm --config exp/full/config.yaml \\
        --model_file exp/full/valid.loss.best.pth --out_dir exp/full/hf

Writes ``<out_dir>/`` (``config.json``, the weights, the tokenizer) for
``AutoModelForCausalLM.from_pretrained`` and for ``espnet_ext.bin.compare_checkpoints``.
A LoRA system is merged in fp32 (``export_lora`` also writes its peft adapter).
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from espnet_ext.utils.logs import setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the exp dir's config.yaml")
    p.add_argument("--model_file", required=True, help="checkpoint, e.g. exp/full/valid.loss.best.pth")
    p.add_argument("--out_dir", required=True, help="HF folder to write")
    return p


def main(cmd: Optional[Sequence[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    setup_logging()
    from espnet_ext.models.lora import export_llm
    from espnet_ext.tasks.speech_llm import SpeechLLMTask

    model, _ = SpeechLLMTask.build_model_from_file(args.config, args.model_file)
    export_llm(model, args.out_dir)


if __name__ == "__main__":
    main()
