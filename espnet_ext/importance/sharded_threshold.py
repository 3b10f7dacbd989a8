"""Exact top/bottom-k thresholds over scores spread across ranks (an addition: sharded analysis).

Every rank holds only its shards of the scores; the k-th largest value over *all* ranks'
entries is found without gathering them, by a radix search over the IEEE-754 bit pattern
with all-reduced counts.  For non-negative float32 values the bit pattern read as a
(sign-cleared) int32 is monotonic in the value, so the k-th largest value is found one
byte at a time, from the high byte down:

1. each rank counts, among its entries whose higher bytes equal the prefix found so far,
   how many have each value 0..255 of the next byte (a 256-bin histogram);
2. the histograms are summed over the ranks (one ``all_reduce``);
3. walking the summed bins from 255 down, the bin that holds the k-th largest entry
   becomes the next byte of the prefix, and the entries in higher bins are counted as
   already above it.

After four passes the prefix *is* the bit pattern of the k-th largest value, exactly the
value :func:`espnet_ext.importance.threshold.kth_largest` finds over the concatenation (so
the masks ``{x >= t}`` / ``{x <= t}`` keep ties together in the same way).  Many searches
(the global thresholds, one per weight matrix, top and bottom) run together: their
histograms are stacked, so each pass is one all-reduce of ``searches × 256`` counts, four
in all.  Each pass reads every local entry once; memory is one local tensor's worth of
temporaries.  ``-0.0`` counts as ``+0.0``; negative or NaN scores are refused on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Literal, Optional, Sequence

import torch
import torch.distributed as dist

_BYTE = 256
_SHIFTS = (24, 16, 8, 0)


@dataclass
class Search:
    """One k-th-largest search: this rank's tensors and the rank ``k`` (1-based, over all ranks)."""

    tensors: Sequence[torch.Tensor]
    k: int


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The sign-cleared int32 bit pattern of ``t``'s entries as float32 (1-D)."""
    x = t.detach().reshape(-1)
    if x.dtype != torch.float32:
        x = x.float()
    return x.contiguous().view(torch.int32) & 0x7FFFFFFF


def _all_reduce_(t: torch.Tensor, group=None) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, group=group)
    return t


def global_counts(searches: Sequence[Sequence[torch.Tensor]], device: torch.device, group=None) -> List[int]:
    """Number of entries of each list of tensors, summed over the ranks (one all-reduce)."""
    counts = torch.tensor([sum(t.numel() for t in ts) for ts in searches], dtype=torch.int64, device=device)
    return [int(c) for c in _all_reduce_(counts, group).cpu()]


def check_scores(tensors: Sequence[torch.Tensor], device: torch.device, group=None) -> None:
    """Raise ``ValueError`` on every rank when any rank holds a negative or NaN score."""
    bad = 0
    for t in tensors:
        if t.numel():
            m = t.detach().min()
            bad |= bool(torch.isnan(m) or m < 0)
    flag = _all_reduce_(torch.tensor([int(bad)], dtype=torch.int64, device=device), group)
    if int(flag[0]):
        raise ValueError("threshold search needs non-negative, non-NaN scores (a rank holds another value)")


def kth_largest_sharded(searches: Sequence[Search], device: torch.device, group=None) -> List[float]:
    """The exact k-th largest value of every search over all ranks' entries (collective:
    every rank calls it with the same searches, in the same order, each with its own
    tensors).  Raises ``ValueError`` when a ``k`` is out of range."""
    totals = global_counts([s.tensors for s in searches], device, group)
    for s, total in zip(searches, totals):
        if not 1 <= s.k <= total:
            raise ValueError(f"k must be in [1, {total}], got {s.k}")
    check_scores([t for s in searches for t in s.tensors], device, group)
    n = len(searches)
    prefix = [0] * n  # bit pattern of the high bytes found so far
    above = [0] * n  # entries known to be larger than every value with this prefix
    for shift in _SHIFTS:
        hist = torch.zeros(n, _BYTE, dtype=torch.int64, device=device)
        for i, s in enumerate(searches):
            for t in s.tensors:
                if t.numel() == 0:
                    continue
                bits = _bits(t)
                if shift < 24:
                    bits = bits[(bits >> (shift + 8)) == prefix[i]]
                hist[i] += torch.bincount((bits >> shift) & 0xFF, minlength=_BYTE)
        counts = _all_reduce_(hist, group).cpu()
        at_least = counts.flip(1).cumsum(1).flip(1)  # at_least[i, d]: entries with this byte >= d
        for i, s in enumerate(searches):
            need = s.k - above[i]
            d = int(torch.nonzero(at_least[i] >= need).max())
            above[i] += int(at_least[i, d + 1]) if d + 1 < _BYTE else 0
            prefix[i] = (prefix[i] << 8) | d
    return [float(torch.tensor([p], dtype=torch.int32).view(torch.float32)[0]) for p in prefix]


def fraction_rank(fraction: float, side: Literal["top", "bottom"], total: int) -> int:
    """The k (as :func:`espnet_ext.importance.threshold.threshold_for_fraction` picks it)
    whose k-th largest value is the ``side`` threshold selecting ``fraction`` of ``total``."""
    k = max(1, int(round(fraction * total)))
    if side == "top":
        return k
    if side == "bottom":
        return total - k + 1
    raise ValueError(f"side must be 'top' or 'bottom', got {side!r}")


def thresholds_sharded(
    requests: Sequence[tuple], device: torch.device, group=None, totals: Optional[Sequence[int]] = None,
) -> List[float]:
    """Thresholds of ``(tensors, fraction, side)`` requests (this rank's tensors of each),
    the values :func:`~espnet_ext.importance.threshold.threshold_for_fraction` gives on the
    concatenation of every rank's tensors; collective, one pass of four all-reduces."""
    if totals is None:
        totals = global_counts([ts for ts, _, _ in requests], device, group)
    searches = [Search(list(ts), fraction_rank(f, side, total)) for (ts, f, side), total in zip(requests, totals)]
    return kth_largest_sharded(searches, device, group)
