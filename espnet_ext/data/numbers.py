"""English cardinal number words, in one place.

The demo world writes number answers as digits and as words (:func:`number_to_words`),
and the ``contain`` matcher (:mod:`espnet_ext.eval.qa_match`) turns number words back
into digits; both read the vocabulary defined here, so the two directions always agree.
Cardinals from 0 to 999,999 are covered; ordinals ("first") and fractions are not.
"""

from __future__ import annotations

from typing import Dict, FrozenSet, Tuple

#: the words for 0..19, indexed by value
ONES: Tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
    "eighteen", "nineteen",
)
#: the words for 20, 30, ..., 90 (``TENS[k]`` is ``10 * (k + 2)``)
TENS: Tuple[str, ...] = (
    "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
)
HUNDRED = "hundred"
THOUSAND = "thousand"
#: the largest number :func:`number_to_words` writes
MAX_NUMBER = 999_999

#: value of each word of :data:`ONES` ("seven" -> 7)
ONES_VALUES: Dict[str, int] = {word: value for value, word in enumerate(ONES)}
#: value of each word of :data:`TENS` ("forty" -> 40)
TENS_VALUES: Dict[str, int] = {word: 10 * k for k, word in enumerate(TENS, 2)}
#: every word that can be part of a cardinal (the connective "and" is not one)
NUMBER_WORDS: FrozenSet[str] = frozenset((*ONES, *TENS, HUNDRED, THOUSAND))


def number_to_words(n: int) -> str:
    """English cardinal for ``0 <= n <= 999,999`` ("twenty-one", "three hundred five").

    Tens and units are joined by a hyphen, hundreds and thousands by spaces, and no
    "and" is written.  Raises :class:`ValueError` outside that range.
    """
    if not 0 <= n <= MAX_NUMBER:
        raise ValueError(f"number_to_words supports 0..999999, got {n}")
    if n < 20:
        return ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return TENS[tens - 2] + (f"-{ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{ONES[hundreds]} {HUNDRED}" + (f" {number_to_words(rest)}" if rest else "")
    thousands, rest = divmod(n, 1000)
    return f"{number_to_words(thousands)} {THOUSAND}" + (
        f" {number_to_words(rest)}" if rest else ""
    )


__all__ = [
    "HUNDRED",
    "MAX_NUMBER",
    "NUMBER_WORDS",
    "ONES",
    "ONES_VALUES",
    "TENS",
    "TENS_VALUES",
    "THOUSAND",
    "number_to_words",
]
