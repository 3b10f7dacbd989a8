"""Per-utterance preprocessing for :class:`~espnet_ext.tasks.speech_llm.SpeechLLMTask`.

ESPnet's dataset hands each utterance over as ``{name: value}``; text files arrive as
strings.  This turns the question transcript into LLM token ids and the ``answer`` file
(a JSON list of references; the first is the training target) into the response tokens
followed by the chat template's closing end-of-turn token(s).
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from espnet_ext.data.kaldi_dir import DataError, parse_answers


class SpeechLLMPreprocessor:
    """Tokenise ``text`` and ``answer``, map ``task`` names to indices; pass audio/features
    through unchanged.

    Args:
        tokenizer: the LLM's Hugging Face tokenizer.
        closing: token ids appended after each response (end of turn).
        tasks: task names in index order (``HFCausalLM.task_prompts``; 0 = ``qa``).
    """

    def __init__(self, tokenizer, closing: List[int], tasks: Sequence[str] = ("qa",)) -> None:
        self.tokenizer = tokenizer
        self.closing = list(closing)
        self.tasks = list(tasks)

    def encode(self, s: str) -> np.ndarray:
        return np.asarray(self.tokenizer(s, add_special_tokens=False)["input_ids"], dtype=np.int64)

    def __call__(self, uid: str, data: Dict[str, object]) -> Dict[str, np.ndarray]:
        out = dict(data)
        if "text" in data:
            question = str(data["text"]).strip()
            if not question:
                raise DataError(f"utterance {uid}: empty question text")
            out["text"] = self.encode(question)
        if "task" in data:  # the instruction of a mixed training set (task name -> index)
            name = str(data["task"]).strip()
            if name not in self.tasks:
                raise DataError(f"utterance {uid}: unknown task {name!r} (the model's tasks: {self.tasks})")
            out["task"] = np.asarray([self.tasks.index(name)], dtype=np.int64)
        if "answer" in data:
            answers = parse_answers(str(data["answer"]), f"utterance {uid}")
            out["answer"] = np.concatenate(
                [self.encode(answers[0]), np.asarray(self.closing, dtype=np.int64)]
            )
        return out
