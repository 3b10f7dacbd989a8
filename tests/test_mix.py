"""The transcription mix (an addition to the paper): task prompts, the task column through
preprocessing and the model, and the mixed dump writer."""

from __future__ import annotations

import json

import kaldiio
import numpy as np
import pytest
import torch
from helpers import text_batch, tokenizer

from espnet_ext.data.kaldi_dir import DataError, read_table
from espnet_ext.data.mix import write_transcription_mix
from espnet_ext.models.llm import LLAMA_OMNI_SYSTEM_PROMPT, LLAMA_OMNI_USER_PROMPT, task_prompt_list
from espnet_ext.train.collate import PadCollate
from espnet_ext.train.preprocess import SpeechLLMPreprocessor


def test_task_prompts_share_the_prefix(tiny_llm_dir):
    tok = tokenizer(tiny_llm_dir)
    prompts = task_prompt_list(tok, LLAMA_OMNI_SYSTEM_PROMPT, LLAMA_OMNI_USER_PROMPT, "<speech>")
    assert list(prompts) == ["qa", "transcribe"]
    assert prompts["qa"].prefix == prompts["transcribe"].prefix
    assert "repeat what the user said" in tok.decode(prompts["transcribe"].suffix)
    assert prompts["qa"].suffix != prompts["transcribe"].suffix
    with pytest.raises(ValueError, match="llm_conf.task_prompts.bad"):
        task_prompt_list(tok, LLAMA_OMNI_SYSTEM_PROMPT, LLAMA_OMNI_USER_PROMPT, "<speech>",
                         {"bad": "Listen: <speech>"})
    with pytest.raises(ValueError, match="'qa' is the user_prompt"):
        task_prompt_list(tok, None, LLAMA_OMNI_USER_PROMPT, "<speech>", {"qa": "<speech> x"})
    assert list(task_prompt_list(tok, None, LLAMA_OMNI_USER_PROMPT, "<speech>", {})) == ["qa"]


def test_task_column_selects_the_suffix(make_speech_llm):
    model = make_speech_llm(encoder=False)
    model.share_prompt_prefix = False
    pre = SpeechLLMPreprocessor(model.llm.tokenizer, model.llm.prompt.closing, model.tasks)
    samples, batch = text_batch(model)
    with pytest.raises(DataError, match="utterance u1: unknown task 'translate'"):
        pre("u1", {"text": "hi", "answer": '["a"]', "task": "translate"})
    tasked = [(u, {**s, **pre(u, {"task": t})}) for (u, s), t in zip(samples, ["transcribe", "qa"])]
    _, tbatch = PadCollate(0.0, -1)(tasked)
    assert tbatch["task"].tolist() == [[1], [0]]
    seen = {}
    real = model.llm.hidden_states
    model.llm.hidden_states = lambda x, mask: seen.setdefault("x", x) is not None and real(x, mask)
    with torch.no_grad():
        loss_tasked = model(**tbatch, modality="text")[0]
        x_tasked = seen.pop("x")
        loss_qa = model(**batch, modality="text")[0]
        x_qa = seen.pop("x")
    tok = model.llm.prompt
    start = len(tok.prefix) + len(samples[0][1]["text"])
    suffix_1 = model.llm.embed(model.task_suffix_ids_1)
    torch.testing.assert_close(x_tasked[0, start : start + len(suffix_1)], suffix_1, rtol=0, atol=0)
    n1 = len(tok.prefix) + len(samples[1][1]["text"]) + len(tok.suffix)
    torch.testing.assert_close(x_tasked[1, :n1], x_qa[1, :n1], rtol=0, atol=0)  # task 0 = QA, unchanged
    assert not torch.equal(loss_tasked, loss_qa)
    with pytest.raises(ValueError, match="task index 5"):
        model(**{**tbatch, "task": torch.tensor([[5], [0]])}, modality="text")
    # generation accepts the column too (default QA without it)
    model.llm.hidden_states = real
    out = model.generate("text", max_new_tokens=2, text=tbatch["text"], text_lengths=tbatch["text_lengths"],
                         task=tbatch["task"], task_lengths=tbatch["task_lengths"])
    assert len(out) == 2


def _write_dump(d, feats, texts, answers=None):
    d.mkdir(parents=True)
    with kaldiio.WriteHelper(f"ark,scp:{d / 'enc_feats.ark'},{d / 'enc_feats.scp'}") as w:
        for u, f in feats.items():
            w[u] = f
    (d / "text").write_text("".join(f"{u} {t}\n" for u, t in texts.items()))
    if answers is not None:
        (d / "answer").write_text("".join(f"{u} {json.dumps(a)}\n" for u, a in answers.items()))
        for m in ("speech", "text"):
            (d / f"llm_len.{m}").write_text("".join(f"{u} 50\n" for u in texts))


def test_write_transcription_mix(tmp_path, tiny_llm_dir):
    tok = tokenizer(tiny_llm_dir)
    rng = np.random.default_rng(0)
    _write_dump(tmp_path / "train", {"q1": rng.random((20, 4), dtype=np.float32)}, {"q1": "What is two plus two?"},
                {"q1": ["four", "4"]})
    _write_dump(tmp_path / "align", {"a1": rng.random((23, 4), dtype=np.float32)}, {"a1": "green river table"})
    report = write_transcription_mix(tmp_path / "train", tmp_path / "align", tmp_path / "mix", tok,
                                     {"qa": 30, "transcribe": 28}, downsample_rate=5)
    assert (report["n_qa"], report["n_transcribe"]) == (1, 1)
    mix = tmp_path / "mix"
    assert read_table(mix / "task") == {"a1": "transcribe", "q1": "qa"}
    assert json.loads(read_table(mix / "answer")["a1"]) == ["green river table"]
    n = len(tok("green river table", add_special_tokens=False)["input_ids"])
    assert read_table(mix / "llm_len.speech")["a1"] == str(23 // 5 + 28 + n + 1)  # + end of turn
    assert read_table(mix / "llm_len.text")["a1"] == str(n + 28 + n + 1)
    assert read_table(mix / "llm_len.speech")["q1"] == "50"  # QA lines copied
    feats = kaldiio.load_scp(str(mix / "enc_feats.scp"))
    assert feats["a1"].shape == (23, 4) and feats["q1"].shape == (20, 4)
    # up to date: not rewritten; a clashing id is an error naming it
    mtime = (mix / "task").stat().st_mtime_ns
    write_transcription_mix(tmp_path / "train", tmp_path / "align", mix, tok, {"qa": 30, "transcribe": 28}, 5)
    assert (mix / "task").stat().st_mtime_ns == mtime
    _write_dump(tmp_path / "align2", {"q1": rng.random((9, 4), dtype=np.float32)}, {"q1": "x y"})
    with pytest.raises(DataError, match="utterance id q1"):
        write_transcription_mix(tmp_path / "train", tmp_path / "align2", tmp_path / "mix2", tok,
                                {"qa": 30, "transcribe": 28}, 5)
    assert not (tmp_path / "mix2").exists()
