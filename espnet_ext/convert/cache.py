"""Caching of converted pretrained folders: a marker file says what a folder came from.

Every converted folder carries ``speechimp_source.json`` (source path, total size, latest
mtime, converter version); it is written last, so its presence means the folder is
complete, and a folder is reused while its source is unchanged.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Dict, Union

#: marker written into every converted folder; its presence means the folder is complete
MARKER_NAME = "speechimp_source.json"
#: bump when a converter's output changes, so stale caches are rebuilt
CONVERTER_VERSION = 1


def publish(stage: Path) -> None:
    """Give a finished staging folder normal permissions (mkdtemp makes it 0700)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)
    for p in stage.rglob("*"):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def source_stat(source: Path) -> Dict[str, Union[str, int, float]]:
    """Identity of a source: resolved path, total size and latest mtime of its files."""
    source = source.resolve()
    files = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.is_file())
    return {
        "source": str(source),
        "size": int(sum(p.stat().st_size for p in files)),
        "mtime": max((p.stat().st_mtime for p in files), default=0.0),
    }


def write_marker(stage: Path, source: Path, kind: str) -> None:
    info = {**source_stat(source), "kind": kind, "converter_version": CONVERTER_VERSION}
    (stage / MARKER_NAME).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def is_current(out_dir: Path, source: Path, kind: str) -> bool:
    """True when ``out_dir`` holds a finished conversion of the unchanged ``source``."""
    marker = out_dir / MARKER_NAME
    if not marker.is_file() or not (out_dir / "config.json").is_file():
        return False
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False
    now = {**source_stat(source), "kind": kind, "converter_version": CONVERTER_VERSION}
    return all(
        (math.isclose(info.get(k, -1), v, abs_tol=1e-3) if isinstance(v, float) else info.get(k) == v)
        for k, v in now.items()
    )
