"""Length-sorted batches straight from a dump directory (decoding, importance, perplexity).

Training uses ESPnet's iterators; the analysis jobs need a fixed, reproducible list of
batches instead (the same utterances for the base and every fine-tuned model), which is
what :func:`dump_batches` yields.
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


def subset_ids(
    dump_dir: str | Path, fraction: float = 1.0, num_utts: Optional[int] = None, seed: int = 0
) -> List[str]:
    """A seeded random subset of a dump dir's utterance ids (sorted)."""
    ids = sorted(read_table(Path(dump_dir) / "text"))
    n = num_utts if num_utts is not None else max(1, round(fraction * len(ids)))
    n = min(n, len(ids))
    return sorted(random.Random(seed).sample(ids, n))


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


def preprocessor_for(model) -> SpeechLLMPreprocessor:
    """The training-time preprocessor of an :class:`ESPnetSpeechLLM`."""
    return SpeechLLMPreprocessor(model.llm.tokenizer, model.llm.prompt.closing, list(model.llm.task_prompts))
