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
import math
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import torch

from espnet_ext.importance.layout import DecoderLayout
from espnet_ext.importance.params import MODULE_TYPES, num_layers, split_name
from espnet_ext.importance.threshold import threshold_for_fraction
from espnet_ext.utils.atomic import atomic_open
from espnet_ext.utils.records import DamagedFileError, read_json

SCORES_FILE = "scores.safetensors"
SUMMARY_FILE = "summary.json"
QUANTILES = (0.01, 0.03, 0.05)


def _total(s: torch.Tensor | float) -> float:
    """The sum of one tensor's scores in float64 (a number is taken as that sum already)."""
    return float(s.double().sum()) if isinstance(s, torch.Tensor) else float(s)


def layer_sums(scores: Mapping[str, torch.Tensor | float], layout: Optional[DecoderLayout] = None) -> List[float]:
    """I_layer(i) = Σ of the importance of every parameter in layer i (eq. 3); ``scores``
    maps names to score tensors or to their sums."""
    sums = [0.0] * num_layers(scores, layout)
    for name, s in scores.items():
        layer, _ = split_name(name, layout)
        if layer is not None:
            sums[layer] += _total(s)
    return sums


def module_type_sums(
    scores: Mapping[str, torch.Tensor | float], layout: Optional[DecoderLayout] = None,
) -> Dict[str, float]:
    """Σ importance per projection type (q, k, v, o, gate, up, down; a layout's own types);
    tensors or their sums."""
    out = {t: 0.0 for t in (layout.module_types if layout is not None else MODULE_TYPES)}
    for name, s in scores.items():
        _, mtype = split_name(name, layout)
        if mtype is not None:
            out[mtype] += _total(s)
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
    sums = {n: _total(s) for n, s in scores.items()}
    return assemble_summary(sums, {n: list(t.shape) for n, t in scores.items()}, thresholds, per_matrix, meta,
                            layout)


def assemble_summary(
    sums: Mapping[str, float], shapes: Mapping[str, Sequence[int]], thresholds: Dict[str, float],
    per_matrix: Dict[str, Dict[str, float]], meta: Optional[dict] = None,
    layout: Optional[DecoderLayout] = None,
) -> dict:
    """The summary from per-tensor sums, shapes and thresholds (shared by the one-process
    and the sharded writer, so both write the same fields)."""
    summary = {
        "num_parameters": int(sum(math.prod(s) for s in shapes.values())),
        "total": float(sum(sums.values())),
        "layer_sums": layer_sums(sums, layout),
        "module_type_sums": module_type_sums(sums, layout),
        "thresholds_global": thresholds,
        "thresholds_per_matrix": per_matrix,
        "shapes": {n: list(s) for n, s in shapes.items()},
        "meta": meta or {},
    }
    if layout is not None:
        summary["layout"] = layout.to_json()
    return summary


def write_report(
    out_dir: str | Path, scores: Dict[str, torch.Tensor], meta: Optional[dict] = None,
    dtype: str = "float32", invalidates: Sequence[str] = (), layout: Optional[DecoderLayout] = None,
) -> dict:
    """Write ``scores.safetensors`` and ``summary.json`` atomically; returns the summary.

    ``summary.json`` marks a finished report.  Both files are first written in full to
    temporary names (a full disk fails there, leaving the previous report intact); then
    the old summary goes (with ``invalidates``, files of ``out_dir`` that describe the old
    report), the scores are renamed into place and the summary last, so a kill in between
    never leaves a summary next to scores it does not describe.
    """
    from safetensors.torch import save

    from espnet_ext.importance.scoring import check_score_dtype

    check_score_dtype(dtype)
    out_dir = Path(out_dir)
    cast = {n: t.detach().to(getattr(torch, dtype)).contiguous() for n, t in scores.items()}
    summary = summarize(scores, meta, layout)
    # the inner block's file is renamed first: the scores, then the summary
    with atomic_open(out_dir / SUMMARY_FILE) as f_summary, atomic_open(out_dir / SCORES_FILE, "wb") as f_scores:
        f_summary.write(json.dumps(summary, indent=1) + "\n")
        f_scores.write(save(cast, metadata={"dtype": dtype}))
        for f in (f_summary, f_scores):  # both on disk before the old report goes
            f.flush()
            os.fsync(f.fileno())
        for name in (SUMMARY_FILE, *invalidates):
            (out_dir / name).unlink(missing_ok=True)
    return summary


STAGE3_HINT = "run stage 3 first (./run.sh --stage 3 --stop_stage 3)"
#: the job that writes a report, named when one is damaged
WRITER = ("the importance job (recipe stage 3 for exp/importance/base, stage 6 for a trained system's "
          "report; both redo a damaged report)")


def report_damage(report_dir: str | Path) -> Optional[str]:
    """Why a report's files are damaged (a summary that does not parse, scores whose
    safetensors header is cut short or does not cover the file), or ``None``.  Cheap: the
    scores' header only."""
    from safetensors import safe_open

    summary, scores = Path(report_dir) / SUMMARY_FILE, Path(report_dir) / SCORES_FILE
    try:
        read_json(summary, WRITER)
    except DamagedFileError as e:
        return str(e)
    try:
        with safe_open(str(scores), "pt"):
            pass
    except Exception as e:  # SafetensorError: header too small, incomplete metadata ...
        return f"{scores} is damaged ({e}; truncated?); {WRITER} writes it: rerun that to write it again"
    return None


def load_summary(report_dir: str | Path, conf_key: Optional[str] = None) -> dict:
    """``summary.json`` of a report; ``conf_key`` (the option that named the report) is
    put in front of the error when the report is missing."""
    p = Path(report_dir) / SUMMARY_FILE
    if not p.is_file():
        msg = f"no importance report at {report_dir} ({SUMMARY_FILE} missing)"
        raise FileNotFoundError(f"{conf_key}: {msg}; {STAGE3_HINT}" if conf_key else msg)
    try:
        return read_json(p, WRITER)
    except DamagedFileError as e:
        raise DamagedFileError(f"{conf_key}: {e}" if conf_key else str(e)) from e


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
    try:
        loaded = load_file(str(p))
    except Exception as e:  # SafetensorError: a truncated or damaged file
        msg = f"{p} is damaged ({e}; truncated?); {WRITER} writes it: rerun that to write it again"
        raise DamagedFileError(f"{conf_key}: {msg}" if conf_key else msg) from e
    scores = {n: t.float() for n, t in loaded.items()}
    if expected_shapes is not None:
        check_shapes(report_dir, {n: t.shape for n, t in scores.items()}, expected_shapes, subset=subset)
    return scores


def load_report(report_dir: str | Path, model: torch.nn.Module, groups=("layers",),
                layout: Optional[DecoderLayout] = None) -> Dict[str, torch.Tensor]:
    """Scores of ``report_dir`` checked against ``model``'s parameters in ``groups``."""
    from espnet_ext.importance.params import select_parameters

    shapes = {n: p.shape for n, p in select_parameters(model, groups, layout).items()}
    return load_scores(report_dir, expected_shapes=shapes)
