"""A Kaldi feature archive written batch by batch that a rerun continues after a kill.

Used by the feature dump (recipe stage 2), whose sets take hours at corpus scale.  In a
work directory:

    enc_feats.ark        # appended to one batch at a time, flushed and fsynced per batch
    .journal.jsonl       # a header line (what the archive is made from), then one fsynced
                         # line per finished batch: its index, every utterance's id, offset
                         # and frame count, and the archive's end after the batch
    .lock                # flock'ed while a process writes here

A batch counts as done once its journal line is complete, and that line is written only
after the archive holds the batch on disk.  A rerun with the same header keeps the archive
up to the last complete line's end (bytes past it, from a kill between the two writes,
are cut off), reads the last kept matrix back to verify it, and is told which batches it
may skip; a torn last journal line is ignored.  Another header (other inputs or options)
or a prefix that does not read back starts the archive over.  The records are those of
``kaldiio.save_ark`` one utterance at a time, so an archive written in several runs is
byte-for-byte the archive one run writes.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import IO, Dict, List, Sequence, Tuple

import numpy as np

from espnet_ext.utils.atomic import DiskFullError, atomic_open

logger = logging.getLogger(__name__)

JOURNAL_NAME = ".journal.jsonl"
LOCK_NAME = ".lock"


class ArkBusyError(RuntimeError):
    """Another process is writing the same work directory."""


class ResumableArk:
    """The archive ``<work_dir>/<ark_name>`` and its journal (see the module docstring).

    ``done`` maps each finished batch index to its ``[utt id, offset, frames]`` entries.
    """

    def __init__(self, work_dir: str | Path, header: dict, ark_name: str = "enc_feats.ark") -> None:
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.ark_path = self.work_dir / ark_name
        self.journal_path = self.work_dir / JOURNAL_NAME
        self._lock: IO = open(self.work_dir / LOCK_NAME, "a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise ArkBusyError(f"{self.work_dir} is being written by another process (a second dump of the "
                               "same set?); wait for it to finish") from None
        header = json.loads(json.dumps(header))
        self.done: Dict[int, List[list]] = {}
        self._end = 0
        try:
            self._recover(header)
            # the kept lines (a torn last one dropped) rewritten atomically, then appended to
            with atomic_open(self.journal_path) as f:
                f.writelines(json.dumps(r) + "\n" for r in [header, *(
                    {"batch": b, "utts": e, "end": self._batch_end[b]} for b, e in self.done.items())])
            with open(self.ark_path, "ab"):
                pass
            os.truncate(self.ark_path, self._end)
            self._ark: IO = open(self.ark_path, "ab")
            self._journal: IO = open(self.journal_path, "a", encoding="utf-8")
        except BaseException:
            self._lock.close()
            raise

    def _recover(self, header: dict) -> None:
        """Keep the finished batches of an earlier run with the same ``header``."""
        self._batch_end: Dict[int, int] = {}
        if not self.journal_path.is_file():
            return
        lines = self.journal_path.read_text(encoding="utf-8").split("\n")[:-1]  # a torn last line: no "\n"
        try:
            records = [json.loads(line) for line in lines]
        except json.JSONDecodeError:
            records = []
        if not records or records[0] != header:
            if records:
                logger.info("%s was written from other inputs or options; starting it over", self.ark_path)
            return
        try:
            done = {int(r["batch"]): list(r["utts"]) for r in records[1:]}
            ends = {int(r["batch"]): int(r["end"]) for r in records[1:]}
        except (KeyError, TypeError, ValueError):
            logger.warning("%s is damaged; starting %s over", self.journal_path, self.ark_path)
            return
        end = max(ends.values(), default=0)
        size = self.ark_path.stat().st_size if self.ark_path.is_file() else -1
        if done and (size < end or not self._reads_back(done[max(ends, key=ends.get)])):
            logger.warning("%s does not hold what its journal lists; starting it over", self.ark_path)
            return
        self.done, self._batch_end, self._end = done, ends, end

    def _reads_back(self, entries: Sequence[list]) -> bool:
        """True when the last matrix of a batch reads back with its frame count."""
        import kaldiio

        uid, offset, frames = entries[-1]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # kaldiio warns before raising
                return int(kaldiio.load_mat(f"{self.ark_path}:{offset}").shape[0]) == int(frames)
        except Exception:  # kaldiio raises ValueError, EOFError, struct.error ...
            return False

    def _fsynced(self, f: IO, data) -> None:
        try:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            raise DiskFullError(
                errno.ENOSPC, f"no space left on the device while writing {self.ark_path}; the {len(self.done)} "
                f"batch(es) finished before are kept in {self.work_dir} and a rerun of the same command "
                f"continues from them (free space first, or delete {self.work_dir} to start over)") from e

    def add(self, batch: int, items: Sequence[Tuple[str, np.ndarray]]) -> None:
        """Append the matrices of ``batch`` (``(utt id, (Frames, Dim) array)``), then its journal line."""
        import kaldiio

        buf, entries = io.BytesIO(), []
        for uid, mat in items:
            start = buf.tell()
            kaldiio.save_ark(buf, {uid: mat})
            entries.append([uid, self._end + start + len(f"{uid} ".encode()), int(mat.shape[0])])
        data = buf.getvalue()
        self._fsynced(self._ark, data)  # the batch is on disk before the journal says so
        self._end += len(data)
        self._fsynced(self._journal, json.dumps({"batch": batch, "utts": entries, "end": self._end}) + "\n")
        self.done[batch] = entries
        self._batch_end[batch] = self._end

    def offsets(self) -> Dict[str, int]:
        """Utterance id → offset of its matrix in the archive."""
        return {uid: int(off) for entries in self.done.values() for uid, off, _ in entries}

    def frames(self) -> Dict[str, int]:
        """Utterance id → frame count of its matrix."""
        return {uid: int(n) for entries in self.done.values() for uid, _, n in entries}

    def close(self) -> None:
        """Close the files and release the lock (the work directory stays for a rerun)."""
        for f in (self._ark, self._journal):
            try:
                f.close()
            except OSError:  # ENOSPC again while flushing: what is on disk is what counts
                pass
        self._lock.close()
