"""Validation of the importance scores by deactivation (paper §2.2, Table 1).

Zero the top p %, the bottom p % or a random p % of the scored parameters, measure the
perplexity of the model on a held-out set for text and speech inputs, and restore the
weights bit-exactly.  Selection scope is ``global`` (one threshold over every scored
parameter; our default reading of the paper's "top 3 %") or ``per_matrix`` (p % of each
weight matrix, as Zhang et al. select).  The top/bottom sets come from the exact
threshold search of :mod:`espnet_ext.importance.threshold` (ties included).
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Dict, Iterable, Iterator, Literal, Tuple

import torch

from espnet_ext.importance.threshold import selection_mask, threshold_for_fraction

logger = logging.getLogger(__name__)

Which = Literal["top", "bottom", "random"]
Scope = Literal["global", "per_matrix"]


def deactivation_masks(
    scores: Dict[str, torch.Tensor], fraction: float, which: Which, scope: Scope = "global", seed: int = 0
) -> Dict[str, torch.Tensor]:
    """Boolean masks (True = zero this weight) over the scored parameters."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if which == "random":
        gen = torch.Generator().manual_seed(seed)
        return {n: torch.rand(s.shape, generator=gen) < fraction for n, s in scores.items()}
    if which not in ("top", "bottom"):
        raise ValueError(f"which must be top, bottom or random, got {which!r}")
    if scope == "global":
        t = threshold_for_fraction(list(scores.values()), fraction, which)
        return {n: selection_mask(s, t, which) for n, s in scores.items()}
    if scope == "per_matrix":
        return {
            n: selection_mask(s, threshold_for_fraction([s], fraction, which), which)
            for n, s in scores.items()
        }
    raise ValueError(f"scope must be global or per_matrix, got {scope!r}")


def _checksum(t: torch.Tensor) -> int:
    """Exact bit-level checksum of a tensor (sum of its raw integer view)."""
    flat = t.detach().reshape(-1).contiguous()
    view = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[flat.element_size()]
    return int(flat.view(view).to(torch.int64).sum())


@contextlib.contextmanager
def deactivated(params: Dict[str, torch.nn.Parameter], masks: Dict[str, torch.Tensor]) -> Iterator[int]:
    """Zero ``params[n][masks[n]]`` in place inside the block; restore bit-exactly after.

    Yields the number of zeroed weights.  The restore is verified against a bit-level
    checksum of every touched tensor taken before zeroing.
    """
    saved: Dict[str, Tuple[torch.Tensor, int]] = {}
    n_zeroed = 0
    with torch.no_grad():
        for n, mask in masks.items():
            p = params[n]
            m = mask.to(p.device)
            saved[n] = (p.data[m].clone(), _checksum(p.data))
            p.data[m] = 0
            n_zeroed += int(m.sum())
    try:
        yield n_zeroed
    finally:
        with torch.no_grad():
            for n, (values, checksum) in saved.items():
                p = params[n]
                p.data[masks[n].to(p.device)] = values
                if _checksum(p.data) != checksum:
                    raise RuntimeError(f"restore of {n} after deactivation is not bit-exact")


@torch.no_grad()
def perplexity(model: torch.nn.Module, batches: Iterable[Dict[str, torch.Tensor]], modality: str) -> float:
    """exp of the token-weighted mean response loss over ``batches``."""
    was = model.training
    model.eval()
    total = tokens = 0.0
    try:
        for batch in batches:
            loss, _, weight = model(**batch, modality=modality)
            total += float(loss.sum()) * float(weight.sum())
            tokens += float(weight.sum())
    finally:
        model.train(was)
    return math.exp(total / tokens) if total / tokens < 700 else float("inf")


def deactivation_table(
    model: torch.nn.Module,
    params: Dict[str, torch.nn.Parameter],
    scores: Dict[str, torch.Tensor],
    eval_batches: Dict[str, list],
    fraction: float = 0.03,
    scope: Scope = "global",
    seed: int = 0,
) -> Dict[str, Dict[str, float]]:
    """Table 1: ``{modality: {"base", "top", "bottom", "random": perplexity}}``."""
    table: Dict[str, Dict[str, float]] = {m: {"base": perplexity(model, b, m)} for m, b in eval_batches.items()}
    for which in ("top", "bottom", "random"):
        masks = deactivation_masks(scores, fraction, which, scope, seed)
        with deactivated(params, masks) as n:
            logger.info("deactivated %s %.1f%% (%s): %d weights", which, 100 * fraction, scope, n)
            for m, b in eval_batches.items():
                table[m][which] = perplexity(model, b, m)
    return table


def render_table1(table: Dict[str, Dict[str, float]], fraction: float, scope: str) -> str:
    """Markdown shaped like the paper's Table 1."""
    pct = f"{100 * fraction:g}%"
    lines = [f"| Input | Base | {pct} Top | {pct} Bottom | {pct} Random |", "|---|---:|---:|---:|---:|"]
    fmt = lambda x: f"{x:.3g}" if x < 1e4 else f"{x:.2e}"  # noqa: E731
    for modality, row in table.items():
        cells = " | ".join(fmt(row[k]) for k in ("base", "top", "bottom", "random"))
        lines.append(f"| {modality.capitalize()} | {cells} |")
    return "\n".join(lines) + f"\n\nPerplexity after zeroing {pct} of the scored parameters ({scope} selection).\n"
