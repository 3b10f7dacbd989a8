"""``<utt id> <text>`` files read one line at a time, for training on corpora of any size.

ESPnet's ``text`` data type (``read_2columns_text``) loads a whole file into a dict, in
every training process and every DataLoader worker: for VoiceAssistant-400K's ~470K
questions and multi-sentence answers that is hundreds of MB per process.
:class:`IndexedTextReader` keeps only the byte offset of each id's line and reads the line
when the dataset asks for it, returning exactly what ``text`` returns.  The task registers
it as the ESPnet data type ``indexed_text`` (``espnet_ext.tasks.speech_llm``), which the
recipe uses for ``text``, ``answer`` and ``task``.
"""

from __future__ import annotations

import collections.abc
import os
from pathlib import Path
from typing import BinaryIO, Dict, Iterator, Optional

from espnet_ext.data.kaldi_dir import DataError


class IndexedTextReader(collections.abc.Mapping):
    """A read-only ``{utt id: text}`` mapping over a ``<key> <value>`` file.

    The constructor scans the file once for the offsets; every lookup seeks and reads one
    line (the file is reopened in each process, so forked DataLoader workers never share a
    file position).  A value is the rest of the line after the first run of whitespace,
    trailing whitespace removed, as ESPnet's ``read_2columns_text`` returns it.  A
    duplicate id is a :class:`DataError` naming the file and line.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._offsets: Dict[str, int] = {}
        with open(self.path, "rb") as f:
            offset = 0
            for lineno, line in enumerate(f, 1):
                parts = line.decode("utf-8").split(maxsplit=1)
                if parts:
                    key = parts[0]
                    if key in self._offsets:
                        raise DataError(f"{self.path}:{lineno}: duplicate id {key}")
                    self._offsets[key] = offset
                offset += len(line)
        self._file: Optional[BinaryIO] = None
        self._pid = -1

    def _handle(self) -> BinaryIO:
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = open(self.path, "rb"), os.getpid()
        return self._file

    def __getitem__(self, key: str) -> str:
        f = self._handle()
        f.seek(self._offsets[key])
        parts = f.readline().decode("utf-8").rstrip().split(maxsplit=1)
        return parts[1] if len(parts) > 1 else ""

    def __iter__(self) -> Iterator[str]:
        return iter(self._offsets)

    def __len__(self) -> int:
        return len(self._offsets)

    def __getstate__(self) -> dict:  # a spawned worker opens its own handle
        return {**self.__dict__, "_file": None, "_pid": -1}
