"""Text data for scoring any causal LM: question/answer pairs or plain text.

Three sources, each read into :class:`TextItem` records keyed by an id:

* a Kaldi-style dir (``data/<set>`` or ``dump/<set>``): ``text`` is the question,
  ``answer`` the JSON list of references, the first of which is the response (as in
  training; :mod:`espnet_ext.data.kaldi_dir`);
* a JSONL file: one ``{"prompt": ..., "response": ...}`` object per line, with an optional
  ``"id"`` (else ``line<N>``, the 1-based line number);
* any other file: plain text, one sample per non-empty line (``line<N>``), scored with the
  language-model loss on every token after the first (``prompt`` is ``None``).

Every error names the file and the line or utterance id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Literal, Optional

from espnet_ext.data.kaldi_dir import DataError, parse_answers, read_table

SourceFormat = Literal["auto", "kaldi", "jsonl", "text"]
SOURCE_FORMATS = ("auto", "kaldi", "jsonl", "text")


@dataclass(frozen=True)
class TextItem:
    """One sample: the user turn (``None`` for plain language-model text) and the response."""

    prompt: Optional[str]
    response: str


def source_format(path: str | Path, fmt: SourceFormat = "auto") -> str:
    """``kaldi``, ``jsonl`` or ``text``: ``fmt`` itself, or guessed from ``path`` (a dir is
    Kaldi-style, a ``.jsonl`` file JSONL, any other file plain text)."""
    if fmt not in SOURCE_FORMATS:
        raise ValueError(f"data format must be one of {SOURCE_FORMATS}, got {fmt!r}")
    path = Path(path)
    if not path.exists():
        raise DataError(f"data source {path} does not exist")
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "kaldi"
    return "jsonl" if path.suffix == ".jsonl" else "text"


def _line_id(lineno: int) -> str:
    return f"line{lineno:07d}"  # zero-padded: sorted ids keep the file order


def read_text_source(path: str | Path, fmt: SourceFormat = "auto") -> Dict[str, TextItem]:
    """id → :class:`TextItem` of a data source (see the module docstring)."""
    path = Path(path)
    fmt = source_format(path, fmt)
    if fmt == "kaldi":
        questions, answers = read_table(path / "text"), read_table(path / "answer")
        missing = sorted(set(questions) - set(answers))
        if missing:
            raise DataError(f"{path}/answer: no answer for utterance {missing[0]}")
        return {u: TextItem(q.strip(), parse_answers(answers[u], f"{path}/answer: utterance {u}")[0])
                for u, q in questions.items()}
    items: Dict[str, TextItem] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if fmt == "text":
                items[_line_id(lineno)] = TextItem(None, line.rstrip("\r\n"))
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not a JSON object ({e})") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object with prompt and response")
            bad = [k for k in ("prompt", "response") if not isinstance(rec.get(k), str) or not rec[k].strip()]
            if bad:
                raise DataError(f"{path}:{lineno}: missing or empty {bad[0]!r} (a string)")
            uid = str(rec.get("id", _line_id(lineno)))
            if uid in items:
                raise DataError(f"{path}:{lineno}: duplicate id {uid}")
            items[uid] = TextItem(rec["prompt"].strip(), rec["response"].strip())
    if not items:
        raise DataError(f"{path}: no samples")
    return items
