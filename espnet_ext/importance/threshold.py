"""Exact top/bottom-k thresholds over many tensors without sorting them.

For non-negative float32 values the IEEE bit pattern, read as an integer, is monotonic
in the value.  Two histogram passes over the 16-bit halves of that pattern therefore
find the exact k-th largest value:

1. histogram of the high 16 bits (65,536 bins) over every tensor → the bin holding the
   k-th largest value and how many values lie above that bin;
2. histogram of the low 16 bits of the values inside that bin → the exact value.

Extra memory is one int64 temporary the size of the largest single tensor plus two
65,536-bin histograms, independent of the number of parameters.  Ties are kept
together: the top set is ``{x >= t}`` (it may exceed k when values tie at t), exactly
the set a full sort selects with the same tie rule.  Importance scores are
non-negative by construction (absolute values).
"""

from __future__ import annotations

from typing import Iterable, List, Literal

import torch

_BINS = 1 << 16


def _bits(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().float().reshape(-1)
    if bool((x < 0).any()) or bool(torch.isnan(x).any()):
        raise ValueError("threshold search needs non-negative, non-NaN scores")
    return x.view(torch.int32).to(torch.int64)


def kth_largest(tensors: Iterable[torch.Tensor], k: int) -> float:
    """The exact k-th largest value (1-based) over all ``tensors``."""
    tensors = list(tensors)
    total = sum(t.numel() for t in tensors)
    if not 1 <= k <= total:
        raise ValueError(f"k must be in [1, {total}], got {k}")
    hist = torch.zeros(_BINS, dtype=torch.int64)
    for t in tensors:
        hist += torch.bincount(_bits(t) >> 16, minlength=_BINS)
    # counts of values whose high half is >= bin b, scanning from the top
    above = torch.flip(torch.cumsum(torch.flip(hist, [0]), 0), [0])
    hi = int(torch.nonzero(above >= k).max())
    k_in_bin = k - (int(above[hi + 1]) if hi + 1 < _BINS else 0)
    low = torch.zeros(_BINS, dtype=torch.int64)
    for t in tensors:
        b = _bits(t)
        sel = b[(b >> 16) == hi]
        if sel.numel():
            low += torch.bincount(sel & 0xFFFF, minlength=_BINS)
    above_low = torch.flip(torch.cumsum(torch.flip(low, [0]), 0), [0])
    lo = int(torch.nonzero(above_low >= k_in_bin).max())
    bits = torch.tensor([(hi << 16) | lo], dtype=torch.int64).to(torch.int32)
    return float(bits.view(torch.float32)[0])


def threshold_for_fraction(
    tensors: Iterable[torch.Tensor], fraction: float, side: Literal["top", "bottom"]
) -> float:
    """Threshold selecting ``fraction`` of all values from the ``top`` (``>= t``) or
    ``bottom`` (``<= t``), ties included."""
    tensors = list(tensors)
    total = sum(t.numel() for t in tensors)
    k = max(1, int(round(fraction * total)))
    if side == "top":
        return kth_largest(tensors, k)
    if side == "bottom":
        return kth_largest(tensors, total - k + 1)
    raise ValueError(f"side must be 'top' or 'bottom', got {side!r}")


def selection_mask(t: torch.Tensor, threshold: float, side: Literal["top", "bottom"]) -> torch.Tensor:
    """Boolean mask of the selected entries of one tensor."""
    return t >= threshold if side == "top" else t <= threshold


def count_selected(tensors: List[torch.Tensor], threshold: float, side: Literal["top", "bottom"]) -> int:
    return int(sum(int(selection_mask(t, threshold, side).sum()) for t in tensors))
