"""Reading the JSON records that one recipe job writes and a later one reads.

Every job writes its records atomically, so a record that does not parse was damaged
afterwards (a copy or restore cut short, a disk that failed).  :func:`read_json` then
raises :class:`DamagedFileError` naming the file and the job that writes it, instead of
a bare ``JSONDecodeError`` from deep inside a later stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional


class DamagedFileError(ValueError):
    """A record file that exists but does not parse (truncated or damaged)."""


def read_json(path: str | Path, written_by: str) -> Any:
    """The JSON value in ``path``; :class:`DamagedFileError` (naming ``path`` and
    ``written_by``, the job that writes it) when it does not parse."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DamagedFileError(f"{path} is damaged ({type(e).__name__}: {e}; truncated?); {written_by} writes "
                               "it: rerun that to write it again") from e


def read_json_or_none(path: str | Path) -> Optional[Any]:
    """The JSON value in ``path``, or ``None`` when it is missing or does not parse (a
    record of work done: a damaged one means the work is redone)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
