"""Hand-checked unit tests of the model parts, the task glue and the optimizer helpers.

All models are tiny random ones (``conftest.py``); every expected value is computed
independently of the code under test (manual frame concatenation, full-sequence logits
from the HF model, hand-evaluated schedule factors).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import QUESTIONS, text_batch, tokenizer

from espnet_ext.data.kaldi_dir import DataError
from espnet_ext.models.adaptor import FrameConcatAdaptor
from espnet_ext.models.llm import LLAMA_OMNI_SYSTEM_PROMPT, LLAMA_OMNI_USER_PROMPT, ChatPrompt
from espnet_ext.optim.groups import adaptor_llm_groups
from espnet_ext.optim.schedulers import WarmupCosineLR
from espnet_ext.train.collate import PadCollate
from espnet_ext.train.preprocess import SpeechLLMPreprocessor


def _ids(tok, s):
    return tok(s, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------------------
# adaptor
# --------------------------------------------------------------------------------------
def test_adaptor_concatenates_k_frames_then_two_linears():
    torch.manual_seed(0)
    ad = FrameConcatAdaptor(input_size=4, output_size=3, downsample_rate=5, hidden_size=6)
    feats = torch.randn(2, 13, 4)
    out, lengths = ad(feats, torch.tensor([13, 7]))
    assert out.shape == (2, 2, 3)  # 13 frames, k=5 → 2 (the last 3 frames dropped)
    assert lengths.tolist() == [2, 1]  # floor(13/5), floor(7/5)
    for b in range(2):
        for j, (lo, hi) in enumerate([(0, 5), (5, 10)]):
            x = torch.cat([feats[b, t] for t in range(lo, hi)])  # frame lo dims, then lo+1, …
            ref = ad.linear2(torch.relu(ad.linear1(x)))
            torch.testing.assert_close(out[b, j], ref, rtol=0, atol=1e-6)
    assert ad.output_size() == 3
    with pytest.raises(ValueError, match="size 4, got 5"):
        ad(torch.randn(1, 10, 5), torch.tensor([10]))
    with pytest.raises(ValueError, match="downsample_rate"):
        FrameConcatAdaptor(4, 3, downsample_rate=0)


# --------------------------------------------------------------------------------------
# encoder: variable-length path
# --------------------------------------------------------------------------------------
def test_encoder_batch_equals_alone_and_lengths(tiny_whisper_dir):
    from espnet_ext.models.encoder import WhisperSpeechEncoder

    enc = WhisperSpeechEncoder(str(tiny_whisper_dir))
    assert not any(p.requires_grad for p in enc.parameters())
    rng = np.random.default_rng(0)
    # 12345 samples → 77 mel frames (odd), 8160 → 51 (odd), 16000 → 100 (even)
    wavs = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (12345, 8160, 16000)]
    mel_frames = [enc.log_mel(w).shape[-1] for w in wavs]
    assert mel_frames == [77, 51, 100]
    batch, lengths = enc.encode_waveforms(wavs)
    assert lengths.tolist() == [math.ceil(m / 2) for m in mel_frames]
    assert batch.shape == (3, 50, enc.output_size())
    for i, w in enumerate(wavs):
        alone, alone_len = enc.encode_waveforms([w])
        assert alone_len.tolist() == [lengths[i]]
        torch.testing.assert_close(batch[i, : lengths[i]], alone[0], rtol=0, atol=1e-5)
    # the padded-tensor entry point (what ESPnet's collate gives) agrees
    speech = torch.zeros(2, 12345)
    speech[0], speech[1, :8160] = torch.from_numpy(wavs[0]), torch.from_numpy(wavs[1])
    feats, flen = enc(speech, torch.tensor([12345, 8160]))
    assert flen.tolist() == lengths[:2].tolist()
    torch.testing.assert_close(feats[1, :26], batch[1, :26], rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------
# ChatPrompt
# --------------------------------------------------------------------------------------
def test_chat_prompt_pieces_reproduce_the_template(tiny_llm_dir):
    tok = tokenizer(tiny_llm_dir)
    prompt = ChatPrompt.from_tokenizer(tok)
    q, a = "What is two plus three?", "Two plus three is 5."
    messages = [{"role": "system", "content": LLAMA_OMNI_SYSTEM_PROMPT},
                {"role": "user", "content": LLAMA_OMNI_USER_PROMPT.replace("<speech>", q)}]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = prompt.prefix + _ids(tok, q) + prompt.suffix
    assert tok.decode(ids) == rendered
    # a full training sample: prompt + answer + closing is the conversation's rendering
    # up to and including the end-of-turn token
    full = tok.apply_chat_template(messages + [{"role": "assistant", "content": a}], tokenize=False)
    sample = tok.decode(ids + _ids(tok, a) + prompt.closing)
    assert full.startswith(sample) and full[len(sample):] == "\n"
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    assert prompt.closing[-1] == eot and eot in prompt.stop_token_ids
    with pytest.raises(ValueError, match="placeholder"):
        ChatPrompt.from_tokenizer(tok, user_prompt="no placeholder here")


# --------------------------------------------------------------------------------------
# loss: response + closing tokens only
# --------------------------------------------------------------------------------------
def _manual_loss(model, middles, answers):
    """CE over answer positions from the *full* logits of the HF model, one sample at a time.

    The targets of every prompt position are set to ``ignore_index``, so prompt-side
    tokens cannot contribute whatever they are.
    """
    llm = model.llm
    logits_all, targets_all = [], []
    for mid, ans in zip(middles, answers):
        pre, suf = model.prefix_ids, model.suffix_ids
        x = torch.cat([llm.embed(pre), mid, llm.embed(suf), llm.embed(ans)])
        logits = llm.model(inputs_embeds=x[None]).logits[0]  # (L, V), every position
        p = len(pre) + len(mid) + len(suf)
        targets = torch.full((x.shape[0],), -100, dtype=torch.long)
        targets[p - 1 : p - 1 + len(ans)] = ans  # position t predicts token t+1
        logits_all.append(logits)
        targets_all.append(targets)
    logits, targets = torch.cat(logits_all), torch.cat(targets_all)
    ce = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100)
    n = int((targets != -100).sum())
    return ce, n


@pytest.mark.parametrize("modality", ["text", "speech"])
def test_loss_is_cross_entropy_on_answer_tokens_only(make_speech_llm, modality):
    model = make_speech_llm(encoder=False)
    samples, batch = text_batch(model)
    answers = [torch.from_numpy(s["answer"]) for _, s in samples]
    closing = model.llm.prompt.closing
    assert all(a[-len(closing):].tolist() == closing for a in answers)
    if modality == "speech":
        torch.manual_seed(1)
        feats_len = torch.tensor([23, 17])  # → 4 and 3 adaptor steps (k = 5)
        batch["enc_feats"] = torch.randn(2, 23, 32)
        batch["enc_feats"][1, 17:] = 0.0
        batch["enc_feats_lengths"] = feats_len
        del batch["text"], batch["text_lengths"]
        emb, _ = model.adaptor(batch["enc_feats"], feats_len)
        middles = [emb[0, :4], emb[1, :3]]
    else:
        middles = [model.llm.embed(torch.from_numpy(s["text"])) for _, s in samples]
    with torch.no_grad():
        loss, stats, weight = model(**batch, modality=modality)
        manual, n = _manual_loss(model, middles, answers)
    assert int(weight) == n == sum(len(a) for a in answers)
    # force_gatherable turns 0-d tensors into shape (1,) for DataParallel gathering
    torch.testing.assert_close(loss.reshape(()), manual, rtol=0, atol=1e-5)
    torch.testing.assert_close(stats["loss"].reshape(()), manual, rtol=0, atol=1e-5)
    # sanity: with prompt-side targets included the number would differ
    with torch.no_grad():
        pre, suf, llm = model.prefix_ids, model.suffix_ids, model.llm
        x = torch.cat([llm.embed(pre), middles[0], llm.embed(suf), llm.embed(answers[0])])
        ids_tail = torch.cat([suf, answers[0]])  # targets for the suffix positions too
        logits = llm.model(inputs_embeds=x[None]).logits[0]
        start = len(pre) + len(middles[0]) - 1
        wider = torch.nn.functional.cross_entropy(logits[start : start + len(ids_tail)], ids_tail)
        only0, _ = _manual_loss(model, middles[:1], answers[:1])
    assert not torch.allclose(wider, only0)


def test_text_and_speech_share_one_path(make_speech_llm):
    """T2T: the LLM input is exactly embed(prefix + question + suffix + answer)."""
    model = make_speech_llm(encoder=False)
    model.share_prompt_prefix = False  # the whole sequence in one tensor
    samples, batch = text_batch(model)
    seen = {}
    real_hidden_states = model.llm.hidden_states

    def capture(x, mask):
        seen["x"], seen["mask"] = x, mask
        return real_hidden_states(x, mask)

    model.llm.hidden_states = capture
    with torch.no_grad():
        model(**batch, modality="text")
        for i, (_, s) in enumerate(samples):
            ids = torch.tensor(model.llm.prompt.prefix + s["text"].tolist()
                               + model.llm.prompt.suffix + s["answer"].tolist())
            n = len(ids)
            torch.testing.assert_close(seen["x"][i, :n], model.llm.embed(ids), rtol=0, atol=0)
            assert seen["mask"][i].tolist() == [1] * n + [0] * (seen["x"].shape[1] - n)
            assert bool((seen["x"][i, n:] == 0).all())
        # the speech path goes through the same assembly with adaptor outputs in the middle
        mids = [torch.randn(3, 64), torch.randn(5, 64)]
        x, mask, prompt_lens = model.build_inputs(mids)
        p = len(model.llm.prompt.prefix) + len(model.llm.prompt.suffix)
        assert prompt_lens == [p + 3, p + 5]
        torch.testing.assert_close(x[0, len(model.llm.prompt.prefix):][:3], mids[0], rtol=0, atol=0)


def test_shared_prompt_prefix_is_exact(make_speech_llm):
    """The prefix computed once and shared (default) = the prefix per sample: same loss,
    same gradients (every parameter, the prefix's own path included)."""
    model = make_speech_llm(encoder=False).train()
    assert model.share_prompt_prefix
    _, batch = text_batch(model)
    params = [p for p in model.llm.parameters() if p.requires_grad]  # T2T: the adaptor is unused
    out = {}
    for share in (False, True):
        model.share_prompt_prefix = share
        model.zero_grad(set_to_none=True)
        loss, _, _ = model(**batch, modality="text")
        loss.backward()
        out[share] = (loss.detach(), [p.grad.clone() for p in params])
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-6, atol=1e-6)
    for a, b in zip(out[True][1], out[False][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # the embedding rows of prefix tokens get gradient only through the shared cache
    emb = model.llm.model.get_input_embeddings().weight
    assert emb.grad is not None
    prefix_rows = out[True][1][[i for i, p in enumerate(params) if p is emb][0]][model.prefix_ids]
    assert float(prefix_rows.abs().sum()) > 0


#: the answers of the mixed-task batch (the second is a transcription target)
QA_ROWS = ["Two plus three is 5.", "How many days are in a week?", "Mars is the red planet."]


def _mixed_task_speech_batch(model):
    """Three S2T samples (cached-feature lengths 23/37/11 → 4/7/2 adaptor steps, so the
    batch is padded) with the ``qa`` and ``transcribe`` instructions mixed."""
    from espnet_ext.train.batches import preprocessor_for

    pre = preprocessor_for(model)
    rows = [("a", QA_ROWS[0], "qa", 23), ("b", QA_ROWS[1], "transcribe", 37), ("c", QA_ROWS[2], "qa", 11)]
    g = torch.Generator().manual_seed(3)
    samples = []
    for uid, answer, task, frames in rows:
        s = pre(uid, {"answer": json.dumps([answer]), "task": task})
        s["enc_feats"] = torch.randn(frames, 32, generator=g).numpy()
        samples.append((uid, s))
    return PadCollate(0.0, -1)(samples)[1]


def _loss_logits_grads(model, batch, share: bool, precision: str):
    """One forward + backward: ``(loss, answer-position logits (fp32), {name: grad})``."""
    model.share_prompt_prefix, model.mixed_precision = share, precision
    model.zero_grad(set_to_none=True)
    seen = {}
    real_logits = model.llm.logits

    def capture(hidden):
        out = real_logits(hidden)
        seen["logits"], seen["dtype"] = out.detach().float(), out.dtype
        return out

    model.llm.logits = capture
    try:
        loss = model(**batch, modality="speech")[0].reshape(())
        loss.backward()
    finally:
        del model.llm.logits
    assert seen["dtype"] == (torch.bfloat16 if precision == "bf16" else torch.float32)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), seen["logits"], grads


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_shared_prompt_prefix_under_bf16_with_tasks_and_lora(make_speech_llm, lora):
    """The shared prefix cache with mixed task suffixes, a LoRA-wrapped LLM and bf16
    autocast (the paper presets on a GPU): the same loss, logits and gradients as the
    prefix recomputed per sample.

    fp32: equal up to float rounding (loss 1e-6, gradients rtol 1e-4, as the plain test).
    bf16 tolerances, from what bf16 itself does to the computation (ε = 2^-7, the bf16
    spacing at 1; measured over 13 seeds on the dev CPU in brackets):

    * logits within 4 bf16 ULPs at their magnitude (4 · 2^(e-7) for 2^e ≤ max|z| <
      2^(e+1)): the cached run computes the prefix at batch 1 and attends over
      [cache; new] keys, so its bf16 roundings fall differently; each bf16 logit is
      itself ~1 ULP from the fp32 one [max 2 ULPs apart];
    * loss within 2 · max|Δlogits| + 1e-6: per token, cross-entropy moves by at most
      |Δz_target| + |Δlogsumexp z| ≤ 2 max|Δz|, and the loss is computed in fp32 from the
      bf16 logits, so this is a bound, not an estimate;
    * gradients, all trainable tensors together: the cached bf16 gradient is no further
      from the fp32 gradient than 1.25× the per-sample bf16 gradient is [0.94-1.11]; the
      cache adds no error of its own beyond bf16's;
    * gradients, per tensor: cached and per-sample bf16 gradients differ by at most
      2^-4 = 8ε of the tensor's gradient norm [≤ 2.1e-2].  The cached run sums each
      prefix key/value gradient over the batch in bf16 and the two uses of a weight's
      bf16 copy (prefix pass, batch pass) in bf16 too, where the per-sample run reduces
      in fp32 inside one matmul, so a tensor whose gradient a few entries dominate can
      carry ~2× bf16's own error there (each bf16 gradient is up to 2e-2 from fp32).

    A real cache defect (a wrong position, mask or task suffix) changes the loss itself,
    far beyond these bounds.
    """
    extra = ["--lora_conf", "{r: 4, dropout: 0.0}"] if lora else []
    model = make_speech_llm(*extra, encoder=False).train()
    if lora:  # peft initialises B = 0: the adapter would be a no-op with zero grad for A
        torch.manual_seed(5)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.05)
    batch = _mixed_task_speech_batch(model)
    assert batch["task"][:, 0].tolist() == [0, 1, 0] and model.tasks == ["qa", "transcribe"]
    runs = {(share, prec): _loss_logits_grads(model, batch, share, prec)
            for share in (False, True) for prec in ("none", "bf16")}
    names = list(runs[(False, "none")][2])
    if lora:
        assert names and all("lora_" in n or n.startswith("adaptor.") for n in names)
        assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)
    else:
        assert any(".layers." in n for n in names)
    for n in names:  # every trainable tensor, the prefix path included, gets gradient
        assert float(runs[(False, "none")][2][n].abs().sum()) > 0, n

    # fp32: the reformulation is exact up to float rounding
    (l_u, z_u, g_u), (l_c, z_c, g_c) = runs[(False, "none")], runs[(True, "none")]
    torch.testing.assert_close(l_c, l_u, rtol=0, atol=1e-6)
    torch.testing.assert_close(z_c, z_u, rtol=1e-5, atol=1e-6)
    for n in names:
        torch.testing.assert_close(g_c[n], g_u[n], rtol=1e-4, atol=1e-6, msg=n)

    # bf16 (autocast ran: the bf16 loss is not the fp32 one)
    g_fp32 = g_u
    (lb_u, zb_u, gb_u), (lb_c, zb_c, gb_c) = runs[(False, "bf16")], runs[(True, "bf16")]
    assert float(lb_u) != float(l_u)
    ulp = 2.0 ** (math.floor(math.log2(float(zb_u.abs().max()))) - 7)
    torch.testing.assert_close(zb_c, zb_u, rtol=0, atol=4 * ulp)
    dz = float((zb_c - zb_u).abs().max())
    assert abs(float(lb_c) - float(lb_u)) <= 2 * dz + 1e-6
    flat = lambda g: torch.cat([g[n].flatten() for n in names])  # noqa: E731
    err_cached, err_plain = float((flat(gb_c) - flat(g_fp32)).norm()), float((flat(gb_u) - flat(g_fp32)).norm())
    assert 0 < err_plain and err_cached <= 1.25 * err_plain, (err_cached, err_plain)
    for n in names:
        assert float((gb_c[n] - gb_u[n]).norm()) <= 2.0 ** -4 * float(g_fp32[n].norm()), n


def test_mixed_precision_modes(make_speech_llm):
    from espnet_ext.utils.precision import autocast_dtype

    assert autocast_dtype("none", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert autocast_dtype("auto", torch.device("cpu")) in (None, torch.bfloat16)
    with pytest.raises(ValueError, match="model_conf.mixed_precision"):
        make_speech_llm("--model_conf", "mixed_precision=fp8")
    # bf16 autocast: fp32 master weights, fp32 loss close to the fp32 computation
    model = make_speech_llm("--model_conf", "mixed_precision=bf16", encoder=False)
    _, batch = text_batch(model)
    with torch.no_grad():
        bf16_loss = model(**batch, modality="text")[0]
        model.mixed_precision = "none"
        fp32_loss = model(**batch, modality="text")[0]
    assert bf16_loss.dtype == torch.float32 and next(model.parameters()).dtype == torch.float32
    assert bf16_loss.item() != fp32_loss.item()  # autocast really ran
    torch.testing.assert_close(bf16_loss, fp32_loss, rtol=0.02, atol=0.0)



def test_raw_speech_under_bf16_autocast_runs_the_encoder_in_fp32(make_speech_llm):
    """The frozen encoder runs outside the LLM's autocast: raw speech under bf16 gives the
    loss of its fp32 encoder outputs (what stage 2 caches) under bf16, on any device."""
    model = make_speech_llm("--model_conf", "mixed_precision=bf16")
    _, batch = text_batch(model)
    del batch["text"], batch["text_lengths"]
    torch.manual_seed(0)
    lengths = torch.tensor([16000, 12000])
    speech = 0.1 * torch.randn(2, 16000)
    speech[1, 12000:] = 0.0
    with torch.no_grad():
        raw = model(**batch, speech=speech, speech_lengths=lengths, modality="speech")[0]
        feats, feats_lengths = model.encoder(speech, lengths)
        cached = model(**batch, enc_feats=feats, enc_feats_lengths=feats_lengths, modality="speech")[0]
    assert feats.dtype == torch.float32
    torch.testing.assert_close(raw, cached, rtol=0, atol=0)

# --------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------
def _sharpen(model, seed=1):
    """Random weights with a larger scale: the default init decodes one token forever."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.llm.model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return model


def test_generate_left_padding_and_stop_tokens(make_speech_llm):
    model = _sharpen(make_speech_llm(encoder=False))
    tok = model.llm.tokenizer
    texts = [np.asarray(_ids(tok, q), dtype=np.int64) for q in ["Hi?", QUESTIONS[1]]]
    collate = PadCollate(0.0, -1)
    _, batch = collate([(f"u{i}", {"text": t}) for i, t in enumerate(texts)])
    together = model.generate("text", max_new_tokens=10, **batch)
    alone = [model.generate("text", max_new_tokens=10, **collate([("u", {"text": t})])[1])[0]
             for t in texts]
    assert together == alone
    assert all(0 < len(o) <= 10 for o in together)
    assert len(set(map(tuple, together))) == 2  # not a degenerate model
    stops = set(model.llm.prompt.stop_token_ids)
    assert not any(t in stops for o in together for t in o)

    # make a token the model does emit a stop token: outputs end right before it
    stop = together[0][3]
    model.llm.prompt.stop_token_ids = sorted(stops | {stop})
    stopped = model.generate("text", max_new_tokens=10, **batch)
    for full, cut in zip(together, stopped):
        assert cut == (full[: full.index(stop)] if stop in full else full)
    assert len(stopped[0]) <= 3

    # speech modality (cached encoder features) with left padding too
    model.llm.prompt.stop_token_ids = sorted(stops)
    torch.manual_seed(2)
    feats = [torch.randn(17, 32), torch.randn(31, 32)]
    _, fb = collate([(f"u{i}", {"enc_feats": f.numpy()}) for i, f in enumerate(feats)])
    together = model.generate("speech", max_new_tokens=6, **fb)
    alone = [model.generate("speech", max_new_tokens=6, **collate([("u", {"enc_feats": f.numpy()})])[1])[0]
             for f in feats]
    assert together == alone
    # the shared prefix cache (default: padding after the prefix) decodes exactly what
    # the full left-padded prompt decodes
    shared_text = model.generate("text", max_new_tokens=10, **batch)
    model.share_prompt_prefix = False
    assert model.generate("speech", max_new_tokens=6, **fb) == together
    assert model.generate("text", max_new_tokens=10, **batch) == shared_text


def test_chat_modality_decodes_the_question_in_the_llms_own_template(make_speech_llm):
    """T2T "chat": the question as the whole user turn of the tokenizer's own template (no
    LLaMA-Omni system prompt or instruction), decoded greedily: the same tokens as HF's
    generate on that rendering, batched with left padding as alone."""
    model = _sharpen(make_speech_llm(encoder=False))
    tok = model.llm.tokenizer
    questions = ["Hi?", QUESTIONS[1]]
    texts = [np.asarray(_ids(tok, q), dtype=np.int64) for q in questions]
    collate = PadCollate(0.0, -1)
    _, batch = collate([(f"u{i}", {"text": t}) for i, t in enumerate(texts)])
    chat = model.generate("chat", max_new_tokens=8, **batch)
    stops = set(model.llm.chat_prompt.stop_token_ids)
    for q, out in zip(questions, chat):
        rendered = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                           add_generation_prompt=True)
        assert LLAMA_OMNI_SYSTEM_PROMPT not in rendered
        ids = torch.tensor([tok(rendered, add_special_tokens=False)["input_ids"]])
        ref = model.llm.model.generate(ids, max_new_tokens=8, do_sample=False,
                                       pad_token_id=model.llm.pad_token_id)[0, ids.shape[1]:].tolist()
        cut = next((i for i, t in enumerate(ref) if t in stops), len(ref))
        assert out == ref[:cut]
    assert chat != model.generate("text", max_new_tokens=8, **batch)  # another prompt, other answers


# --------------------------------------------------------------------------------------
# build_model errors
# --------------------------------------------------------------------------------------
def test_build_model_errors_name_the_key(make_speech_llm, tiny_llm_dir):
    with pytest.raises(ValueError) as e:
        make_speech_llm("--adaptor_conf", "output_size=48")
    assert "adaptor_conf.output_size" in str(e.value) and str(tiny_llm_dir) in str(e.value)
    with pytest.raises(ValueError) as e:
        make_speech_llm("--llm_conf", "not_an_option=1")
    assert "llm_conf" in str(e.value) and "not_an_option" in str(e.value)
    with pytest.raises(ValueError, match="adaptor_conf.input_size"):
        make_speech_llm("--adaptor_conf", "input_size=7")


def test_build_model_shapes(make_speech_llm):
    model = make_speech_llm()
    assert model.adaptor.linear1.in_features == 32 * 5  # tiny Whisper d_model × k
    assert model.adaptor.output_size() == model.llm.hidden_size() == 64
    assert model.encoder is not None and model.modality == "speech"
    assert make_speech_llm(encoder=False).encoder is None


# --------------------------------------------------------------------------------------
# collate / preprocess
# --------------------------------------------------------------------------------------
def test_pad_collate():
    data = [
        ("a", {"text": np.array([5, 6, 7]), "enc_feats": np.ones((2, 3), np.float32)}),
        ("b", {"text": np.array([8]), "enc_feats": np.full((4, 3), 2.0, np.float32)}),
    ]
    ids, batch = PadCollate(float_pad_value=0.0, int_pad_value=-1)(data)
    assert ids == ["a", "b"]
    assert batch["text"].tolist() == [[5, 6, 7], [8, -1, -1]]
    assert batch["text_lengths"].tolist() == [3, 1]
    assert batch["enc_feats"].shape == (2, 4, 3) and batch["enc_feats"].dtype == torch.float32
    assert batch["enc_feats"][0].tolist() == [[1.0] * 3] * 2 + [[0.0] * 3] * 2
    assert batch["enc_feats_lengths"].tolist() == [2, 4]
    with pytest.raises(ValueError, match="same data names"):
        PadCollate()([("a", {"text": np.array([1])}), ("b", {"answer": np.array([1])})])


def test_preprocessor(tiny_llm_dir):
    tok = tokenizer(tiny_llm_dir)
    closing = ChatPrompt.from_tokenizer(tok).closing
    pre = SpeechLLMPreprocessor(tok, closing)
    feats = np.zeros((3, 2), np.float32)
    out = pre("utt7", {"text": "  What is two plus three? ", "answer": json.dumps(["Five.", "5"]),
                       "enc_feats": feats})
    assert out["text"].tolist() == _ids(tok, "What is two plus three?")
    assert out["answer"].tolist() == _ids(tok, "Five.") + closing  # first reference only
    assert out["answer"].dtype == np.int64 and out["enc_feats"] is feats
    with pytest.raises(DataError, match="utt8"):
        pre("utt8", {"text": "   ", "answer": '["x"]'})
    with pytest.raises(DataError, match="utt9"):
        pre("utt9", {"text": "q", "answer": "not json"})


# --------------------------------------------------------------------------------------
# scheduler / parameter groups
# --------------------------------------------------------------------------------------
def test_warmup_cosine_factors_and_group_ratio():
    w = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD([{"params": [w[0]], "lr": 1.0}, {"params": [w[1]], "lr": 0.5}], lr=1.0)
    sched = WarmupCosineLR(opt, total_steps=100, warmup_ratio=0.1, min_lr_ratio=0.1)
    lrs = []
    for _ in range(101):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    factor = [lr[0] for lr in lrs]
    # warm-up: 10 steps, (step + 1) / 10
    assert factor[0] == pytest.approx(0.1) and factor[4] == pytest.approx(0.5)
    assert factor[9] == pytest.approx(1.0) and factor[10] == pytest.approx(1.0)
    # cosine over the remaining 90 steps: half-way (step 55) is the mean of 1 and 0.1
    assert factor[55] == pytest.approx(0.55)
    assert factor[100] == pytest.approx(0.1)
    assert max(factor) == pytest.approx(1.0)
    assert all(a >= b - 1e-12 for a, b in zip(factor[10:], factor[11:]))  # monotone decay
    for a, b in lrs:
        assert a == pytest.approx(2 * b)
    with pytest.raises(ValueError, match="total_steps"):
        WarmupCosineLR(opt, total_steps=0)


def test_adaptor_llm_groups_partition_trainable_params(make_speech_llm):
    model = make_speech_llm()
    model.llm.model.model.embed_tokens.weight.requires_grad_(False)  # freeze one LLM tensor
    groups = adaptor_llm_groups(model, lr=2e-5, adaptor_lr=1e-3)
    assert [(g.name, g.lr) for g in groups] == [("adaptor", 1e-3), ("llm", 2e-5)]
    ids = [id(p) for g in groups for p in g.params]
    assert len(ids) == len(set(ids))  # no parameter twice
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    assert set(ids) == trainable and not (set(ids) & frozen)
    assert {id(p) for p in groups[0].params} == {id(p) for p in model.adaptor.parameters()}
    assert any(id(p) in frozen for p in model.encoder.parameters())
    # default adaptor lr = lr; dict form carries the name for logging
    g = adaptor_llm_groups(model, lr=0.5)
    assert [x.lr for x in g] == [0.5, 0.5] and g[0].as_dict()["name"] == "adaptor"
