"""Paired statistics for comparing two systems on the same questions.

Two systems answer the same test questions, so their accuracies are paired: the test of
a difference uses only the questions where they disagree.

* :func:`mcnemar_exact` — McNemar's exact test: under "no difference", each of the ``m``
  discordant questions is equally likely to favour either system, so the count that
  favours one is Binomial(m, 1/2); the two-sided p-value is
  ``min(1, 2 · P(X ≤ min(b, c)))`` (``b``, ``c`` the two discordant counts).
* :func:`paired_bootstrap` — a percentile interval of the accuracy difference, resampling
  questions with replacement (both systems' answers to a question move together).

An addition to the paper, which reports single accuracies.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class PairedComparison:
    """System A against system B on the same ``n`` questions (accuracies in points)."""

    n: int
    acc_a: float
    acc_b: float
    only_a: int  # questions A answers right and B wrong
    only_b: int  # questions B answers right and A wrong
    p_value: float  # McNemar's exact two-sided p
    ci_low: float  # bootstrap interval of acc_a − acc_b, in points
    ci_high: float
    level: float  # the interval's coverage, e.g. 0.95

    @property
    def diff(self) -> float:
        """``acc_a − acc_b`` in points."""
        return self.acc_a - self.acc_b

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha


def _check_pair(a: Sequence[bool], b: Sequence[bool]) -> None:
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs the same questions: {len(a)} vs {len(b)} answers")
    if not len(a):
        raise ValueError("paired comparison of zero questions")


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value of per-question correctness ``a`` vs ``b``."""
    _check_pair(a, b)
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    m = only_a + only_b
    if m == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2.0**m
    return min(1.0, 2.0 * tail)


def paired_bootstrap(
    a: Sequence[bool], b: Sequence[bool], n_resamples: int = 10000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of ``acc(a) − acc(b)`` (points) over ``n_resamples`` resamples."""
    _check_pair(a, b)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(n_resamples, len(d)))
    diffs = 100.0 * d[idx].mean(axis=1)
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def compare_paired(
    a: Sequence[bool], b: Sequence[bool], n_resamples: int = 10000, level: float = 0.95, seed: int = 0
) -> PairedComparison:
    """McNemar's test and the bootstrap interval of A against B."""
    _check_pair(a, b)
    lo, hi = paired_bootstrap(a, b, n_resamples, level, seed)
    n = len(a)
    return PairedComparison(
        n=n, acc_a=100.0 * sum(map(bool, a)) / n, acc_b=100.0 * sum(map(bool, b)) / n,
        only_a=sum(1 for x, y in zip(a, b) if x and not y), only_b=sum(1 for x, y in zip(a, b) if y and not x),
        p_value=mcnemar_exact(a, b), ci_low=lo, ci_high=hi, level=level,
    )
