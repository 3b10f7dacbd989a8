#!/usr/bin/env python3
"""Stage-1 training of the speech LLM with ESPnet's Trainer (recipe stage 4).

Usage:
    python -m espnet_ext.bin.speechllm_train --config conf/train_full.yaml \\
        --output_dir exp/train_full --train_data_path_and_name_and_type dump/train/enc_feats.scp,enc_feats,kaldi_ark ...
    # on-the-fly encoding (encoder_conf.cache_features: false): the 16 kHz audio of the dump
    python -m espnet_ext.bin.speechllm_train ... --train_data_path_and_name_and_type dump/train/wav.scp,speech,sound \\
        --train_data_path_and_name_and_type dump/train/text,text,indexed_text ...

Everything ESPnet's ``asr_train`` offers works: ``--resume``, ``--ngpu``, tensorboard,
``config.yaml`` in the exp dir, and ``torchrun --nproc_per_node N`` (``--dist_backend gloo``
on CPU).  ``--print_config`` shows every option with its default.
"""

from __future__ import annotations

import sys
from typing import List, Optional, Sequence

from espnet_ext.tasks.speech_llm import SpeechLLMTask


def get_parser():
    return SpeechLLMTask.get_parser()


def feature_scps(cmd: Sequence[str]) -> List[str]:
    """The ``kaldi_ark`` feature scps among the ``--*_data_path_and_name_and_type`` options."""
    scps = []
    for flag, value in zip(cmd, cmd[1:]):
        if flag.endswith("_data_path_and_name_and_type") and value.endswith(",kaldi_ark"):
            scps.append(value.split(",")[0])
    return scps


def main(cmd: Optional[Sequence[str]] = None) -> None:
    from espnet_ext.data.dump import check_feature_archive

    for scp in feature_scps(list(sys.argv[1:] if cmd is None else cmd)):
        check_feature_archive(scp)  # a damaged dump: a clear error before ESPnet starts
    SpeechLLMTask.main(cmd=cmd)


if __name__ == "__main__":
    main()
