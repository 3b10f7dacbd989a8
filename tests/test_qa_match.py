"""Tests of the two QA matching conventions (DPR ``has_answer``, VITA-Audio ``contain``)."""

from __future__ import annotations

import unicodedata

import pytest

from espnet_ext.data.kaldi_dir import DataError
from espnet_ext.eval.qa_match import (
    MATCHERS,
    contain,
    dpr_tokenize,
    has_answer,
    parse_number_words,
    score_predictions,
    words_to_digits,
)

# ------------------------------------------------------------------ tokenizer


def test_dpr_tokenize_words_and_single_symbols() -> None:
    assert dpr_tokenize("Washington, D.C.!") == ["washington", ",", "d", ".", "c", ".", "!"]
    assert dpr_tokenize("  it's 3.5\tkm\n") == ["it", "'", "s", "3", ".", "5", "km"]
    assert dpr_tokenize("") == []


def test_dpr_tokenize_nfd_keeps_combining_marks_in_the_word() -> None:
    # NFD splits "é" into "e" + U+0301 (a mark, \p{M}) which stays inside the token.
    tokens = dpr_tokenize("Café São")
    assert tokens == ["cafe\u0301", "sa\u0303o"]
    # Composed and decomposed inputs give the same tokens.
    assert dpr_tokenize("caf\u00e9") == dpr_tokenize("cafe\u0301")


# ------------------------------------------------------------------ has_answer


@pytest.mark.parametrize(
    "prediction, references, expected",
    [
        ("The capital of France is Paris.", ["Paris"], True),
        ("The capital of France is Paris.", ["paris"], True),  # case-insensitive
        ("It is Lyon.", ["Paris"], False),
        ("It is Lyon.", ["Paris", "Lyon"], True),  # any reference
        ("It's Washington, D.C., of course", ["Washington, D.C."], True),
        ("It's Washington DC", ["Washington, D.C."], False),  # punctuation tokens differ
        ("It's Washington DC", ["Washington, D.C.", "Washington"], True),
        ("He lived in São Paulo.", ["Sao Paulo"], False),  # NFD keeps the accent mark
        ("He lived in Sa\u0303o Paulo.", ["S\u00e3o Paulo"], True),  # composed == decomposed
        ("The city is New York.", ["New York"], True),
        ("York is new to me.", ["New York"], False),  # tokens present but not contiguous
        ("New, York", ["New York"], False),  # a comma token breaks contiguity
        ("A Parisian cafe.", ["Paris"], False),  # no sub-word matches
        ("There are 121 of them.", ["21"], False),
        ("The answer is four.", ["4"], False),  # no number-word conversion
        ("", ["Paris"], False),
        ("Paris", ["?"], False),  # a reference without tokens matches nothing
    ],
)
def test_has_answer(prediction: str, references: list, expected: bool) -> None:
    assert has_answer(prediction, references) is expected


# ------------------------------------------------------------------ number words


@pytest.mark.parametrize(
    "words, expected",
    [
        ("zero", 0),
        ("seven", 7),
        ("nineteen", 19),
        ("twenty", 20),
        ("twenty one", 21),
        ("ninety nine", 99),
        ("one hundred", 100),
        ("three hundred and five", 305),
        ("three hundred five", 305),
        ("nine hundred ninety nine", 999),
        ("one thousand", 1000),
        ("two thousand and twenty four", 2024),
        ("twelve thousand three hundred forty five", 12345),
        ("nine hundred ninety nine thousand nine hundred ninety nine", 999999),
    ],
)
def test_parse_number_words(words: str, expected: int) -> None:
    tokens = words.split()
    assert parse_number_words(tokens) == (expected, len(tokens))


def test_parse_number_words_stops_at_ill_formed_sequences() -> None:
    assert parse_number_words(["one", "two"]) == (1, 1)
    assert parse_number_words(["twenty", "thirty"]) == (20, 1)
    assert parse_number_words(["twenty", "ten"]) == (20, 1)
    assert parse_number_words(["hundred"]) is None
    assert parse_number_words(["cat"]) is None
    assert parse_number_words(["five", "hundred", "and"]) == (500, 2)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("seven", "7"),
        ("twenty-one", "21"),
        ("twenty - one", "21"),
        ("twenty one apples", "21 apples"),
        ("one two three", "1 2 3"),
        ("the answer is four.", "the answer is 4."),
        ("three hundred and five pears and two apples", "305 pears and 2 apples"),
        ("someone and everyone", "someone and everyone"),
        ("hundreds of people", "hundreds of people"),
        ("a hundred", "a hundred"),
        ("one, two", "1, 2"),
        ("forty-two thousand", "42000"),
        ("no numbers here", "no numbers here"),
        ("nineteen eighty-four", "1984"),  # a year in two pairs
        ("twenty twenty-one", "2021"),
        ("the twenty-first century", "the twenty-first century"),  # ordinals stay
        ("ninety-ninth", "ninety-ninth"),
        ("a twenty-one-year-old", "a 21-year-old"),
    ],
)
def test_words_to_digits(text: str, expected: str) -> None:
    assert words_to_digits(text) == expected


def test_number_words_come_from_the_shared_vocabulary() -> None:
    from espnet_ext.data import numbers

    for value, word in enumerate(numbers.ONES):
        assert words_to_digits(word) == str(value)
    for k, word in enumerate(numbers.TENS, 2):
        assert words_to_digits(word) == str(10 * k)
    assert words_to_digits(f"two {numbers.HUNDRED}") == "200"
    assert words_to_digits(f"two {numbers.THOUSAND}") == "2000"


# ------------------------------------------------------------------ contain


@pytest.mark.parametrize(
    "prediction, references, expected",
    [
        ("The capital of France is Paris.", ["Paris"], True),
        ("It is Lyon.", ["Paris", "Lyon"], True),
        ("It's Washington DC", ["Washington, D.C."], True),  # "d" and "c" are substrings
        ("It's Boston", ["Washington, D.C."], False),
        ("It's washington d c", ["Washington, D.C."], True),  # punctuation -> spaces
        ("It's Washington DC", ["DC"], True),
        ("The answer is four.", ["4"], True),  # number words -> digits
        ("The answer is 21.", ["twenty-one"], True),
        ("The answer is twenty-one.", ["21"], True),
        ("The answer is twenty one.", ["21"], True),
        ("Five.", ["4"], False),
        ("There are 121 of them.", ["21"], True),  # substring: lenient
        ("A Parisian cafe.", ["Paris"], True),  # substring: lenient
        ("York is new to me.", ["New York"], True),  # word order ignored
        ("the cat's toy", ["cat's"], True),  # apostrophes are kept
        ("", ["Paris"], False),
        ("Paris", ["?"], False),  # a reference without words matches nothing
    ],
)
def test_contain(prediction: str, references: list, expected: bool) -> None:
    assert contain(prediction, references) is expected


def test_matchers_disagree_where_documented() -> None:
    """The substring pitfalls: contain accepts, has_answer rejects."""
    for pred, refs in [
        ("There are 121 of them.", ["21"]),
        ("A Parisian cafe.", ["Paris"]),
        ("York is new to me.", ["New York"]),
        ("The answer is four.", ["4"]),
    ]:
        assert contain(pred, refs) and not has_answer(pred, refs), (pred, refs)
    # And the other way round: DPR tokens match where contain needs every word.
    assert has_answer("Washington, D.C.", ["Washington, D.C."])
    assert contain("Washington, D.C.", ["Washington, D.C."])


# ------------------------------------------------------------------ scoring


def test_score_predictions_counts_and_percent() -> None:
    preds = {"u1": "Paris.", "u2": "It is four.", "u3": "", "u4": "Tokyo"}
    refs = {"u1": ["Paris"], "u2": ["4"], "u3": ["Rome"], "u4": ["Kyoto", "Tokyo"]}
    s = score_predictions(preds, refs, "has_answer")
    assert (s.n, s.n_correct, s.accuracy) == (4, 2, 50.0)
    assert s.correct == {"u1": True, "u2": False, "u3": False, "u4": True}
    s = score_predictions(preds, refs, "contain")
    assert (s.n_correct, s.accuracy) == (3, 75.0)
    assert s.matcher == "contain"
    assert set(MATCHERS) == {"has_answer", "contain"}


def test_score_predictions_names_missing_ids() -> None:
    with pytest.raises(DataError, match="prediction for utterance u2"):
        score_predictions({"u1": "a"}, {"u1": ["a"], "u2": ["b"]}, "has_answer")
    with pytest.raises(DataError, match="reference answers for utterance u3"):
        score_predictions({"u1": "a", "u3": "c"}, {"u1": ["a"]}, "has_answer")
    with pytest.raises(DataError, match="u1"):
        score_predictions({"u1": "a"}, {"u1": []}, "contain")
    with pytest.raises(ValueError, match="unknown matcher"):
        score_predictions({"u1": "a"}, {"u1": ["a"]}, "exact")


# Decisions pinned: each matcher stays faithful to its public convention, and what that
# means for the cases users trip over.
@pytest.mark.parametrize(
    "prediction, reference, dpr, vita",
    [
        # DPR NFD-normalises; VITA-Audio's substring test normalises nothing but case
        (unicodedata.normalize("NFD", "São Paulo"), "São Paulo", True, False),
        ("São Paulo", "São Paulo", True, True),
        # a curly apostrophe and an en dash are other characters than ' and - in both
        ("the cat\u2019s toy", "cat's", False, False),
        ("from 1939-1945", "1939\u20131945", False, False),
        # digits vs number words: DPR never converts; contain's number test does, and
        # drops digit-group commas from the prediction
        ("one thousand", "1,000", False, True),
        ("1,000 people", "one thousand", False, True),
        ("it was 1984", "Nineteen Eighty-Four", False, True),
        ("the 21st century", "twenty-first", False, False),  # ordinals are not converted
    ],
)
def test_matcher_conventions_pinned(prediction: str, reference: str, dpr: bool, vita: bool) -> None:
    assert has_answer(prediction, [reference]) is dpr
    assert contain(prediction, [reference]) is vita
