"""Kaldi-style data directories: the contract between stage 1 and everything after it.

A data directory ``data/<set>/`` holds, one line per utterance, sorted by utterance id:

* ``wav.scp``  — ``<utt_id> <path to an audio file>`` (any format soundfile reads);
* ``text``     — ``<utt_id> <question transcript>`` (the T2T input);
* ``answer``   — ``<utt_id> <JSON list of reference answers>``; the first reference is the
  training target, all of them are accepted when scoring (Web Questions has several);
* ``utt2spk`` / ``spk2utt`` — speaker maps as in Kaldi.

``answer`` stores JSON so that references may contain any character (commas, pipes)
without an ad-hoc separator.  ESPnet's ``text`` loader reads it as a string per id.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Tuple

from espnet_ext.utils.atomic import atomic_dir

logger = logging.getLogger(__name__)

_UTT_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


class DataError(ValueError):
    """Invalid data; the message names the file and utterance id at fault."""


@dataclass
class Utterance:
    """One spoken question with its transcript and reference answers."""

    utt_id: str
    spk: str
    wav: str
    text: str
    answers: List[str] = field(default_factory=list)

    def validate(self, source: str = "") -> None:
        """Raise :class:`DataError` if a field is empty or the id is not Kaldi-safe."""
        where = f" in {source}" if source else ""
        if not _UTT_ID_RE.match(self.utt_id):
            raise DataError(f"utterance id {self.utt_id!r}{where}: only [A-Za-z0-9_.-] allowed")
        if not self.utt_id.startswith(self.spk):
            raise DataError(
                f"utterance {self.utt_id}{where}: id must start with its speaker id {self.spk!r} "
                "(Kaldi sorting convention)"
            )
        if not self.text.strip():
            raise DataError(f"utterance {self.utt_id}{where}: empty question text")
        if not self.answers or any(not a.strip() for a in self.answers):
            raise DataError(f"utterance {self.utt_id}{where}: empty answer")
        if not self.wav.strip():
            raise DataError(f"utterance {self.utt_id}{where}: empty wav.scp entry")
        if "\n" in self.wav or "\r" in self.wav:
            raise DataError(f"utterance {self.utt_id}{where}: wav.scp entry {self.wav!r} spans several lines")


def _one_line(s: str) -> str:
    return " ".join(s.split())


class KaldiDirWriter:
    """Writes the files of a Kaldi-style directory one utterance at a time.

    Utterances must come in strictly increasing id order (sorted, no duplicates), which
    is what makes streaming possible: nothing but the speaker → ids map of ``spk2utt`` is
    kept in memory, never the texts.  Open it with :func:`open_kaldi_dir`.
    """

    _FILES = ("wav.scp", "text", "answer", "utt2spk")

    def __init__(self, root: Path, name: str) -> None:
        self.root, self.name = root, name  # name: the final directory, for messages
        self.count = 0
        self._last = ""
        self._spk2utt: Dict[str, List[str]] = defaultdict(list)
        self._files = {f: open(root / f, "w", encoding="utf-8") for f in self._FILES}

    def add(self, u: Utterance) -> None:
        """Validate ``u`` and append its lines; :class:`DataError` on an invalid
        utterance, a duplicate id or an id out of order."""
        u.validate(self.name)
        if self.count and u.utt_id <= self._last:
            what = "duplicate utterance id" if u.utt_id == self._last else "utterance id out of order:"
            raise DataError(f"{what} {u.utt_id} for {self.name} (after {self._last}; utterances must come "
                            "sorted by id)")
        f = self._files
        f["wav.scp"].write(f"{u.utt_id} {u.wav}\n")
        f["text"].write(f"{u.utt_id} {_one_line(u.text)}\n")
        f["answer"].write(f"{u.utt_id} {json.dumps([_one_line(a) for a in u.answers], ensure_ascii=False)}\n")
        f["utt2spk"].write(f"{u.utt_id} {u.spk}\n")
        self._spk2utt[u.spk].append(u.utt_id)
        self._last = u.utt_id
        self.count += 1

    def close(self) -> None:
        for f in self._files.values():
            f.close()

    def finish(self) -> int:
        """Write ``spk2utt``; :class:`DataError` when no utterance was added."""
        if not self.count:
            raise DataError(f"no utterances to write to {self.name}")
        with open(self.root / "spk2utt", "w", encoding="utf-8") as f:
            f.writelines(f"{s} {' '.join(ids)}\n" for s, ids in sorted(self._spk2utt.items()))
        return self.count


@contextlib.contextmanager
def open_kaldi_dir(out_dir: str | Path) -> Iterator[KaldiDirWriter]:
    """A :class:`KaldiDirWriter` whose directory replaces ``out_dir`` atomically when the
    block ends without an error (and at least one utterance was added); on an error
    nothing is written."""
    with atomic_dir(out_dir) as tmp:
        writer = KaldiDirWriter(tmp, str(out_dir))
        try:
            yield writer
        finally:
            writer.close()
        writer.finish()


def write_kaldi_dir(out_dir: str | Path, utts: Iterable[Utterance]) -> int:
    """Validate ``utts`` and write them as a Kaldi-style directory, atomically.

    Returns the number of utterances.  Raises :class:`DataError` on duplicate ids or
    invalid utterances; nothing is written then.
    """
    utts = sorted(utts, key=lambda u: u.utt_id)
    seen: set = set()
    for u in utts:
        u.validate(str(out_dir))
        if u.utt_id in seen:
            raise DataError(f"duplicate utterance id {u.utt_id} for {out_dir}")
        seen.add(u.utt_id)
    if not utts:
        raise DataError(f"no utterances to write to {out_dir}")
    with open_kaldi_dir(out_dir) as writer:
        for u in utts:
            writer.add(u)
    return len(utts)


def read_table(path: str | Path, allow_empty_value: bool = False) -> Dict[str, str]:
    """Read ``<key> <value>`` lines into an ordered dict; errors name file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing file {path}")
    table: Dict[str, str] = {}
    for lineno, key, value in _table_lines(path, allow_empty_value):
        if key in table:
            raise DataError(f"{path}:{lineno}: duplicate id {key}")
        table[key] = value
    return table


def parse_answers(value: str, where: str = "") -> List[str]:
    """Parse one ``answer`` value (a JSON list of non-empty strings)."""
    try:
        answers = json.loads(value)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: answer is not a JSON list: {value[:80]!r} ({e})") from e
    if (
        not isinstance(answers, list)
        or not answers
        or not all(isinstance(a, str) and a.strip() for a in answers)
    ):
        raise DataError(f"{where}: answer must be a non-empty JSON list of non-empty strings")
    return answers


def read_kaldi_dir(data_dir: str | Path, require_wav: bool = True) -> List[Utterance]:
    """Read and cross-check a data directory.

    Raises :class:`DataError` naming the file and utterance id when the ids of
    ``wav.scp``, ``text``, ``answer`` and ``utt2spk`` do not line up or a value is empty.
    """
    d = Path(data_dir)
    text = read_table(d / "text")
    answer = read_table(d / "answer")
    utt2spk = read_table(d / "utt2spk")
    wav = read_table(d / "wav.scp") if (require_wav or (d / "wav.scp").exists()) else {}
    tables = {"text": text, "answer": answer, "utt2spk": utt2spk}
    if wav or require_wav:
        tables["wav.scp"] = wav
    ref_ids = set(text)
    for name, table in tables.items():
        ids = set(table)
        if ids != ref_ids:
            extra = sorted(ids - ref_ids)[:3]
            missing = sorted(ref_ids - ids)[:3]
            raise DataError(
                f"{d / name}: utterance ids do not line up with {d / 'text'} "
                f"(only in {name}: {extra}, missing from {name}: {missing})"
            )
    utts = []
    for uid in sorted(text):
        u = Utterance(
            utt_id=uid,
            spk=utt2spk[uid],
            wav=wav.get(uid, ""),
            text=text[uid],
            answers=parse_answers(answer[uid], f"{d / 'answer'}: utterance {uid}"),
        )
        if wav:
            u.validate(str(d))
        utts.append(u)
    return utts


def _table_lines(path: Path, allow_empty_value: bool = False) -> Iterator[Tuple[int, str, str]]:
    """``(line number, key, value)`` of a ``<key> <value>`` file, read lazily (blank lines
    skipped, values stripped); an empty value is a :class:`DataError` naming the file and
    line unless ``allow_empty_value``."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            key, _, value = line.partition(" ")
            if not value.strip() and not allow_empty_value:
                raise DataError(f"{path}:{lineno}: utterance {key} has an empty value")
            yield lineno, key, value.strip()


def iter_kaldi_dir(data_dir: str | Path) -> Iterator[Utterance]:
    """The utterances of a data directory one at a time, reading its files in lockstep
    (the streaming counterpart of :func:`read_kaldi_dir`, for sets too large to hold).

    The files must list the same ids in the same, strictly increasing order, as
    :func:`write_kaldi_dir` writes them (Kaldi's sorted convention); otherwise a
    :class:`DataError` names the file, the line and the utterance.
    """
    d = Path(data_dir)
    names = ("text", "answer", "utt2spk", "wav.scp")
    for name in names:
        if not (d / name).is_file():
            raise DataError(f"missing file {d / name}")
    readers = [_table_lines(d / name) for name in names]
    last = None
    while True:
        rows = [next(r, None) for r in readers]
        if all(r is None for r in rows):
            return
        text = rows[0]
        for name, row in zip(names, rows):
            if row is None or text is None or row[1] != text[1]:
                where = f"{d / name}:{row[0]}" if row is not None else f"{d / name} (at its end)"
                got = row[1] if row is not None else "nothing"
                want = text[1] if text is not None else "nothing"
                raise DataError(f"{where}: utterance ids do not line up with {d / 'text'} (found {got}, "
                                f"{d / 'text'} has {want}); the files must list the same ids in the same "
                                "sorted order")
        uid = text[1]
        if last is not None and uid <= last:
            raise DataError(f"{d / 'text'}:{text[0]}: utterance {uid} "
                            f"{'is a duplicate' if uid == last else 'is out of order'} (after {last}); "
                            "a data directory is sorted by utterance id")
        last = uid
        u = Utterance(utt_id=uid, spk=rows[2][2], wav=rows[3][2], text=text[2],
                      answers=parse_answers(rows[1][2], f"{d / 'answer'}: utterance {uid}"))
        u.validate(str(d))
        yield u


def combine_kaldi_dirs(srcs: Iterable[str | Path], dst: str | Path) -> int:
    """Concatenate data dirs (ids must be unique across them) into ``dst``."""
    utts: List[Utterance] = []
    for s in srcs:
        utts.extend(read_kaldi_dir(s))
    return write_kaldi_dir(dst, utts)


def split_off_kaldi_dir(
    src: str | Path, keep_dst: str | Path, held_dst: str | Path, n_held: int, seed: int = 0
) -> Tuple[int, int]:
    """Move a seeded random ``n_held`` utterances of ``src`` into ``held_dst`` (e.g. a dev set)."""
    import random

    utts = read_kaldi_dir(src)
    if not 0 < n_held < len(utts):
        raise DataError(f"{src}: cannot hold out {n_held} of {len(utts)} utterances")
    held = set(random.Random(seed).sample([u.utt_id for u in utts], n_held))
    write_kaldi_dir(held_dst, [u for u in utts if u.utt_id in held])
    write_kaldi_dir(keep_dst, [u for u in utts if u.utt_id not in held])
    return len(utts) - n_held, n_held
