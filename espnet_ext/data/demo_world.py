"""The built-in demo world: a fixed set of templated general-knowledge questions.

The offline demo cannot ship VoiceAssistant-400K, LLaMA Questions or Web Questions, so
this module writes its own small spoken-QA world in code: 627 (template, entity)
questions over five domains (geography, science, arithmetic, everyday, people), each
with short reference answers and a one-sentence training response that contains the
first reference ("The capital of France is Paris.").  Facts are famous on purpose:
SmolLM2-135M-Instruct should answer a fair share of them in text, so that a loss of
textual competence after speech fine-tuning is measurable.

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

Speech (:func:`prepare_demo_sets`, behind ``python -m espnet_ext.bin.prepare_demo``):
every question is spoken by espeak-ng (:mod:`espnet_ext.data.tts`) and written as a
16 kHz WAV plus one Kaldi-style directory per split:

* voices cycle through :data:`~espnet_ext.data.tts.DEMO_VOICES`; a ``train`` item is
  spoken by ``voices_per_utt`` different voices, every other item by one.  The test sets
  use the *same* voices as ``train``: the demo measures whether knowledge transfers to
  unseen entities, not robustness to unseen speakers (espeak voices are not real
  speakers anyway);
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
import random
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Sequence, Tuple

from espnet_ext.data.kaldi_dir import DataError, Utterance, write_kaldi_dir
from espnet_ext.utils.atomic import atomic_write_text

if TYPE_CHECKING:  # the TTS wrapper needs espeakng-loader, only when synthesising
    from espnet_ext.data.tts import EspeakTTS, Voice

logger = logging.getLogger(__name__)

DEMO_SPLITS: Tuple[str, ...] = ("train", "dev", "test_llamaq", "test_webq")
TEST_SPLITS: Tuple[str, ...] = ("test_llamaq", "test_webq")
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

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_to_words(n: int) -> str:
    """English cardinal for ``0 <= n <= 999,999`` ("twenty-one", "three hundred five")."""
    if not 0 <= n <= 999_999:
        raise ValueError(f"number_to_words supports 0..999999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {number_to_words(rest)}" if rest else "")
    thousands, rest = divmod(n, 1000)
    return f"{number_to_words(thousands)} thousand" + (f" {number_to_words(rest)}" if rest else "")


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


def _facts(
    template: str,
    domain: str,
    phrasings: Sequence[str],
    response: str,
    rows: Sequence[Tuple[str, Sequence[str]]],
) -> Iterator[_Fact]:
    """Expand a template over ``rows`` of ``(entity phrase, answers)``.

    ``{x}`` in ``phrasings``/``response`` is the entity phrase, ``{X}`` the same with a
    capital first letter, ``{a}`` the first answer and ``{aa}`` it with its article.
    """
    for x, answers in rows:
        fields = {"x": x, "X": _cap(x), "a": answers[0], "aa": _a(answers[0])}
        yield _Fact(
            template=template,
            domain=domain,
            entity=_bare(x),
            phrasings=tuple(p.format(**fields) for p in phrasings),
            answers=tuple(answers),
            response=response.format(**fields),
        )


# ----------------------------------------------------------------------------------
# Geography
# ----------------------------------------------------------------------------------

_US = ("the United States", "United States", "USA", "US", "America")
_UK = ("England", "United Kingdom", "UK", "Britain")

# country phrase, capital references, continent (None: ambiguous), main language(s)
_COUNTRIES: Tuple[Tuple[str, Tuple[str, ...], Optional[str], Tuple[str, ...]], ...] = (
    ("France", ("Paris",), "Europe", ("French",)),
    ("Germany", ("Berlin",), "Europe", ("German",)),
    ("Italy", ("Rome",), "Europe", ("Italian",)),
    ("Spain", ("Madrid",), "Europe", ("Spanish", "Castilian")),
    ("Portugal", ("Lisbon", "Lisboa"), "Europe", ("Portuguese",)),
    ("the United Kingdom", ("London",), "Europe", ("English",)),
    ("Ireland", ("Dublin",), "Europe", ("English", "Irish")),
    ("the Netherlands", ("Amsterdam",), "Europe", ("Dutch",)),
    ("Belgium", ("Brussels",), "Europe", ()),
    ("Switzerland", ("Bern", "Berne"), "Europe", ()),
    ("Austria", ("Vienna", "Wien"), "Europe", ("German",)),
    ("Greece", ("Athens",), "Europe", ("Greek",)),
    ("Sweden", ("Stockholm",), "Europe", ("Swedish",)),
    ("Norway", ("Oslo",), "Europe", ("Norwegian",)),
    ("Denmark", ("Copenhagen",), "Europe", ("Danish",)),
    ("Finland", ("Helsinki",), "Europe", ("Finnish", "Swedish")),
    ("Poland", ("Warsaw",), "Europe", ("Polish",)),
    ("Russia", ("Moscow",), None, ("Russian",)),
    ("Ukraine", ("Kyiv", "Kiev"), "Europe", ("Ukrainian",)),
    ("Hungary", ("Budapest",), "Europe", ("Hungarian",)),
    ("the Czech Republic", ("Prague",), "Europe", ("Czech",)),
    ("Iceland", ("Reykjavik",), "Europe", ("Icelandic",)),
    ("Turkey", ("Ankara",), None, ("Turkish",)),
    ("Egypt", ("Cairo",), "Africa", ("Arabic",)),
    ("Nigeria", ("Abuja",), "Africa", ("English",)),
    ("Kenya", ("Nairobi",), "Africa", ("Swahili", "English")),
    ("South Africa", ("Pretoria", "Cape Town", "Bloemfontein"), "Africa", ()),
    ("Morocco", ("Rabat",), "Africa", ("Arabic", "Berber")),
    ("Ethiopia", ("Addis Ababa",), "Africa", ("Amharic",)),
    ("Ghana", ("Accra",), "Africa", ("English",)),
    ("China", ("Beijing", "Peking"), "Asia", ("Chinese", "Mandarin")),
    ("Japan", ("Tokyo",), "Asia", ("Japanese",)),
    ("India", ("New Delhi", "Delhi"), "Asia", ("Hindi", "English")),
    ("South Korea", ("Seoul",), "Asia", ("Korean",)),
    ("Thailand", ("Bangkok",), "Asia", ("Thai",)),
    ("Vietnam", ("Hanoi",), "Asia", ("Vietnamese",)),
    ("Indonesia", ("Jakarta",), "Asia", ("Indonesian",)),
    ("the Philippines", ("Manila",), "Asia", ("Filipino", "Tagalog", "English")),
    ("Pakistan", ("Islamabad",), "Asia", ("Urdu",)),
    ("Iran", ("Tehran",), "Asia", ("Persian", "Farsi")),
    ("Iraq", ("Baghdad",), "Asia", ("Arabic",)),
    ("Saudi Arabia", ("Riyadh",), "Asia", ("Arabic",)),
    ("Afghanistan", ("Kabul",), "Asia", ("Pashto", "Dari")),
    ("the United States", ("Washington, D.C.", "Washington", "DC"), "North America", ("English",)),
    ("Canada", ("Ottawa",), "North America", ("English", "French")),
    ("Mexico", ("Mexico City",), "North America", ("Spanish",)),
    ("Cuba", ("Havana",), "North America", ("Spanish",)),
    ("Jamaica", ("Kingston",), "North America", ("English",)),
    ("Brazil", ("Brasília", "Brasilia"), "South America", ("Portuguese",)),
    ("Argentina", ("Buenos Aires",), "South America", ("Spanish",)),
    ("Chile", ("Santiago",), "South America", ("Spanish",)),
    ("Peru", ("Lima",), "South America", ("Spanish",)),
    ("Colombia", ("Bogotá", "Bogota"), "South America", ("Spanish",)),
    ("Venezuela", ("Caracas",), "South America", ("Spanish",)),
    ("Australia", ("Canberra",), "Oceania", ("English",)),
    ("New Zealand", ("Wellington",), "Oceania", ("English", "Maori")),
)

_CURRENCIES: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("Japan", ("yen",)),
    ("the United Kingdom", ("pound", "pound sterling")),
    ("the United States", ("dollar", "US dollar")),
    ("India", ("rupee", "Indian rupee")),
    ("China", ("yuan", "renminbi")),
    ("Russia", ("ruble", "rouble")),
    ("Mexico", ("peso", "Mexican peso")),
    ("Brazil", ("real", "Brazilian real")),
    ("Switzerland", ("franc", "Swiss franc")),
    ("South Korea", ("won",)),
    ("Germany", ("euro",)),
    ("France", ("euro",)),
    ("Italy", ("euro",)),
    ("Canada", ("dollar", "Canadian dollar")),
    ("Australia", ("dollar", "Australian dollar")),
    ("Sweden", ("krona", "Swedish krona")),
    ("Thailand", ("baht",)),
    ("South Africa", ("rand",)),
)

# Landmarks and famous non-capital cities -> country.
_PLACES: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("the Eiffel Tower", ("France",)),
    ("the Louvre", ("France",)),
    ("the Colosseum", ("Italy",)),
    ("the Leaning Tower of Pisa", ("Italy",)),
    ("Big Ben", _UK),
    ("Stonehenge", _UK),
    ("Buckingham Palace", _UK),
    ("the Statue of Liberty", _US[1:]),
    ("the Grand Canyon", _US[1:]),
    ("the Golden Gate Bridge", _US[1:]),
    ("the Great Wall", ("China",)),
    ("the Forbidden City", ("China",)),
    ("the Taj Mahal", ("India",)),
    ("the Pyramids of Giza", ("Egypt",)),
    ("the Sydney Opera House", ("Australia",)),
    ("Uluru", ("Australia",)),
    ("Machu Picchu", ("Peru",)),
    ("the Kremlin", ("Russia",)),
    ("the Acropolis", ("Greece",)),
    ("Christ the Redeemer", ("Brazil",)),
    ("Mount Fuji", ("Japan",)),
    ("the Sagrada Familia", ("Spain",)),
    ("the Alhambra", ("Spain",)),
    ("the Brandenburg Gate", ("Germany",)),
    ("Petra", ("Jordan",)),
    ("Angkor Wat", ("Cambodia",)),
    ("Chichen Itza", ("Mexico",)),
    ("the CN Tower", ("Canada",)),
    ("Mount Kilimanjaro", ("Tanzania",)),
    ("the Burj Khalifa", ("United Arab Emirates", "UAE", "Dubai")),
    ("Sydney", ("Australia",)),
    ("Melbourne", ("Australia",)),
    ("Toronto", ("Canada",)),
    ("Vancouver", ("Canada",)),
    ("Montreal", ("Canada",)),
    ("Rio de Janeiro", ("Brazil",)),
    ("São Paulo", ("Brazil",)),
    ("Barcelona", ("Spain",)),
    ("Seville", ("Spain",)),
    ("Munich", ("Germany",)),
    ("Hamburg", ("Germany",)),
    ("Venice", ("Italy",)),
    ("Milan", ("Italy",)),
    ("Florence", ("Italy",)),
    ("Naples", ("Italy",)),
    ("Osaka", ("Japan",)),
    ("Kyoto", ("Japan",)),
    ("Mumbai", ("India",)),
    ("Shanghai", ("China",)),
    ("Istanbul", ("Turkey",)),
    ("Los Angeles", _US[1:]),
    ("Chicago", _US[1:]),
    ("Marseille", ("France",)),
    ("Lyon", ("France",)),
    ("Manchester", _UK),
    ("Casablanca", ("Morocco",)),
    ("Dubai", ("United Arab Emirates", "UAE")),
    ("Saint Petersburg", ("Russia",)),
    ("Auckland", ("New Zealand",)),
    ("Geneva", ("Switzerland",)),
)

_RIVERS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("London", ("Thames", "River Thames")),
    ("Paris", ("Seine", "River Seine")),
    ("Rome", ("Tiber",)),
    ("Cairo", ("Nile",)),
    ("Vienna", ("Danube",)),
    ("Budapest", ("Danube",)),
    ("New York City", ("Hudson", "East River")),
    ("Baghdad", ("Tigris",)),
)


def _geo_singletons() -> Iterator[_Fact]:
    """One-off geography facts; each is its own entity."""
    rows = (
        ("largest ocean", ("What is the largest ocean on Earth?", "Which ocean is the biggest?",
                           "What is the biggest ocean in the world?"),
         ("Pacific", "Pacific Ocean"), "The largest ocean on Earth is the Pacific Ocean."),
        ("smallest ocean", ("What is the smallest ocean in the world?",
                            "Which ocean is the smallest?"),
         ("Arctic", "Arctic Ocean"), "The smallest ocean is the Arctic Ocean."),
        ("ocean between Europe and America",
         ("Which ocean lies between Europe and North America?",
          "What ocean separates Europe from America?"),
         ("Atlantic", "Atlantic Ocean"), "The Atlantic Ocean lies between Europe and America."),
        ("largest continent", ("What is the largest continent?",
                               "Which continent is the biggest?",
                               "What is the biggest continent in the world?"),
         ("Asia",), "The largest continent is Asia."),
        ("number of continents", ("How many continents are there?",
                                  "How many continents does the world have?"),
         _num(7), "There are 7 continents."),
        ("longest river in Africa", ("What is the longest river in Africa?",
                                     "Which river is the longest in Africa?"),
         ("Nile", "River Nile"), "The longest river in Africa is the Nile."),
        ("longest river in South America", ("What is the longest river in South America?",
                                            "Which river is the longest in South America?"),
         ("Amazon", "Amazon River"), "The longest river in South America is the Amazon."),
        ("tallest mountain", ("What is the tallest mountain in the world?",
                              "Which mountain is the highest on Earth?",
                              "What is the highest mountain in the world?"),
         ("Everest", "Mount Everest"), "The tallest mountain in the world is Mount Everest."),
        ("largest hot desert", ("What is the largest hot desert in the world?",
                                "Which is the biggest hot desert on Earth?"),
         ("Sahara", "Sahara Desert"), "The largest hot desert is the Sahara."),
        ("largest country", ("What is the largest country in the world by area?",
                             "Which country is the biggest in the world?"),
         ("Russia",), "The largest country in the world is Russia."),
        ("largest country in South America",
         ("What is the largest country in South America?",
          "Which is the biggest country in South America?"),
         ("Brazil",), "The largest country in South America is Brazil."),
        ("largest US state", ("What is the largest state of the United States?",
                              "Which American state is the biggest?"),
         ("Alaska",), "The largest state of the United States is Alaska."),
        ("largest island", ("What is the largest island in the world?",
                            "Which island is the biggest in the world?"),
         ("Greenland",), "The largest island in the world is Greenland."),
    )
    for entity, phrasings, answers, response in rows:
        yield _Fact("geo_fact", "geography", entity, phrasings, answers, response)


def _geography() -> Iterator[_Fact]:
    """All geography facts: capitals, continents, languages, currencies, places, rivers."""
    yield from _facts(
        "capital", "geography",
        ("What is the capital of {x}?", "Which city is the capital of {x}?",
         "What city is the capital of {x}?", "Can you tell me the capital of {x}?"),
        "The capital of {x} is {a}.",
        [(c, caps) for c, caps, _, _ in _COUNTRIES],
    )
    yield from _facts(
        "continent", "geography",
        ("On which continent is {x}?", "Which continent is {x} in?",
         "{X} is located on which continent?"),
        "{X} is in {a}.",
        [(c, (cont,)) for c, _, cont, _ in _COUNTRIES if cont],
    )
    yield from _facts(
        "language", "geography",
        ("What language do people mainly speak in {x}?", "What is the main language of {x}?",
         "Which language is spoken in {x}?"),
        "The main language of {x} is {a}.",
        [(c, langs) for c, _, _, langs in _COUNTRIES if langs],
    )
    yield from _facts(
        "currency", "geography",
        ("What is the currency of {x}?", "What money do people use in {x}?",
         "Which currency is used in {x}?"),
        "The currency of {x} is the {a}.",
        _CURRENCIES,
    )
    yield from _facts(
        "place_country", "geography",
        ("In which country is {x}?", "Which country is {x} in?",
         "{X} is located in which country?"),
        "{X} is in {a}.",
        _PLACES,
    )
    yield from _facts(
        "river", "geography",
        ("Which river flows through {x}?", "What river runs through {x}?",
         "What is the name of the river in {x}?"),
        "The river that flows through {x} is the {a}.",
        _RIVERS,
    )
    yield from _geo_singletons()


# ----------------------------------------------------------------------------------
# Science
# ----------------------------------------------------------------------------------

# Single-letter symbols (H, O, C, ...) are left out: under the ``contain`` convention a
# one-letter reference is a substring of almost any answer.
_ELEMENTS: Tuple[Tuple[str, str], ...] = (
    ("gold", "Au"), ("silver", "Ag"), ("iron", "Fe"), ("copper", "Cu"), ("lead", "Pb"),
    ("sodium", "Na"), ("helium", "He"), ("neon", "Ne"), ("calcium", "Ca"), ("zinc", "Zn"),
    ("mercury", "Hg"), ("tin", "Sn"), ("chlorine", "Cl"), ("magnesium", "Mg"),
    ("aluminium", "Al"), ("silicon", "Si"), ("lithium", "Li"), ("nickel", "Ni"),
    ("platinum", "Pt"), ("argon", "Ar"),
)

_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")
_PLANETS = ("Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune")

_LEGS: Tuple[Tuple[str, int], ...] = (
    ("spider", 8), ("insect", 6), ("ant", 6), ("dog", 4), ("horse", 4), ("chicken", 2),
    ("bird", 2), ("beetle", 6), ("cow", 4), ("cat", 4), ("duck", 2), ("elephant", 4),
)


def _science_singletons() -> Iterator[_Fact]:
    """One-off science facts; each is its own entity."""
    rows = (
        ("red planet", ("Which planet is known as the Red Planet?",
                        "What planet is called the Red Planet?"),
         ("Mars",), "The Red Planet is Mars."),
        ("largest planet", ("What is the largest planet in the solar system?",
                            "Which planet is the biggest in our solar system?"),
         ("Jupiter",), "The largest planet in the solar system is Jupiter."),
        ("ringed planet", ("Which planet is famous for its rings?",
                           "What planet has the most famous rings?"),
         ("Saturn",), "Saturn is the planet famous for its rings."),
        ("number of planets", ("How many planets are in the solar system?",
                               "How many planets orbit the Sun?"),
         _num(8), "There are 8 planets in the solar system."),
        ("moon of Earth", ("What is the natural satellite of the Earth called?",
                           "What orbits the Earth every month?"),
         ("Moon", "the Moon"), "The natural satellite of the Earth is the Moon."),
        ("nearest star", ("What is the closest star to the Earth?",
                          "Which star is nearest to the Earth?"),
         ("Sun", "the Sun"), "The closest star to the Earth is the Sun."),
        ("boiling point", ("At what temperature in Celsius does water boil?",
                           "What is the boiling point of water in degrees Celsius?"),
         _num(100), "Water boils at 100 degrees Celsius."),
        ("freezing point", ("At what temperature in Celsius does water freeze?",
                            "What is the freezing point of water in degrees Celsius?"),
         _num(0), "Water freezes at 0 degrees Celsius."),
        ("solid water", ("What do we call water when it is frozen?",
                         "What is frozen water called?"),
         ("ice",), "Frozen water is called ice."),
        ("gravity", ("What force pulls objects toward the ground?",
                     "What force keeps us on the ground?"),
         ("gravity",), "The force that pulls objects down is gravity."),
        ("gas plants absorb", ("What gas do plants absorb from the air?",
                               "Which gas do plants take in from the air?"),
         ("carbon dioxide", "CO2"), "Plants absorb carbon dioxide from the air."),
        ("gas we breathe", ("What gas do humans need to breathe?",
                            "Which gas do we need to breathe to stay alive?"),
         ("oxygen",), "Humans need to breathe oxygen."),
        ("lightest element", ("What is the lightest chemical element?",
                              "Which element is the lightest?"),
         ("hydrogen",), "The lightest chemical element is hydrogen."),
        ("balloon gas", ("Which gas makes party balloons float?",
                         "What gas is used to fill balloons that float?"),
         ("helium",), "Floating balloons are filled with helium."),
        ("water formula", ("What is the chemical formula of water?",
                           "What is the formula for water?"),
         ("H2O",), "The chemical formula of water is H2O."),
        ("photosynthesis", ("What process do plants use to make food from sunlight?",
                            "What is the process called by which plants make food from light?"),
         ("photosynthesis",), "Plants make food from sunlight by photosynthesis."),
        ("hardest substance", ("What is the hardest natural substance?",
                               "Which natural material is the hardest?"),
         ("diamond",), "The hardest natural substance is diamond."),
        ("blood pump", ("Which organ pumps blood through the body?",
                        "What organ pumps blood around the body?"),
         ("heart", "the heart"), "The heart pumps blood through the body."),
        ("thinking organ", ("Which organ do we use to think?",
                            "What organ controls the body and lets us think?"),
         ("brain", "the brain"), "We think with the brain."),
        ("largest organ", ("What is the largest organ of the human body?",
                           "Which organ of the human body is the biggest?"),
         ("skin", "the skin"), "The largest organ of the human body is the skin."),
        ("adult bones", ("How many bones are in the adult human body?",
                         "How many bones does an adult human have?"),
         _num(206), "The adult human body has 206 bones."),
        ("atom center", ("What is the center of an atom called?",
                         "What do we call the middle part of an atom?"),
         ("nucleus",), "The center of an atom is called the nucleus."),
        ("honey", ("What do bees make?", "What sweet food do bees produce?"),
         ("honey",), "Bees make honey."),
        ("largest animal", ("What is the largest animal on Earth?",
                            "Which animal is the biggest in the world?"),
         ("blue whale", "whale"), "The largest animal on Earth is the blue whale."),
        ("fastest land animal", ("What is the fastest land animal?",
                                 "Which animal runs the fastest on land?"),
         ("cheetah",), "The fastest land animal is the cheetah."),
        ("tallest animal", ("What is the tallest animal?",
                            "Which animal is the tallest in the world?"),
         ("giraffe",), "The tallest animal is the giraffe."),
        ("largest bird", ("What is the largest bird in the world?",
                          "Which bird is the biggest?"),
         ("ostrich",), "The largest bird in the world is the ostrich."),
        ("king of the jungle", ("Which animal is called the king of the jungle?",
                                "What animal is known as the king of the jungle?"),
         ("lion",), "The lion is called the king of the jungle."),
        ("caterpillar grows", ("What does a caterpillar turn into?",
                               "What does a caterpillar become when it grows up?"),
         ("butterfly", "moth"), "A caterpillar turns into a butterfly."),
        ("plant eaters", ("What do we call animals that eat only plants?",
                          "What is an animal that only eats plants called?"),
         ("herbivores", "herbivore"), "Animals that eat only plants are herbivores."),
        ("meat eaters", ("What do we call animals that eat only meat?",
                         "What is an animal that only eats meat called?"),
         ("carnivores", "carnivore"), "Animals that eat only meat are carnivores."),
    )
    for entity, phrasings, answers, response in rows:
        yield _Fact("science_fact", "science", entity, phrasings, answers, response)


def _science() -> Iterator[_Fact]:
    """All science facts: element symbols, planet order, legs, one-off facts."""
    yield from _facts(
        "element_symbol", "science",
        ("What is the chemical symbol for {x}?", "What is the symbol of the element {x}?",
         "Which chemical symbol stands for {x}?"),
        "The chemical symbol for {x} is {a}.",
        [(name, (sym,)) for name, sym in _ELEMENTS],
    )
    for ordinal, planet in zip(_ORDINALS, _PLANETS):
        yield _Fact(
            template="planet_order",
            domain="science",
            entity=f"{ordinal} planet",
            phrasings=tuple(p.format(o=ordinal) for p in (
                "What is the {o} planet from the Sun?", "Which planet is {o} from the Sun?",
                "Which planet comes {o} in order from the Sun?")),
            answers=(planet,),
            response=f"The {ordinal} planet from the Sun is {planet}.",
        )
    yield from _facts(
        "legs", "science",
        ("How many legs does {x} have?", "How many legs has {x} got?",
         "What is the number of legs of {x}?"),
        "{X} has {a} legs.",
        [(_a(animal), _num(n)) for animal, n in _LEGS],
    )
    yield from _science_singletons()


# ----------------------------------------------------------------------------------
# Arithmetic
# ----------------------------------------------------------------------------------


def _arithmetic() -> Iterator[_Fact]:
    """Small sums, products and differences; answers are digits, then words.

    Sums and products are commutative, so the entity is written with the smaller
    operand first ("3 + 4") and phrasings alternate the operand order.
    """
    ops = (
        ("add", "+", lambda a, b: a + b,
         [(a, b) for a in range(1, 10) for b in range(a, 10)],
         ("What is {p} plus {q}?", "How much is {q} plus {p}?",
          "What do you get when you add {p} and {q}?", "What is the sum of {q} and {p}?"),
         "{p} plus {q} equals {r}."),
        ("mul", "x", lambda a, b: a * b,
         [(a, b) for a in range(2, 10) for b in range(a, 10)],
         ("What is {p} times {q}?", "How much is {q} multiplied by {p}?",
          "What is the product of {p} and {q}?", "What do you get when you multiply {q} by {p}?"),
         "{p} times {q} equals {r}."),
        ("sub", "-", lambda a, b: a - b,
         [(a, b) for a in range(6, 21, 2) for b in (1, 3, 5)],
         ("What is {p} minus {q}?", "How much is {p} minus {q}?",
          "What do you get if you take {q} away from {p}?", "What is {q} less than {p}?"),
         "{p} minus {q} equals {r}."),
    )
    for name, sign, fn, pairs, phrasings, response in ops:
        for a, b in pairs:
            r = fn(a, b)
            yield _Fact(
                template=name,
                domain="arithmetic",
                entity=f"{a} {sign} {b}",
                phrasings=tuple(ph.format(p=a, q=b, r=r) for ph in phrasings),
                answers=_num(r),
                response=response.format(p=a, q=b, r=r),
            )


# ----------------------------------------------------------------------------------
# Everyday facts
# ----------------------------------------------------------------------------------

# (counted things, container with article, count)
_UNITS: Tuple[Tuple[str, str, int], ...] = (
    ("days", "a week", 7), ("months", "a year", 12), ("hours", "a day", 24),
    ("minutes", "an hour", 60), ("seconds", "a minute", 60), ("weeks", "a year", 52),
    ("days", "a leap year", 366), ("years", "a century", 100), ("years", "a decade", 10),
    ("centimeters", "a meter", 100), ("meters", "a kilometer", 1000),
    ("grams", "a kilogram", 1000), ("cents", "a dollar", 100), ("days", "a fortnight", 14),
    ("items", "a dozen", 12), ("letters", "the English alphabet", 26),
    ("players", "a soccer team", 11), ("strings", "a standard guitar", 6),
)
_SIDES = (("triangle", 3), ("square", 4), ("pentagon", 5), ("hexagon", 6), ("octagon", 8),
          ("heptagon", 7), ("decagon", 10))
_WHEELS = (("bicycle", 2), ("tricycle", 3), ("car", 4))
_COLOURS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("the sky on a clear day", ("blue",)), ("grass", ("green",)), ("a ripe banana", ("yellow",)),
    ("snow", ("white",)), ("coal", ("black",)), ("a ripe tomato", ("red",)),
    ("a carrot", ("orange",)), ("a lemon", ("yellow",)), ("blood", ("red",)),
    ("a ripe strawberry", ("red",)), ("an emerald", ("green",)), ("milk", ("white",)),
    ("chocolate", ("brown",)), ("a pumpkin", ("orange",)), ("a lime", ("green",)),
    ("a polar bear", ("white",)), ("a crow", ("black",)), ("a flamingo", ("pink",)),
    ("a fire truck", ("red",)), ("an eggplant", ("purple",)), ("a school bus", ("yellow",)),
)
_SOUNDS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("dog", ("woof", "bark", "barks")), ("cat", ("meow", "miaow", "purr")), ("cow", ("moo",)),
    ("duck", ("quack",)), ("sheep", ("baa", "bleat")), ("pig", ("oink", "grunt")),
    ("horse", ("neigh", "whinny")), ("owl", ("hoot", "hoots")), ("snake", ("hiss", "hisses")),
    ("frog", ("ribbit", "croak")), ("bee", ("buzz", "buzzes")), ("mouse", ("squeak",)),
    ("lion", ("roar", "roars")), ("wolf", ("howl", "howls")),
    ("rooster", ("cock-a-doodle-doo", "crow")), ("donkey", ("hee-haw", "bray")),
)
_BABIES: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("dog", ("puppy", "pup")), ("cat", ("kitten", "kitty")), ("cow", ("calf",)),
    ("horse", ("foal", "colt", "filly")), ("sheep", ("lamb",)), ("goat", ("kid",)),
    ("pig", ("piglet",)), ("duck", ("duckling",)), ("frog", ("tadpole",)),
    ("kangaroo", ("joey",)), ("lion", ("cub",)), ("bear", ("cub",)), ("deer", ("fawn",)),
    ("goose", ("gosling",)), ("swan", ("cygnet",)), ("owl", ("owlet",)),
    ("chicken", ("chick",)), ("elephant", ("calf",)), ("penguin", ("chick",)),
    ("rabbit", ("bunny", "kit", "kitten")), ("butterfly", ("caterpillar",)),
)
_OPPOSITES: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("hot", ("cold",)), ("up", ("down",)), ("big", ("small", "little")), ("day", ("night",)),
    ("left", ("right",)), ("fast", ("slow",)), ("happy", ("sad", "unhappy")),
    ("open", ("closed", "shut")), ("black", ("white",)), ("wet", ("dry",)),
    ("old", ("young", "new")), ("light", ("dark", "heavy")), ("tall", ("short",)),
    ("empty", ("full",)), ("early", ("late",)), ("north", ("south",)), ("east", ("west",)),
    ("inside", ("outside",)), ("win", ("lose",)), ("hard", ("soft", "easy")),
    ("loud", ("quiet", "soft")), ("rich", ("poor",)), ("strong", ("weak",)),
    ("thick", ("thin",)), ("push", ("pull",)), ("buy", ("sell",)), ("high", ("low",)),
    ("first", ("last",)), ("true", ("false",)), ("yes", ("no",)), ("give", ("take",)),
    ("love", ("hate",)), ("summer", ("winter",)), ("boy", ("girl",)), ("king", ("queen",)),
    ("top", ("bottom",)), ("question", ("answer",)), ("start", ("finish", "end")),
    ("clean", ("dirty",)), ("before", ("after",)),
)
_PLURALS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("mouse", ("mice",)), ("child", ("children",)), ("foot", ("feet",)), ("tooth", ("teeth",)),
    ("man", ("men",)), ("woman", ("women",)), ("goose", ("geese",)), ("person", ("people",)),
    ("knife", ("knives",)), ("leaf", ("leaves",)), ("wolf", ("wolves",)), ("ox", ("oxen",)),
    ("cactus", ("cacti", "cactuses")),
)
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")
_SEASONS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("spring", ("summer",)), ("summer", ("autumn", "fall")), ("autumn", ("winter",)),
    ("winter", ("spring",)),
)


def _everyday() -> Iterator[_Fact]:
    """Everyday facts: units, shapes, colours, animal sounds and babies, opposites..."""
    for things, container, n in _UNITS:
        fields = {"t": things, "c": container, "C": _cap(container)}
        yield _Fact(
            template="units",
            domain="everyday",
            entity=f"{things} in {_bare(container)}",
            phrasings=tuple(p.format(**fields) for p in (
                "How many {t} are in {c}?", "How many {t} are there in {c}?",
                "How many {t} does {c} have?")),
            answers=_num(n),
            response="There are {n} {t} in {c}.".format(n=n, **fields),
        )
    yield from _facts(
        "sides", "everyday",
        ("How many sides does {x} have?", "How many sides has {x} got?",
         "What is the number of sides of {x}?"),
        "{X} has {a} sides.",
        [(_a(shape), _num(n)) for shape, n in _SIDES],
    )
    yield from _facts(
        "wheels", "everyday",
        ("How many wheels does {x} have?", "How many wheels are on {x}?",
         "What is the number of wheels on {x}?"),
        "{X} has {a} wheels.",
        [(_a(v), _num(n)) for v, n in _WHEELS],
    )
    yield from _facts(
        "colour", "everyday",
        ("What color is {x}?", "What colour is {x}?", "Which color is {x}?"),
        "{X} is {a}.",
        _COLOURS,
    )
    yield from _facts(
        "animal_sound", "everyday",
        ("What sound does {x} make?", "What noise does {x} make?", "What does {x} say?"),
        "{X} goes {a}.",
        [(_a(animal), s) for animal, s in _SOUNDS],
    )
    yield from _facts(
        "baby_animal", "everyday",
        ("What is a baby {x} called?", "What do you call a baby {x}?",
         "What is the name for a young {x}?"),
        "A baby {x} is called {aa}.",
        _BABIES,
    )
    yield from _facts(
        "opposite", "everyday",
        ("What is the opposite of {x}?", "What word means the opposite of {x}?",
         "What is the antonym of {x}?"),
        "The opposite of {x} is {a}.",
        _OPPOSITES,
    )
    yield from _facts(
        "plural", "everyday",
        ("What is the plural of {x}?", "What is the plural form of the word {x}?",
         "If you have more than one {x}, what do you call them?"),
        "The plural of {x} is {a}.",
        _PLURALS,
    )
    yield from _facts(
        "next_day", "everyday",
        ("What day comes after {x}?", "Which day of the week follows {x}?",
         "If today is {x}, what day is tomorrow?"),
        "The day after {x} is {a}.",
        [(d, (_DAYS[(i + 1) % 7],)) for i, d in enumerate(_DAYS)],
    )
    yield from _facts(
        "next_month", "everyday",
        ("What month comes after {x}?", "Which month follows {x}?",
         "What is the month after {x}?"),
        "The month after {x} is {a}.",
        [(m, (_MONTHS[(i + 1) % 12],)) for i, m in enumerate(_MONTHS)],
    )
    yield from _facts(
        "next_season", "everyday",
        ("Which season comes after {x}?", "What season follows {x}?",
         "What is the season after {x}?"),
        "The season after {x} is {a}.",
        _SEASONS,
    )


# ----------------------------------------------------------------------------------
# People: authors, artists, inventors
# ----------------------------------------------------------------------------------

_WORKS: Tuple[Tuple[str, str, Tuple[str, ...], str], ...] = (
    # template, work phrase, references (short first), full name for the response
    ("author", "Romeo and Juliet", ("Shakespeare", "William Shakespeare"), "William Shakespeare"),
    ("author", "Hamlet", ("Shakespeare", "William Shakespeare"), "William Shakespeare"),
    ("author", "the Harry Potter books", ("Rowling", "J. K. Rowling", "J.K. Rowling"),
     "J. K. Rowling"),
    ("author", "Pride and Prejudice", ("Austen", "Jane Austen"), "Jane Austen"),
    ("author", "A Christmas Carol", ("Dickens", "Charles Dickens"), "Charles Dickens"),
    ("author", "The Adventures of Tom Sawyer", ("Twain", "Mark Twain"), "Mark Twain"),
    ("author", "the Sherlock Holmes stories", ("Doyle", "Arthur Conan Doyle", "Conan Doyle"),
     "Arthur Conan Doyle"),
    ("author", "The Odyssey", ("Homer",), "Homer"),
    ("author", "Don Quixote", ("Cervantes", "Miguel de Cervantes"), "Miguel de Cervantes"),
    ("author", "The Lord of the Rings", ("Tolkien", "J. R. R. Tolkien"), "J. R. R. Tolkien"),
    ("painter", "the Mona Lisa", ("Leonardo", "Leonardo da Vinci", "da Vinci"),
     "Leonardo da Vinci"),
    ("painter", "The Starry Night", ("Van Gogh", "Vincent van Gogh"), "Vincent van Gogh"),
    ("painter", "the ceiling of the Sistine Chapel", ("Michelangelo",), "Michelangelo"),
    ("painter", "Guernica", ("Picasso", "Pablo Picasso"), "Pablo Picasso"),
    ("composer", "the Moonlight Sonata", ("Beethoven", "Ludwig van Beethoven"),
     "Ludwig van Beethoven"),
    ("composer", "The Magic Flute", ("Mozart", "Wolfgang Amadeus Mozart"),
     "Wolfgang Amadeus Mozart"),
    ("composer", "The Four Seasons", ("Vivaldi", "Antonio Vivaldi"), "Antonio Vivaldi"),
    ("inventor", "the telephone", ("Bell", "Alexander Graham Bell"), "Alexander Graham Bell"),
    ("inventor", "the light bulb", ("Edison", "Thomas Edison"), "Thomas Edison"),
    ("inventor", "the airplane", ("Wright", "Wright brothers"), "the Wright brothers"),
    ("inventor", "the printing press", ("Gutenberg", "Johannes Gutenberg"), "Johannes Gutenberg"),
    ("inventor", "the World Wide Web", ("Berners-Lee", "Tim Berners-Lee"), "Tim Berners-Lee"),
    ("discoverer", "penicillin", ("Fleming", "Alexander Fleming"), "Alexander Fleming"),
    ("theorist", "the theory of relativity", ("Einstein", "Albert Einstein"), "Albert Einstein"),
    ("theorist", "the laws of motion", ("Newton", "Isaac Newton"), "Isaac Newton"),
    ("theorist", "the theory of evolution", ("Darwin", "Charles Darwin"), "Charles Darwin"),
    ("discoverer", "radium", ("Curie", "Marie Curie"), "Marie Curie"),
)

_ROLE_PHRASINGS: Dict[str, Tuple[Tuple[str, ...], str]] = {
    "author": (("Who wrote {x}?", "Who is the author of {x}?", "Which writer wrote {x}?"),
               "{N} wrote {x}."),
    "painter": (("Who painted {x}?", "Which artist painted {x}?", "Who is the painter of {x}?"),
                "{N} painted {x}."),
    "composer": (("Who composed {x}?", "Which composer wrote {x}?",
                  "Who is the composer of {x}?"),
                 "{N} composed {x}."),
    "inventor": (("Who invented {x}?", "Who is credited with inventing {x}?",
                  "Who is known as the inventor of {x}?"),
                 "{N} invented {x}."),
    "discoverer": (("Who discovered {x}?", "Which scientist discovered {x}?",
                    "Who is famous for discovering {x}?"),
                   "{N} discovered {x}."),
    "theorist": (("Who developed {x}?", "Which scientist came up with {x}?",
                  "Who is famous for {x}?"),
                 "{N} developed {x}."),
}


def _people() -> Iterator[_Fact]:
    """Who wrote / painted / composed / invented / discovered X."""
    for role, work, answers, full_name in _WORKS:
        phrasings, response = _ROLE_PHRASINGS[role]
        fields = {"x": work, "N": _cap(full_name)}
        yield _Fact(
            template=role,
            domain="people",
            entity=_bare(work),
            phrasings=tuple(p.format(**fields) for p in phrasings),
            answers=answers,
            response=response.format(**fields),
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
        for split, end in zip(DEMO_SPLITS, bounds):
            for key in keys[start:end]:
                assignment[key] = split
            start = end
    return assignment


def _qid(fact: _Fact) -> str:
    return f"{fact.template}-{_slug(fact.entity)}"


def build_world(seed: int = 0) -> Dict[str, List[QAItem]]:
    """Build every split of the demo world (deterministic given ``seed``).

    Returns ``{split: items}`` for :data:`DEMO_SPLITS`.  Items of a split come in a
    seeded, domain-mixed order, so that the first N items are a fair sample
    (``--max_utts_per_set``).  ``train`` has one item per phrasing (qid suffix
    ``-p<k>``); the other splits one per question with a seeded phrasing.
    """
    facts = all_facts()
    assignment = _assign_entities(facts, seed)
    world: Dict[str, List[QAItem]] = {split: [] for split in DEMO_SPLITS}
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
    return world


def demo_items(split: str, seed: int = 0) -> List[QAItem]:
    """The items of one split (see :func:`build_world`)."""
    if split not in DEMO_SPLITS:
        raise ValueError(f"unknown demo split {split!r}; choose from {', '.join(DEMO_SPLITS)}")
    return build_world(seed)[split]


def world_summary(world: Dict[str, List[QAItem]]) -> str:
    """A small text table: items per split and domain (for logs and reports)."""
    header = f"{'split':<12}" + "".join(f"{d:>11}" for d in DOMAINS) + f"{'total':>8}"
    lines = [header]
    for split, items in world.items():
        counts = Counter(item.domain for item in items)
        lines.append(
            f"{split:<12}" + "".join(f"{counts.get(d, 0):>11}" for d in DOMAINS)
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
    voice: "Voice"


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
    voices: Sequence["Voice"],
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
    tts: Optional["EspeakTTS"] = None,
    voices: Optional[Sequence["Voice"]] = None,
    show_progress: bool = True,
) -> Dict[str, int]:
    """Speak the demo world and write ``<out_dir>/<split>/`` Kaldi dirs (see module doc).

    Returns ``{split: number of utterances}``.  Idempotent: a split whose manifest
    matches is skipped.  WAVs (16 kHz, 16-bit) go to ``<wav_dir>/<split>/<utt_id>.wav``,
    each written atomically; the Kaldi dir is replaced atomically once all are written.
    """
    from tqdm import tqdm

    from espnet_ext.data.audio import TARGET_SR, write_wav
    from espnet_ext.data.tts import DEMO_VOICES, EspeakTTS, synthesize_16k

    unknown = [s for s in sets if s not in DEMO_SPLITS]
    if unknown:
        raise ValueError(f"unknown demo set(s) {unknown}; choose from {', '.join(DEMO_SPLITS)}")
    if max_utts_per_set is not None and max_utts_per_set < 1:
        raise ValueError(f"max_utts_per_set must be >= 1, got {max_utts_per_set}")
    voices = tuple(voices) if voices is not None else tuple(DEMO_VOICES)
    world = build_world(seed)
    logger.info("demo world (seed %d), items per split and domain:\n%s", seed,
                world_summary(world))
    counts: Dict[str, int] = {}
    for split in sets:
        planned = plan_split(split, world[split], voices, wav_dir, voices_per_utt,
                             max_utts_per_set)
        data_dir = Path(out_dir) / split
        counts[split] = len(planned)
        if split_is_complete(data_dir, planned, TARGET_SR):
            logger.info("%s: complete (%d utterances), skipping", data_dir, len(planned))
            continue
        if tts is None:
            tts = EspeakTTS()
        for p in tqdm(planned, desc=f"speaking {split}", unit="utt", disable=not show_progress):
            wav = synthesize_16k(tts, p.utt.text, p.voice)
            if wav.size == 0:
                raise DataError(f"utterance {p.utt.utt_id}: espeak-ng produced no audio "
                                f"for {p.utt.text!r} with voice {p.voice.name!r}")
            write_wav(p.utt.wav, wav, TARGET_SR)
        write_kaldi_dir(data_dir, [p.utt for p in planned])
        atomic_write_text(
            data_dir / MANIFEST_NAME,
            json.dumps({"format": _MANIFEST_FORMAT, "split": split, "seed": seed,
                        "n_utts": len(planned), "sha256": manifest_hash(planned, TARGET_SR)},
                       indent=2) + "\n",
        )
        logger.info("%s: wrote %d utterances", data_dir, len(planned))
    return counts


__all__ = [
    "DEMO_SPLITS",
    "DOMAINS",
    "MANIFEST_NAME",
    "PlannedUtt",
    "QAItem",
    "SPLIT_FRACTIONS",
    "TEST_SPLITS",
    "all_facts",
    "build_world",
    "demo_items",
    "entity_key",
    "kaldi_answers",
    "manifest_hash",
    "number_to_words",
    "plan_split",
    "prepare_demo_sets",
    "split_is_complete",
    "world_summary",
]
