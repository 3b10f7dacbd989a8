"""Tests of espnet_ext.convert.pretrained and the stage-2 entry point.

The CTranslate2 parser and the Whisper mapping are tested on small hand-made
``model.bin`` files; the real-weight tests (SmolLM2 GGUF, Whisper tiny.en CT2) use the
bundles unpacked by ``tools/fetch_weights.sh`` and convert them once into
``tools/weights/hf-cache/`` (reused across runs).  They fail, naming the missing file,
when the bundles are absent: ``tools/install.sh`` always fetches them.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Dict, Mapping, Tuple, Union

import numpy as np
import pytest
import torch
from helpers import REPO

from espnet_ext.convert.pretrained import (
    MARKER_NAME,
    convert_ct2_whisper_to_hf,
    detect_source_kind,
    read_ct2_model,
    resolve_pretrained,
)

WEIGHTS = REPO / "tools" / "weights"
GGUF = WEIGHTS / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
CT2_WHISPER = WEIGHTS / "whisper-tiny.en-ct2"
HF_CACHE = WEIGHTS / "hf-cache"

_DTYPE_CODES = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2, np.dtype("int32"): 3,
                np.dtype("float16"): 4}
Var = Union[np.ndarray, Tuple[str, np.ndarray]]  # ("bf16", float32 array) stores bfloat16


# --------------------------------------------------------------------------------------
# a writer for the CTranslate2 binary format (test-only)
# --------------------------------------------------------------------------------------
def _string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2(path: Path, variables: Mapping[str, Var], aliases: Mapping[str, str] = (),
              name: str = "WhisperSpec", version: int = 6) -> None:
    """Write ``variables`` (and ``aliases``) as a CTranslate2 ``model.bin``."""
    out = [struct.pack("<I", version), _string(name), struct.pack("<I", 1), struct.pack("<I", len(variables))]
    for var, value in variables.items():
        if isinstance(value, tuple):  # bfloat16: keep the high half of float32
            arr = value[1].astype(np.float32)
            code, raw = 5, (arr.view(np.uint32) >> 16).astype("<u2").tobytes()
        else:
            arr = np.asarray(value)
            code, raw = _DTYPE_CODES[arr.dtype], arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        out += [_string(var), struct.pack("<B", arr.ndim), struct.pack(f"<{arr.ndim}I", *arr.shape),
                struct.pack("<B", code), struct.pack("<I", len(raw)), raw]
    out.append(struct.pack("<I", len(dict(aliases))))
    for alias, target in dict(aliases).items():
        out += [_string(alias), _string(target)]
    path.write_bytes(b"".join(out))


# --------------------------------------------------------------------------------------
# CTranslate2 parser
# --------------------------------------------------------------------------------------
def test_read_ct2_dtypes_and_aliases(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    f32 = rng.standard_normal((3, 4)).astype(np.float32)
    f16 = rng.standard_normal((5,)).astype(np.float16)
    bf = rng.standard_normal((2, 2)).astype(np.float32)
    i8 = np.array([[-128, 0, 127]], dtype=np.int8)
    write_ct2(tmp_path / "model.bin",
              {"a/weight": f32, "b/bias": f16, "c/bf": ("bf16", bf), "d/q": i8,
               "heads": np.array(6, dtype=np.int16), "n": np.array(7, dtype=np.int32)},
              aliases={"a/alias": "a/weight"}, name="TestSpec")
    m = read_ct2_model(tmp_path)  # a folder works too
    assert (m.version, m.name) == (6, "TestSpec")
    np.testing.assert_array_equal(m.variables["a/weight"], f32)
    assert m.variables["b/bias"].dtype == np.float16
    np.testing.assert_array_equal(m.variables["b/bias"], f16)
    assert m.variables["c/bf"].dtype == np.float32
    np.testing.assert_allclose(m.variables["c/bf"], bf, rtol=1e-2)
    np.testing.assert_array_equal(m.variables["d/q"], i8)
    assert m.variables["heads"].shape == () and int(m.variables["heads"]) == 6 and int(m.variables["n"]) == 7
    assert m.aliases == {"a/alias": "a/weight"}
    assert m.get("a/alias") is m.variables["a/weight"]
    with pytest.raises(KeyError, match="model.bin"):
        m.get("missing")


def test_read_ct2_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing/model.bin"):
        read_ct2_model(tmp_path / "nothing" / "model.bin")
    path = tmp_path / "model.bin"
    write_ct2(path, {"w": np.ones((4, 4), np.float32)}, aliases={"x": "w"})
    data = path.read_bytes()
    path.write_bytes(data[:-30])
    with pytest.raises(ValueError, match=r"model\.bin.*truncated"):
        read_ct2_model(path)
    path.write_bytes(data + b"\0")
    with pytest.raises(ValueError, match="trailing"):
        read_ct2_model(path)
    write_ct2(path, {"w": np.ones(2, np.float32)}, version=1)
    with pytest.raises(ValueError, match="format version 1"):
        read_ct2_model(path)
    write_ct2(path, {"w": np.ones(2, np.float32)}, aliases={"x": "nope"})
    with pytest.raises(ValueError, match="'nope'"):
        read_ct2_model(path)


# --------------------------------------------------------------------------------------
# CTranslate2 Whisper → transformers on a tiny random model
# --------------------------------------------------------------------------------------
_SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
             "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]


def _tiny_tokenizer_json(path: Path) -> int:
    """A byte-level BPE tokenizer with Whisper's special tokens; returns its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(_SPECIALS)
    tok.save(str(path))
    return tok.get_vocab_size()


def _hf_to_ct2(
    sd: Dict[str, torch.Tensor], n_enc: int, n_dec: int, heads: int
) -> Tuple[Dict[str, Var], Dict[str, str]]:
    """Lay a transformers Whisper state dict out as CTranslate2 writes a WhisperSpec.

    Self-attention q/k/v are fused into linear_0 (zero key bias), cross-attention k/v into
    linear_1; a few variables are stored as float16, one as int8 + scale.
    """
    t = {k: v.detach().numpy().astype(np.float32) for k, v in sd.items()}
    out: Dict[str, Var] = {}

    def lin(src: str, dst: str) -> None:
        out[f"{dst}/weight"], out[f"{dst}/bias"] = t[f"{src}.weight"], t[f"{src}.bias"]

    def ln(src: str, dst: str) -> None:
        out[f"{dst}/gamma"], out[f"{dst}/beta"] = t[f"{src}.weight"], t[f"{src}.bias"]

    def self_attn(src: str, dst: str) -> None:
        zeros = np.zeros_like(t[f"{src}.q_proj.bias"])
        out[f"{dst}/linear_0/weight"] = np.concatenate([t[f"{src}.{p}_proj.weight"] for p in "qkv"])
        out[f"{dst}/linear_0/bias"] = np.concatenate([t[f"{src}.q_proj.bias"], zeros, t[f"{src}.v_proj.bias"]])
        lin(f"{src}.out_proj", f"{dst}/linear_1")

    def ffn(src: str, dst: str) -> None:
        ln(f"{src}.final_layer_norm", f"{dst}/layer_norm")
        lin(f"{src}.fc1", f"{dst}/linear_0")
        lin(f"{src}.fc2", f"{dst}/linear_1")

    lin("model.encoder.conv1", "encoder/conv1")
    lin("model.encoder.conv2", "encoder/conv2")
    out["encoder/position_encodings/encodings"] = t["model.encoder.embed_positions.weight"]
    for i in range(n_enc):
        s, d = f"model.encoder.layers.{i}", f"encoder/layer_{i}"
        ln(f"{s}.self_attn_layer_norm", f"{d}/self_attention/layer_norm")
        self_attn(f"{s}.self_attn", f"{d}/self_attention")
        ffn(s, f"{d}/ffn")
    ln("model.encoder.layer_norm", "encoder/layer_norm")
    out["decoder/embeddings/weight"] = t["model.decoder.embed_tokens.weight"]
    out["decoder/position_encodings/encodings"] = t["model.decoder.embed_positions.weight"]
    for i in range(n_dec):
        s, d = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
        ln(f"{s}.self_attn_layer_norm", f"{d}/self_attention/layer_norm")
        self_attn(f"{s}.self_attn", f"{d}/self_attention")
        ln(f"{s}.encoder_attn_layer_norm", f"{d}/attention/layer_norm")
        lin(f"{s}.encoder_attn.q_proj", f"{d}/attention/linear_0")
        zeros = np.zeros_like(t[f"{s}.encoder_attn.v_proj.bias"])
        out[f"{d}/attention/linear_1/weight"] = np.concatenate(
            [t[f"{s}.encoder_attn.k_proj.weight"], t[f"{s}.encoder_attn.v_proj.weight"]])
        out[f"{d}/attention/linear_1/bias"] = np.concatenate([zeros, t[f"{s}.encoder_attn.v_proj.bias"]])
        lin(f"{s}.encoder_attn.out_proj", f"{d}/attention/linear_2")
        ffn(s, f"{d}/ffn")
    ln("model.decoder.layer_norm", "decoder/layer_norm")
    # dtypes: f16 for one FFN, int8 + per-row scale for one output projection
    for k in ("encoder/layer_0/ffn/linear_0/weight", "decoder/layer_0/ffn/linear_1/bias"):
        out[k] = out[k].astype(np.float16)
    w = out["decoder/layer_0/self_attention/linear_1/weight"]
    scale = (127.0 / np.abs(w).max(axis=1)).astype(np.float32)
    out["decoder/layer_0/self_attention/linear_1/weight"] = np.round(w * scale[:, None]).astype(np.int8)
    out["decoder/layer_0/self_attention/linear_1/weight_scale"] = scale
    scalars = {"encoder/num_heads": np.array(heads, np.int16), "decoder/num_heads": np.array(heads, np.int16),
               "decoder/activation": np.array(3, np.int8), "decoder/pre_norm": np.array(1, np.int8),
               "decoder/alibi": np.array(0, np.int8), "decoder/scale_embeddings": np.array(0, np.int8),
               "decoder/start_from_zero_embedding": np.array(0, np.int8),
               "decoder/alignment_layer": np.array(-1, np.int16), "decoder/alignment_heads": np.array(1, np.int16)}
    out.update(scalars)
    return out, {"decoder/projection/weight": "decoder/embeddings/weight"}


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory: pytest.TempPathFactory):
    """A random 2-head Whisper with its CT2 folder; returns (model, ct2_dir, variables, aliases)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    ct2_dir = tmp_path_factory.mktemp("ct2")
    vocab = _tiny_tokenizer_json(ct2_dir / "tokenizer.json")
    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=vocab, num_mel_bins=80, d_model=16, encoder_layers=1, decoder_layers=2,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                           decoder_ffn_dim=24, max_source_positions=1500, max_target_positions=64,
                           pad_token_id=256, bos_token_id=257, eos_token_id=256, decoder_start_token_id=257)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # make biases non-trivial
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_()
    variables, aliases = _hf_to_ct2(model.state_dict(), 1, 2, 2)
    write_ct2(ct2_dir / "model.bin", variables, aliases)
    (ct2_dir / "config.json").write_text(json.dumps({"suppress_ids": [1, 2], "suppress_ids_begin": [220],
                                                     "alignment_heads": [[1, 0]]}))
    return model, ct2_dir, variables, aliases


def test_convert_ct2_whisper_exact(tiny_whisper, tmp_path: Path) -> None:
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model, ct2_dir, _, _ = tiny_whisper
    out = convert_ct2_whisper_to_hf(ct2_dir, tmp_path / "hf")
    assert json.loads((out / MARKER_NAME).read_text())["kind"] == "ct2-whisper"
    conv = WhisperForConditionalGeneration.from_pretrained(out).eval()
    ref = model.state_dict()
    got = conv.state_dict()
    assert set(got) == set(ref)
    f16 = {"model.encoder.layers.0.fc1.weight", "model.decoder.layers.0.fc2.bias"}
    for k, v in ref.items():
        if k in f16:
            torch.testing.assert_close(got[k], v.half().float(), msg=k)
        elif k == "model.decoder.layers.0.self_attn.out_proj.weight":  # int8-quantised
            torch.testing.assert_close(got[k], v, atol=v.abs().max().item() / 100, rtol=0, msg=k)
        else:
            torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=k)
    assert conv.proj_out.weight.data_ptr() == conv.model.decoder.embed_tokens.weight.data_ptr()
    gen = conv.generation_config
    assert (gen.decoder_start_token_id, gen.eos_token_id, gen.no_timestamps_token_id) == (257, 256, 264)
    assert gen.is_multilingual is False and gen.suppress_tokens == [1, 2] and gen.alignment_heads == [[1, 0]]
    proc = WhisperProcessor.from_pretrained(out)
    assert proc.feature_extractor.feature_size == 80
    assert proc.tokenizer.decode(proc.tokenizer("hi there").input_ids, skip_special_tokens=True) == "hi there"
    # same forward outputs as the original
    feats = torch.randn(1, 80, 3000)
    dec = torch.tensor([[257, 264, 40, 41]])
    with torch.no_grad():
        a = model(input_features=feats, decoder_input_ids=dec).logits
        b = conv(input_features=feats, decoder_input_ids=dec).logits
    torch.testing.assert_close(a, b, atol=0.05, rtol=0.02)


def test_convert_ct2_whisper_rejects_unknown_and_bad(tiny_whisper, tmp_path: Path) -> None:
    _, ct2_dir, variables, aliases = tiny_whisper
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_bytes((ct2_dir / "tokenizer.json").read_bytes())
    write_ct2(bad / "model.bin", {**variables, "decoder/extra/weight": np.ones(3, np.float32)}, aliases)
    with pytest.raises(ValueError, match=r"decoder/extra/weight"):
        convert_ct2_whisper_to_hf(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    broken = dict(variables)
    broken["decoder/layer_0/self_attention/linear_0/bias"] = np.ones_like(
        variables["decoder/layer_0/self_attention/linear_0/bias"])
    write_ct2(bad / "model.bin", broken, aliases)
    with pytest.raises(ValueError, match="key bias"):
        convert_ct2_whisper_to_hf(bad, tmp_path / "out")
    write_ct2(bad / "model.bin", {"w": np.ones(2, np.float32)}, name="TransformerSpec")
    with pytest.raises(ValueError, match="not a CTranslate2 Whisper"):
        detect_source_kind(str(bad))
    with pytest.raises(FileNotFoundError, match="missing"):
        convert_ct2_whisper_to_hf(tmp_path / "missing", tmp_path / "out")


def test_detect_and_resolve(tiny_whisper, tmp_path: Path) -> None:
    _, ct2_dir, _, _ = tiny_whisper
    assert resolve_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        resolve_pretrained(str(tmp_path / "nope.gguf"), tmp_path / "o")
    assert detect_source_kind(str(ct2_dir)) == "ct2-whisper"
    assert detect_source_kind(str(ct2_dir / "model.bin")) == "ct2-whisper"
    with pytest.raises(ValueError, match="out_dir"):
        resolve_pretrained(str(ct2_dir))
    out = resolve_pretrained(str(ct2_dir), tmp_path / "w")
    assert detect_source_kind(str(out)) == "hf" and resolve_pretrained(str(out)) == out
    stamp = (out / MARKER_NAME).stat().st_mtime_ns
    assert resolve_pretrained(str(ct2_dir), tmp_path / "w") == out  # reused, not rewritten
    assert (out / MARKER_NAME).stat().st_mtime_ns == stamp
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"NOTGGUF")
    with pytest.raises(ValueError, match="fake.gguf"):
        resolve_pretrained(str(fake), tmp_path / "g")


# --------------------------------------------------------------------------------------
# real weights (converted once into tools/weights/hf-cache/ through the stage-2 job)
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def real_pretrained() -> Path:
    """Run stage 2 on the offline bundles into the shared cache; returns the folder."""
    if not GGUF.is_file() or not (CT2_WHISPER / "model.bin").is_file():
        pytest.fail("offline weight bundles absent: `make test` installs them (tools/fetch_weights.sh)")
    from espnet_ext.bin.prepare_pretrained import main

    main(["--llm", str(GGUF), "--encoder", str(CT2_WHISPER), "--out_dir", str(HF_CACHE)])
    return HF_CACHE


def test_stage2_is_idempotent(real_pretrained: Path) -> None:
    from espnet_ext.bin.prepare_pretrained import main

    stamps = [(real_pretrained / d / MARKER_NAME).stat().st_mtime_ns for d in ("llm", "whisper")]
    main(["--llm", str(GGUF), "--encoder", str(CT2_WHISPER), "--out_dir", str(real_pretrained)])
    # nothing was reconverted: the markers are the same files
    assert [(real_pretrained / d / MARKER_NAME).stat().st_mtime_ns for d in ("llm", "whisper")] == stamps
    sources = json.loads((real_pretrained / "sources.json").read_text())
    assert sources == {"llm": str(GGUF), "encoder": str(CT2_WHISPER)}


def test_smollm2_answers_paris(real_pretrained: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(real_pretrained / "llm").eval()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    tok = AutoTokenizer.from_pretrained(real_pretrained / "llm")
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    inputs = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "paris" in answer.lower(), answer


def _words(text: str) -> list:
    return re.findall(r"[a-z0-9']+", text.lower())


@pytest.mark.parametrize(
    "sentence, voice_index",
    [("What is the capital of France?", 0), ("Which planet is the largest in our solar system?", 1)],
)
def test_whisper_transcribes_espeak(real_pretrained: Path, sentence: str, voice_index: int) -> None:
    """Converted tiny.en, through its own decoder, transcribes espeak-ng speech exactly."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from espnet_ext.data.tts import DEMO_VOICES, EspeakTTS, synthesize_16k

    wav = synthesize_16k(EspeakTTS(), sentence, DEMO_VOICES[voice_index])
    folder = real_pretrained / "whisper"
    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    proc = WhisperProcessor.from_pretrained(folder)
    feats = proc(wav, sampling_rate=16000, return_tensors="pt").input_features
    assert feats.shape == (1, 80, 3000)
    with torch.inference_mode():
        ids = model.generate(feats, max_new_tokens=40)
    text = proc.batch_decode(ids, skip_special_tokens=True)[0]
    assert _words(text) == _words(sentence), text
