"""Atomic file outputs: write to a temporary name beside the target, then rename.

Every stage of the recipe writes through these helpers so that an interrupted or
failed job never leaves a half-written file under its final name.  A full disk
(``ENOSPC``) raises :class:`DiskFullError`, which names the output and says that its
previous version is intact.

A temporary is named ``.<name>.<host>.<pid>.<random>.tmp``.  A writer killed with
SIGKILL cannot remove its own; the next writer into the same directory on the same host
removes those whose process is gone (once per directory and process), so repeated kills
(a preempted job that writes multi-GB checkpoints) do not fill the disk.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import IO, Iterator, List, Set, Tuple, Union

PathLike = Union[str, os.PathLike]
logger = logging.getLogger(__name__)
_HOST = socket.gethostname().split(".")[0][:24] or "host"
_SWEPT: Set[Tuple[int, str]] = set()  # (pid, directory) already swept


class DiskFullError(OSError):
    """``ENOSPC`` while writing an output; the previous version of it is intact."""


def _disk_full(e: BaseException, path: Path) -> BaseException:
    """``e`` as a :class:`DiskFullError` naming ``path`` when it is ENOSPC, else ``e``."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC and not isinstance(e, DiskFullError):
        err = DiskFullError(errno.ENOSPC, f"no space left on the device while writing {path}; its previous "
                            "version (if any) is intact. Free space and rerun the same command")
        return err
    return e


def _pid_gone(pid: int) -> bool:
    """True when no process ``pid`` runs on this host (a zombie, killed but not yet reaped,
    counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def sweep_temporaries(directory: PathLike) -> List[Path]:
    """Remove the temporaries that writers killed on this host left in ``directory`` (their
    pid is gone); returns what was removed.  Temporaries of other hosts are left alone."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
            continue
        parts = entry.name[: -len(".tmp")].rsplit(".", 3)  # .<name>, host, pid, random
        if len(parts) != 4 or parts[1] != _HOST or not parts[2].isdigit() or not _pid_gone(int(parts[2])):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        removed.append(path)
    if removed:
        logger.info("%s: removed %d temporary file(s) of killed writers", directory, len(removed))
    return removed


def _temp_prefix(path: Path) -> str:
    """The prefix of ``path``'s temporaries; sweeps its directory once per process first."""
    key = (os.getpid(), str(path.parent.resolve()))
    if key not in _SWEPT:
        _SWEPT.add(key)
        sweep_temporaries(path.parent)
    return f".{path.name}.{_HOST}.{os.getpid()}."


def temp_sibling(path: PathLike) -> Path:
    """A fresh temporary name beside ``path`` (not created), swept like the others."""
    path = Path(path)
    return path.with_name(f"{_temp_prefix(path)}{os.urandom(4).hex()}.tmp")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open ``path`` for writing through a temporary sibling; rename on success.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding}
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        err = _disk_full(e, path)
        if err is e:
            raise
        raise err from e


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)


def replace_dir(src: PathLike, path: PathLike) -> None:
    """Move the finished directory ``src`` to ``path`` (same file system); a previous
    ``path`` is moved aside first and removed only once ``src`` is in its place."""
    src, path = Path(src), Path(path)
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(src, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, path)


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` when the block succeeds.

    Any previous ``path`` is removed only after the new content is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
    try:
        yield tmp
        replace_dir(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        err = _disk_full(e, path)
        if err is e:
            raise
        raise err from e
