"""Property-based tests (hypothesis) over the inputs users hand the project: answer
strings for both QA matchers, Kaldi data dirs, and YAML configs.  Each either succeeds
or raises the project's own clear error (never an unrelated traceback), and loses
nothing already written."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest
import regex
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from espnet_ext.data.kaldi_dir import DataError, Utterance, read_kaldi_dir, write_kaldi_dir
from espnet_ext.data.numbers import NUMBER_WORDS
from espnet_ext.eval.qa_match import _reference_words, contain, dpr_tokenize, has_answer, words_to_digits
from espnet_ext.tasks.compose import load_train_config

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DPR_PATTERN = regex.compile(r"[\p{L}\p{N}\p{M}]+|[^\p{Z}\p{C}]")


# ---- the QA matchers ------------------------------------------------------------------
@FUZZ
@given(st.text(alphabet=st.characters(exclude_categories=["Cn"])))
def test_dpr_tokenize_equals_the_regex_pattern_it_comes_from(text):
    """Over every code point assigned in Python's Unicode database (``regex`` ships a
    newer one: a code point unassigned here, e.g. U+18D80, is a letter there)."""
    expected = [t.lower() for t in DPR_PATTERN.findall(unicodedata.normalize("NFD", text))]
    assert dpr_tokenize(text) == expected


@FUZZ
@given(st.text(), st.lists(st.text(), max_size=4))
def test_matchers_return_a_bool_for_any_strings(prediction, references):
    for matcher in (has_answer, contain):
        assert matcher(prediction, references) in (True, False)
    assert has_answer(prediction, []) is False and contain(prediction, []) is False


@FUZZ
@given(st.text())
def test_a_reference_matches_itself_exactly_when_it_has_tokens(reference):
    assert has_answer(reference, [reference]) == bool(dpr_tokenize(reference))
    assert contain(reference, [reference]) == bool(_reference_words(reference))


@FUZZ
@given(st.text(min_size=1), st.text(), st.text())
def test_has_answer_finds_a_reference_between_separators(reference, left, right):
    """Whatever surrounds it, an answer set off by spaces is found (DPR tokens never
    span a space)."""
    if not dpr_tokenize(reference):
        return
    assert has_answer(f"{left} {reference} {right}", [reference])


_NUMBERISH = st.lists(st.sampled_from(sorted(NUMBER_WORDS) + ["and", "apples", "first", "-", " ", ",", "1"]),
                      max_size=12).map("".join)


@FUZZ
@given(st.one_of(_NUMBERISH, st.text()))
def test_words_to_digits_never_raises_and_is_idempotent(text):
    once = words_to_digits(text.lower())
    assert words_to_digits(once) == once


def test_huge_and_empty_strings():
    big = "the answer is paris " * 20000
    assert has_answer(big, ["Paris"]) and contain(big, ["Paris"])
    assert not has_answer("", ["Paris"]) and not contain("", ["Paris"])
    assert not has_answer(big, [""]) and not contain(big, [""])


# ---- Kaldi data dirs ------------------------------------------------------------------
_IDS = st.text(alphabet="abcXYZ019_.-", min_size=1, max_size=8)


@st.composite
def utterances(draw):
    n = draw(st.integers(1, 5))
    utts = []
    for i in range(n):
        spk = draw(_IDS)
        utts.append(Utterance(utt_id=f"{spk}-{i}{draw(_IDS)}", spk=spk, wav=draw(st.text(max_size=12)),
                              text=draw(st.text(max_size=30)),
                              answers=draw(st.lists(st.text(max_size=10), max_size=3))))
    return utts


@FUZZ
@given(utterances())
def test_kaldi_dir_round_trip_or_a_clear_error(tmp_path_factory, utts):
    out = tmp_path_factory.mktemp("kaldi") / "data"
    try:
        write_kaldi_dir(out, utts)
    except DataError:
        assert not out.exists()  # nothing half-written
        return
    back = read_kaldi_dir(out, require_wav=False)
    by_id = {u.utt_id: u for u in utts}
    assert [u.utt_id for u in back] == sorted(by_id)
    for u in back:
        src = by_id[u.utt_id]
        assert u.text == " ".join(src.text.split()) and u.spk == src.spk
        assert u.answers == [" ".join(a.split()) for a in src.answers]


@FUZZ
@given(st.dictionaries(st.sampled_from(["text", "answer", "utt2spk", "wav.scp"]),
                       st.lists(st.text(max_size=40), max_size=4)))
def test_read_kaldi_dir_on_random_files_raises_only_data_errors(tmp_path_factory, files):
    d = tmp_path_factory.mktemp("random_kaldi")
    for name, lines in files.items():
        (d / name).write_text("\n".join(lines), encoding="utf-8")
    try:
        read_kaldi_dir(d, require_wav=False)
    except DataError as e:
        assert str(d) in str(e) or "answer" in str(e)


# ---- the config composer --------------------------------------------------------------
_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
_YAML_VALUES = st.recursive(_SCALARS, lambda children: st.lists(children, max_size=3)
                            | st.dictionaries(st.text(max_size=6), children, max_size=3), max_leaves=8)


@FUZZ
@given(st.one_of(st.dictionaries(st.sampled_from(["base", "optim", "optim_conf", "max_epoch", "nonsense", "lr"]),
                                 _YAML_VALUES, max_size=4).map(yaml.safe_dump),
                 st.text(max_size=60)))
def test_load_train_config_on_random_yaml_raises_only_clear_errors(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("conf") / "train_x.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        merged = load_train_config(path, valid={"optim", "optim_conf", "max_epoch", "lr"})
    except (ValueError, FileNotFoundError) as e:
        assert str(path.parent) in str(e)  # the error names the file at fault
        return
    assert isinstance(merged, dict) and "base" not in merged


@pytest.mark.parametrize("raw", ["[1, 2", "a: b: c", "- just\n- a list", "\t bad indent: [", "key: !!python/object x"])
def test_load_train_config_hand_picked_bad_yaml(tmp_path: Path, raw: str):
    path = tmp_path / "train_x.yaml"
    path.write_text(raw)
    with pytest.raises(ValueError, match=str(path)):
        load_train_config(path)


def test_answer_json_survives_any_reference_text(tmp_path):
    refs = ['say "hi"', "a|b", "São Paulo", "1,000", "tab\there"]
    write_kaldi_dir(tmp_path / "d", [Utterance("s-1", "s", "x.wav", "q?", refs)])
    line = (tmp_path / "d" / "answer").read_text().split(" ", 1)[1]
    assert json.loads(line) == ["say \"hi\"", "a|b", "São Paulo", "1,000", "tab here"]
