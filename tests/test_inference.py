"""The report's tests against hand-computed numbers: with 2 degrees of freedom Student's t has the closed form
F(t) = 1/2 + t / (2·√(2 + t²)) and quantile t_q = (2q − 1)·√(2 / (4q(1 − q))), so every value below is worked out
without scipy; McNemar's binomial tails are counted by hand; the power targets are G*Power's published sample sizes."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nin_bench.report import inference


def t2_quantile(q: float) -> float:
    """Quantile of Student's t with 2 degrees of freedom (closed form)."""
    return (2 * q - 1) * math.sqrt(2 / (4 * q * (1 - q)))


def t2_cdf(t: float) -> float:
    """CDF of Student's t with 2 degrees of freedom (closed form)."""
    return 0.5 + t / (2 * math.sqrt(2 + t * t))


def test_paired_t_ci_and_p_by_hand() -> None:
    d = [0.01, 0.00, 0.03]  # mean 0.01333, sd = sqrt(0.00023333) = 0.0152753
    r = inference.paired_test(d)
    se = math.sqrt(((0.01 - 0.04 / 3) ** 2 + (0.04 / 3) ** 2 + (0.03 - 0.04 / 3) ** 2) / 2) / math.sqrt(3)
    half = t2_quantile(0.975) * se
    assert t2_quantile(0.975) == pytest.approx(4.302653, abs=1e-6)
    assert (r.n, r.mean) == (3, pytest.approx(0.04 / 3, rel=1e-12))
    assert r.sd == pytest.approx(math.sqrt(0.0007 / 3), rel=1e-12)  # Σ(d − mean)² = 0.0014/3, over n − 1
    assert (r.lo, r.hi) == (pytest.approx(0.04 / 3 - half, rel=1e-9), pytest.approx(0.04 / 3 + half, rel=1e-9))
    assert r.lo == pytest.approx(-0.0246125, abs=1e-6)
    assert r.p == pytest.approx(2 * (1 - t2_cdf(0.04 / 3 / se)), rel=1e-9)
    assert r.p == pytest.approx(0.269703, abs=1e-6)


def test_paired_t_degenerate_cases() -> None:
    assert math.isnan(inference.paired_test([0.02]).p) and inference.paired_test([0.02]).n == 1
    same = inference.paired_test([0.0, 0.0, 0.0])  # a tie on every seed: nothing to resolve
    assert (same.mean, same.sd, same.lo, same.hi, same.p) == (0.0, 0.0, 0.0, 0.0, 1.0)
    assert inference.paired_test([0.01, 0.01]).p == 0.0


def test_holm_adjusts_given_p_values() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4·0.005, 3·0.01, 2·0.03, max(0.06, 1·0.04)
    np.testing.assert_allclose(inference.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    out = inference.holm([0.5, float("nan"), 0.3])  # NaN stays out of the family: m = 2
    assert out[0] == pytest.approx(0.6) and math.isnan(out[1]) and out[2] == pytest.approx(0.6)
    assert list(inference.holm([0.9, 0.8])) == [1.0, 1.0]


def test_tost_decision_by_hand() -> None:
    d = [0.002, -0.001, 0.005]  # mean 0.002, sd 0.003, se 0.003/√3
    se = 0.003 / math.sqrt(3)
    r = inference.tost(d, margin=0.01)
    p_low, p_high = 1 - t2_cdf((0.002 + 0.01) / se), t2_cdf((0.002 - 0.01) / se)
    assert (p_low, p_high) == (pytest.approx(0.010102, abs=1e-6), pytest.approx(0.021909, abs=1e-6))
    assert r.p == pytest.approx(p_high, rel=1e-9) and r.equivalent
    half = t2_quantile(0.95) * se  # the 90 % CI
    assert (r.lo, r.hi) == (pytest.approx(0.002 - half, rel=1e-9), pytest.approx(0.002 + half, rel=1e-9))
    narrow = inference.tost(d, margin=0.005)  # the 90 % CI reaches +0.0071 > 0.005
    assert narrow.p == pytest.approx(0.5 - math.sqrt(3) / (2 * math.sqrt(5)), rel=1e-6) and not narrow.equivalent
    assert inference.tost([0.0, 0.0, 0.0], 0.01).equivalent  # an exact tie is inside any margin
    assert not inference.tost([0.02], 0.01).equivalent


def test_power_seeds_match_gpower() -> None:
    # G*Power, t test of matched pairs, two tails, alpha 0.05, power 0.8: dz = 0.5 -> 34 pairs, dz = 1 -> 10
    assert inference.seeds_needed(0.005, 0.01) == 34
    assert inference.seeds_needed(-0.01, 0.01) == 10
    assert inference.seeds_needed(0.01, 0.01, alpha=0.05 / 3) > 10  # a stricter level needs more
    assert math.isnan(inference.seeds_needed(0.0, 0.01)) and math.isnan(inference.seeds_needed(0.01, 0.0))
    assert math.isnan(inference.seeds_needed(1e-6, 0.01))  # beyond MAX_SEEDS
    assert inference.seeds_needed(0.001, 0.01) == 787  # dz = 0.1: past the vectorised n <= 64, by bisection


def test_seeds_for_equivalence() -> None:
    # margin = 1 SD at a true difference of 0: TOST's power is 0.795 at 10 pairs and 0.850 at 11 (a simulation of
    # 400,000 draws gives 0.7951 and 0.8498; the bound P(A) + P(B) − 1 is then exact to 1e-3)
    assert inference.seeds_for_equivalence(0.0, 0.01, margin=0.01) == 11
    assert math.isnan(inference.seeds_for_equivalence(0.012, 0.01, margin=0.01))  # |effect| >= margin


def test_mcnemar_counts_by_hand() -> None:
    r = inference.mcnemar(10, 3)  # P(X <= 3), X ~ Bin(13, 1/2) = (1 + 13 + 78 + 286) / 8192
    assert r.p_exact == pytest.approx(2 * 378 / 8192, rel=1e-12)
    assert r.p_mid == pytest.approx((2 * 378 - 286) / 8192, rel=1e-12)
    assert inference.mcnemar(3, 10) == inference.mcnemar(10, 3).__class__(3, 10, r.p_exact, r.p_mid)
    assert (inference.mcnemar(4, 4).p_exact, inference.mcnemar(0, 0).p_mid) == (1.0, 1.0)


def test_paired_proportion_ci_by_hand() -> None:
    mean, lo, hi = inference.paired_proportion_ci([30, 20], [10, 15], [1000, 1000])
    se = math.sqrt((0.04 - 0.02 ** 2) / 1000 + (0.035 - 0.005 ** 2) / 1000) / 2
    assert mean == pytest.approx(0.0125, rel=1e-12)
    assert (lo, hi) == (pytest.approx(0.0125 - 1.959964 * se, rel=1e-6), pytest.approx(0.0125 + 1.959964 * se,
                                                                                          rel=1e-6))
