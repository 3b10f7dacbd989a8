"""Tests of the adaptor CTC warm-up (espnet_ext.warmup.ctc) and its alignment set
(espnet_ext.data.alignment), on tiny models: shapes, blank handling, training, resume,
and that ``adaptor.pth`` loads into the ESPnet model through ``init_param``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from helpers import REPO, tokenizer

from espnet_ext.data.alignment import AlignmentSetConfig, make_sentences, tokenizer_words
from espnet_ext.models.adaptor import FrameConcatAdaptor
from espnet_ext.utils.conf import build_from_conf
from espnet_ext.warmup.ctc import (
    AdaptorWarmup,
    CTCEmbeddingHead,
    WarmupConfig,
    WarmupExample,
    ctc_loss,
    edit_distance,
    greedy_decode,
    output_vocab,
)

D_ENC, HIDDEN, VOCAB = 32, 64, 50


def tiny_examples(n: int = 8, seed: int = 0):
    """Utterances whose 'speech' encodes their tokens: 10 frames per token (2 adaptor steps)."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randn(VOCAB, D_ENC, generator=g)
    out = []
    for i in range(n):
        tokens = torch.randint(3, 13, (int(torch.randint(2, 5, (1,), generator=g)),), generator=g).tolist()
        noise = 0.1 * torch.randn(10 * len(tokens), D_ENC, generator=g)
        feats = torch.cat([codes[t].repeat(10, 1) for t in tokens]) + noise
        out.append(WarmupExample(f"u{i}", feats, tokens))
    return out


def tiny_parts(seed: int = 0):
    torch.manual_seed(seed)
    embeddings = torch.randn(VOCAB, HIDDEN)
    adaptor = FrameConcatAdaptor(D_ENC, HIDDEN, downsample_rate=5, hidden_size=32)
    head = CTCEmbeddingHead(embeddings, range(3, 13), init_scale=10.0)
    return adaptor, head


def test_head_shapes_and_classes() -> None:
    _, head = tiny_parts()
    logits = head(torch.randn(2, 7, HIDDEN))
    assert logits.shape == (2, 7, 1 + 10)
    assert logits.abs().max() <= head.scale + 1e-4  # cosine × scale
    assert head.to_classes([3, 12, 40]).tolist() == [1, 10, -1]  # class 0 is the blank
    with pytest.raises(ValueError, match="empty"):
        CTCEmbeddingHead(torch.randn(5, 4), [])


def test_ctc_loss_skips_utterances_outside_vocab() -> None:
    _, head = tiny_parts()
    logits = torch.randn(3, 6, 11, requires_grad=True)
    lengths = torch.tensor([6, 5, 4])
    targets = [head.to_classes(t) for t in ([3, 4], [40], [5])]
    loss, used = ctc_loss(logits, lengths, targets)
    assert used == 2 and loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad[1].abs().sum() == 0  # the out-of-vocabulary utterance gives no gradient
    none, used = ctc_loss(logits, lengths, [head.to_classes([40])])
    assert used == 0 and float(none.detach()) == 0.0


def test_greedy_decode_merges_repeats_and_drops_blanks() -> None:
    _, head = tiny_parts()
    path = [1, 1, 0, 1, 2, 2, 0, 0]  # classes → tokens 3, 3, 4 (blank separates the repeat)
    logits = torch.nn.functional.one_hot(torch.tensor([path]), 11).float()
    assert greedy_decode(head, logits, torch.tensor([8])) == [[3, 3, 4]]
    assert greedy_decode(head, logits, torch.tensor([2])) == [[3]]
    assert edit_distance([3, 3, 4], [3, 4]) == 1 and edit_distance([], [1, 2]) == 2


def test_training_decreases_loss(tmp_path: Path) -> None:
    adaptor, head = tiny_parts()
    train = tiny_examples()
    trainer = AdaptorWarmup(adaptor, head, WarmupConfig(steps=40, batch_size=8, warmup_steps=1), train, train, tmp_path)
    batch = train
    with torch.no_grad():
        logits, lengths = trainer.forward(batch)
        before = float(ctc_loss(logits, lengths, [head.to_classes(e.tokens) for e in batch])[0])
    first = trainer.train_step(batch)
    assert first == pytest.approx(before, rel=1e-5)
    for _ in range(39):
        last = trainer.train_step(batch)
    assert last < 0.5 * first
    assert trainer.evaluate(train)["ter"] < 1.0


def test_resume_equals_unbroken_run(tmp_path: Path) -> None:
    train = tiny_examples()
    cfg = WarmupConfig(steps=6, batch_size=4, warmup_steps=2, eval_every=3, checkpoint_every=3)
    AdaptorWarmup(*tiny_parts(), cfg, train, train[:2], tmp_path / "a").run()
    # interrupted after step 3, then resumed from checkpoint.pth
    AdaptorWarmup(*tiny_parts(), cfg, train, train[:2], tmp_path / "b").run(stop_at=3)
    assert not (tmp_path / "b" / "adaptor.pth").exists()
    adaptor, head = tiny_parts()
    resumed = AdaptorWarmup(adaptor, head, cfg, train, train[:2], tmp_path / "b")
    summary = resumed.run()
    assert summary["steps"] == 6
    a = torch.load(tmp_path / "a" / "adaptor.pth")
    b = torch.load(tmp_path / "b" / "adaptor.pth")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "history.tsv").read_text().splitlines()[0].startswith("step\tloss")


def test_alignment_examples_are_mixed_into_batches(tmp_path: Path) -> None:
    train, align = tiny_examples(4), tiny_examples(4, seed=1)
    for e in align:
        e.utt_id = "align-" + e.utt_id
    t = AdaptorWarmup(*tiny_parts(), WarmupConfig(batch_size=8, align_fraction=0.25), train, [], tmp_path, align)
    batch = t.sample_batch()
    assert sum(e.utt_id.startswith("align-") for e in batch) == 2
    assert output_vocab(train, align) == sorted({x for e in train + align for x in e.tokens})


def test_adaptor_checkpoint_loads_through_init_param(tmp_path: Path, make_speech_llm) -> None:
    from espnet2.torch_utils.load_pretrained_model import load_pretrained_model

    model = make_speech_llm(encoder=False)  # adaptor input_size 32 = D_ENC
    emb = model.llm.model.get_input_embeddings().weight.detach()
    torch.manual_seed(0)
    adaptor = FrameConcatAdaptor(D_ENC, emb.shape[1], downsample_rate=5, hidden_size=32)
    head = CTCEmbeddingHead(emb, range(10, 30))
    train = [WarmupExample(e.utt_id, e.feats, [t + 10 for t in e.tokens]) for e in tiny_examples(4)]
    AdaptorWarmup(adaptor, head, WarmupConfig(steps=2, batch_size=2), train, [], tmp_path).run()
    load_pretrained_model(f"{tmp_path / 'adaptor.pth'}::adaptor", model, ignore_init_mismatch=False)
    for k, v in adaptor.state_dict().items():
        assert torch.equal(model.adaptor.state_dict()[k], v)


def test_config_file_and_validation() -> None:
    conf = yaml.safe_load((REPO / "conf" / "warmup.yaml").read_text())
    assert set(conf) == {"warmup_conf", "alignment_conf"}
    build_from_conf(WarmupConfig, conf["warmup_conf"], "warmup_conf")
    build_from_conf(AlignmentSetConfig, conf["alignment_conf"], "alignment_conf")
    with pytest.raises(ValueError, match="lr"):
        WarmupConfig(lr=0)
    with pytest.raises(ValueError, match="align_fraction"):
        WarmupConfig(align_fraction=1.0)
    with pytest.raises(ValueError, match="num_valid"):
        AlignmentSetConfig(num_utts=10, num_valid=10)


def test_word_list_and_sentences_are_deterministic(tiny_llm_dir: Path) -> None:
    tok = tokenizer(tiny_llm_dir)
    words = tokenizer_words(tok, num_words=20, min_chars=3)
    assert words and all(w.isalpha() and len(w) >= 3 for w in words)
    assert len({w.lower() for w in words}) == len(words)
    cfg = AlignmentSetConfig(num_utts=5, num_valid=1, min_words=2, max_words=3)
    s = make_sentences(words, cfg)
    assert s == make_sentences(words, cfg) and all(2 <= len(x.split()) <= 3 for x in s)


def test_response_sentences_come_from_the_train_responses_only() -> None:
    from espnet_ext.data.alignment import alignment_texts, response_sentences
    from espnet_ext.data.instructions import load_instructions, split_instructions

    sentences = response_sentences()
    split = split_instructions(load_instructions())
    train_text = " ".join(i.response for i in split["train"])
    assert len(sentences) > 300 and len(set(sentences)) == len(sentences)
    assert all(s in train_text and len(s.split()) >= 3 for s in sentences)
    dev_only = [i.response.split(". ")[0] for i in split["dev"]]
    assert not any(d in sentences for d in dev_only)  # the warm-up's dev stays held out
    cfg = AlignmentSetConfig(num_utts=len(sentences) + 2, num_valid=1, source="responses")
    texts = alignment_texts([], cfg)
    assert texts[: len(sentences)] == sentences and texts[-2:] == sentences[:2]  # then again, next voice
    with pytest.raises(ValueError, match="source"):
        AlignmentSetConfig(source="books")


def test_warmup_job_end_to_end(tmp_path: Path, tiny_llm_dir: Path, tiny_whisper_dir: Path) -> None:
    """Alignment set (espeak + tiny Whisper) → warm-up job → adaptor.pth, and a rerun skips."""
    pytest.importorskip("espeakng_loader")
    from espnet_ext.warmup.ctc import run_warmup_job

    model_yaml = tmp_path / "model.yaml"
    model_yaml.write_text(yaml.safe_dump({
        "encoder_conf": {"model_name_or_path": str(tiny_whisper_dir)},
        "adaptor": "concat", "adaptor_conf": {"downsample_rate": 5, "hidden_size": 16},
        "llm_conf": {"model_name_or_path": str(tiny_llm_dir)},
    }))
    align_cfg = AlignmentSetConfig(num_utts=6, num_valid=2, num_words=20, max_words=4)
    kw = dict(align_dump=tmp_path / "align", alignment_conf=align_cfg)
    # the alignment set's own train split stands in for the task's dump/train
    from espnet_ext.data.alignment import build_alignment_dump
    from espnet_ext.models.encoder import WhisperSpeechEncoder

    manifest = build_alignment_dump(tmp_path / "align", tokenizer(tiny_llm_dir),
                                    WhisperSpeechEncoder(str(tiny_whisper_dir)), align_cfg)
    assert manifest["n_train"] == 4
    assert len((tmp_path / "align" / "valid" / "text").read_text().splitlines()) == 2
    summary = run_warmup_job(model_yaml, tmp_path / "align" / "train", tmp_path / "align" / "valid",
                             tmp_path / "exp", WarmupConfig(steps=3, batch_size=2, eval_every=3), **kw)
    assert summary["steps"] == 3 and summary["n_align"] == 4 and "valid_ter" in summary["final"]
    state = torch.load(tmp_path / "exp" / "adaptor.pth")
    assert state["linear2.weight"].shape[0] == 64  # the tiny LLM's hidden size
