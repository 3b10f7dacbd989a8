"""Tests of the built-in demo world (questions, splits) and its espeak-ng preparation."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import pytest

from espnet_ext.data import demo_world
from espnet_ext.data.demo_world import (
    DEMO_SPLITS,
    DOMAINS,
    MANIFEST_NAME,
    TEST_SPLITS,
    UNSEEN_SPLITS,
    QAItem,
    all_facts,
    build_world,
    entity_key,
    kaldi_answers,
    plan_split,
)
from espnet_ext.data.numbers import number_to_words
from espnet_ext.eval.qa_match import contain, has_answer, words_to_digits

World = Dict[str, List[QAItem]]


@pytest.fixture(scope="module")
def world() -> World:
    """The QA world with its own train/dev questions (the test sets are the same with the
    instruction bank, tests/test_instructions.py checks that)."""
    return build_world(seed=0, train_source="qa_world")


def _base_qid(qid: str) -> str:
    """qid of the question (train items carry a ``-p<k>`` phrasing suffix)."""
    return re.sub(r"-p\d+$", "", qid)


# ------------------------------------------------------------------ counts


def test_split_sizes_are_pinned(world: World) -> None:
    # Pinned for seed 0: a change here changes every demo number in RESULTS.md.
    assert len(all_facts()) == 627
    assert {s: len(items) for s, items in world.items()} == {
        "train": 1007, "dev": 65, "test_llamaq": 122, "test_webq": 124,
        "test_llamaq_unseen": 122, "test_webq_unseen": 124,
    }
    for unseen, source in UNSEEN_SPLITS.items():  # the same questions, for held-out voices
        assert world[unseen] == world[source]


def test_test_sets_are_large_and_cover_every_domain(world: World) -> None:
    for split in TEST_SPLITS:
        assert len(world[split]) >= 100, split  # one question <= 1 accuracy point
        assert {item.domain for item in world[split]} == set(DOMAINS), split


def test_every_question_lands_in_exactly_one_split(world: World) -> None:
    questions = defaultdict(set)
    for split, items in world.items():
        if split in UNSEEN_SPLITS:  # repeats of a test set (checked in the size test)
            continue
        for item in items:
            questions[_base_qid(item.qid)].add(split)
    assert len(questions) == len(all_facts())
    assert all(len(splits) == 1 for splits in questions.values())


# ------------------------------------------------------------------ disjointness


def test_test_entities_never_appear_in_train_or_dev(world: World) -> None:
    seen = {entity_key(i.entity) for s in ("train", "dev") for i in world[s]}
    for split in TEST_SPLITS:
        leaked = {entity_key(i.entity) for i in world[split]} & seen
        assert not leaked, f"{split} entities in train/dev: {sorted(leaked)[:5]}"
    llamaq = {entity_key(i.entity) for i in world["test_llamaq"]}
    webq = {entity_key(i.entity) for i in world["test_webq"]}
    assert not llamaq & webq
    dev = {entity_key(i.entity) for i in world["dev"]}
    assert not dev & {entity_key(i.entity) for i in world["train"]}


def test_entity_key_ignores_case_and_articles() -> None:
    assert entity_key("the United States") == entity_key("United States") == "united states"
    assert entity_key("a Dog") == entity_key("dog")


# ------------------------------------------------------------------ determinism


def test_world_is_deterministic_and_seeded(world: World) -> None:
    assert build_world(seed=0, train_source="qa_world") == world
    other = build_world(seed=1, train_source="qa_world")
    assert other != world
    assert sum(map(len, other.values())) > 0


# ------------------------------------------------------------------ item content


def test_items_are_well_formed(world: World) -> None:
    for split, items in world.items():
        qids = [i.qid for i in items]
        assert len(qids) == len(set(qids)), split
        for item in items:
            assert re.fullmatch(r"[a-z0-9_\-]+", item.qid), item.qid
            assert item.domain in DOMAINS
            assert item.question.strip() and item.question.endswith("?"), item
            assert item.entity.strip()
            assert item.answers and all(a.strip() for a in item.answers), item
            assert item.response.endswith("."), item
            # The training target states the first answer, as whole tokens.
            assert has_answer(item.response, item.answers[:1]), item
            assert contain(item.response, item.answers[:1]), item


def test_reference_shapes_per_test_set(world: World) -> None:
    full = {demo_world._qid(f): list(f.answers) for f in all_facts()}
    assert all(i.answers == full[i.qid][:1] for i in world["test_llamaq"])
    assert all(i.answers == full[i.qid] for i in world["test_webq"])
    multi = [i for i in world["test_webq"] if len(i.answers) > 1]
    assert len(multi) >= 30  # Web-Questions-shaped: several acceptable references
    # Number answers come as digits first, then words.
    arith = [i for i in world["test_webq"] if i.domain == "arithmetic"]
    assert arith and all(i.answers[0].isdigit() and len(i.answers) == 2 for i in arith)


def test_train_varies_phrasings(world: World) -> None:
    phrasings = defaultdict(set)
    for item in world["train"]:
        phrasings[_base_qid(item.qid)].add(item.question)
    assert all(len(p) >= 2 for p in phrasings.values())
    assert sum(map(len, phrasings.values())) == len(world["train"])


def test_every_domain_comes_from_its_data_file() -> None:
    facts = all_facts()
    assert [f.domain for f in facts] == sorted((f.domain for f in facts), key=DOMAINS.index)
    capitals = {f.entity: f for f in facts if f.template == "capital"}
    assert capitals["United States"].answers == ("Washington, D.C.", "Washington", "DC")
    assert capitals["France"].response == "The capital of France is Paris."
    legs = {f.entity: f.answers for f in facts if f.template == "legs"}
    assert legs["spider"] == ("8", "eight")
    assert {f.entity for f in facts if f.template == "add"} >= {"1 + 1", "3 + 4", "9 + 9"}
    assert "4 + 3" not in {f.entity for f in facts if f.template == "add"}


def test_number_to_words_round_trips_through_the_matcher() -> None:
    assert number_to_words(21) == "twenty-one"
    assert number_to_words(366) == "three hundred sixty-six"
    assert number_to_words(1000) == "one thousand"
    for n in [*range(0, 1000), 1001, 20_024, 999_999]:
        assert words_to_digits(number_to_words(n)) == str(n), n
    with pytest.raises(ValueError):
        number_to_words(1_000_000)


# ------------------------------------------------------------------ Kaldi layout


def test_kaldi_answers_put_the_training_target_first(world: World) -> None:
    item = world["train"][0]
    assert kaldi_answers("train", item) == [item.response, *item.answers]
    item = world["dev"][0]
    assert kaldi_answers("dev", item)[0] == item.response
    item = world["test_webq"][0]
    assert kaldi_answers("test_webq", item) == item.answers


def test_plan_split_voices_and_ids(world: World, tmp_path: Path) -> None:
    tts = pytest.importorskip("espnet_ext.data.tts")
    voices = tts.DEMO_VOICES
    planned = plan_split("train", world["train"][:10], voices, tmp_path, voices_per_utt=2)
    assert len(planned) == 20
    for k in range(0, 20, 2):  # the two utterances of one item use different voices
        assert planned[k].voice != planned[k + 1].voice
        assert planned[k].utt.text == planned[k + 1].utt.text
    for p in planned:
        assert p.utt.spk == p.voice.tag
        assert p.utt.utt_id.startswith(f"{p.voice.tag}-train-")
        assert Path(p.utt.wav).is_absolute()
    test = plan_split("test_llamaq", world["test_llamaq"], voices, tmp_path, voices_per_utt=3)
    assert len(test) == len(world["test_llamaq"])  # one voice per test question
    assert {p.voice for p in test} == set(voices)
    assert len(plan_split("dev", world["dev"], voices, tmp_path, max_utts=3)) == 3
    with pytest.raises(ValueError, match="voices_per_utt"):
        plan_split("train", world["train"], voices, tmp_path, voices_per_utt=len(voices) + 1)


# ------------------------------------------------------------------ end to end


def test_prepare_demo_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("espeakng_loader")
    import soundfile as sf

    from espnet_ext.bin.prepare_demo import main
    from espnet_ext.data.kaldi_dir import read_kaldi_dir

    out, wav = tmp_path / "data", tmp_path / "wav"
    args = ["--out_dir", str(out), "--wav_dir", str(wav), "--max_utts_per_set", "3", "--voices", "espeak"]
    counts = main(args)
    assert counts == {split: 3 for split in DEMO_SPLITS}
    for split in DEMO_SPLITS:
        utts = read_kaldi_dir(out / split)
        assert len(utts) == 3
        manifest = json.loads((out / split / MANIFEST_NAME).read_text())
        assert manifest["n_utts"] == 3 and manifest["split"] == split
        for u in utts:
            assert u.utt_id.startswith(f"{u.spk}-{split}-")
            info = sf.info(u.wav)
            assert info.samplerate == 16000 and info.channels == 1
            assert 0.3 < info.duration < 10.0
            audio, _ = sf.read(u.wav)
            assert abs(audio).max() > 0.01  # not silence
        if split in TEST_SPLITS:
            assert all(len(u.answers[0]) < len(u.text) + 40 for u in utts)
        else:  # the only reference = the instruction bank's response of several sentences
            assert all(len(u.answers) == 1 and len(u.answers[0].split()) >= 12 for u in utts)
        assert manifest["voices"] == "espeak" and manifest["train_source"] == "instructions"
    train_voices = {u.spk for s in ("train", "dev", "test_llamaq") for u in read_kaldi_dir(out / s)}
    unseen_voices = {u.spk for s in UNSEEN_SPLITS for u in read_kaldi_dir(out / s)}
    assert unseen_voices and not unseen_voices & train_voices

    # Idempotent: a second run rewrites nothing.
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    stamp.update({p: p.stat().st_mtime_ns for p in wav.rglob("*.wav")})
    assert main(args) == counts
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    # A different request re-writes the set.
    assert main([*args[:4], "--voices", "espeak", "--sets", "dev", "--max_utts_per_set", "2"]) == {"dev": 2}
    assert len(read_kaldi_dir(out / "dev")) == 2
