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

import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

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
    spk2utt: Dict[str, List[str]] = defaultdict(list)
    for u in utts:
        spk2utt[u.spk].append(u.utt_id)
    with atomic_dir(out_dir) as tmp:
        with open(tmp / "wav.scp", "w", encoding="utf-8") as f:
            f.writelines(f"{u.utt_id} {u.wav}\n" for u in utts)
        with open(tmp / "text", "w", encoding="utf-8") as f:
            f.writelines(f"{u.utt_id} {_one_line(u.text)}\n" for u in utts)
        with open(tmp / "answer", "w", encoding="utf-8") as f:
            f.writelines(
                f"{u.utt_id} {json.dumps([_one_line(a) for a in u.answers], ensure_ascii=False)}\n"
                for u in utts
            )
        with open(tmp / "utt2spk", "w", encoding="utf-8") as f:
            f.writelines(f"{u.utt_id} {u.spk}\n" for u in utts)
        with open(tmp / "spk2utt", "w", encoding="utf-8") as f:
            f.writelines(f"{s} {' '.join(ids)}\n" for s, ids in sorted(spk2utt.items()))
    return len(utts)


def read_table(path: str | Path, allow_empty_value: bool = False) -> Dict[str, str]:
    """Read ``<key> <value>`` lines into an ordered dict; errors name file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing file {path}")
    table: Dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            key, _, value = line.partition(" ")
            if key in table:
                raise DataError(f"{path}:{lineno}: duplicate id {key}")
            if not value.strip() and not allow_empty_value:
                raise DataError(f"{path}:{lineno}: utterance {key} has an empty value")
            table[key] = value.strip()
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
