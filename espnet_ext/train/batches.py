"""Length-sorted batches straight from a dump directory (decoding, importance, perplexity).

Training uses ESPnet's iterators; the analysis jobs need a fixed, reproducible list of
batches instead (the same utterances for the base and every fine-tuned model), which is
what :func:`dump_batches` yields; :func:`text_batches` does the same for a bare text LM
(:mod:`espnet_ext.models.text_lm`) on prompt/response pairs or plain text.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Dict, Iterator, List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch

from espnet_ext.data.dump import check_feature_archive
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


def dump_batches(
    dump_dir: str | Path,
    preprocessor: SpeechLLMPreprocessor,
    modality: Modality,
    batch_size: int,
    utt_ids: Optional[Sequence[str]] = None,
    with_answer: bool = True,
    device: str | torch.device = "cpu",
) -> Iterator[Tuple[List[str], Dict[str, torch.Tensor]]]:
    """Yield ``(utt_ids, tensors)`` batches sorted by the LLM length of ``modality``."""
    import kaldiio

    dump_dir = Path(dump_dir)
    texts = read_table(dump_dir / "text")
    answers = read_table(dump_dir / "answer") if with_answer else {}
    shape = read_table(dump_dir / f"llm_len.{modality}")
    ids = list(utt_ids) if utt_ids is not None else list(texts)
    missing = [u for u in ids if u not in texts]
    if missing:
        raise KeyError(f"{dump_dir}: unknown utterance id(s) {missing[:3]}")
    if modality == "speech":
        check_feature_archive(dump_dir / "enc_feats.scp")
    feats = kaldiio.load_scp(str(dump_dir / "enc_feats.scp")) if modality == "speech" else None
    ids.sort(key=lambda u: (int(shape[u]), u))
    collate = PadCollate()
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        samples = []
        for u in chunk:
            raw: Dict[str, object] = {}
            if modality == "text":
                raw["text"] = texts[u]
            else:
                raw["enc_feats"] = np.asarray(feats[u], dtype=np.float32)
            if with_answer:
                raw["answer"] = answers[u]
            samples.append((u, preprocessor(u, raw)))
        _, tensors = collate(samples)
        yield chunk, {k: v.to(device) for k, v in tensors.items()}


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
