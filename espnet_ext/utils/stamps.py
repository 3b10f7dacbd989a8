""""Already done?" stamps: what an output was made from, recorded beside it.

A job writes its inputs' identities (a JSON-able dict, the *stamp*) into the record file
it writes last; a rerun with an equal stamp skips the work.  One module makes and
compares stamps for every job (decoding, importance reports, the stage-6 analysis,
the transcription mix), so "done" means the same everywhere.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def file_identity(path: Optional[str | Path], content: bool) -> Optional[list]:
    """A file's identity: ``[resolved path, sha256]`` (``content``: small config files, which
    tools rewrite unchanged) or ``[resolved path, size, mtime_ns]`` (checkpoints, dumps)."""
    if path is None:
        return None
    p = Path(path).resolve()
    if content:
        return [str(p), sha256_of(p)]
    st = p.stat()
    return [str(p), st.st_size, st.st_mtime_ns]


def canonical(stamp: Any) -> Any:
    """``stamp`` as it reads back from JSON (tuples → lists), so stamps compare equal."""
    return json.loads(json.dumps(stamp))


def has_stamp(record: str | Path, stamp: Any, key: Sequence[str] = ("stamp",),
              required: Iterable[str | Path] = ()) -> bool:
    """True when the JSON ``record`` exists and holds ``stamp`` under ``key`` (a path of
    keys), and every ``required`` output exists too."""
    record = Path(record)
    if not record.is_file() or not all(Path(p).exists() for p in required):
        return False
    try:
        value: Any = json.loads(record.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False  # a damaged record means "not done"
    for k in key:
        if not isinstance(value, dict):
            return False
        value = value.get(k)
    return value == canonical(stamp)
