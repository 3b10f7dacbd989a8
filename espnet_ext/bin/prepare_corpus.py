"""Convert a local copy of a spoken-QA corpus into a Kaldi-style data directory (stage 1).

Usage::

    python -m espnet_ext.bin.prepare_corpus --corpus voiceassistant \\
        --src /path/to/VoiceAssistant-400K --split train \\
        --out_dir data/train_va --wav_dir data/wav/train_va \\
        [--max_utts N] [--seed 0] [--skip_bad_utts true] [--max_seconds 30]

Corpora: voiceassistant (gpt-omni/VoiceAssistant-400K, first turns only), spoken_alpaca
(GSQA/spoken-alpaca-gpt4), llama_questions (fixie-ai/llama-questions), web_questions
(fixie-ai/spoken-web-questions).  Nothing is downloaded.  See
:mod:`espnet_ext.data.corpora` for the rules.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional, Sequence

from espnet_ext.data.corpora import CORPORA, ConversionReport, convert_corpus
from espnet_ext.data.kaldi_dir import DataError
from espnet_ext.utils.logs import setup_logging


def str2bool(value: str) -> bool:
    """Parse ``true``/``false`` (ESPnet's convention for boolean options)."""
    v = value.strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def get_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        description="Convert a local spoken-QA corpus copy into a Kaldi-style data dir",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--corpus", required=True, choices=CORPORA)
    p.add_argument("--src", required=True, help="local copy of the Hugging Face dataset")
    p.add_argument("--split", required=True, help="split to convert (train, test, ...)")
    p.add_argument("--out_dir", required=True, help="Kaldi-style output directory")
    p.add_argument("--wav_dir", required=True, help="where the 16 kHz WAV files go")
    p.add_argument("--max_utts", type=int, default=None, help="seeded random subset size")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset")
    p.add_argument("--skip_bad_utts", type=str2bool, default=False,
                   help="skip and count bad rows instead of failing")
    p.add_argument("--max_seconds", type=float, default=None,
                   help="skip (and count) audio longer than this; default: no limit")
    p.add_argument("--log_level", default="INFO",
                   choices=("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"))
    return p


def main(cmd: Optional[Sequence[str]] = None) -> ConversionReport:
    """Run the conversion; raises :class:`DataError` on bad data."""
    args = get_parser().parse_args(cmd)
    setup_logging(args.log_level)
    report = convert_corpus(
        args.corpus, args.src, args.out_dir, args.split, args.wav_dir,
        max_utts=args.max_utts, seed=args.seed, skip_bad_utts=args.skip_bad_utts,
        max_seconds=args.max_seconds,
    )
    logging.info("%s", report.summary())
    logging.info("report: %s", json.dumps(report.to_dict(), sort_keys=True))
    return report


if __name__ == "__main__":
    try:
        main()
    except DataError as e:
        logging.error("%s", e)
        sys.exit(1)
