"""The spoken-instruction training bank: its schema, its split, and its disjointness from
the QA test sets (no test entity, no test question template in train or dev)."""

from __future__ import annotations

import re
from collections import Counter
from typing import Dict, List

import pytest

from espnet_ext.data.bundled import Record
from espnet_ext.data.demo_world import TEST_SPLITS, all_facts, build_world, kaldi_answers
from espnet_ext.data.instructions import (
    DEV_FRACTION,
    INSTRUCTION_WORDS,
    RESPONSE_WORDS,
    Instruction,
    load_instructions,
    split_instructions,
)
from espnet_ext.data.kaldi_dir import DataError


@pytest.fixture(scope="module")
def bank() -> List[Instruction]:
    return load_instructions()


@pytest.fixture(scope="module")
def world() -> Dict[str, list]:
    return build_world(seed=0, train_source="instructions")


def test_bank_is_varied_and_follows_its_schema(bank: List[Instruction]) -> None:
    per_category = Counter(item.category for item in bank)
    # the VoiceAssistant-400K mix: requests, explanations, lists, rewrites, advice, small talk, questions
    assert {"advice", "explanations", "how_to", "lists", "rewrites", "small_talk", "questions"} <= set(per_category)
    assert min(per_category.values()) >= 20, per_category
    assert len({item.item_id for item in bank}) == len(bank)
    assert len({item.instruction.lower() for item in bank}) == len(bank)
    for item in bank:
        assert INSTRUCTION_WORDS[0] <= len(item.instruction.split()) <= INSTRUCTION_WORDS[1]
        assert RESPONSE_WORDS[0] <= len(item.response.split()) <= RESPONSE_WORDS[1]
        assert not re.search(r"\d", item.instruction + item.response), item.item_id
    # assistant-style responses of several sentences, not short answers
    sentences = [len(re.findall(r"[.!?](?:\s|$)", item.response)) for item in bank]
    assert sum(n >= 2 for n in sentences) >= 0.9 * len(bank)


def test_split_holds_out_every_category_and_is_seeded(bank: List[Instruction]) -> None:
    split = split_instructions(bank, seed=0)
    assert sorted(split["train"] + split["dev"], key=lambda i: i.item_id) == sorted(bank, key=lambda i: i.item_id)
    assert not {i.item_id for i in split["train"]} & {i.item_id for i in split["dev"]}
    for category, n in Counter(i.category for i in bank).items():
        n_dev = sum(i.category == category for i in split["dev"])
        assert n_dev == max(1, round(DEV_FRACTION * n))
    assert split_instructions(bank, seed=0) == split
    assert split_instructions(bank, seed=1) != split


def test_train_and_dev_come_from_the_bank(world: Dict[str, list], bank: List[Instruction]) -> None:
    texts = {item.instruction for item in bank}
    for split in ("train", "dev"):
        assert world[split] and all(q.question in texts for q in world[split])
        for q in world[split]:
            assert kaldi_answers(split, q) == [q.response]  # the response is the training target
    qa = build_world(seed=0, train_source="qa_world")
    for split in TEST_SPLITS:  # the test sets do not depend on the training source
        assert world[split] == qa[split]


def _test_entities(world: Dict[str, list]) -> List[str]:
    """Capitalised test entities (names of places, works, months ...) of the test sets."""
    return sorted({q.entity for s in TEST_SPLITS for q in world[s] if re.search("[A-Z]", q.entity)})


def _template_patterns() -> List[re.Pattern]:
    """Every QA-world phrasing with its entity as a wildcard (the test question templates)."""
    patterns = set()
    for fact in all_facts():
        for phrasing in fact.phrasings:
            text = re.escape(phrasing.lower())
            for name in {fact.entity, re.sub(r"^(the|a|an) ", "", fact.entity, flags=re.I)}:
                text = text.replace(re.escape(name.lower()), ".+")
            patterns.add(text)
    return [re.compile(p) for p in sorted(patterns)]


def test_no_test_entity_or_template_in_train(world: Dict[str, list]) -> None:
    entities = _test_entities(world)
    assert len(entities) > 50  # the check has teeth: countries, cities, landmarks, works, months
    patterns = _template_patterns()
    test_questions = {q.question.lower() for s in TEST_SPLITS for q in world[s]}
    for split in ("train", "dev"):
        for q in world[split]:
            text = f"{q.question} {q.response}"
            hits = [e for e in entities if re.search(rf"(?<![A-Za-z]){re.escape(e)}(?![A-Za-z])", text)]
            assert not hits, f"{q.qid} names test entities {hits}"
            assert not any(p.fullmatch(q.question.lower()) for p in patterns), f"{q.qid} is a test template"
            assert not any(t in text.lower() for t in test_questions), f"{q.qid} contains a test question"


def test_the_disjointness_check_catches_a_leak(world: Dict[str, list]) -> None:
    # the same checks reject an instruction built from a test item
    test_item = next(q for q in world["test_llamaq"] if q.domain == "geography")
    patterns = _template_patterns()
    assert any(p.fullmatch(test_item.question.lower()) for p in patterns)
    assert any(re.search(rf"(?<![A-Za-z]){re.escape(e)}(?![A-Za-z])", test_item.question)
               for e in _test_entities(world))


@pytest.mark.parametrize("field, value, message", [
    ("instruction", "Tell me about the year 1999 please now", "cannot read"),
    ("instruction", "Hi", "words"),
    ("response", "Fine.", "words"),
    ("id", "advice_1", "three digits"),
])
def test_a_bad_item_is_named(monkeypatch, field: str, value: str, message: str) -> None:
    from espnet_ext.data import instructions

    item = {"id": "advice_001", "instruction": "Could you give me a few tips for sleeping better at night?",
            "response": "Keep a regular bedtime and a dark, quiet room. Put the phone away half an hour before "
                        "sleep, and avoid coffee in the afternoon."}
    item[field] = value
    doc = {"category": "advice", "items": [item]}
    monkeypatch.setattr(instructions, "list_yaml_resources", lambda folder: ["advice.yaml"])
    monkeypatch.setattr(instructions, "load_yaml_resource", lambda *parts: Record(doc, "instructions/advice.yaml"))
    with pytest.raises(DataError, match=rf"instructions/advice.yaml: item {item['id']}: .*{message}"):
        instructions.load_instructions()
