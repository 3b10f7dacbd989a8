"""Speak the built-in demo world into Kaldi-style data dirs (stage 1, demo).

Usage::

    python -m espnet_ext.bin.prepare_demo --out_dir data --wav_dir data/wav \\
        [--sets train,dev,test_llamaq,test_webq,test_llamaq_unseen,test_webq_unseen] \\
        [--train_source instructions|qa_world] [--voices auto|flite|espeak] \\
        [--voices_per_utt 2] [--max_utts_per_set N] [--seed 0]

Writes ``<out_dir>/<set>/`` (``wav.scp``, ``text``, ``answer``, ``utt2spk``, ``spk2utt``,
``demo_manifest.json``) and ``<wav_dir>/<set>/<utt_id>.wav`` (16 kHz).  For ``train`` and
``dev`` the first ``answer`` element is the full-sentence training target; test sets hold
only the short references.  Re-running skips complete sets.  Nothing is downloaded.  See
:mod:`espnet_ext.data.demo_world` for the questions, splits and voices.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Dict, List, Optional, Sequence

from espnet_ext.data.demo_world import DEMO_SPLITS, TRAIN_SOURCES, prepare_demo_sets
from espnet_ext.data.kaldi_dir import DataError
from espnet_ext.utils.logs import setup_logging


def _set_list(value: str) -> List[str]:
    """Parse a comma-separated list of demo set names."""
    sets = [s.strip() for s in value.split(",") if s.strip()]
    bad = [s for s in sets if s not in DEMO_SPLITS]
    if not sets or bad:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(DEMO_SPLITS)}, got {value!r}"
        )
    return sets


def get_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        description="Synthesise the offline demo's spoken sets (CMU Flite or espeak-ng)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out_dir", required=True, help="parent of the Kaldi-style set dirs")
    p.add_argument("--wav_dir", required=True, help="where the 16 kHz WAV files go")
    p.add_argument("--sets", type=_set_list, default=",".join(DEMO_SPLITS),
                   help="comma-separated sets to prepare")
    p.add_argument("--train_source", default="instructions", choices=TRAIN_SOURCES,
                   help="train/dev: the spoken-instruction bank (the paper's regime) or the QA "
                        "world's own questions (the test sets' short-answer format)")
    p.add_argument("--voices", default="auto", choices=("auto", "flite", "espeak"),
                   help="voice family; auto: flite when installed, else espeak-ng (a warning)")
    p.add_argument("--voices_per_utt", type=int, default=2,
                   help="voices speaking each train item (other sets: one voice each)")
    p.add_argument("--max_utts_per_set", type=int, default=None,
                   help="keep only the first N utterances of each set (quick runs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the entity split and order")
    p.add_argument("--log_level", default="INFO",
                   choices=("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"))
    return p


def main(cmd: Optional[Sequence[str]] = None) -> Dict[str, int]:
    """Prepare the demo sets; returns utterances per set."""
    args = get_parser().parse_args(cmd)
    setup_logging(args.log_level)
    counts = prepare_demo_sets(
        args.out_dir, args.wav_dir, sets=args.sets, voices_per_utt=args.voices_per_utt,
        max_utts_per_set=args.max_utts_per_set, seed=args.seed,
        train_source=args.train_source, voice_family=args.voices,
    )
    logging.info("demo sets: %s", ", ".join(f"{k}={v}" for k, v in counts.items()))
    return counts


if __name__ == "__main__":
    try:
        main()
    except (DataError, RuntimeError, ValueError) as e:
        logging.error("%s", e)
        sys.exit(1)
