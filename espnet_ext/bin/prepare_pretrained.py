"""Recipe stage 2: pretrained LLM and Whisper encoder into local Hugging Face folders.

Usage::

    python -m espnet_ext.bin.prepare_pretrained \\
        --llm tools/weights/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --encoder tools/weights/whisper-tiny.en-ct2 \\
        --out_dir exp/pretrained

Each source may be a GGUF file or a CTranslate2 Whisper folder (converted), a local
transformers folder (symlinked), a hub id (fetched once and saved; needs hub access) or
``tiny-random-llama``/``tiny-random-whisper`` (random test models).  Either way
``<out_dir>/llm`` and ``<out_dir>/whisper`` end up as loadable HF folders, which is what
every training config loads.  Finished folders are reused while their source is
unchanged, so the job is idempotent.  ``<out_dir>/sources.json`` records the sources.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import List, Optional

from espnet_ext.convert.pretrained import materialize_pretrained
from espnet_ext.utils.atomic import atomic_write_text
from espnet_ext.utils.logs import setup_logging


def get_parser() -> argparse.ArgumentParser:
    """Command-line options of the stage-2 job."""
    parser = argparse.ArgumentParser(
        description="Resolve/convert the pretrained LLM and Whisper encoder into HF folders",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--llm", required=True, help="hub id, HF folder or .gguf file of the causal LM")
    parser.add_argument("--encoder", required=True, help="hub id, HF folder or CTranslate2 Whisper folder")
    parser.add_argument("--out_dir", type=Path, default=Path("exp/pretrained"), help="output folder")
    parser.add_argument("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(cmd: Optional[List[str]] = None) -> None:
    """Run the job; writes ``<out_dir>/{llm,whisper}/`` and ``<out_dir>/sources.json``."""
    args = get_parser().parse_args(cmd)
    setup_logging(args.log_level)
    log = logging.getLogger("prepare_pretrained")
    resolved = {}
    for role, source, sub in (("llm", args.llm, "llm"), ("encoder", args.encoder, "whisper")):
        t0 = time.perf_counter()
        target = materialize_pretrained(source, args.out_dir / sub, role="llm" if role == "llm" else "whisper")
        resolved[role] = source
        log.info("%s: %s → %s (%.1f s)", role, source, target, time.perf_counter() - t0)
    atomic_write_text(args.out_dir / "sources.json", json.dumps(resolved, indent=2) + "\n")


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        logging.getLogger("prepare_pretrained").error("%s", e)
        sys.exit(1)
