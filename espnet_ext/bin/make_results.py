#!/usr/bin/env python3
"""Collect every score into ``exp/results/summary.json`` and render ``RESULTS.md`` (stage 6).

Usage:
    python -m espnet_ext.bin.make_results --exp_dir exp --systems "noft full layerlr lora" \\
        --stage_times exp/stage_times.tsv --out_md RESULTS.md [--meta key=value ...]
    # regenerate RESULTS.md from a committed summary (no exp/ needed)
    python -m espnet_ext.bin.make_results --from_summary RESULTS.json --out_md RESULTS.md

RESULTS.md is a pure function of summary.json, which is also written next to it as
``RESULTS.json``: the committed pair is checked by tests/test_results.py.  The
importance-analysis figures (exp/results/figures/) are copied to ``figures/`` next to
RESULTS.md, which links them relatively.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

from espnet_ext.utils.logs import setup_logging


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp_dir", default="exp", help="experiment root")
    p.add_argument("--systems", default="", help="space-separated system tags in table order")
    p.add_argument("--stage_times", default=None, help="TSV of <stage>\\t<seconds> (run.sh writes it)")
    p.add_argument("--running_stage", default=None,
                   help="STAGE=SECONDS: the stage writing this file and its time so far (run.sh: 6)")
    p.add_argument("--summary", default=None, help="where to write summary.json (default exp_dir/results)")
    p.add_argument("--from_summary", default=None, help="render from this summary.json only")
    p.add_argument("--out_md", required=True, help="RESULTS.md to write")
    p.add_argument("--meta", action="append", default=[], help="key=value lines for the header")
    return p


def main(cmd: Optional[Sequence[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    setup_logging()
    from espnet_ext.eval.results import collect_summary, publish_figures, render_results_md
    from espnet_ext.utils.atomic import atomic_write_text
    from espnet_ext.utils.records import read_json

    if args.from_summary:
        summary = read_json(args.from_summary, "espnet_ext.bin.make_results (recipe stage 6, beside RESULTS.md)")
    else:
        summary = collect_summary(args.exp_dir, args.systems.split())
        publish_figures(summary, args.exp_dir, args.out_md)  # figures/ next to RESULTS.md
        summary["meta"] = dict(kv.split("=", 1) for kv in args.meta)
        if args.stage_times and Path(args.stage_times).exists():
            rows = [ln.split("\t") for ln in Path(args.stage_times).read_text().splitlines() if ln.strip()]
            running = args.running_stage.split("=", 1) if args.running_stage else None
            # the running stage's recorded time (if any) is from an earlier run: stale
            times = {f"stage {s}": float(t) for s, t in rows if not running or s != running[0]}
            if running:
                times[f"stage {running[0]}"] = float(running[1])
                summary["running_stage"] = f"stage {running[0]}"
            summary["stage_times"] = times
        text = json.dumps(summary, indent=2, sort_keys=False) + "\n"
        for out in (Path(args.summary or Path(args.exp_dir) / "results" / "summary.json"),
                    Path(args.out_md).with_suffix(".json")):  # committed beside RESULTS.md
            atomic_write_text(out, text)
            logging.info("wrote %s", out)
    atomic_write_text(args.out_md, render_results_md(summary))
    logging.info("wrote %s", args.out_md)


if __name__ == "__main__":
    main()
