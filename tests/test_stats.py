"""Paired statistics (espnet_ext/eval/stats.py) against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from espnet_ext.eval.stats import compare_paired, mcnemar_exact, paired_bootstrap, sign_flip_p


def _pairs(both: int, only_a: int, only_b: int, neither: int):
    a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    return a, b


def test_mcnemar_exact_by_hand():
    # 5 discordant, all for A: p = 2 * (1/2)^5 = 0.0625
    assert mcnemar_exact(*_pairs(10, 5, 0, 10)) == pytest.approx(0.0625)
    # 1 vs 9 discordant: p = 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024
    assert mcnemar_exact(*_pairs(3, 1, 9, 2)) == pytest.approx(22 / 1024)
    # symmetric in A and B; equal discordant counts and no discordance give p = 1
    assert mcnemar_exact(*_pairs(3, 9, 1, 2)) == mcnemar_exact(*_pairs(3, 1, 9, 2))
    assert mcnemar_exact(*_pairs(4, 3, 3, 4)) == 1.0
    assert mcnemar_exact(*_pairs(4, 0, 0, 4)) == 1.0
    # concordant questions do not matter
    assert mcnemar_exact(*_pairs(0, 2, 8, 0)) == mcnemar_exact(*_pairs(100, 2, 8, 100))
    # 0 vs 20: p = 2 / 2^20
    assert mcnemar_exact(*_pairs(0, 0, 20, 0)) == pytest.approx(2 / 2**20)


def test_paired_bootstrap_interval():
    a, b = _pairs(40, 10, 0, 50)  # A is exactly 10 points better on every question set
    lo, hi = paired_bootstrap(a, b, n_resamples=2000, seed=1)
    assert lo < 10.0 < hi and lo > 0  # every resample favours A (no question favours B)
    # the interval's half-width is near 1.96 * sd of the mean difference
    sd = 100 * math.sqrt(0.1 * 0.9 / 100)
    assert (hi - lo) / 2 == pytest.approx(1.96 * sd, rel=0.2)
    assert paired_bootstrap(a, b, seed=1, n_resamples=500) == paired_bootstrap(a, b, seed=1, n_resamples=500)
    same = [True, False] * 10
    assert paired_bootstrap(same, same, n_resamples=100) == (0.0, 0.0)


def test_compare_paired_fields_and_errors():
    c = compare_paired(*_pairs(3, 1, 9, 2), n_resamples=500)
    assert (c.n, c.only_a, c.only_b) == (15, 1, 9)
    assert c.acc_a == pytest.approx(100 * 4 / 15) and c.acc_b == pytest.approx(100 * 12 / 15)
    assert c.diff == pytest.approx(-800 / 15) and c.significant() and c.ci_high < 0
    with pytest.raises(ValueError, match="same questions: 2 vs 3"):
        compare_paired([True, False], [True, False, True])
    with pytest.raises(ValueError, match="zero questions"):
        mcnemar_exact([], [])


def test_sign_flip_p_by_hand():
    # three questions, each favouring A by half a run: all 2^3 sign patterns, only the two
    # all-same ones reach |sum| = 1.5 -> p = 2 / 8
    assert sign_flip_p([0.5, 0.5, 0.5]) == pytest.approx(0.25)
    # differences 1, 0.5 (zeros ignored): sums 1.5, 0.5, -0.5, -1.5 -> |s| >= 1.5 in 2 of 4
    assert sign_flip_p([1.0, 0.0, 0.5, 0.0]) == pytest.approx(0.5)
    assert sign_flip_p([0.0, 0.0]) == 1.0
    # on 0/1 differences it is McNemar's exact test
    a, b = _pairs(3, 1, 9, 2)
    assert sign_flip_p([float(x) - float(y) for x, y in zip(a, b)]) == pytest.approx(mcnemar_exact(a, b))
    # beyond the exact limit: Monte Carlo close to the exact value (20 equal differences)
    d = [1 / 3] * 20
    assert sign_flip_p(d, exact_up_to=16) == pytest.approx(2 / 2**20, abs=2e-4)
    assert sign_flip_p(d, exact_up_to=20) == pytest.approx(2 / 2**20)


def test_compare_paired_on_shares_of_several_runs():
    # A: 3 seeds right on 2 of 3 questions' runs ...; shares, not 0/1 -> the sign-flip test
    a = [2 / 3, 1.0, 1 / 3, 0.0]
    b = [0.0, 1.0, 0.0, 0.0]
    c = compare_paired(a, b, n_resamples=500)
    assert c.test == "sign-flip" and (c.only_a, c.only_b) == (2, 0)
    assert c.acc_a == pytest.approx(50.0) and c.acc_b == pytest.approx(25.0)
    assert c.p_value == pytest.approx(0.5)  # two nonzero differences: 2 of 4 patterns as extreme
    assert compare_paired(*_pairs(3, 1, 9, 2), n_resamples=100).test == "McNemar"
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        compare_paired([1.5], [0.0])


def test_mcnemar_exact_with_more_than_1023_discordant_pairs():
    """2.0 ** m overflowed a float at m = 1024 (a 1,500-question comparison); the exact
    integer ratio does not: balanced discordance gives p = 1, one-sided a p that underflows."""
    from espnet_ext.eval.stats import mcnemar_exact

    n = 1500
    assert mcnemar_exact([True] * 750 + [False] * 750, [False] * 750 + [True] * 750) == 1.0
    assert 0.0 <= mcnemar_exact([True] * n, [False] * n) < 1e-300
    # against the float formula where it still works (m = 1000, k = 450)
    a, b = [True] * 450 + [False] * 550, [False] * 450 + [True] * 550
    import math
    expected = 2 * sum(math.comb(1000, i) for i in range(451)) / 2.0 ** 1000
    assert mcnemar_exact(a, b) == pytest.approx(expected, rel=1e-12)
