"""Rank clustering (paper §2.3.1, Fig. 1): where in a weight matrix the top parameters sit.

For one matrix (importance scores, or |Δθ| for Fig. 4):

* :func:`top_mask` — the top-p % entries of the matrix (exact threshold, ties kept);
* :func:`vicinity_map` — for every entry, the fraction of its 3×3 neighbourhood that is
  in the top set (0..1; at the border only the neighbours that exist count).  This is
  the quantity Fig. 1 shows: "the proportion of parameters within a 3×3 vicinity that
  belong to the 'Top' region";
* :func:`concentration` — a number the paper lacks (an addition): the share of the top
  set that lies in the top-5 % of rows or the top-5 % of columns (rows and columns ranked
  by how many top entries they hold), divided by the mean of the same share over
  ``n_null`` seeded random masks of equal size.  A ratio of 1 means "scattered like
  noise"; row/column clustering gives ratios well above 1 (a mask made of whole rows
  reaches 1 / (1 − 0.95²) ≈ 10 at 5 %).  The random masks also give the null
  distribution of the ratio: its 2.5–97.5 % range and the share of null ratios at or
  above the observed one (an empirical p-value);
* :func:`line_overlap` — also an addition: do two top sets (e.g. the top |Δθ| of Fig. 4
  and the base importance's top set) pick the same rows and columns?  The overlap of
  their top-5 % lines, against seeded random line sets of the same size.

:func:`display_pool` block-mean-pools a map to at most 256 px a side for plotting (each
pixel: the mean of its block, i.e. for a top mask the proportion of top weights in it, as
Fig. 1's caption describes; a max would saturate large matrices), and :func:`plot_grid`
renders a grid of maps to PNG (matplotlib, Agg backend).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from espnet_ext.importance.threshold import selection_mask, threshold_for_fraction


def top_mask(matrix: torch.Tensor, fraction: float = 0.05) -> torch.Tensor:
    """Boolean mask of the top ``fraction`` entries of one matrix (ties included)."""
    return selection_mask(matrix, threshold_for_fraction([matrix], fraction, "top"), "top")


def vicinity_map(mask: torch.Tensor) -> torch.Tensor:
    """Fraction of each entry's 3×3 neighbourhood (itself included) that is in ``mask``.

    A 3×3 ones-kernel convolution counts top entries; the same convolution of an all-ones
    matrix counts the neighbours that exist, so border entries are not diluted by padding.
    """
    if mask.dim() != 2:
        raise ValueError(f"vicinity_map needs a matrix, got shape {tuple(mask.shape)}")
    x = mask.float()[None, None]  # (1, 1, Rows, Cols)
    ones = torch.ones(1, 1, 3, 3)
    hits = F.conv2d(x, ones, padding=1)
    present = F.conv2d(torch.ones_like(x), ones, padding=1)
    return (hits / present)[0, 0]


def _top_lines(counts: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices of the ``ceil(fraction · n)`` lines with the most top entries (stable ties)."""
    n = max(1, math.ceil(fraction * counts.numel()))
    order = torch.sort(counts, descending=True, stable=True).indices
    return order[:n]


def line_share(mask: torch.Tensor, fraction: float = 0.05) -> float:
    """Share of the top entries lying in the top-``fraction`` rows or top-``fraction`` columns."""
    total = int(mask.sum())
    if total == 0:
        return 0.0
    rows = torch.zeros(mask.shape[0], dtype=torch.bool)
    cols = torch.zeros(mask.shape[1], dtype=torch.bool)
    rows[_top_lines(mask.sum(1), fraction)] = True
    cols[_top_lines(mask.sum(0), fraction)] = True
    covered = mask & (rows[:, None] | cols[None, :])
    return int(covered.sum()) / total


def random_mask_like(mask: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A uniformly random mask with exactly as many entries as ``mask`` (seeded).

    A sparse mask (at most a quarter of the entries, e.g. a top-5 % set) draws positions
    with replacement until ``k`` distinct ones are in hand and keeps a uniformly random
    ``k`` of them: the distinct positions of i.i.d. draws form a uniform subset of their
    size, so the result is a uniform ``k``-subset, at a few milliseconds per 1M-entry
    matrix instead of a full random permutation or top-k of 1M random numbers (the rank-
    clustering nulls draw 20 per matrix).  A denser mask takes a random permutation.
    """
    k, n = int(mask.sum()), mask.numel()
    gen = torch.Generator().manual_seed(seed)
    out = torch.zeros(n, dtype=torch.bool)
    if not k:
        return out.view(mask.shape)
    if 4 * k > n:
        idx = torch.randperm(n, generator=gen)[:k]
    else:
        idx = torch.empty(0, dtype=torch.long)
        while idx.numel() < k:
            draws = torch.randint(n, (int(1.1 * (k - idx.numel())) + 16,), generator=gen)
            idx = torch.unique(torch.cat([idx, draws]))
        if idx.numel() > k:
            idx = idx[torch.randperm(idx.numel(), generator=gen)[:k]]
    out[idx] = True
    return out.view(mask.shape)


def null_interval(samples: Sequence[float], observed: float, level: float = 0.95) -> Dict[str, float]:
    """``null_lo`` / ``null_hi`` (the central ``level`` range of ``samples``) and ``p_null``,
    the share of samples at or above ``observed`` (one-sided; 0 = above every sample)."""
    x = torch.tensor([float(v) for v in samples], dtype=torch.float64)
    x = x[~torch.isnan(x)]
    if x.numel() == 0:
        return {"null_lo": float("nan"), "null_hi": float("nan"), "p_null": float("nan")}
    q = torch.quantile(x, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return {"null_lo": float(q[0]), "null_hi": float(q[1]), "p_null": float((x >= observed).double().mean())}


def concentration(mask: torch.Tensor, line_fraction: float = 0.05, seed: int = 0,
                  n_null: int = 20) -> Dict[str, object]:
    """Row/column concentration of a top set against ``n_null`` random sets of equal size.

    Returns ``share`` (top entries in the top rows ∪ top columns), ``random_share`` (the
    mean share of the random masks, seeds ``seed .. seed + n_null − 1``), ``ratio`` =
    share / random_share, ``null_ratios`` (each random mask's share / random_share: the
    ratio's null distribution) and :func:`null_interval` of ``ratio`` within it.
    """
    if n_null < 1:
        raise ValueError(f"n_null must be >= 1, got {n_null}")
    share = line_share(mask, line_fraction)
    null = [line_share(random_mask_like(mask, seed + i), line_fraction) for i in range(n_null)]
    base = sum(null) / n_null
    ratio = share / base if base > 0 else float("nan")
    null_ratios = [v / base if base > 0 else float("nan") for v in null]
    return {"share": share, "random_share": base, "ratio": ratio, "null_ratios": null_ratios,
            **null_interval(null_ratios, ratio)}


def matrix_concentration(
    matrix: torch.Tensor, top_fraction: float = 0.05, line_fraction: float = 0.05, seed: int = 0,
    n_null: int = 20,
) -> Dict[str, object]:
    """:func:`concentration` of the top-``top_fraction`` mask of a score/|Δ| matrix."""
    return concentration(top_mask(matrix.float(), top_fraction), line_fraction, seed, n_null)


def _lines(mask: torch.Tensor, dim: int, fraction: float) -> torch.Tensor:
    """Boolean indicator of the top-``fraction`` lines (rows: dim 1 summed; columns: dim 0)."""
    counts = mask.sum(dim)
    out = torch.zeros(counts.numel(), dtype=torch.bool)
    out[_top_lines(counts, fraction)] = True
    return out


def line_overlap(mask_a: torch.Tensor, mask_b: torch.Tensor, line_fraction: float = 0.05, seed: int = 0,
                 n_null: int = 20) -> Dict[str, object]:
    """Do the top-``line_fraction`` rows and columns of two top sets coincide?

    ``overlap``: the share of ``mask_a``'s top rows and top columns (together) that are
    also ``mask_b``'s; ``random_overlap``: its mean when ``mask_a``'s lines are replaced by
    ``n_null`` seeded uniformly random line sets of the same sizes (≈ line_fraction);
    ``ratio`` = overlap / random_overlap, with its null distribution's
    :func:`null_interval`.  An addition: the paper shows Δθ and importance maps side by side
    but does not measure whether they share lines.
    """
    if mask_a.shape != mask_b.shape or mask_a.dim() != 2:
        raise ValueError(f"line_overlap needs two matrices of one shape, got {tuple(mask_a.shape)} "
                         f"and {tuple(mask_b.shape)}")
    a = [_lines(mask_a, 1, line_fraction), _lines(mask_a, 0, line_fraction)]
    b = [_lines(mask_b, 1, line_fraction), _lines(mask_b, 0, line_fraction)]
    n = sum(int(x.sum()) for x in a)
    overlap = sum(int((x & y).sum()) for x, y in zip(a, b)) / n
    gen = torch.Generator().manual_seed(seed)
    null = []
    for _ in range(n_null):
        hits = 0
        for x, y in zip(a, b):
            pick = torch.randperm(x.numel(), generator=gen)[: int(x.sum())]
            hits += int(y[pick].sum())
        null.append(hits / n)
    base = sum(null) / n_null
    ratio = overlap / base if base > 0 else float("nan")
    null_ratios = [v / base if base > 0 else float("nan") for v in null]
    return {"overlap": overlap, "random_overlap": base, "ratio": ratio, "null_ratios": null_ratios,
            **null_interval(null_ratios, ratio)}


def summarize_concentration(per_matrix: Dict[str, Dict[str, object]],
                            keys: Sequence[str] = ("share", "random_share", "ratio"),
                            layout=None) -> Dict[str, Dict[str, float]]:
    """Mean of ``keys`` per module type (q, k, v, o, gate, up, down, or the types of a
    :class:`~espnet_ext.importance.layout.DecoderLayout`) and overall.

    Where the matrices carry ``null_ratios`` (:func:`concentration`, :func:`line_overlap`),
    the null distribution of the *mean* ratio is the mean over the matrices of their i-th
    null ratio; its :func:`null_interval` tells whether the observed mean lies above it.
    """
    from espnet_ext.importance.params import module_type

    groups: Dict[str, List[Dict[str, object]]] = {}
    for name, c in per_matrix.items():
        groups.setdefault(module_type(name, layout) or "other", []).append(c)
        groups.setdefault("all", []).append(c)
    out = {}
    for t, cs in groups.items():
        out[t] = {k: sum(c[k] for c in cs) / len(cs) for k in keys}
        out[t]["n_matrices"] = len(cs)
        nulls = [c["null_ratios"] for c in cs if c.get("null_ratios")]
        if len(nulls) == len(cs) and len({len(x) for x in nulls}) == 1:
            mean_null = [sum(x[i] for x in nulls) / len(nulls) for i in range(len(nulls[0]))]
            out[t].update(null_interval(mean_null, out[t]["ratio"]))
            out[t]["n_null"] = len(mean_null)
    return out


def display_pool(m: torch.Tensor, max_px: int = 256) -> torch.Tensor:
    """Block-mean pooling so neither side exceeds ``max_px``: each pixel is the mean of its
    block (for a 0/1 top mask, the proportion of top weights in the block).  Blocks cut by
    the matrix border average only the entries that exist."""
    kh, kw = math.ceil(m.shape[0] / max_px), math.ceil(m.shape[1] / max_px)
    if kh == 1 and kw == 1:
        return m
    x = m.float()[None, None]
    ones = torch.ones_like(x)
    sums = F.avg_pool2d(x, (kh, kw), ceil_mode=True, divisor_override=1)
    counts = F.avg_pool2d(ones, (kh, kw), ceil_mode=True, divisor_override=1)
    return (sums / counts)[0, 0]


def plot_grid(
    maps: Sequence[Sequence[Optional[torch.Tensor]]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    path: str | Path,
    title: str,
    colorbar_label: str,
    max_px: int = 256,
) -> Path:
    """A grid of heatmaps (values in 0..1) to PNG; ``None`` cells stay empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from espnet_ext.utils.atomic import atomic_open

    nr, nc = len(maps), max(len(r) for r in maps)
    fig, axes = plt.subplots(nr, nc, figsize=(2.1 * nc + 0.8, 2.1 * nr + 0.6), squeeze=False)
    im = None
    for i, row in enumerate(maps):
        for j in range(nc):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            m = row[j] if j < len(row) else None
            if m is None:
                ax.axis("off")
                continue
            im = ax.imshow(display_pool(m, max_px).numpy(), cmap="viridis", vmin=0, vmax=1,
                           aspect="auto", interpolation="nearest")
            if i == 0:
                ax.set_title(f"{col_labels[j]}\n{tuple(m.shape)[0]}×{tuple(m.shape)[1]}", fontsize=8)
            if j == 0:
                ax.set_ylabel(row_labels[i], fontsize=8)
    fig.suptitle(title, fontsize=10)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label=colorbar_label)
    path = Path(path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path


def rank_clustering_maps(
    scores: Dict[str, torch.Tensor], layers: Sequence[int], module_types: Sequence[str],
    fraction: float = 0.05, layout=None,
) -> Tuple[List[List[Optional[torch.Tensor]]], List[str]]:
    """Fig. 1 grid: vicinity maps of the top-``fraction`` mask, rows = layers, cols = types
    (names read through ``layout`` when given)."""
    from espnet_ext.importance.params import split_name

    index = {split_name(n, layout): s for n, s in scores.items() if s.dim() == 2}
    grid = [[vicinity_map(top_mask(index[(i, t)], fraction)) if (i, t) in index else None
             for t in module_types] for i in layers]
    return grid, [f"layer {i}" for i in layers]
