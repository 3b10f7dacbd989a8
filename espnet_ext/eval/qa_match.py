"""Spoken-QA answer matching: the two public conventions the paper's benchmarks use.

Both decide whether a free-form model answer ("The capital of France is Paris.")
counts as correct for a list of reference answers; a question is correct when any
reference matches.  Accuracy numbers are only comparable under the same convention,
so every table names the matcher it used.

``has_answer`` (default)
    The DPR convention (Karpukhin et al. 2020, ``dpr/data/qa_validation.py``), which
    UltraEval-Audio uses for LLaMA Questions and Web Questions.  Text is NFD-normalised
    and lower-cased, then split by DPR's ``SimpleTokenizer`` pattern
    ``[\\p{L}\\p{N}\\p{M}]+|[^\\p{Z}\\p{C}]``: runs of letters, digits and combining
    marks, and every other visible character on its own.  A reference matches when its
    token sequence occurs contiguously in the prediction's tokens.

``contain``
    The VITA-Audio convention: the prediction is lower-cased; in each reference the
    punctuation except apostrophes becomes spaces; the reference matches when every
    one of its words is a *substring* of the prediction.  Failing that, number words are
    turned into digits ("twenty one" -> "21", see :func:`words_to_digits`) in both, and
    digit-group commas are dropped from the prediction ("1,000" -> "1000"), and the
    test is repeated.  Nothing else is normalised: no Unicode normalisation (a composed
    "São" does not contain a decomposed one), and a curly apostrophe or an en dash is
    not its ASCII look-alike.

Deliberate guard (both matchers): a reference that has no tokens / words at all (e.g.
``"?"``) matches nothing, instead of matching every prediction vacuously.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from espnet_ext.data.kaldi_dir import DataError
from espnet_ext.data.numbers import (
    HUNDRED,
    NUMBER_WORDS,
    ONES_VALUES,
    TENS_VALUES,
    THOUSAND,
)

# ----------------------------------------------------------------------------------
# has_answer (DPR / UltraEval-Audio)
# ----------------------------------------------------------------------------------


def _char_class(ch: str) -> str:
    """Classify one character for the DPR tokenizer.

    Returns ``"w"`` for letters, numbers and marks (``\\p{L}\\p{N}\\p{M}``), ``"s"`` for
    separators and control/format/unassigned characters (``\\p{Z}\\p{C}``) and ``"o"``
    for anything else (punctuation, symbols), which DPR emits as one-character tokens.
    """
    major = unicodedata.category(ch)[0]
    if major in "LNM":
        return "w"
    if major in "ZC":
        return "s"
    return "o"


def dpr_tokenize(text: str) -> List[str]:
    """Tokenise like DPR's ``SimpleTokenizer`` with ``uncased=True``, after NFD.

    Equivalent to ``regex.findall(r"[\\p{L}\\p{N}\\p{M}]+|[^\\p{Z}\\p{C}]", nfd(text))``
    followed by lower-casing each token.  ASCII whitespace (tab, newline) is in
    ``\\p{Cc}``/``\\p{Zs}`` and therefore separates tokens.
    """
    text = unicodedata.normalize("NFD", text)
    tokens: List[str] = []
    run: List[str] = []
    for ch in text:
        cls = _char_class(ch)
        if cls == "w":
            run.append(ch)
            continue
        if run:
            tokens.append("".join(run))
            run = []
        if cls == "o":
            tokens.append(ch)
    if run:
        tokens.append("".join(run))
    return [t.lower() for t in tokens]


def _contains_sequence(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    """True when ``needle`` occurs as a contiguous sub-sequence of ``haystack``."""
    n = len(needle)
    if n == 0:
        return False
    return any(haystack[i : i + n] == list(needle) for i in range(len(haystack) - n + 1))


def has_answer(prediction: str, references: Sequence[str]) -> bool:
    """DPR ``has_answer`` (string mode), as used by UltraEval-Audio.

    Correct when the token sequence (:func:`dpr_tokenize`) of any reference occurs
    contiguously in the prediction's token sequence.  "Paris" matches
    "The capital is Paris." but not "Parisian"; "New York" does not match "York, New".
    """
    pred_tokens = dpr_tokenize(prediction)
    return any(_contains_sequence(pred_tokens, dpr_tokenize(ref)) for ref in references)


# ----------------------------------------------------------------------------------
# Number words -> digits (used by ``contain``)
# ----------------------------------------------------------------------------------

# The number vocabulary comes from espnet_ext.data.numbers, which also writes the demo
# world's number answers in words, so every such answer parses back here.
_WORD_RE = re.compile(r"[a-z]+")
# Words of one number may be joined by spaces or a hyphen ("twenty-one", "twenty one").
_JOIN_RE = re.compile(r"\s+|\s*-\s*")
# A number hyphenated to an ordinal is an ordinal ("twenty-first", "ninety-ninth").
_ORDINAL_TAIL_RE = re.compile(r"-(?:first|second|third|[a-z]+th)\b")
# Digit-group commas ("1,000,000"), dropped before the number test of ``contain``.
_DIGIT_GROUP_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def _parse_below_100(words: Sequence[str], i: int) -> Optional[Tuple[int, int]]:
    """Parse ``unit`` | ``tens [unit 1-9]`` at ``words[i]``; returns (value, next index)."""
    if i >= len(words):
        return None
    w = words[i]
    if w in ONES_VALUES:
        return ONES_VALUES[w], i + 1
    if w in TENS_VALUES:
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if nxt in ONES_VALUES and 1 <= ONES_VALUES[nxt] <= 9:
            return TENS_VALUES[w] + ONES_VALUES[nxt], i + 2
        return TENS_VALUES[w], i + 1
    return None


def _parse_below_1000(words: Sequence[str], i: int) -> Optional[Tuple[int, int]]:
    """Parse ``below100`` | ``unit(1-9) hundred [and] [below100 > 0]``."""
    head = _parse_below_100(words, i)
    if head is None:
        return None
    value, j = head
    if 1 <= value <= 9 and j < len(words) and words[j] == HUNDRED:
        value, j = value * 100, j + 1
        k = j + 1 if j < len(words) and words[j] == "and" else j
        tail = _parse_below_100(words, k)
        if tail is not None and tail[0] > 0:
            value, j = value + tail[0], tail[1]
    return value, j


def parse_number_words(words: Sequence[str], i: int = 0) -> Optional[Tuple[int, int]]:
    """Parse the longest English cardinal (0..999,999) starting at ``words[i]``.

    Grammar: ``below1000 [thousand [and] [below1000 > 0]]`` with ``below1000`` as in
    "three hundred and five" and ``below100`` as in "forty two".  ``words`` must be
    lower-case, with hyphenated compounds already split.  Returns ``(value, index after
    the number)`` or ``None`` when ``words[i]`` does not start a number.  Ill-formed
    sequences stop early: ``["one", "two"]`` parses as 1 (then 2 separately).
    """
    head = _parse_below_1000(words, i)
    if head is None:
        return None
    value, j = head
    if value >= 1 and j < len(words) and words[j] == THOUSAND:
        value, j = value * 1000, j + 1
        k = j + 1 if j < len(words) and words[j] == "and" else j
        tail = _parse_below_1000(words, k)
        if tail is not None and tail[0] > 0:
            value, j = value + tail[0], tail[1]
    return value, j


def words_to_digits(text: str) -> str:
    """Replace every English number phrase in lower-case ``text`` by its digits.

    "twenty-one apples and three hundred and five pears" -> "21 apples and 305 pears";
    "seven" -> "7"; "someone" is untouched (whole words only).  Bare "hundred" or
    "thousand" without a leading number is left as a word.  A year said in two pairs
    becomes one number ("nineteen eighty-four" -> "1984", "twenty twenty" -> "2020").
    Ordinals and fractions are not converted, nor is the number of a hyphenated ordinal
    ("twenty-first" stays; "twenty-one-year-old" -> "21-year-old").
    """
    matches = list(_WORD_RE.finditer(text))
    if not any(m.group() in NUMBER_WORDS for m in matches):
        return text
    out: List[str] = []
    pos = 0
    i = 0
    while i < len(matches):
        if matches[i].group() not in NUMBER_WORDS:
            i += 1
            continue
        # The run of words joined only by spaces / hyphens, starting at i.
        run = [matches[i]]
        while i + len(run) < len(matches):
            prev, nxt = run[-1], matches[i + len(run)]
            if not _JOIN_RE.fullmatch(text[prev.end() : nxt.start()]):
                break
            if nxt.group() not in NUMBER_WORDS and nxt.group() != "and":
                break
            run.append(nxt)
        words = [m.group() for m in run]
        parsed = parse_number_words(words)
        if parsed is None:  # a bare "hundred"/"thousand": keep the word
            i += 1
            continue
        value, n_used = parsed
        if 10 <= value <= 99 and n_used < len(words):  # a year in two pairs: "nineteen eighty-four"
            second = parse_number_words(words, n_used)
            if second is not None and 10 <= second[0] <= 99:
                value, n_used = value * 100 + second[0], second[1]
        if _ORDINAL_TAIL_RE.match(text, run[n_used - 1].end()):  # "twenty-first": an ordinal
            i += n_used
            continue
        out.append(text[pos : run[0].start()])
        out.append(str(value))
        pos = run[n_used - 1].end()
        i += n_used
    out.append(text[pos:])
    return "".join(out)


# ----------------------------------------------------------------------------------
# contain (VITA-Audio)
# ----------------------------------------------------------------------------------

_PUNCT_NO_APOSTROPHE = "".join(c for c in string.punctuation if c != "'")
_PUNCT_TABLE = str.maketrans({c: " " for c in _PUNCT_NO_APOSTROPHE})


def _reference_words(reference: str) -> List[str]:
    """Lower-case ``reference``, turn punctuation except ``'`` into spaces, split."""
    return reference.lower().translate(_PUNCT_TABLE).split()


def _all_words_in(words: Sequence[str], prediction: str) -> bool:
    return bool(words) and all(w in prediction for w in words)


def contain(prediction: str, references: Sequence[str]) -> bool:
    """VITA-Audio ``contain``: every reference word is a substring of the prediction.

    The prediction is lower-cased (so is the reference, or capitalised references could
    never match); in the reference, ASCII punctuation except apostrophes becomes spaces.
    If no reference matches, the test is repeated after :func:`words_to_digits` on both
    sides, so "The answer is four." matches ``["4"]`` and "21" matches
    ``["twenty-one"]``.  Being a substring test it is lenient: ``["21"]`` matches
    "121" and ``["cat"]`` matches "category", where :func:`has_answer` does not.
    """
    pred = prediction.lower()
    ref_words = [_reference_words(r) for r in references]
    if any(_all_words_in(words, pred) for words in ref_words):
        return True
    pred_digits = words_to_digits(_DIGIT_GROUP_RE.sub("", pred))
    return any(
        _all_words_in(words_to_digits(" ".join(words)).split(), pred_digits) for words in ref_words
    )


# ----------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------

Matcher = Callable[[str, Sequence[str]], bool]
MATCHERS: Dict[str, Matcher] = {"has_answer": has_answer, "contain": contain}


@dataclass
class QAScore:
    """Accuracy of a set of predictions under one matcher."""

    matcher: str
    n: int
    n_correct: int
    accuracy: float  # percent, 0..100
    correct: Dict[str, bool] = field(default_factory=dict)  # utt id -> correct?


def score_predictions(
    preds: Mapping[str, str], refs: Mapping[str, Sequence[str]], matcher: str = "has_answer"
) -> QAScore:
    """Score ``preds`` (utt id -> answer text) against ``refs`` (utt id -> references).

    Both mappings must hold exactly the same utterance ids; otherwise a
    :class:`~espnet_ext.data.kaldi_dir.DataError` names the first missing id.  An empty
    prediction is allowed (and wrong); an utterance without references is an error.
    """
    if matcher not in MATCHERS:
        raise ValueError(f"unknown matcher {matcher!r}; choose one of {sorted(MATCHERS)}")
    missing_pred = sorted(set(refs) - set(preds))
    if missing_pred:
        raise DataError(
            f"no prediction for utterance {missing_pred[0]} ({len(missing_pred)} missing)"
        )
    missing_ref = sorted(set(preds) - set(refs))
    if missing_ref:
        raise DataError(
            f"no reference answers for utterance {missing_ref[0]} ({len(missing_ref)} missing)"
        )
    if not refs:
        raise DataError("nothing to score: no utterances")
    fn = MATCHERS[matcher]
    correct: Dict[str, bool] = {}
    for uid in sorted(refs):
        if not refs[uid]:
            raise DataError(f"utterance {uid} has an empty reference list")
        correct[uid] = fn(preds[uid], list(refs[uid]))
    n_correct = sum(correct.values())
    return QAScore(
        matcher=matcher,
        n=len(correct),
        n_correct=n_correct,
        accuracy=100.0 * n_correct / len(correct),
        correct=correct,
    )


__all__ = [
    "MATCHERS",
    "QAScore",
    "contain",
    "dpr_tokenize",
    "has_answer",
    "parse_number_words",
    "score_predictions",
    "words_to_digits",
]
