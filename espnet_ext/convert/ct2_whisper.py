"""CTranslate2 Whisper → transformers ``WhisperForConditionalGeneration`` folder.

Parses the CTranslate2 binary format itself (no ``ctranslate2`` dependency) and saves a
Whisper folder with a ``WhisperProcessor`` and an English-transcription generation config.

CTranslate2 ``model.bin`` layout (format version 6, little endian)::

    uint32 version | string model_name | uint32 revision | uint32 n_variables
    n_variables × (string name | uint8 rank | rank × uint32 dim | uint8 dtype |
                   uint32 n_bytes | n_bytes raw data)
    uint32 n_aliases | n_aliases × (string alias | string target)

where ``string`` is a uint16 length (including the NUL) followed by the UTF-8 bytes and
a NUL, and dtype is 0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple, Union

import numpy as np

from espnet_ext.convert.cache import publish as _publish
from espnet_ext.convert.cache import write_marker as _write_marker
from espnet_ext.utils.atomic import atomic_dir

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

CT2_SUPPORTED_VERSIONS = (6,)
_CT2_DTYPES: Dict[int, Tuple[str, np.dtype]] = {
    0: ("float32", np.dtype("<f4")),
    1: ("int8", np.dtype("i1")),
    2: ("int16", np.dtype("<i2")),
    3: ("int32", np.dtype("<i4")),
    4: ("float16", np.dtype("<f2")),
    5: ("bfloat16", np.dtype("<u2")),  # decoded to float32 by shifting into the high half
}


# --------------------------------------------------------------------------------------
# CTranslate2 binary format
# --------------------------------------------------------------------------------------
@dataclass
class Ct2Model:
    """The content of a CTranslate2 ``model.bin``.

    Attributes:
        path: the file that was read.
        version: binary format version.
        name: the model spec name (``WhisperSpec``, ``TransformerDecoderModelSpec``...).
        revision: the spec revision.
        variables: variable name → array (bf16 already widened to float32; int8/int16
            quantised weights stay integer, their ``*_scale`` companions are variables too).
        aliases: alias name → target variable name (e.g. a tied output projection).
    """

    path: Path
    version: int
    name: str
    revision: int
    variables: Dict[str, np.ndarray]
    aliases: Dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray:
        """Return variable ``name``, following an alias; ``KeyError`` names the file."""
        target = self.aliases.get(name, name)
        if target not in self.variables:
            raise KeyError(f"{self.path}: no variable {name!r} in this CTranslate2 model")
        return self.variables[target]


class _Reader:
    """Bounds-checked little-endian reader over a bytes buffer."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.path = path

    def take(self, n: int, what: str) -> memoryview:
        if self.pos + n > len(self.data):
            raise ValueError(
                f"{self.path}: truncated CTranslate2 model.bin while reading {what} "
                f"(needs {n} bytes at offset {self.pos}, file has {len(self.data)})"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> Tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def string(self, what: str) -> str:
        (n,) = self.unpack("H", f"{what} length")
        raw = bytes(self.take(n, what))
        if n == 0 or raw[-1] != 0:
            raise ValueError(f"{self.path}: corrupt CTranslate2 model.bin: {what} is not NUL-terminated")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{self.path}: corrupt CTranslate2 model.bin: {what} is not UTF-8") from e


def read_ct2_model(path: PathLike) -> Ct2Model:
    """Parse a CTranslate2 ``model.bin`` (format version 6) into numpy arrays.

    Args:
        path: the ``model.bin`` file, or a folder containing it.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is truncated, has trailing bytes, an unknown dtype, a byte
            count that disagrees with its shape, or an unsupported format version; the
            message names the file and the variable.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise FileNotFoundError(f"CTranslate2 model file {path} does not exist")
    r = _Reader(path.read_bytes(), path)
    (version,) = r.unpack("I", "format version")
    if version not in CT2_SUPPORTED_VERSIONS:
        raise ValueError(
            f"{path}: unsupported CTranslate2 model.bin format version {version} "
            f"(supported: {', '.join(map(str, CT2_SUPPORTED_VERSIONS))}); is this a CTranslate2 model?"
        )
    name = r.string("model name")
    (revision,) = r.unpack("I", "model revision")
    (n_vars,) = r.unpack("I", "variable count")
    variables: Dict[str, np.ndarray] = {}
    for i in range(n_vars):
        var = r.string(f"name of variable #{i}")
        (rank,) = r.unpack("B", f"rank of {var}")
        shape = r.unpack("I" * rank, f"shape of {var}") if rank else ()
        (code,) = r.unpack("B", f"dtype of {var}")
        if code not in _CT2_DTYPES:
            raise ValueError(f"{path}: variable {var!r} has unknown CTranslate2 dtype code {code}")
        dname, dtype = _CT2_DTYPES[code]
        (n_bytes,) = r.unpack("I", f"byte count of {var}")
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if n_bytes != expected:
            raise ValueError(
                f"{path}: variable {var!r} declares {n_bytes} bytes but shape {tuple(shape)} "
                f"of {dname} needs {expected}"
            )
        arr = np.frombuffer(r.take(n_bytes, f"data of {var}"), dtype=dtype).reshape(shape)
        if code == 5:
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        else:
            arr = arr.astype(dtype.newbyteorder("="), copy=True)
        if var in variables:
            raise ValueError(f"{path}: variable {var!r} appears twice")
        variables[var] = arr
    (n_aliases,) = r.unpack("I", "alias count")
    aliases: Dict[str, str] = {}
    for i in range(n_aliases):
        alias = r.string(f"alias #{i}")
        target = r.string(f"target of alias {alias!r}")
        if target not in variables:
            raise ValueError(f"{path}: alias {alias!r} points to missing variable {target!r}")
        aliases[alias] = target
    if r.pos != len(r.data):
        raise ValueError(f"{path}: {len(r.data) - r.pos} unexpected trailing bytes after the aliases")
    return Ct2Model(path, version, name, revision, variables, aliases)


def _ct2_model_name(path: Path) -> Optional[str]:
    """Read only the header of ``path`` and return its spec name (None if not CT2)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4 + 2 + 256)
        (version,) = struct.unpack("<I", head[:4])
        (n,) = struct.unpack("<H", head[4:6])
        if version not in CT2_SUPPORTED_VERSIONS or not 1 <= n <= 250 or head[5 + n] != 0:
            return None
        return head[6 : 5 + n].decode("utf-8")
    except (OSError, struct.error, UnicodeDecodeError, IndexError):
        return None


# --------------------------------------------------------------------------------------
# CTranslate2 Whisper → transformers
# --------------------------------------------------------------------------------------
# CT2 variables that carry spec attributes rather than weights: checked or folded into the
# config, never copied into a parameter.
_CT2_WHISPER_ATTRIBUTES = {
    "encoder/num_heads": "encoder attention heads (→ config.encoder_attention_heads)",
    "decoder/num_heads": "decoder attention heads (→ config.decoder_attention_heads)",
    "decoder/activation": "FFN activation, must be 3 = GELU (→ config.activation_function)",
    "decoder/pre_norm": "must be 1 (Whisper is pre-norm)",
    "decoder/alibi": "must be 0 (Whisper uses learned/sinusoidal positions)",
    "decoder/scale_embeddings": "must be 0 (Whisper does not scale embeddings)",
    "decoder/start_from_zero_embedding": "must be 0",
    "decoder/alignment_layer": "CT2 runtime word-alignment option; skipped (alignment "
    "heads come from config.json → generation_config.alignment_heads)",
    "decoder/alignment_heads": "CT2 runtime word-alignment option; skipped (see above)",
}


class _Consumer:
    """Hands out CT2 variables (dequantised to float32) and records which were used."""

    def __init__(self, model: Ct2Model) -> None:
        self.model = model
        self.used: Set[str] = set()

    def __call__(self, name: str) -> np.ndarray:
        target = self.model.aliases.get(name, name)
        arr = self.model.get(name)
        self.used.update({name, target})
        scale_name = f"{target}_scale"
        if scale_name in self.model.variables and arr.dtype.kind == "i":
            # CTranslate2 quantisation: q = round(w * scale) with one scale per output row
            scale = self.model.variables[scale_name].astype(np.float32)
            self.used.add(scale_name)
            arr = arr.astype(np.float32) / scale.reshape((-1,) + (1,) * (arr.ndim - 1))
        if arr.dtype.kind != "f":
            raise ValueError(f"{self.model.path}: variable {name!r} is {arr.dtype}, expected a float weight")
        return arr.astype(np.float32, copy=False)

    def scalar(self, name: str) -> int:
        arr = self.model.get(name)
        self.used.add(name)
        if arr.size != 1:
            raise ValueError(f"{self.model.path}: attribute {name!r} should be a scalar, has shape {arr.shape}")
        return int(arr.reshape(()))


def _ct2_layer_count(model: Ct2Model, prefix: str) -> int:
    pat = re.compile(rf"^{prefix}/layer_(\d+)/")
    idx = {int(m.group(1)) for v in model.variables if (m := pat.match(v))}
    if not idx or idx != set(range(max(idx) + 1)):
        raise ValueError(f"{model.path}: {prefix} layers are missing or not numbered 0..N-1: {sorted(idx)}")
    return max(idx) + 1


def _split_fused(
    w: np.ndarray, b: Optional[np.ndarray], parts: int, name: str, path: Path, k_index: Optional[int]
) -> List[Tuple[np.ndarray, Optional[np.ndarray]]]:
    """Split a fused projection into ``parts`` equal row blocks.

    The key projection of Whisper has no bias; CTranslate2 fuses it with a zero block,
    which is checked (``k_index``) and dropped.
    """
    if w.shape[0] % parts:
        raise ValueError(f"{path}: fused projection {name!r} has {w.shape[0]} rows, not a multiple of {parts}")
    ws = np.split(w, parts, axis=0)
    bs: List[Optional[np.ndarray]] = list(np.split(b, parts)) if b is not None else [None] * parts
    if k_index is not None and bs[k_index] is not None:
        if np.abs(bs[k_index]).max() > 1e-6:
            raise ValueError(f"{path}: key bias inside {name!r} is not zero; Whisper's key projection has no bias")
        bs[k_index] = None
    return list(zip(ws, bs))


def _ct2_whisper_state_dict(model: Ct2Model) -> Tuple[Dict[str, np.ndarray], Dict[str, int], bool]:
    """Map a CT2 ``WhisperSpec`` to transformers Whisper parameter names.

    Returns ``(state_dict, dims, tied)`` where ``dims`` holds the config sizes inferred
    from shapes and ``tied`` says whether the output projection aliases the embeddings.
    Raises ``ValueError`` if an attribute has an unexpected value or a variable is left
    unused.
    """
    path = model.path
    take = _Consumer(model)
    sd: Dict[str, np.ndarray] = {}

    def linear(src: str, dst: str, bias: bool = True) -> None:
        sd[f"{dst}.weight"] = take(f"{src}/weight")
        if bias:
            sd[f"{dst}.bias"] = take(f"{src}/bias")

    def norm(src: str, dst: str) -> None:
        sd[f"{dst}.weight"] = take(f"{src}/gamma")
        sd[f"{dst}.bias"] = take(f"{src}/beta")

    def attention(src: str, dst: str, cross: bool) -> None:
        if cross:  # linear_0 = q, linear_1 = fused k|v, linear_2 = out
            linear(f"{src}/linear_0", f"{dst}.q_proj")
            (kw, _), (vw, vb) = _split_fused(
                take(f"{src}/linear_1/weight"), take(f"{src}/linear_1/bias"), 2, f"{src}/linear_1", path, 0
            )
            sd[f"{dst}.k_proj.weight"], sd[f"{dst}.v_proj.weight"], sd[f"{dst}.v_proj.bias"] = kw, vw, vb
            linear(f"{src}/linear_2", f"{dst}.out_proj")
        else:  # linear_0 = fused q|k|v, linear_1 = out
            (qw, qb), (kw, _), (vw, vb) = _split_fused(
                take(f"{src}/linear_0/weight"), take(f"{src}/linear_0/bias"), 3, f"{src}/linear_0", path, 1
            )
            sd.update(
                {
                    f"{dst}.q_proj.weight": qw,
                    f"{dst}.q_proj.bias": qb,
                    f"{dst}.k_proj.weight": kw,
                    f"{dst}.v_proj.weight": vw,
                    f"{dst}.v_proj.bias": vb,
                }
            )
            linear(f"{src}/linear_1", f"{dst}.out_proj")

    def ffn(src: str, dst: str) -> None:
        norm(f"{src}/layer_norm", f"{dst}.final_layer_norm")
        linear(f"{src}/linear_0", f"{dst}.fc1")
        linear(f"{src}/linear_1", f"{dst}.fc2")

    # spec attributes
    expect = {"decoder/activation": 3, "decoder/pre_norm": 1, "decoder/alibi": 0, "decoder/scale_embeddings": 0,
              "decoder/start_from_zero_embedding": 0}
    for name, want in expect.items():
        if name in model.variables and take.scalar(name) != want:
            raise ValueError(
                f"{path}: attribute {name!r} = {int(model.variables[name].reshape(()))}, expected {want} "
                f"for a Whisper model ({_CT2_WHISPER_ATTRIBUTES[name]})"
            )
    for name in ("decoder/alignment_layer", "decoder/alignment_heads"):
        if name in model.variables:
            take.used.add(name)
    enc_heads, dec_heads = take.scalar("encoder/num_heads"), take.scalar("decoder/num_heads")

    # encoder
    linear("encoder/conv1", "model.encoder.conv1")
    linear("encoder/conv2", "model.encoder.conv2")
    sd["model.encoder.embed_positions.weight"] = take("encoder/position_encodings/encodings")
    n_enc = _ct2_layer_count(model, "encoder")
    for i in range(n_enc):
        s, d = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        norm(f"{s}/self_attention/layer_norm", f"{d}.self_attn_layer_norm")
        attention(f"{s}/self_attention", f"{d}.self_attn", cross=False)
        ffn(f"{s}/ffn", d)
    norm("encoder/layer_norm", "model.encoder.layer_norm")

    # decoder
    sd["model.decoder.embed_tokens.weight"] = take("decoder/embeddings/weight")
    sd["model.decoder.embed_positions.weight"] = take("decoder/position_encodings/encodings")
    n_dec = _ct2_layer_count(model, "decoder")
    for i in range(n_dec):
        s, d = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        norm(f"{s}/self_attention/layer_norm", f"{d}.self_attn_layer_norm")
        attention(f"{s}/self_attention", f"{d}.self_attn", cross=False)
        norm(f"{s}/attention/layer_norm", f"{d}.encoder_attn_layer_norm")
        attention(f"{s}/attention", f"{d}.encoder_attn", cross=True)
        ffn(f"{s}/ffn", d)
    norm("decoder/layer_norm", "model.decoder.layer_norm")
    proj = "decoder/projection/weight"
    tied = model.aliases.get(proj) == "decoder/embeddings/weight"
    sd["proj_out.weight"] = take(proj)
    if "decoder/projection/bias" in model.variables:
        raise ValueError(f"{path}: output projection has a bias; transformers Whisper has none")

    unused = sorted(set(model.variables) - take.used)
    if unused:
        raise ValueError(f"{path}: CTranslate2 variables not mapped to the transformers model: {unused}")

    conv1 = sd["model.encoder.conv1.weight"]
    fc1 = sd["model.encoder.layers.0.fc1.weight"]
    dims = {
        "vocab_size": sd["model.decoder.embed_tokens.weight"].shape[0],
        "num_mel_bins": conv1.shape[1],
        "d_model": conv1.shape[0],
        "encoder_layers": n_enc,
        "decoder_layers": n_dec,
        "encoder_attention_heads": enc_heads,
        "decoder_attention_heads": dec_heads,
        "encoder_ffn_dim": fc1.shape[0],
        "decoder_ffn_dim": sd["model.decoder.layers.0.fc1.weight"].shape[0],
        "max_source_positions": sd["model.encoder.embed_positions.weight"].shape[0],
        "max_target_positions": sd["model.decoder.embed_positions.weight"].shape[0],
    }
    return sd, dims, tied


def _whisper_tokenizer(ct2_dir: Path, vocab_size: int, stage: Path) -> Any:
    """Build a ``WhisperTokenizer`` from the bundled ``tokenizer.json``.

    The special tokens of the file become the tokenizer's extra special tokens, and the
    1501 timestamp tokens ``<|0.00|>`` … ``<|30.00|>`` are appended when the model's
    vocabulary has room for them (as in the hub tokenizers).
    """
    import shutil

    from transformers import AddedToken, WhisperTokenizer

    src = ct2_dir / "tokenizer.json"
    if not src.is_file():
        raise FileNotFoundError(f"{src} does not exist: a CTranslate2 Whisper folder needs its tokenizer.json")
    try:
        spec = json.loads(src.read_text(encoding="utf-8"))
        specials = [t["content"] for t in spec.get("added_tokens", []) if t.get("special")]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{src}: not a Hugging Face tokenizers file: {e}") from e
    tok_dir = stage / "tok_src"
    tok_dir.mkdir()
    shutil.copyfile(src, tok_dir / "tokenizer.json")
    tok = WhisperTokenizer.from_pretrained(str(tok_dir), extra_special_tokens=specials)
    shutil.rmtree(tok_dir)
    for required in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"):
        if tok.convert_tokens_to_ids(required) in (None, tok.unk_token_id) and required != "<|endoftext|>":
            raise ValueError(f"{src}: tokenizer has no {required} token")
    n_ts = vocab_size - len(tok)
    if n_ts == 1501:
        tok.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", lstrip=False, rstrip=False) for i in range(1501)])
    elif n_ts < 0:
        raise ValueError(
            f"{src}: tokenizer has {len(tok)} tokens, more than the model's vocabulary of {vocab_size}"
        )
    return tok


def _whisper_generation_config(tok: Any, config: Any, ct2_config: Mapping) -> Any:
    """Generation config for Whisper: English transcription without timestamps."""
    from transformers import GenerationConfig

    tid = tok.convert_tokens_to_ids
    multilingual = config.vocab_size >= 51865
    gen = GenerationConfig(
        decoder_start_token_id=tid("<|startoftranscript|>"),
        bos_token_id=tid("<|startoftranscript|>"),
        eos_token_id=tid("<|endoftext|>"),
        pad_token_id=tid("<|endoftext|>"),
        no_timestamps_token_id=tid("<|notimestamps|>"),
        prev_sot_token_id=tid("<|startofprev|>"),
        max_length=config.max_target_positions,
        max_initial_timestamp_index=50,
        return_timestamps=False,
        is_multilingual=multilingual,
        suppress_tokens=[int(i) for i in ct2_config.get("suppress_ids", [])] or None,
        begin_suppress_tokens=[int(i) for i in ct2_config.get("suppress_ids_begin", [220, tid("<|endoftext|>")])],
    )
    if ct2_config.get("alignment_heads"):
        gen.alignment_heads = [list(map(int, h)) for h in ct2_config["alignment_heads"]]
    if multilingual:
        sot, translate = tid("<|startoftranscript|>"), tid("<|translate|>")
        gen.lang_to_id = {
            t: i
            for t, i in tok.get_vocab().items()
            if sot < i < translate and re.fullmatch(r"<\|[a-z]{2,3}\|>", t)
        }
        gen.task_to_id = {"transcribe": tid("<|transcribe|>"), "translate": translate}
        gen.language, gen.task = "en", "transcribe"
    return gen


def convert_ct2_whisper_to_hf(ct2_dir: PathLike, out_dir: PathLike) -> Path:
    """Convert a CTranslate2 Whisper folder into a transformers Whisper folder.

    ``ct2_dir`` must hold ``model.bin`` (a ``WhisperSpec``) and ``tokenizer.json``;
    its ``config.json`` (CTranslate2's: suppress ids, alignment heads) is optional.
    ``out_dir`` receives ``WhisperForConditionalGeneration`` weights (float32
    safetensors), ``config.json``, ``generation_config.json`` (English transcription, no
    timestamps) and a ``WhisperProcessor`` (feature extractor with the model's number
    of mel bins + tokenizer), written atomically.

    Every transformers parameter is filled from the CT2 file (load is strict) and every
    CT2 variable is used or is a documented spec attribute (``_CT2_WHISPER_ATTRIBUTES``).

    Raises:
        FileNotFoundError: ``ct2_dir`` or one of its required files is missing.
        ValueError: the model is not a CT2 Whisper model or is corrupt.
    """
    import torch
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    if not ct2_dir.is_dir():
        raise FileNotFoundError(f"CTranslate2 Whisper folder {ct2_dir} does not exist")
    t0 = time.perf_counter()
    model_bin = ct2_dir / "model.bin"
    ct2 = read_ct2_model(model_bin)
    if ct2.name != "WhisperSpec":
        raise ValueError(f"{model_bin}: CTranslate2 model is a {ct2.name!r}, not a WhisperSpec")
    ct2_config: Dict = {}
    cfg_path = ct2_dir / "config.json"
    if cfg_path.is_file():
        try:
            ct2_config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_path}: invalid JSON: {e}") from e
    sd_np, dims, tied = _ct2_whisper_state_dict(ct2)
    del ct2

    with atomic_dir(out_dir) as stage:
        tok = _whisper_tokenizer(ct2_dir, dims["vocab_size"], stage)
        tid = tok.convert_tokens_to_ids
        config = WhisperConfig(
            **dims,
            activation_function="gelu",
            scale_embedding=False,
            tie_word_embeddings=tied,
            pad_token_id=tid("<|endoftext|>"),
            bos_token_id=tid("<|startoftranscript|>"),
            eos_token_id=tid("<|endoftext|>"),
            decoder_start_token_id=tid("<|startoftranscript|>"),
            # token suppression lives in the generation config only (transformers warns
            # when the model config carries it too)
            suppress_tokens=None,
            begin_suppress_tokens=None,
        )
        model = WhisperForConditionalGeneration(config)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(sd_np))
        extra = sorted(set(sd_np) - set(expected))
        if missing or extra:
            raise ValueError(
                f"{model_bin}: mapping does not cover transformers Whisper: missing {missing[:8]}, "
                f"unexpected {extra[:8]}"
            )
        for k, v in sd_np.items():
            if tuple(expected[k].shape) != v.shape:
                raise ValueError(
                    f"{model_bin}: {k} has shape {v.shape}, transformers expects {tuple(expected[k].shape)}"
                )
        model.load_state_dict({k: torch.from_numpy(v) for k, v in sd_np.items()}, strict=True)
        if tied and model.proj_out.weight.data_ptr() != model.model.decoder.embed_tokens.weight.data_ptr():
            raise ValueError(f"{model_bin}: output projection should be tied to the embeddings but is not")
        model.generation_config = _whisper_generation_config(tok, config, ct2_config)
        model.save_pretrained(stage)
        fe = WhisperFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=16000)
        WhisperProcessor(feature_extractor=fe, tokenizer=tok).save_pretrained(stage)
        _write_marker(stage, ct2_dir, "ct2-whisper")
        _publish(stage)
    logger.info("converted CTranslate2 Whisper %s → %s in %.1f s", ct2_dir, out_dir, time.perf_counter() - t0)
    return out_dir
