"""Validation of the importance scores by deactivation (paper §2.2, Table 1).

Zero the top p %, the bottom p % or a random p % of the scored parameters, measure the
perplexity of the model on a held-out set for text and speech inputs, and restore the
weights bit-exactly.  Selection scope is ``global`` (one threshold over every scored
parameter; our default reading of the paper's "top 3 %") or ``per_matrix`` (p % of each
weight matrix, as Zhang et al. select).  The top/bottom sets come from the exact
threshold search of :mod:`espnet_ext.importance.threshold` (ties included).  Each input
modality's row is zeroed by that modality's own importance (speech-input scores for the
speech row, text-input scores for the text row), as the paper scores each input
separately.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Callable, ContextManager, Dict, Iterable, Iterator, Literal, Mapping, Optional, Tuple

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


def deactivation_check(
    model: torch.nn.Module,
    params: Dict[str, torch.nn.Parameter],
    scores: Mapping[str, Dict[str, torch.Tensor]],
    eval_batches: Dict[str, list],
    fraction: float = 0.03,
    scope: Scope = "global",
    seed: int = 0,
    masks_fn: Callable[..., Dict[str, torch.Tensor]] = deactivation_masks,
    zeroed_fn: Callable[..., ContextManager[int]] = deactivated,
    perplexity_fn: Callable[..., float] = perplexity,
) -> dict:
    """Table 1 with each input modality's row zeroed by that modality's own importance.

    ``masks_fn`` / ``zeroed_fn`` / ``perplexity_fn`` are :func:`deactivation_masks`,
    :func:`deactivated` and :func:`perplexity` by default; a sharded model passes their
    counterparts on the shards (:mod:`espnet_ext.importance.sharded`).

    The paper scores importance per input modality (§2.2: "for speech and text input"),
    so ``scores`` maps a modality to its report's scores; a modality without its own
    scores falls back to ``scores["text"]`` (``masks_from`` says which was used).  Returns
    ``{"table": {modality: {"base", "top", "bottom", "random": perplexity}},
    "zeroed_fraction": {modality: {which: share}}, "masks_from": {modality: source}}``;
    ``zeroed_fraction`` (an addition) is the exact share of the scored parameters zeroed,
    which differs from ``fraction`` where scores tie at the threshold and by the random
    mask's coin flips.
    """
    sources = {m: (m if m in scores else "text") for m in eval_batches}
    missing = sorted({s for s in sources.values() if s not in scores})
    if missing:
        raise ValueError(f"deactivation: no importance scores of modality {missing} for rows {list(eval_batches)}")
    table: Dict[str, Dict[str, float]] = {m: {"base": perplexity_fn(model, b, m)} for m, b in eval_batches.items()}
    zeroed: Dict[str, Dict[str, float]] = {m: {} for m in eval_batches}
    for source in dict.fromkeys(sources.values()):  # each report's masks once, in row order
        rows = [m for m in eval_batches if sources[m] == source]
        total = sum(s.numel() for s in scores[source].values())
        for which in ("top", "bottom", "random"):
            masks = masks_fn(scores[source], fraction, which, scope, seed)
            with zeroed_fn(params, masks) as n:
                logger.info("deactivated %s %.1f%% (%s, %s importance): %d weights (%.4f%%)",
                            which, 100 * fraction, scope, source, n, 100 * n / total)
                for m in rows:
                    table[m][which] = perplexity_fn(model, eval_batches[m], m)
                    zeroed[m][which] = n / total
    return {"table": table, "zeroed_fraction": zeroed, "masks_from": sources}


def deactivation_table(
    model: torch.nn.Module,
    params: Dict[str, torch.nn.Parameter],
    scores: Dict[str, torch.Tensor],
    eval_batches: Dict[str, list],
    fraction: float = 0.03,
    scope: Scope = "global",
    seed: int = 0,
) -> Dict[str, Dict[str, float]]:
    """Table 1 with every row's masks from one report: ``{modality: {"base", "top",
    "bottom", "random": perplexity}}`` (:func:`deactivation_check` scores each row by its
    own modality's importance)."""
    by = {"text": scores}
    return deactivation_check(model, params, by, eval_batches, fraction, scope, seed)["table"]


def render_table1(
    table: Dict[str, Dict[str, float]], fraction: float, scope: str,
    zeroed: Optional[Dict[str, Dict[str, float]]] = None, masks_from: Optional[Dict[str, str]] = None,
) -> str:
    """Markdown shaped like the paper's Table 1; ``zeroed`` / ``masks_from`` (of
    :func:`deactivation_check`) add a note on the exact shares zeroed and the masks' source."""
    pct = f"{100 * fraction:g}%"
    lines = [f"| Input | Base | {pct} Top | {pct} Bottom | {pct} Random |", "|---|---:|---:|---:|---:|"]
    fmt = lambda x: f"{x:.3g}" if x < 1e4 else f"{x:.2e}"  # noqa: E731
    for modality, row in table.items():
        cells = " | ".join(fmt(row[k]) for k in ("base", "top", "bottom", "random"))
        lines.append(f"| {modality.capitalize()} | {cells} |")
    out = "\n".join(lines) + f"\n\nPerplexity after zeroing {pct} of the scored parameters ({scope} selection).\n"
    if masks_from:
        out += "Masks of each row from the importance of: " + ", ".join(
            f"{m} row ← {s} input" for m, s in masks_from.items()) + ".\n"
    if zeroed:
        out += "Exact share zeroed (ties at the threshold, random coin flips): " + "; ".join(
            f"{m}: " + ", ".join(f"{w} {100 * f:.3f}%" for w, f in per.items()) for m, per in zeroed.items()) + ".\n"
    return out
