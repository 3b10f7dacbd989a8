"""The built-in demo world: a fixed set of templated general-knowledge questions.

The offline demo cannot ship VoiceAssistant-400K, LLaMA Questions or Web Questions, so
it brings its own small spoken-QA world: 627 (template, entity) questions over five
domains (geography, science, arithmetic, everyday, people), each with short reference
answers and a one-sentence training response that contains the first reference ("The
capital of France is Paris.").  Facts are famous on purpose: SmolLM2-135M-Instruct
should answer a fair share of them in text, so that a loss of textual competence after
speech fine-tuning is measurable.

The facts, the question phrasings and the responses are data, one YAML file per domain
in ``espnet_ext/data/resources/demo_world/`` (read with :mod:`espnet_ext.data.bundled`);
this module turns them into questions: it fills the ``str.format`` fields of each
template, adds articles and capitals, writes number answers as digits and words
(:mod:`espnet_ext.data.numbers`), computes the arithmetic results and the next day,
month or season, and splits the world.

Splits are fixed up front and never depend on any model's answers:

* every entity ("France", "3 + 4", "dog") is assigned to exactly one split by a seeded
  shuffle of the entities of the template it first appears in (fractions
  :data:`SPLIT_FRACTIONS`), so all questions about an entity land in the same split
  and no test entity is ever seen in ``train``/``dev``;
* ``train`` holds one item per phrasing of each question (2–4 phrasings per template,
  the variety the spoken instructions need); ``dev`` and the test sets hold one item
  per question, with one phrasing picked by the seed;
* ``test_llamaq`` is LLaMA-Questions-shaped (only the first reference is kept),
  ``test_webq`` Web-Questions-shaped (every acceptable reference, e.g.
  ``["Washington, D.C.", "Washington", "DC"]``).

Everything is deterministic given ``seed`` (``random.Random`` seeded by strings).

Training data (``train_source``): by default ``train`` and ``dev`` are the spoken-instruction
bank of :mod:`espnet_ext.data.instructions` (the paper's regime: general instructions in
training, QA in the test); ``qa_world`` keeps this world's own train/dev questions with
one-sentence answers (the test sets' format: it teaches the answer format, which is what
inflates T2T after fine-tuning).

Speech (:func:`prepare_demo_sets`, behind ``python -m espnet_ext.bin.prepare_demo``):
every question is spoken by a synthetic voice (:mod:`espnet_ext.data.tts`: CMU Flite when
installed, else espeak-ng) and written as a 16 kHz WAV plus one Kaldi-style directory per
split:

* the family's ``train`` voices cycle over train, dev and the in-voice test sets; a
  ``train`` item is spoken by ``voices_per_utt`` different voices, every other item by
  one.  ``test_llamaq`` / ``test_webq`` use the *same* voices as ``train`` (knowledge
  transfer to unseen entities); ``test_llamaq_unseen`` / ``test_webq_unseen`` hold the
  same questions spoken by the family's ``unseen`` voices, a speaker who never speaks in
  training (transfer to an unseen speaker);
* speaker id = voice tag, utterance id = ``<voice tag>-<split>-<qid>``;
* ``answer`` holds ``[response, *answers]`` for ``train``/``dev`` — the first element of
  an ``answer`` line is the training target (:mod:`espnet_ext.data.kaldi_dir`), here
  the full sentence — and only the short references for the test sets.  Scoring a
  ``dev`` line with all its references is still fair: the response contains the first
  short reference as whole tokens, so it never accepts a prediction the short
  references reject;
* a split is skipped when its directory holds a ``demo_manifest.json`` whose hash
  matches what would be written (ids, texts, answers, voices, wav paths) and all of its
  WAVs exist; anything else re-synthesises the split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import operator
import random
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from espnet_ext.data.bundled import Record, load_yaml_resource
from espnet_ext.data.instructions import load_instructions, split_instructions
from espnet_ext.data.kaldi_dir import DataError, Utterance, write_kaldi_dir
from espnet_ext.data.numbers import number_to_words
from espnet_ext.utils.atomic import atomic_write_text

if TYPE_CHECKING:  # the TTS wrapper needs espeakng-loader, only when synthesising
    from espnet_ext.data.tts import Synthesizer, Voice

logger = logging.getLogger(__name__)

#: the QA world's own splits (the entity assignment of :data:`SPLIT_FRACTIONS`)
QA_SPLITS: Tuple[str, ...] = ("train", "dev", "test_llamaq", "test_webq")
#: speaker-disjoint test sets: the questions of a test set, spoken by held-out voices
UNSEEN_SPLITS: Dict[str, str] = {"test_llamaq_unseen": "test_llamaq", "test_webq_unseen": "test_webq"}
DEMO_SPLITS: Tuple[str, ...] = QA_SPLITS + tuple(UNSEEN_SPLITS)
TEST_SPLITS: Tuple[str, ...] = ("test_llamaq", "test_webq", *UNSEEN_SPLITS)
#: what train and dev hold: the spoken-instruction bank (the paper's regime) or the QA
#: world's own train/dev questions (short answers in the test sets' format)
TRAIN_SOURCES: Tuple[str, ...] = ("instructions", "qa_world")
# Share of each template's entities per split (train, dev, test_llamaq, test_webq).
SPLIT_FRACTIONS: Tuple[float, ...] = (0.5, 0.1, 0.2, 0.2)
DOMAINS: Tuple[str, ...] = ("geography", "science", "arithmetic", "everyday", "people")


@dataclass(frozen=True)
class QAItem:
    """One question of the demo world as it appears in one split.

    ``answers`` are the split's short references (one for ``test_llamaq``); ``response``
    is a natural full sentence containing ``answers[0]``, the training target.
    """

    qid: str
    domain: str
    entity: str
    question: str
    answers: List[str]
    response: str


@dataclass(frozen=True)
class _Fact:
    """A (template, entity) question before splitting; ``phrasings`` are full questions."""

    template: str
    domain: str
    entity: str
    phrasings: Tuple[str, ...]
    answers: Tuple[str, ...]
    response: str


# ----------------------------------------------------------------------------------
# Small text helpers
# ----------------------------------------------------------------------------------


def _num(n: int) -> Tuple[str, str]:
    """References for a number answer: digits first (what the scorers expect), then words."""
    return (str(n), number_to_words(n))


def _cap(s: str) -> str:
    """Upper-case the first character (sentence start)."""
    return s[:1].upper() + s[1:]


def _a(word: str) -> str:
    """``word`` with its indefinite article."""
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def _slug(s: str) -> str:
    """Kaldi-safe id part: ASCII, lower-case, ``[a-z0-9_]``."""
    ascii_s = unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "_", ascii_s.lower()).strip("_")


def _bare(name: str) -> str:
    """Entity without a leading article ("the United States" -> "United States")."""
    for article in ("the ", "a ", "an "):
        if name.lower().startswith(article):
            return name[len(article):]
    return name


# ----------------------------------------------------------------------------------
# The data files: resources/demo_world/<domain>.yaml
# ----------------------------------------------------------------------------------

_RESOURCE_FOLDER = "demo_world"

#: entity phrase and references of one question of a table template
_Row = Tuple[str, Tuple[str, ...]]


@dataclass(frozen=True)
class _Template:
    """The question phrasings and the training response of one template.

    Both are ``str.format`` patterns over the fields that the template's generator
    fills in (``{x}``, ``{X}``, ``{a}``, ``{aa}`` for table templates).
    """

    phrasings: Tuple[str, ...]
    response: str


def _domain_file(domain: str) -> Record:
    """The data file of one domain of :data:`DOMAINS`."""
    return load_yaml_resource(_RESOURCE_FOLDER, f"{domain}.yaml")


def _template(doc: Record, name: str) -> _Template:
    """Template ``name`` of a domain file's ``templates`` mapping."""
    entry = doc.record("templates").record(name)
    return _Template(phrasings=entry.texts("phrasings"), response=entry.text("response"))


def _answers(row: Record) -> Tuple[str, ...]:
    """A row's references: its ``answers``, or digits then words of its ``number``."""
    if row.has("number"):
        return _num(row.integer("number"))
    return row.texts("answers")


def _rows(table: Sequence[Record], key: str) -> List[_Row]:
    """``(entity phrase, references)`` of table rows that name their entity at ``key``."""
    return [(row.text(key), _answers(row)) for row in table]


def _counted(table: Sequence[Record], key: str) -> List[_Row]:
    """Rows asking how many of something ``count`` says, the thing with its article."""
    return [(_a(row.text(key)), _num(row.integer("count"))) for row in table]


def _successors(cycle: Sequence[str]) -> List[_Row]:
    """Each item of a cyclic order with the item after it (the last wraps around)."""
    return [(item, (cycle[(i + 1) % len(cycle)],)) for i, item in enumerate(cycle)]


def _facts(
    template_id: str, domain: str, template: _Template, rows: Sequence[_Row]
) -> Iterator[_Fact]:
    """Expand a table template over ``rows`` of ``(entity phrase, answers)``.

    ``{x}`` in the phrasings and the response is the entity phrase, ``{X}`` the same
    with a capital first letter, ``{a}`` the first answer and ``{aa}`` it with its
    article.
    """
    for x, answers in rows:
        fields = {"x": x, "X": _cap(x), "a": answers[0], "aa": _a(answers[0])}
        yield _Fact(
            template=template_id,
            domain=domain,
            entity=_bare(x),
            phrasings=tuple(p.format(**fields) for p in template.phrasings),
            answers=tuple(answers),
            response=template.response.format(**fields),
        )


def _singletons(doc: Record, template_id: str, domain: str) -> Iterator[_Fact]:
    """The one-off facts of a domain file's ``facts`` list; each is its own entity."""
    for row in doc.records("facts"):
        yield _Fact(
            template=template_id,
            domain=domain,
            entity=row.text("entity"),
            phrasings=row.texts("phrasings"),
            answers=_answers(row),
            response=row.text("response"),
        )


# ----------------------------------------------------------------------------------
# The five domains
# ----------------------------------------------------------------------------------


def _geography() -> Iterator[_Fact]:
    """Capitals, continents, languages, currencies, places, rivers, one-off facts."""
    doc = _domain_file("geography")
    countries = doc.records("countries")
    capitals = [(c.text("country"), c.texts("capitals")) for c in countries]
    continents = [(c.text("country"), (c.text("continent"),))
                  for c in countries if c.optional_text("continent")]
    languages = [(c.text("country"), c.texts("languages", default=()))
                 for c in countries if c.texts("languages", default=())]
    yield from _facts("capital", "geography", _template(doc, "capital"), capitals)
    yield from _facts("continent", "geography", _template(doc, "continent"), continents)
    yield from _facts("language", "geography", _template(doc, "language"), languages)
    yield from _facts("currency", "geography", _template(doc, "currency"),
                      _rows(doc.records("currencies"), "country"))
    yield from _facts("place_country", "geography", _template(doc, "place_country"),
                      _rows(doc.records("places"), "place"))
    yield from _facts("river", "geography", _template(doc, "river"),
                      _rows(doc.records("rivers"), "city"))
    yield from _singletons(doc, "geo_fact", "geography")


def _planet_order(doc: Record) -> Iterator[_Fact]:
    """Which planet is n-th from the Sun; ``{o}`` is the ordinal, ``{a}`` the planet."""
    template = _template(doc, "planet_order")
    for row in doc.records("planets"):
        ordinal, planet = row.text("ordinal"), row.text("planet")
        yield _Fact(
            template="planet_order",
            domain="science",
            entity=f"{ordinal} planet",
            phrasings=tuple(p.format(o=ordinal) for p in template.phrasings),
            answers=(planet,),
            response=template.response.format(o=ordinal, a=planet),
        )


def _science() -> Iterator[_Fact]:
    """Element symbols, planet order, legs, one-off facts."""
    doc = _domain_file("science")
    symbols = [(e.text("name"), (e.text("symbol"),)) for e in doc.records("elements")]
    yield from _facts("element_symbol", "science", _template(doc, "element_symbol"), symbols)
    yield from _planet_order(doc)
    yield from _facts("legs", "science", _template(doc, "legs"),
                      _counted(doc.records("legs"), "animal"))
    yield from _singletons(doc, "science_fact", "science")


#: how each operation of ``arithmetic.yaml`` computes its result
_OPERATIONS: Dict[str, Callable[[int, int], int]] = {
    "add": operator.add,
    "mul": operator.mul,
    "sub": operator.sub,
}


def _operand_pairs(operation: Record) -> List[Tuple[int, int]]:
    """Operand pairs of one operation, first operand outermost.

    With ``unordered_pairs`` only pairs with ``first <= second`` are kept: each pair of
    a commutative operation is asked once, smaller operand first ("3 + 4").
    """
    unordered = operation.flag("unordered_pairs")
    return [(a, b) for a in operation.integers("first") for b in operation.integers("second")
            if not unordered or a <= b]


def _arithmetic() -> Iterator[_Fact]:
    """Small sums, products and differences; answers are digits, then words.

    ``{p}`` and ``{q}`` are the operands and ``{r}`` the result; sums and products
    alternate the operand order across their phrasings.
    """
    doc = _domain_file("arithmetic")
    for operation in doc.records("operations"):
        name, sign = operation.text("name"), operation.text("sign")
        if name not in _OPERATIONS:
            raise DataError(f"{operation.where}.name: unknown operation {name!r} "
                            f"(known: {', '.join(_OPERATIONS)})")
        phrasings, response = operation.texts("phrasings"), operation.text("response")
        for a, b in _operand_pairs(operation):
            r = _OPERATIONS[name](a, b)
            yield _Fact(
                template=name,
                domain="arithmetic",
                entity=f"{a} {sign} {b}",
                phrasings=tuple(ph.format(p=a, q=b, r=r) for ph in phrasings),
                answers=_num(r),
                response=response.format(p=a, q=b, r=r),
            )


def _units(doc: Record) -> Iterator[_Fact]:
    """How many things a container holds; ``{t}`` things, ``{c}``/``{C}`` container, ``{n}``."""
    template = _template(doc, "units")
    for row in doc.records("units"):
        things, container, n = row.text("things"), row.text("container"), row.integer("count")
        fields = {"t": things, "c": container, "C": _cap(container)}
        yield _Fact(
            template="units",
            domain="everyday",
            entity=f"{things} in {_bare(container)}",
            phrasings=tuple(p.format(**fields) for p in template.phrasings),
            answers=_num(n),
            response=template.response.format(n=n, **fields),
        )


def _everyday() -> Iterator[_Fact]:
    """Units, shapes, wheels, colours, animal sounds and babies, opposites, calendars."""
    doc = _domain_file("everyday")
    sounds = [(_a(x), answers) for x, answers in _rows(doc.records("sounds"), "animal")]
    tables: Tuple[Tuple[str, List[_Row]], ...] = (
        ("sides", _counted(doc.records("sides"), "shape")),
        ("wheels", _counted(doc.records("wheels"), "vehicle")),
        ("colour", _rows(doc.records("colours"), "thing")),
        ("animal_sound", sounds),
        ("baby_animal", _rows(doc.records("babies"), "animal")),
        ("opposite", _rows(doc.records("opposites"), "word")),
        ("plural", _rows(doc.records("plurals"), "word")),
        ("next_day", _successors(doc.texts("days"))),
        ("next_month", _successors(doc.texts("months"))),
        ("next_season", _rows(doc.records("seasons"), "season")),
    )
    yield from _units(doc)
    for template_id, rows in tables:
        yield from _facts(template_id, "everyday", _template(doc, template_id), rows)


def _people() -> Iterator[_Fact]:
    """Who wrote / painted / composed / invented / discovered X (one template per role)."""
    doc = _domain_file("people")
    for row in doc.records("works"):
        role, work = row.text("role"), row.text("work")
        template = _template(doc, role)
        fields = {"x": work, "N": _cap(row.text("name"))}
        yield _Fact(
            template=role,
            domain="people",
            entity=_bare(work),
            phrasings=tuple(p.format(**fields) for p in template.phrasings),
            answers=_answers(row),
            response=template.response.format(**fields),
        )


# ----------------------------------------------------------------------------------
# The world and its splits
# ----------------------------------------------------------------------------------


def all_facts() -> List[_Fact]:
    """Every (template, entity) question of the world, in a fixed order."""
    return [*_geography(), *_science(), *_arithmetic(), *_everyday(), *_people()]


def entity_key(entity: str) -> str:
    """Case-insensitive key under which an entity is assigned to one split."""
    return _bare(entity.strip()).lower()


def _assign_entities(facts: Sequence[_Fact], seed: int) -> Dict[str, str]:
    """Map each entity key to a split: seeded shuffle per template, fixed fractions.

    An entity is assigned when its first template is processed; later templates about
    the same entity ("capital of France", then "language of France") inherit it.
    """
    by_template: Dict[str, List[str]] = {}
    owner: Dict[str, str] = {}
    for f in facts:
        key = entity_key(f.entity)
        if key not in owner:
            owner[key] = f.template
            by_template.setdefault(f.template, []).append(key)
    cumulative = [sum(SPLIT_FRACTIONS[: i + 1]) for i in range(len(SPLIT_FRACTIONS))]
    assignment: Dict[str, str] = {}
    for template, keys in by_template.items():
        keys = list(keys)
        random.Random(f"demo-world:{seed}:{template}").shuffle(keys)
        bounds = [round(c * len(keys)) for c in cumulative]
        start = 0
        for split, end in zip(QA_SPLITS, bounds):
            for key in keys[start:end]:
                assignment[key] = split
            start = end
    return assignment


def _qid(fact: _Fact) -> str:
    return f"{fact.template}-{_slug(fact.entity)}"


def build_world(seed: int = 0, train_source: str = "instructions") -> Dict[str, List[QAItem]]:
    """Build every split of the demo world (deterministic given ``seed``).

    Returns ``{split: items}`` for :data:`DEMO_SPLITS`.  Items of a split come in a
    seeded, domain-mixed order, so that the first N items are a fair sample
    (``--max_utts_per_set``).  ``train`` has one item per phrasing (qid suffix
    ``-p<k>``); the other splits one per question with a seeded phrasing.  The unseen
    test sets (:data:`UNSEEN_SPLITS`) repeat their test set's items.

    ``train_source`` (:data:`TRAIN_SOURCES`): ``qa_world`` keeps the QA world's own
    train/dev questions; ``instructions`` replaces them with the spoken-instruction bank
    (:mod:`espnet_ext.data.instructions`; domain = category, no short references).  The
    test sets are the same either way.
    """
    if train_source not in TRAIN_SOURCES:
        raise ValueError(f"unknown train source {train_source!r}; choose from {', '.join(TRAIN_SOURCES)}")
    facts = all_facts()
    assignment = _assign_entities(facts, seed)
    world: Dict[str, List[QAItem]] = {split: [] for split in QA_SPLITS}
    for fact in facts:
        split = assignment[entity_key(fact.entity)]
        qid = _qid(fact)
        if split == "train":
            for k, phrasing in enumerate(fact.phrasings):
                world[split].append(
                    QAItem(f"{qid}-p{k}", fact.domain, fact.entity, phrasing,
                           list(fact.answers), fact.response)
                )
            continue
        rng = random.Random(f"demo-phrasing:{seed}:{qid}")
        answers = list(fact.answers[:1]) if split == "test_llamaq" else list(fact.answers)
        world[split].append(
            QAItem(qid, fact.domain, fact.entity, rng.choice(fact.phrasings), answers,
                   fact.response)
        )
    for split, items in world.items():
        random.Random(f"demo-order:{seed}:{split}").shuffle(items)
    if train_source == "instructions":
        bank = split_instructions(load_instructions(), seed)
        for split in ("train", "dev"):
            world[split] = [QAItem(it.item_id, it.category, it.item_id, it.instruction, [], it.response)
                            for it in bank[split]]
    for split, source in UNSEEN_SPLITS.items():
        world[split] = list(world[source])
    return world


def world_summary(world: Dict[str, List[QAItem]]) -> str:
    """A small text table: items per split and domain (for logs and reports)."""
    domains = list(dict.fromkeys(item.domain for items in world.values() for item in items))
    header = f"{'split':<20}" + "".join(f"{d:>13}" for d in domains) + f"{'total':>8}"
    lines = [header]
    for split, items in world.items():
        counts = Counter(item.domain for item in items)
        lines.append(
            f"{split:<20}" + "".join(f"{counts.get(d, 0):>13}" for d in domains)
            + f"{len(items):>8}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------
# Speech: Kaldi directories and WAVs
# ----------------------------------------------------------------------------------

MANIFEST_NAME = "demo_manifest.json"
_MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class PlannedUtt:
    """One utterance to synthesise: the Kaldi entry and the voice that speaks it."""

    utt: Utterance
    voice: Voice


def kaldi_answers(split: str, item: QAItem) -> List[str]:
    """The ``answer`` line of an item: ``[response, *answers]`` for train/dev.

    The first element of an ``answer`` line is the training target; the test sets keep
    only their short references (what the benchmarks score against).
    """
    if split in TEST_SPLITS:
        return list(item.answers)
    return [item.response, *item.answers]


def plan_split(
    split: str,
    items: Sequence[QAItem],
    voices: Sequence[Voice],
    wav_dir: str | Path,
    voices_per_utt: int = 2,
    max_utts: Optional[int] = None,
) -> List[PlannedUtt]:
    """Decide voice, id and wav path of every utterance of ``split`` (no synthesis).

    Item ``i`` of ``train`` is spoken by voices ``(i * voices_per_utt + j) % len(voices)``
    for ``j < voices_per_utt`` (so its voices differ); other splits use voice
    ``i % len(voices)``.  ``max_utts`` keeps the first utterances of this order (items
    come in a seeded, domain-mixed order).  Wav paths are absolute.
    """
    if not voices:
        raise ValueError("no voices to speak the demo questions with")
    n_voices = voices_per_utt if split == "train" else 1
    if not 1 <= n_voices <= len(voices):
        raise ValueError(f"voices_per_utt must be in 1..{len(voices)}, got {voices_per_utt}")
    wav_root = Path(wav_dir).resolve() / split
    planned: List[PlannedUtt] = []
    for i, item in enumerate(items):
        for j in range(n_voices):
            voice = voices[(i * n_voices + j) % len(voices)]
            utt_id = f"{voice.tag}-{split}-{item.qid}"
            utt = Utterance(
                utt_id=utt_id,
                spk=voice.tag,
                wav=str(wav_root / f"{utt_id}.wav"),
                text=item.question,
                answers=kaldi_answers(split, item),
            )
            planned.append(PlannedUtt(utt, voice))
            if max_utts is not None and len(planned) >= max_utts:
                return planned
    return planned


def manifest_hash(planned: Sequence[PlannedUtt], sample_rate: int) -> str:
    """SHA-256 over everything that defines a split's output (ids, texts, voices, paths)."""
    rows = [
        [p.utt.utt_id, p.utt.spk, p.utt.wav, p.utt.text, p.utt.answers,
         dataclasses.asdict(p.voice)]
        for p in planned
    ]
    payload = json.dumps({"format": _MANIFEST_FORMAT, "sr": sample_rate, "rows": rows},
                         ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def split_is_complete(
    data_dir: str | Path, planned: Sequence[PlannedUtt], sample_rate: int
) -> bool:
    """True when ``data_dir`` was written from exactly ``planned`` and its WAVs exist."""
    manifest = Path(data_dir) / MANIFEST_NAME
    try:
        stored = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    if stored.get("sha256") != manifest_hash(planned, sample_rate):
        return False
    return all(Path(p.utt.wav).is_file() for p in planned)


def prepare_demo_sets(
    out_dir: str | Path,
    wav_dir: str | Path,
    sets: Sequence[str] = DEMO_SPLITS,
    voices_per_utt: int = 2,
    max_utts_per_set: Optional[int] = None,
    seed: int = 0,
    tts: Optional[Synthesizer] = None,
    voices: Optional[Sequence[Voice]] = None,
    show_progress: bool = True,
    train_source: str = "instructions",
    voice_family: str = "auto",
    unseen_voices: Optional[Sequence[Voice]] = None,
) -> Dict[str, int]:
    """Speak the demo world and write ``<out_dir>/<split>/`` Kaldi dirs (see module doc).

    Returns ``{split: number of utterances}``.  Idempotent: a split whose manifest
    matches is skipped.  WAVs (16 kHz, 16-bit) go to ``<wav_dir>/<split>/<utt_id>.wav``,
    each written atomically; the Kaldi dir is replaced atomically once all are written.

    Voices: ``voice_family`` (``auto``: flite when installed, else espeak-ng with a
    warning; :func:`~espnet_ext.data.tts.pick_family`) gives the ``train`` voices, which
    speak train, dev and the in-voice test sets, and the ``unseen`` voices of the
    speaker-disjoint sets; ``voices`` / ``unseen_voices`` override them.  The family
    used is written to every split's manifest (``voices``).
    """
    from tqdm import tqdm

    from espnet_ext.data.audio import TARGET_SR, write_wav
    from espnet_ext.data.tts import Synthesizer, pick_family
    from espnet_ext.data.tts import voices as family_voices

    unknown = [s for s in sets if s not in DEMO_SPLITS]
    if unknown:
        raise ValueError(f"unknown demo set(s) {unknown}; choose from {', '.join(DEMO_SPLITS)}")
    if max_utts_per_set is not None and max_utts_per_set < 1:
        raise ValueError(f"max_utts_per_set must be >= 1, got {max_utts_per_set}")
    family = pick_family(voice_family) if voices is None or unseen_voices is None else "given"
    voices = tuple(voices) if voices is not None else family_voices(family, "train")
    unseen_voices = tuple(unseen_voices) if unseen_voices is not None else family_voices(family, "unseen")
    if set(voices) & set(unseen_voices):
        raise ValueError("the unseen voices must not be train voices")
    world = build_world(seed, train_source)
    logger.info("demo world (seed %d, train source %s, %s voices), items per split and domain:\n%s",
                seed, train_source, family, world_summary(world))
    counts: Dict[str, int] = {}
    for split in sets:
        planned = plan_split(split, world[split], unseen_voices if split in UNSEEN_SPLITS else voices,
                             wav_dir, voices_per_utt, max_utts_per_set)
        data_dir = Path(out_dir) / split
        counts[split] = len(planned)
        if split_is_complete(data_dir, planned, TARGET_SR):
            logger.info("%s: complete (%d utterances), skipping", data_dir, len(planned))
            continue
        if tts is None:
            tts = Synthesizer()
        for p in tqdm(planned, desc=f"speaking {split}", unit="utt", disable=not show_progress):
            try:
                wav = tts.synthesize(p.utt.text, p.voice)
            except (RuntimeError, ValueError) as e:
                raise DataError(f"utterance {p.utt.utt_id}: {e}") from e
            write_wav(p.utt.wav, wav, TARGET_SR)
        write_kaldi_dir(data_dir, [p.utt for p in planned])
        atomic_write_text(
            data_dir / MANIFEST_NAME,
            json.dumps({"format": _MANIFEST_FORMAT, "split": split, "seed": seed,
                        "train_source": train_source, "voices": family,
                        "n_utts": len(planned), "sha256": manifest_hash(planned, TARGET_SR)},
                       indent=2) + "\n",
        )
        logger.info("%s: wrote %d utterances", data_dir, len(planned))
    return counts


__all__ = [
    "QA_SPLITS",
    "TRAIN_SOURCES",
    "UNSEEN_SPLITS",
    "DEMO_SPLITS",
    "DOMAINS",
    "MANIFEST_NAME",
    "PlannedUtt",
    "QAItem",
    "SPLIT_FRACTIONS",
    "TEST_SPLITS",
    "all_facts",
    "build_world",
    "entity_key",
    "kaldi_answers",
    "manifest_hash",
    "plan_split",
    "prepare_demo_sets",
    "split_is_complete",
    "world_summary",
]
