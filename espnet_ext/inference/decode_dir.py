"""A decode directory's outputs (recipe stage 5): ``hyp`` (``<utt id> <answer>`` per line) and
``decode_report.json`` (the count, timing and stamp), and what makes ``hyp`` whole.

Kept apart from :mod:`espnet_ext.inference.decode` so that QA scoring (stage 6) checks a
``hyp`` without importing torch or ESPnet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from espnet_ext.utils.records import read_json_or_none


def hyp_damage(output_dir: str | Path) -> Optional[str]:
    """Why ``output_dir/hyp`` is not the whole file its ``decode_report.json`` describes (a
    last line cut short, fewer or more lines than decoded utterances), or ``None``."""
    data = (Path(output_dir) / "hyp").read_bytes()
    if data and not data.endswith(b"\n"):
        return "its last line is cut short (truncated)"
    report = read_json_or_none(Path(output_dir) / "decode_report.json")
    n_lines = data.count(b"\n")
    if isinstance(report, dict) and isinstance(report.get("n_utts"), int) and n_lines != report["n_utts"]:
        return f"it holds {n_lines} hypotheses, its decode_report.json counts {report['n_utts']} (truncated?)"
    return None
