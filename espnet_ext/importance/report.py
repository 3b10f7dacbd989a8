"""Importance reports: per-parameter scores (safetensors) + a JSON summary.

``<dir>/scores.safetensors``  canonical parameter name → score tensor (fp32 or bf16;
                              fp16 is refused: it flushes scores < 6e-8 to zero)
``<dir>/summary.json``        per-layer sums (I_layer of eq. 3), per-module-type sums,
                              global and per-matrix quantile thresholds, provenance
                              (and ``layout``, the decoder layout, when the scores were
                              named by one: :mod:`espnet_ext.importance.layout`)

Both files are written atomically (``summary.json`` last: it marks a finished report).
:func:`load_report` checks that the report matches a model (same parameter names and
shapes) and names the first mismatch otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from espnet_ext.importance.layout import DecoderLayout
from espnet_ext.importance.params import MODULE_TYPES, num_layers, split_name
from espnet_ext.importance.threshold import threshold_for_fraction
from espnet_ext.utils.atomic import atomic_open, atomic_write_text

SCORES_FILE = "scores.safetensors"
SUMMARY_FILE = "summary.json"
QUANTILES = (0.01, 0.03, 0.05)


def layer_sums(scores: Dict[str, torch.Tensor], layout: Optional[DecoderLayout] = None) -> List[float]:
    """I_layer(i) = Σ of the importance of every parameter in layer i (eq. 3)."""
    sums = [0.0] * num_layers(scores, layout)
    for name, s in scores.items():
        layer, _ = split_name(name, layout)
        if layer is not None:
            sums[layer] += float(s.double().sum())
    return sums


def module_type_sums(scores: Dict[str, torch.Tensor], layout: Optional[DecoderLayout] = None) -> Dict[str, float]:
    """Σ importance per projection type (q, k, v, o, gate, up, down; a layout's own types)."""
    out = {t: 0.0 for t in (layout.module_types if layout is not None else MODULE_TYPES)}
    for name, s in scores.items():
        _, mtype = split_name(name, layout)
        if mtype is not None:
            out[mtype] += float(s.double().sum())
    return out


def summarize(scores: Dict[str, torch.Tensor], meta: Optional[dict] = None,
              layout: Optional[DecoderLayout] = None) -> dict:
    """The JSON summary of a report (see module docstring)."""
    tensors = list(scores.values())
    thresholds = {
        f"top_{q:g}": threshold_for_fraction(tensors, q, "top") for q in QUANTILES
    } | {f"bottom_{q:g}": threshold_for_fraction(tensors, q, "bottom") for q in QUANTILES}
    per_matrix = {
        name: {f"top_{q:g}": threshold_for_fraction([s], q, "top") for q in QUANTILES}
        for name, s in scores.items() if s.dim() == 2
    }
    summary = {
        "num_parameters": int(sum(t.numel() for t in tensors)),
        "total": float(sum(float(t.double().sum()) for t in tensors)),
        "layer_sums": layer_sums(scores, layout),
        "module_type_sums": module_type_sums(scores, layout),
        "thresholds_global": thresholds,
        "thresholds_per_matrix": per_matrix,
        "shapes": {n: list(t.shape) for n, t in scores.items()},
        "meta": meta or {},
    }
    if layout is not None:
        summary["layout"] = layout.to_json()
    return summary


def write_report(
    out_dir: str | Path, scores: Dict[str, torch.Tensor], meta: Optional[dict] = None,
    dtype: str = "float32", layout: Optional[DecoderLayout] = None,
) -> dict:
    """Write ``scores.safetensors`` and ``summary.json`` atomically; returns the summary.

    ``summary.json`` marks a finished report: it is removed first and written last, so
    an interrupted rewrite never leaves a summary next to scores it does not describe.
    """
    from safetensors.torch import save

    from espnet_ext.importance.scoring import check_score_dtype

    check_score_dtype(dtype)
    out_dir = Path(out_dir)
    (out_dir / SUMMARY_FILE).unlink(missing_ok=True)
    cast = {n: t.detach().to(getattr(torch, dtype)).contiguous() for n, t in scores.items()}
    with atomic_open(out_dir / SCORES_FILE, "wb") as f:
        f.write(save(cast, metadata={"dtype": dtype}))
    summary = summarize(scores, meta, layout)
    atomic_write_text(out_dir / SUMMARY_FILE, json.dumps(summary, indent=1) + "\n")
    return summary


STAGE3_HINT = "run stage 3 first (./run.sh --stage 3 --stop_stage 3)"


def load_summary(report_dir: str | Path, conf_key: Optional[str] = None) -> dict:
    """``summary.json`` of a report; ``conf_key`` (the option that named the report) is
    put in front of the error when the report is missing."""
    p = Path(report_dir) / SUMMARY_FILE
    if not p.is_file():
        msg = f"no importance report at {report_dir} ({SUMMARY_FILE} missing)"
        raise FileNotFoundError(f"{conf_key}: {msg}; {STAGE3_HINT}" if conf_key else msg)
    return json.loads(p.read_text())


def check_shapes(
    report_dir: str | Path, reported: Dict[str, Sequence[int]], model: Dict[str, Sequence[int]],
    what: str = "the model", subset: bool = False,
) -> None:
    """Raise ``ValueError`` unless the report's parameter names and shapes are the model's.

    ``subset``: the report may score only some of ``model``'s parameters (ImpAnchor);
    otherwise the two name sets must be equal.
    """
    missing = [] if subset else sorted(set(model) - set(reported))
    extra = sorted(set(reported) - set(model))
    if missing or extra:
        raise ValueError(f"importance report {report_dir} does not match {what}: "
                         f"missing {missing[:3]}; {len(extra)} scored but not in the model, e.g. {extra[:3]}")
    for n, shape in reported.items():
        if tuple(shape) != tuple(model[n]):
            raise ValueError(f"importance report {report_dir}: {n} has shape {tuple(shape)}, "
                             f"the model's is {tuple(model[n])}")


def load_scores(
    report_dir: str | Path, expected_shapes: Optional[Dict[str, Sequence[int]]] = None,
    conf_key: Optional[str] = None, subset: bool = False,
) -> Dict[str, torch.Tensor]:
    """Load scores (as fp32); with ``expected_shapes`` check them (:func:`check_shapes`)."""
    from safetensors.torch import load_file

    p = Path(report_dir) / SCORES_FILE
    if not p.is_file():
        msg = f"no importance scores at {p}"
        raise FileNotFoundError(f"{conf_key}: {msg}; {STAGE3_HINT}" if conf_key else msg)
    scores = {n: t.float() for n, t in load_file(str(p)).items()}
    if expected_shapes is not None:
        check_shapes(report_dir, {n: t.shape for n, t in scores.items()}, expected_shapes, subset=subset)
    return scores


def load_report(report_dir: str | Path, model: torch.nn.Module, groups=("layers",),
                layout: Optional[DecoderLayout] = None) -> Dict[str, torch.Tensor]:
    """Scores of ``report_dir`` checked against ``model``'s parameters in ``groups``."""
    from espnet_ext.importance.params import select_parameters

    shapes = {n: p.shape for n, p in select_parameters(model, groups, layout).items()}
    return load_scores(report_dir, expected_shapes=shapes)
