#!/usr/bin/env python3
"""Score decode directories with both QA matchers (recipe stage 6).

Usage:
    python -m espnet_ext.bin.score_qa --decode_dir exp/train_full/decode_test_llamaq_speech \\
        --ref_dir dump/test_llamaq [--decode_dir ... --ref_dir ...]

Writes ``score.json`` (``has_answer`` and ``contain`` accuracies) and ``score_detail.tsv``
into each decode dir.
"""

from __future__ import annotations

import argparse
import logging
from typing import Optional, Sequence

from espnet_ext.utils.logs import setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decode_dir", action="append", required=True, help="dir holding hyp (repeatable)")
    p.add_argument("--ref_dir", action="append", required=True, help="data/dump dir with answer, per --decode_dir")
    return p


def main(cmd: Optional[Sequence[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    if len(args.decode_dir) != len(args.ref_dir):
        raise SystemExit("give one --ref_dir per --decode_dir")
    setup_logging()
    from espnet_ext.eval.results import score_decode_dir

    for d, r in zip(args.decode_dir, args.ref_dir):
        s = score_decode_dir(d, r)
        logging.info("%s: %s", d, ", ".join(f"{k} {v['accuracy']:.1f}%" for k, v in s.items() if k != "n"))


if __name__ == "__main__":
    main()
