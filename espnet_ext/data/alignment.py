"""A broad-vocabulary alignment set for the adaptor warm-up (``espnet_ext.warmup.ctc``).

**An addition to the paper's recipe.**  The task's own transcripts name only the
entities of ``train``; for a zero-shot speech path the adaptor must also map words it
never heard in ``train``.  This module speaks random word sequences with espeak-ng and
caches their frozen-encoder outputs, in the dump layout the warm-up reads::

    dump/align/train/{text,enc_feats.ark,enc_feats.scp}
    dump/align/valid/{text,enc_feats.ark,enc_feats.scp}
    dump/align/alignment_manifest.json      # config, word-list hash, timings

Two sources of sentences (``source``):

* ``responses``: the sentences of the spoken-instruction bank's *train* responses
  (:mod:`espnet_ext.data.instructions`), natural language with several thousand distinct
  words, none of them a test entity (the bank is checked for that), each sentence spoken
  by the next voice in turn;
* ``words``: random word sequences.

Word list of ``words`` (generic, never the test sets' entities on purpose): the LLM tokenizer's own
whole-word tokens — a word-start marker (``Ġ`` byte-level BPE, ``▁`` SentencePiece)
followed by ≥ ``min_chars`` ASCII letters — in token-id order (BPE merge order, roughly
corpus frequency), case-folded duplicates removed, first ``num_words`` kept.  Sentences
are ``min_words``–``max_words`` words drawn uniformly with a string-seeded RNG.  Voices
cycle through the ``train`` voices of the ``voices`` family (``auto``: flite when
installed, else espeak-ng).  The last ``num_valid`` sentences form the ``valid`` split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

import torch
from tqdm import tqdm

from espnet_ext.utils.atomic import atomic_dir
from espnet_ext.utils.records import read_json_or_none

logger = logging.getLogger(__name__)

_WORD_START = ("\u0120", "\u2581")  # "Ġ" (byte-level BPE), "▁" (SentencePiece)


@dataclass
class AlignmentSetConfig:
    """Size and shape of the alignment set (``conf/warmup.yaml``, key ``alignment_conf``)."""

    num_utts: int = 0  # utterances to synthesise (0: no alignment set)
    source: str = "words"  # words: random word sequences; responses: the bank's train responses
    voices: str = "auto"  # voice family: auto (flite when installed, else espeak) | flite | espeak
    num_valid: int = 200  # of which held out for token error rate
    num_words: int = 6000  # most frequent whole-word tokens in the word list
    min_chars: int = 3  # shortest word (drops BPE fragments such as "th", "re")
    min_words: int = 3  # words per sentence, at least
    max_words: int = 8  # words per sentence, at most
    seed: str = "speechimp-align"  # RNG seed of the sentences
    batch_size: int = 16  # utterances per encoder batch

    def __post_init__(self) -> None:
        if self.source not in ("words", "responses"):
            raise ValueError(f"alignment_conf.source must be words or responses, got {self.source!r}")
        if self.voices not in ("auto", "flite", "espeak"):
            raise ValueError(f"alignment_conf.voices must be auto, flite or espeak, got {self.voices!r}")
        if self.num_utts < 0:
            raise ValueError(f"alignment_conf.num_utts must be >= 0, got {self.num_utts}")
        if self.num_utts and not 0 <= self.num_valid < self.num_utts:
            raise ValueError(f"alignment_conf.num_valid must be in [0, num_utts), got {self.num_valid}")
        if self.num_words < 1:
            raise ValueError(f"alignment_conf.num_words must be >= 1, got {self.num_words}")
        if self.min_chars < 1:
            raise ValueError(f"alignment_conf.min_chars must be >= 1, got {self.min_chars}")
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError("alignment_conf needs 1 <= min_words <= max_words, got "
                             f"{self.min_words}, {self.max_words}")


def tokenizer_words(tokenizer, num_words: int, min_chars: int = 3) -> List[str]:
    """The tokenizer's first ``num_words`` whole-word tokens (see module docstring)."""
    pattern = re.compile(rf"[A-Za-z]{{{min_chars},}}")
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    words, seen = [], set()
    for piece in pieces:
        if not piece or piece[0] not in _WORD_START:
            continue
        word = piece[1:]
        if pattern.fullmatch(word) and word.lower() not in seen:
            seen.add(word.lower())
            words.append(word)
            if len(words) == num_words:
                break
    if not words:
        raise ValueError("the tokenizer has no whole-word tokens (no 'Ġ'/'▁' word-start pieces)")
    return words


def make_sentences(words: List[str], config: AlignmentSetConfig) -> List[str]:
    """``num_utts`` random word sequences (deterministic given ``config.seed``)."""
    rng = random.Random(config.seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(config.min_words, config.max_words)))
            for _ in range(config.num_utts)]


def response_sentences(seed: int = 0) -> List[str]:
    """The sentences of the instruction bank's train responses, in bank order, unique."""
    from espnet_ext.data.instructions import load_instructions, split_instructions

    out, seen = [], set()
    for item in split_instructions(load_instructions(), seed)["train"]:
        for sentence in re.split(r"(?<=[.!?])\s+", item.response):
            sentence = sentence.strip()
            if len(sentence.split()) >= 3 and sentence.lower() not in seen:
                seen.add(sentence.lower())
                out.append(sentence)
    return out


def alignment_texts(words: List[str], config: AlignmentSetConfig) -> List[str]:
    """The ``num_utts`` texts of the set: random word sequences, or the response
    sentences in turn (repeated, in the next voice, when ``num_utts`` exceeds them)."""
    if config.source == "words":
        return make_sentences(words, config)
    sentences = response_sentences()
    return [sentences[i % len(sentences)] for i in range(config.num_utts)]


def manifest_for(config: AlignmentSetConfig, words: List[str], voices) -> dict:
    """What the set is a function of (a finished set is reused only if this matches)."""
    digest = hashlib.sha256("\n".join(words).encode()).hexdigest()[:16]
    return {"config": asdict(config), "word_list_sha256_16": digest, "n_word_list": len(words),
            "voices": [v.tag for v in voices]}


def build_alignment_dump(out_dir: str | Path, tokenizer, encoder, config: AlignmentSetConfig,
                         tts=None) -> Optional[dict]:
    """Synthesise, encode and write the alignment set; skipped when already up to date.

    Args:
        out_dir: ``dump/align`` (``train``/``valid`` subdirectories are written).
        tokenizer: the LLM tokenizer (the word list source).
        encoder: the frozen :class:`~espnet_ext.models.encoder.WhisperSpeechEncoder`.
        tts: a :class:`~espnet_ext.data.tts.Synthesizer` (created when ``None``).

    Returns the manifest (``None`` when ``config.num_utts == 0``).
    """
    import kaldiio

    from espnet_ext.data.tts import Synthesizer, pick_family, voices

    if config.num_utts == 0:
        return None
    out_dir = Path(out_dir)
    words = tokenizer_words(tokenizer, config.num_words, config.min_chars) if config.source == "words" else []
    texts = alignment_texts(words, config)
    speakers = voices(pick_family(config.voices), "train")
    manifest = manifest_for(config, words + texts, speakers)
    done = out_dir / "alignment_manifest.json"
    old = read_json_or_none(done)  # missing or damaged: (re)synthesised
    if isinstance(old, dict) and {k: old.get(k) for k in manifest} == manifest:
        logger.info("%s is up to date; skipping", out_dir)
        return old
    ids = [f"align{i:06d}" for i in range(len(texts))]
    tts = tts or Synthesizer()
    t0 = time.perf_counter()
    wavs = [tts.synthesize(t, speakers[i % len(speakers)])
            for i, t in enumerate(tqdm(texts, desc="synthesise alignment set", unit="utt"))]
    manifest["synthesis_seconds"] = round(time.perf_counter() - t0, 1)
    order = sorted(range(len(wavs)), key=lambda i: (len(wavs[i]), i))  # length bucketing
    n_train = len(texts) - config.num_valid
    t0 = time.perf_counter()
    with atomic_dir(out_dir) as tmp:
        splits = {"train": range(n_train), "valid": range(n_train, len(texts))}
        writers = {}
        for name, members in splits.items():
            (tmp / name).mkdir()
            (tmp / name / "text").write_text("".join(f"{ids[i]} {texts[i]}\n" for i in members))
            writers[name] = kaldiio.WriteHelper(f"ark,scp:{tmp / name / 'enc_feats.ark'},"
                                                f"{tmp / name / 'enc_feats.scp'}")
        with torch.inference_mode():
            for start in tqdm(range(0, len(order), config.batch_size), desc="encode alignment set", unit="batch"):
                chunk = order[start : start + config.batch_size]
                feats, lengths = encoder.encode_waveforms([wavs[i] for i in chunk])
                for j, i in enumerate(chunk):
                    writers["train" if i < n_train else "valid"][ids[i]] = \
                        feats[j, : lengths[j]].float().cpu().numpy()
        for name, w in writers.items():
            w.close()
            scp = tmp / name / "enc_feats.scp"  # point at the final location, sorted
            final = (out_dir / name / "enc_feats.ark").resolve()
            lines = scp.read_text().splitlines()
            scp.write_text("".join(line.replace(str(tmp / name / "enc_feats.ark"), str(final)) + "\n"
                                   for line in sorted(lines)))
        manifest["encoding_seconds"] = round(time.perf_counter() - t0, 1)
        manifest["n_train"], manifest["n_valid"] = n_train, config.num_valid
        (tmp / "alignment_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("alignment set: %d utterances (%d valid) in %s", len(texts), config.num_valid, out_dir)
    return manifest
