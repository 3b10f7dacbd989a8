#!/usr/bin/env python3
"""Combine Kaldi-style data dirs and split off a held-out set (recipe stage 1, real data).

Usage:
    python -m espnet_ext.bin.combine_data --src data/train_va --src data/train_alpaca \\
        --out data/train_all
    python -m espnet_ext.bin.combine_data --src data/train_all --out data/train \\
        --held_out data/dev --n_held_out 500 [--seed 0]
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path
from typing import Optional, Sequence

from espnet_ext.utils.logs import setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", action="append", required=True, help="input data dir (repeatable)")
    p.add_argument("--out", required=True, help="output data dir")
    p.add_argument("--held_out", default=None, help="also write a held-out dir (e.g. data/dev)")
    p.add_argument("--n_held_out", type=int, default=0, help="utterances to hold out")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out sample")
    return p


def main(cmd: Optional[Sequence[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    setup_logging()
    from espnet_ext.data.kaldi_dir import combine_kaldi_dirs, split_off_kaldi_dir

    if args.held_out is None:
        n = combine_kaldi_dirs(args.src, args.out)
        logging.info("wrote %s (%d utterances)", args.out, n)
        return
    tmp = Path(args.out).with_name(f".{Path(args.out).name}.combined")
    combine_kaldi_dirs(args.src, tmp)
    try:
        kept, held = split_off_kaldi_dir(tmp, args.out, args.held_out, args.n_held_out, args.seed)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logging.info("wrote %s (%d) and %s (%d)", args.out, kept, args.held_out, held)


if __name__ == "__main__":
    main()
