"""What a Hugging Face model folder or peft adapter holds, read without loading a model.

Comparing two checkpoints needs them to share one architecture: the same config
``model_type`` and the same tensors (names, shapes, dtypes).  :func:`tensor_specs` reads
the names, shapes and dtypes from the safetensors headers (sharded or not; a
``pytorch_model.bin`` is memory-mapped), so the check costs no model load and fails
before any scoring starts.  :func:`check_same_tensors` names the first mismatching tensor
in natural name order (``layers.2`` before ``layers.10``); :func:`check_adapter` checks
that a peft LoRA adapter's factors fit the base weights they wrap.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Tuple

Spec = Tuple[Tuple[int, ...], str]  # (shape, dtype name)

_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
              "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
ADAPTER_CONFIG = "adapter_config.json"


class CheckpointMismatch(ValueError):
    """Two checkpoints differ in architecture; the message names the first difference."""


def is_adapter(path: str | Path) -> bool:
    """True when ``path`` is a peft adapter folder (it has ``adapter_config.json``)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def read_config(folder: str | Path) -> dict:
    """``config.json`` of a model folder (the error names the folder)."""
    p = Path(folder) / "config.json"
    if not p.is_file():
        raise FileNotFoundError(f"{folder} is not a Hugging Face model folder: no config.json")
    return json.loads(p.read_text(encoding="utf-8"))


def _weight_files(folder: Path, stem: str) -> List[Path]:
    """The safetensors (or .bin) files of a folder: single file, or the shards of its index."""
    for ext in ("safetensors", "bin"):
        single = folder / f"{stem}.{ext}"
        if single.is_file():
            return [single]
        index = folder / f"{stem}.{ext}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            return [folder / s for s in shards]
    return []


def tensor_specs(folder: str | Path, stem: str = "model") -> Dict[str, Spec]:
    """name → (shape, dtype) of every tensor stored in a model folder (``stem`` =
    ``adapter_model`` for a peft adapter), from the file headers."""
    folder = Path(folder)
    files = _weight_files(folder, stem) or (_weight_files(folder, "pytorch_model") if stem == "model" else [])
    if not files:
        raise FileNotFoundError(f"{folder}: no {stem}.safetensors, {stem}.bin or sharded index")
    specs: Dict[str, Spec] = {}
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{folder}: shard {f.name} named by the index is missing")
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(f), "pt") as st:
                for k in st.keys():
                    sl = st.get_slice(k)
                    specs[k] = (tuple(sl.get_shape()), _ST_DTYPES.get(sl.get_dtype(), sl.get_dtype().lower()))
        else:
            import torch

            state = torch.load(f, map_location="cpu", mmap=True, weights_only=True)
            specs.update({k: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for k, t in state.items()})
    return specs


def natural_key(name: str) -> tuple:
    """Sort key reading digit runs as numbers (``layers.2`` before ``layers.10``)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p)


def check_same_tensors(base: Dict[str, Spec], other: Dict[str, Spec], base_name: str, other_name: str,
                       check_dtype: bool = True) -> None:
    """Raise :class:`CheckpointMismatch` naming the first tensor (natural name order) that
    is missing from one side or differs in shape (or dtype, with ``check_dtype``)."""
    for name in sorted(set(base) | set(other), key=natural_key):
        if name not in other:
            raise CheckpointMismatch(f"{other_name} does not match the base {base_name}: the base's tensor "
                                     f"{name} {list(base[name][0])} is missing")
        if name not in base:
            raise CheckpointMismatch(f"{other_name} does not match the base {base_name}: tensor {name} "
                                     f"{list(other[name][0])} is not in the base")
        (s0, d0), (s1, d1) = base[name], other[name]
        if s0 != s1:
            raise CheckpointMismatch(f"{other_name} does not match the base {base_name}: tensor {name} has "
                                     f"shape {list(s1)}, the base's is {list(s0)}")
        if check_dtype and d0 != d1:
            raise CheckpointMismatch(f"{other_name} does not match the base {base_name}: tensor {name} is "
                                     f"{d1}, the base's is {d0} (--check_dtype false compares them after "
                                     "loading both in --torch_dtype)")


def check_same_architecture(base: str | Path, other: str | Path, check_dtype: bool = True) -> None:
    """Raise :class:`CheckpointMismatch` unless two model folders share ``model_type`` and
    every tensor (name, shape and, with ``check_dtype``, dtype)."""
    t0, t1 = read_config(base).get("model_type"), read_config(other).get("model_type")
    if t0 != t1:
        raise CheckpointMismatch(f"{other} does not match the base {base}: model_type {t1!r} "
                                 f"vs the base's {t0!r} (config.json)")
    check_same_tensors(tensor_specs(base), tensor_specs(other), str(base), str(other), check_dtype)


_LORA_RE = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


def check_adapter(base: str | Path, adapter: str | Path) -> None:
    """Raise :class:`CheckpointMismatch` unless every LoRA factor of a peft adapter fits the
    base weight it wraps (A: ``(r, in)``, B: ``(out, r)`` of a ``(out, in)`` weight)."""
    specs = tensor_specs(base)
    conf = json.loads((Path(adapter) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    fan_in_fan_out = bool(conf.get("fan_in_fan_out", False))
    for name, (shape, _) in sorted(tensor_specs(adapter, "adapter_model").items(), key=lambda kv: natural_key(kv[0])):
        m = _LORA_RE.match(name)
        if not m:
            continue  # modules_to_save, biases: loaded as peft stores them
        target = f"{m['module']}.weight"
        if target not in specs:
            raise CheckpointMismatch(f"adapter {adapter}: tensor {name} wraps {target}, which the base {base} "
                                     "does not have")
        base_shape = specs[target][0]
        out_f, in_f = (base_shape[::-1] if fan_in_fan_out else base_shape) if len(base_shape) == 2 else (-1, -1)
        want = in_f if m["ab"] == "A" else out_f
        got = shape[1] if m["ab"] == "A" else shape[0]
        if len(shape) != 2 or got != want:
            raise CheckpointMismatch(f"adapter {adapter}: tensor {name} has shape {list(shape)}, which does not "
                                     f"fit the base's {target} {list(specs[target][0])}")
