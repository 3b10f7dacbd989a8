"""Length-sorted batches straight from a dump directory (decoding, importance, perplexity).

Training uses ESPnet's iterators; the analysis jobs need a fixed, reproducible list of
batches instead (the same utterances for the base and every fine-tuned model), which is
what :func:`dump_batches` yields.  S2T batches carry what the dump holds: the cached
encoder outputs (``enc_feats``), or, in a dump made for on-the-fly encoding
(``cache_features: false``), the 16 kHz audio of ``wav.scp`` (``speech``), which the
model encodes itself.  :class:`DumpReader` plans the batches from the shape files alone
and reads each batch's features or audio only when it is asked for, so a job holds one
batch of them at a time.  :func:`text_batches` does the same for a bare text LM
(:mod:`espnet_ext.models.text_lm`) on prompt/response pairs or plain text.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Dict, Iterator, List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch

from espnet_ext.data.audio import load_audio
from espnet_ext.data.dump import check_feature_archive, read_dump_report
from espnet_ext.data.kaldi_dir import read_table
from espnet_ext.train.collate import PadCollate
from espnet_ext.train.preprocess import SpeechLLMPreprocessor

Modality = Literal["speech", "text"]


def pick_subset(
    ids: Sequence[str], fraction: float = 1.0, num_utts: Optional[int] = None, seed: int = 0
) -> List[str]:
    """A seeded random subset of ``ids`` (sorted): ``num_utts`` of them, or ``fraction`` of
    them (at least one).  The same ids and seed give the same subset for every model."""
    ids = sorted(ids)
    n = num_utts if num_utts is not None else max(1, round(fraction * len(ids)))
    n = min(n, len(ids))
    return sorted(random.Random(seed).sample(ids, n))


def subset_ids(
    dump_dir: str | Path, fraction: float = 1.0, num_utts: Optional[int] = None, seed: int = 0
) -> List[str]:
    """A seeded random subset of a dump dir's utterance ids (sorted; :func:`pick_subset`)."""
    return pick_subset(list(read_table(Path(dump_dir) / "text")), fraction, num_utts, seed)


def speech_source(dump_dir: str | Path) -> Literal["enc_feats", "speech"]:
    """What a dump dir gives S2T batches: ``enc_feats`` (cached encoder outputs) or
    ``speech`` (16 kHz audio; a dump made with ``cache_features: false``)."""
    report = read_dump_report(dump_dir) or {}
    return "enc_feats" if report.get("cache_features", True) else "speech"


class DumpReader:
    """The batches of one dump dir, sorted by the LLM length of ``modality``, read on demand.

    Args:
        dump_dir: a stage-2 dump directory.
        preprocessor: the model's training-time preprocessor (:func:`preprocessor_for`).
        modality: ``speech`` (S2T: features or audio) or ``text`` (T2T: the transcript).
        with_answer: also the tokenised reference answer (loss, importance); not for decoding.
        device: where the batch tensors go.
    """

    def __init__(self, dump_dir: str | Path, preprocessor: SpeechLLMPreprocessor, modality: Modality,
                 with_answer: bool = True, device: str | torch.device = "cpu") -> None:
        self.dump_dir = Path(dump_dir)
        self.preprocessor, self.modality, self.device = preprocessor, modality, device
        self.with_answer = with_answer
        self.texts = read_table(self.dump_dir / "text")
        self.answers = read_table(self.dump_dir / "answer") if with_answer else {}
        self.shape = read_table(self.dump_dir / f"llm_len.{modality}")
        self.source = speech_source(self.dump_dir) if modality == "speech" else "text"
        self.feats = self.wavs = None
        if self.source == "enc_feats":
            import kaldiio

            check_feature_archive(self.dump_dir / "enc_feats.scp")
            self.feats = kaldiio.load_scp(str(self.dump_dir / "enc_feats.scp"))  # lazy: offsets only
        elif self.source == "speech":
            self.wavs = read_table(self.dump_dir / "wav.scp")

    def plan(self, batch_size: int, utt_ids: Optional[Sequence[str]] = None) -> List[List[str]]:
        """The utterance ids of every batch, sorted by LLM length (ties by id)."""
        ids = list(utt_ids) if utt_ids is not None else list(self.texts)
        missing = [u for u in ids if u not in self.texts]
        if missing:
            raise KeyError(f"{self.dump_dir}: unknown utterance id(s) {missing[:3]}")
        ids.sort(key=lambda u: (int(self.shape[u]), u))
        return [ids[start : start + batch_size] for start in range(0, len(ids), batch_size)]

    def load(self, utt_ids: Sequence[str]) -> Dict[str, torch.Tensor]:
        """One batch: preprocessed, padded (``PadCollate``) and on ``device``."""
        samples = []
        for u in utt_ids:
            raw: Dict[str, object] = {}
            if self.source == "text":
                raw["text"] = self.texts[u]
            elif self.source == "enc_feats":
                raw["enc_feats"] = np.asarray(self.feats[u], dtype=np.float32)
            else:  # 16 kHz mono by construction of the dump: read as ESPnet's sound loader does
                raw["speech"] = load_audio(self.wavs[u], u)
            if self.with_answer:
                raw["answer"] = self.answers[u]
            samples.append((u, self.preprocessor(u, raw)))
        _, tensors = PadCollate()(samples)
        return {k: v.to(self.device) for k, v in tensors.items()}


def dump_batches(
    dump_dir: str | Path,
    preprocessor: SpeechLLMPreprocessor,
    modality: Modality,
    batch_size: int,
    utt_ids: Optional[Sequence[str]] = None,
    with_answer: bool = True,
    device: str | torch.device = "cpu",
) -> Iterator[Tuple[List[str], Dict[str, torch.Tensor]]]:
    """Yield ``(utt_ids, tensors)`` batches sorted by the LLM length of ``modality``, each
    read when it is reached (:class:`DumpReader`)."""
    reader = DumpReader(dump_dir, preprocessor, modality, with_answer, device)
    for chunk in reader.plan(batch_size, utt_ids):
        yield chunk, reader.load(chunk)


def text_batches(
    model, samples: Dict[str, Tuple[Optional[str], str]], batch_size: int, device: str | torch.device = "cpu",
    where: str = "",
) -> List[Dict[str, torch.Tensor]]:
    """Batches of a :class:`~espnet_ext.models.text_lm.TextLM` (``context``, ``target`` and
    their lengths), for utterance id → ``(prompt, response)`` samples.

    Sorted by total token length, then id, as :func:`dump_batches` sorts by its shape file
    (the prompt's length is the same for every sample), so the recipe's utterances form the
    same batches here.
    """
    enc = {u: model.encode(p, r, f"{where}: {u}") for u, (p, r) in samples.items()}
    order = sorted(enc, key=lambda u: (len(enc[u][0]) + len(enc[u][1]), u))
    collate = PadCollate()
    out = []
    for start in range(0, len(order), batch_size):
        chunk = [(u, {"context": np.asarray(enc[u][0], dtype=np.int64),
                      "target": np.asarray(enc[u][1], dtype=np.int64)})
                 for u in order[start : start + batch_size]]
        _, tensors = collate(chunk)
        out.append({k: v.to(device) for k, v in tensors.items()})
    return out


def preprocessor_for(model) -> SpeechLLMPreprocessor:
    """The training-time preprocessor of an :class:`ESPnetSpeechLLM`."""
    return SpeechLLMPreprocessor(model.llm.tokenizer, model.llm.prompt.closing, list(model.llm.task_prompts))
