"""Parameter-change maps (paper §3.3, Fig. 4): what each fine-tuning method did to the weights.

For every scored matrix, |θ_ft − θ_base| of the *effective* weights (a LoRA model's
merged W + scaling · B @ A, see :func:`espnet_ext.importance.params.effective_weights`).
The paper shows these as heatmaps "after normalization" and says LoRA's updates
"exhibit a more pronounced row-and-column clustering"; here every matrix also gets the
row/column concentration ratio of :mod:`espnet_ext.importance.structure` (top 5 % of
|Δ| against seeded random sets of equal size, with the null range), so that claim becomes
a number per method.  Given the base model's importance scores, every matrix also gets
the *line overlap* (an addition, :func:`espnet_ext.importance.structure.line_overlap`):
whether the rows and columns that change most are the rows and columns the base
importance ranks highest, against random lines.

Matrices are processed one at a time: memory stays at two copies of the scored weights
(base and fine-tuned) plus one matrix of work, whatever the model size.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from espnet_ext.importance.params import split_name
from espnet_ext.importance.structure import line_overlap, matrix_concentration, summarize_concentration, top_mask

NAN_CONCENTRATION = {"share": float("nan"), "random_share": float("nan"), "ratio": float("nan")}


def normalized(m: torch.Tensor) -> torch.Tensor:
    """``m / max(m)`` (0..1 for a non-negative matrix; all zeros stays zeros)."""
    top = float(m.max()) if m.numel() else 0.0
    return m / top if top > 0 else torch.zeros_like(m)


def analyze_change(
    base: Mapping[str, torch.Tensor],
    tuned: Mapping[str, torch.Tensor],
    map_layer: int,
    module_types: Sequence[str],
    top_fraction: float = 0.05,
    line_fraction: float = 0.05,
    seed: int = 0,
    n_null: int = 20,
    base_scores: Optional[Mapping[str, torch.Tensor]] = None,
    layout=None,
) -> Tuple[dict, List[Optional[torch.Tensor]]]:
    """Change statistics of ``tuned`` against ``base`` and the Fig. 4 maps of one layer.

    Returns ``(stats, maps)``: ``stats`` holds per-matrix concentration, its per-type
    summary, per layer the relative change ‖Δ‖_F / ‖θ_base‖_F and, with ``base_scores``,
    the line overlap of each matrix's top |Δ| with its top base importance
    (``line_overlap`` summary, ``line_overlap_per_matrix``); ``maps`` are the normalised
    |Δ| matrices of ``map_layer`` in ``module_types`` order (``None`` if absent).
    ``layout`` (a :class:`~espnet_ext.importance.layout.DecoderLayout`) reads the names of a
    decoder that does not follow the Llama pattern; ``tuned`` may be any mapping (e.g. one
    that merges a LoRA update per tensor on access).
    """
    missing = sorted(set(base) ^ set(tuned))
    if missing:
        raise ValueError(f"base and fine-tuned weights differ in parameter names: {missing[:3]}")
    per_matrix: Dict[str, Dict[str, object]] = {}
    overlap: Dict[str, Dict[str, object]] = {}
    sq_delta: Dict[int, float] = {}
    sq_base: Dict[int, float] = {}
    maps: Dict[str, torch.Tensor] = {}
    for name, w0 in base.items():
        w1 = tuned[name]
        if w0.shape != w1.shape:
            raise ValueError(f"{name}: shape {tuple(w1.shape)} differs from the base's {tuple(w0.shape)}")
        delta = (w1.detach().float() - w0.detach().float()).abs_()
        layer, mtype = split_name(name, layout)
        if layer is not None:
            sq_delta[layer] = sq_delta.get(layer, 0.0) + float(delta.double().pow(2).sum())
            sq_base[layer] = sq_base.get(layer, 0.0) + float(w0.double().pow(2).sum())
        if delta.dim() != 2:
            continue
        changed = float(delta.max()) > 0
        per_matrix[name] = (matrix_concentration(delta, top_fraction, line_fraction, seed, n_null)
                            if changed else dict(NAN_CONCENTRATION))
        if changed and base_scores is not None and name in base_scores:
            imp = top_mask(base_scores[name].float(), top_fraction)
            overlap[name] = line_overlap(top_mask(delta, top_fraction), imp, line_fraction, seed, n_null)
        if layer == map_layer and mtype in module_types:
            maps[mtype] = normalized(delta)
    finite = {n: c for n, c in per_matrix.items() if c["ratio"] == c["ratio"]}
    stats = {
        "relative_change_per_layer": [
            (sq_delta[i] / sq_base[i]) ** 0.5 if sq_base[i] > 0 else 0.0 for i in sorted(sq_delta)
        ],
        "concentration": summarize_concentration(finite, layout=layout) if finite else {},
        "n_unchanged_matrices": len(per_matrix) - len(finite),
        "concentration_per_matrix": per_matrix,
    }
    if base_scores is not None:
        stats["line_overlap"] = (summarize_concentration(overlap, ("overlap", "random_overlap", "ratio"), layout)
                                 if overlap else {})
        stats["line_overlap_per_matrix"] = overlap
    return stats, [maps.get(t) for t in module_types]
