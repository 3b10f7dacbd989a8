"""Paired statistics for comparing two systems on the same questions.

Two systems answer the same test questions, so their accuracies are paired: the test of
a difference uses only the questions where they disagree.

* :func:`mcnemar_exact` — McNemar's exact test: under "no difference", each of the ``m``
  discordant questions is equally likely to favour either system, so the count that
  favours one is Binomial(m, 1/2); the two-sided p-value is
  ``min(1, 2 · P(X ≤ min(b, c)))`` (``b``, ``c`` the two discordant counts).
* :func:`paired_bootstrap` — a percentile interval of the accuracy difference, resampling
  questions with replacement (both systems' answers to a question move together).
* :func:`sign_flip_p` — for several training seeds of a system (``run.sh --seeds``) a
  question's outcome is the share of runs that answer it right; the paired test is then
  the sign-flip permutation test of the mean per-question difference (under "no
  difference" each question's difference is as likely negated), exact by enumeration up
  to 16 questions that differ, else Monte Carlo.  On 0/1 outcomes it is McNemar's test.

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
    only_a: int  # questions A answers right and B wrong (several seeds: A's share is higher)
    only_b: int  # questions B answers right and A wrong (several seeds: B's share is higher)
    p_value: float  # two-sided p of ``test``
    ci_low: float  # bootstrap interval of acc_a − acc_b, in points
    ci_high: float
    level: float  # the interval's coverage, e.g. 0.95
    test: str = "McNemar"  # McNemar (0/1 outcomes) | sign-flip (shares of several runs)

    @property
    def diff(self) -> float:
        """``acc_a − acc_b`` in points."""
        return self.acc_a - self.acc_b

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha


def _check_pair(a: Sequence[float], b: Sequence[float]) -> None:
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs the same questions: {len(a)} vs {len(b)} answers")
    if not len(a):
        raise ValueError("paired comparison of zero questions")
    if any(not 0.0 <= float(x) <= 1.0 for x in (*a, *b)):
        raise ValueError("per-question outcomes must lie in [0, 1] (right/wrong, or a share of runs)")


def _is_binary(a: Sequence[float]) -> bool:
    return all(float(x) in (0.0, 1.0) for x in a)


def sign_flip_p(d: Sequence[float], n_resamples: int = 20000, seed: int = 0, exact_up_to: int = 16) -> float:
    """Two-sided paired permutation p-value of ``mean(d) = 0`` by flipping the signs of the
    per-question differences ``d``: exact over all ``2^m`` sign patterns of the ``m``
    nonzero differences when ``m <= exact_up_to``, else ``(1 + hits) / (1 + n_resamples)``."""
    x = np.asarray([v for v in d if v != 0.0], dtype=np.float64)
    if not len(x):
        return 1.0
    observed = abs(x.sum()) - 1e-12
    if len(x) <= exact_up_to:
        signs = 1.0 - 2.0 * ((np.arange(2 ** len(x))[:, None] >> np.arange(len(x))) & 1)
        return float((np.abs(signs @ x) >= observed).mean())
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_resamples, 2000):
        signs = rng.choice((-1.0, 1.0), size=(min(2000, n_resamples - start), len(x)))
        hits += int((np.abs(signs @ x) >= observed).sum())
    return (1 + hits) / (1 + n_resamples)


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value of per-question correctness ``a`` vs ``b``."""
    _check_pair(a, b)
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    m = only_a + only_b
    if m == 0:
        return 1.0
    k = min(only_a, only_b)
    # integer numerator and denominator: 2.0**m overflows a float beyond 1023 discordant pairs
    tail = sum(math.comb(m, i) for i in range(k + 1)) / (1 << m)
    return min(1.0, 2.0 * tail)


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], n_resamples: int = 10000, level: float = 0.95, seed: int = 0
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
    a: Sequence[float], b: Sequence[float], n_resamples: int = 10000, level: float = 0.95, seed: int = 0
) -> PairedComparison:
    """A against B: McNemar's test on right/wrong outcomes, the sign-flip test on shares
    of several runs (see the module docstring), and the bootstrap interval either way."""
    _check_pair(a, b)
    lo, hi = paired_bootstrap(a, b, n_resamples, level, seed)
    n = len(a)
    fa, fb = [float(x) for x in a], [float(y) for y in b]
    binary = _is_binary(fa) and _is_binary(fb)
    return PairedComparison(
        n=n, acc_a=100.0 * sum(fa) / n, acc_b=100.0 * sum(fb) / n,
        only_a=sum(1 for x, y in zip(fa, fb) if x > y), only_b=sum(1 for x, y in zip(fa, fb) if y > x),
        p_value=mcnemar_exact(fa, fb) if binary else sign_flip_p([x - y for x, y in zip(fa, fb)], seed=seed),
        ci_low=lo, ci_high=hi, level=level, test="McNemar" if binary else "sign-flip",
    )
