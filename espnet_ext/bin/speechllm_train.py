#!/usr/bin/env python3
"""Stage-1 training of the speech LLM with ESPnet's Trainer (recipe stage 4).

Usage:
    python -m espnet_ext.bin.speechllm_train --config conf/train_full.yaml \\
        --output_dir exp/train_full --train_data_path_and_name_and_type dump/train/enc_feats.scp,enc_feats,kaldi_ark ...

Everything ESPnet's ``asr_train`` offers works: ``--resume``, ``--ngpu``, tensorboard,
``config.yaml`` in the exp dir, and ``torchrun --nproc_per_node N`` (``--dist_backend gloo``
on CPU).  ``--print_config`` shows every option with its default.
"""

from __future__ import annotations

from typing import Optional, Sequence

from espnet_ext.tasks.speech_llm import SpeechLLMTask


def get_parser():
    return SpeechLLMTask.get_parser()


def main(cmd: Optional[Sequence[str]] = None) -> None:
    SpeechLLMTask.main(cmd=cmd)


if __name__ == "__main__":
    main()
